"""Adapter names of learners sharing one decoder: each learner has its own namespace.

The first learner on a decoder names its adapters ``obj1_a0``…; later ones ``l2_obj1_a0``…
A namespace is held while its learner lives (a weak reference) and until its adapters are
removed, so learners sharing a model never collide.
"""

from __future__ import annotations

import itertools
import json
import re
import weakref
from pathlib import Path

import torch

from napari_sam_lora.engine.learning.adapter_files import adapter_paths
from napari_sam_lora.engine.learning.adapters import adapter_names
from napari_sam_lora.engine.tracking.models import file_sha256

__all__ = ["claim_namespace", "content_digest", "free_names", "release_namespace"]

#: Live owners per decoder and namespace.
_NAMESPACES: weakref.WeakKeyDictionary[torch.nn.Module, weakref.WeakValueDictionary] = (
    weakref.WeakKeyDictionary()
)
_NAMESPACE_RE = re.compile(r"^(l\d+_)")


def claim_namespace(decoder: torch.nn.Module, owner: object) -> str:
    """The first free namespace on ``decoder``: ``""`` for the first learner, then ``l2_``…

    A namespace is free when no live learner holds it and no adapter on the decoder
    carries it (an adapter left by a learner that was dropped without ``close()``).
    """
    live = _NAMESPACES.setdefault(decoder, weakref.WeakValueDictionary())
    used = {_namespace_of(name) for name in adapter_names(decoder)}
    for k in itertools.count(1):
        name = "" if k == 1 else f"l{k}_"
        if name not in live and name not in used:
            live[name] = owner
            return name
    raise AssertionError("unreachable")


def _namespace_of(adapter_name: str) -> str:
    match = _NAMESPACE_RE.match(adapter_name)
    return match.group(1) if match else ""


def content_digest(path: str | Path) -> str | None:
    """SHA-256 of an adapter file's tensors (``None`` when unreadable: load reports it)."""
    st_path = adapter_paths(path)[0]
    try:
        return file_sha256(st_path)
    except OSError:
        return None


def free_names(path: str | Path, existing: set[str], namespace: str) -> dict[str, str]:
    """``{name in file: free name in this learner's namespace}``."""
    json_path = adapter_paths(path)[1]
    try:
        names = [str(e["name"]) for e in json.loads(json_path.read_text("utf-8"))["adapters"]]
    except Exception:
        return {}  # load_adapters reports the problem
    rename, taken = {}, set(existing)
    for name in names:
        base = name if name.startswith(namespace) else f"{namespace}{name}"
        new, k = base, 1
        while new in taken:
            new, k = f"{base}_{k}", k + 1
        taken.add(new)
        rename[name] = new
    return rename


def release_namespace(decoder: torch.nn.Module, namespace: str) -> None:
    """Free ``namespace`` on ``decoder`` (its owner removed its adapters)."""
    _NAMESPACES.get(decoder, {}).pop(namespace, None)
