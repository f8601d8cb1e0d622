"""Helpers for engine jobs written as generators (progress out, result returned).

Every long job in the engine is a generator: it yields progress items, can be cancelled by
closing it at any yield, and *returns* its result (``StopIteration.value``). Scripts call
the eager twin, which is :func:`drain` over the generator; workers iterate it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

Result = TypeVar("Result")
Item = TypeVar("Item")
Mapped = TypeVar("Mapped")


def drain(generator: Generator[Any, Any, Result]) -> Result:
    """Run a progress generator to its end, discarding progress; return its result."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def relay(
    generator: Generator[Item, Any, Result], wrap: Callable[[Item], Mapped]
) -> Generator[Mapped, None, Result]:
    """Yield ``wrap(item)`` for each item of ``generator``; return its result.

    Closing the relay closes ``generator`` (cancellation reaches the inner job).
    """
    try:
        while True:
            try:
                item = next(generator)
            except StopIteration as stop:
                return stop.value
            yield wrap(item)
    finally:
        generator.close()
