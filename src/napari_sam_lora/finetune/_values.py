"""Checking and converting config values (shared by the sections of :mod:`.config`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from napari_sam_lora.engine.errors import SamLoraError

__all__ = ["ConfigError", "check_keys", "kind_of", "to_int", "value_of"]


class ConfigError(SamLoraError, ValueError):
    """The fine-tuning config is unreadable, has unknown keys or bad values."""


def check_keys(where: str, raw: Mapping[str, Any], valid: tuple[str, ...] | list[str]) -> None:
    unknown = sorted(str(k) for k in raw if k not in valid)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; valid keys: "
            f"{', '.join(valid)}"
        )


def value_of(key: str, value: Any, annotation: str) -> Any:
    """``value`` checked/converted to the type named by ``annotation``."""
    kind = annotation.replace(" | None", "")
    if value is None:
        if annotation.endswith("| None"):
            return None
        raise ConfigError(f"{key}=null is not allowed: expected {_NAMES.get(kind, kind)}")
    converted = _CONVERT.get(kind, lambda v: v)(value)
    if converted is None:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {_NAMES.get(kind, kind)}")
    return converted


def to_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    return int(v) if isinstance(v, float) and v.is_integer() else None


def _to_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        number = float(v) if isinstance(v, int | float | str) else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _to_str_tuple(v: Any) -> tuple[str, ...] | None:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        return None
    return tuple(items)


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "int": to_int,
    "float": _to_float,
    "bool": lambda v: v if isinstance(v, bool) else None,
    "str": lambda v: v if isinstance(v, str) else (str(v) if isinstance(v, Path) else None),
    "tuple[str, ...]": _to_str_tuple,
}
_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "tuple[str, ...]": "a list of strings",
}


def kind_of(value: Any) -> str:
    return {list: "list", dict: "mapping", str: "string"}.get(type(value), type(value).__name__)
