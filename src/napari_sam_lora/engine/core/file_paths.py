"""The file names of the engine's file sets, from a base path (paths only: importing this
loads neither torch nor peft, so a GUI's main thread may use it)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["adapter_paths", "state_paths"]


def adapter_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(<path>.safetensors, <path>.json)`` (a ``.safetensors``/``.json`` suffix is dropped)."""
    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    return base.parent / f"{base.name}.safetensors", base.parent / f"{base.name}.json"


def state_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(<path>.session.json, <path>.session.npz)`` of a saved session."""
    base = Path(path)
    for suffix in (".json", ".npz", ".session"):
        if base.name.endswith(suffix):
            base = base.with_name(base.name[: -len(suffix)])
    return base.with_name(base.name + ".session.json"), base.with_name(base.name + ".session.npz")
