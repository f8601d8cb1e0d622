"""Helpers for engine jobs written as generators (progress out, result returned)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

Result = TypeVar("Result")


def drain(generator: Generator[Any, Any, Result]) -> Result:
    """Run a progress generator to its end, discarding progress; return its result."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value
