"""The labels and divisions of a saved session (``<base>.session.json`` / ``.npz``).

Read without a model or the image stack: the NPZ's ``labels`` (``(T, H, W)``) and, when
the JSON has one, its ``lineage`` mapping (daughter → parent; at the top level or in
``annotations``; a value may also be ``[parent, frame]`` or ``{"parent": …}``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_lora.engine.core.file_paths import state_paths
from napari_sam_lora.export.tracks import ExportError

__all__ = ["SavedLabels", "lineage_of", "read_session"]


@dataclass(frozen=True)
class SavedLabels:
    """A saved session's label stack and divisions."""

    labels: np.ndarray
    parents: dict[int, int]
    path: Path


def _parent(value: Any) -> Any:
    if isinstance(value, dict):
        return value.get("parent")
    if isinstance(value, list | tuple):
        return value[0] if value else None
    return value


def lineage_of(doc: Any) -> dict[Any, Any]:
    """The divisions a session document (or a layer's metadata) holds: ``lineage`` at its
    top level or in its ``annotations``; ``{}`` when it has none."""
    if not isinstance(doc, dict):
        return {}
    lineage = doc.get("lineage")
    annotations = doc.get("annotations")
    if lineage is None and isinstance(annotations, dict):
        lineage = annotations.get("lineage")
    if lineage is None:
        return {}
    if not isinstance(lineage, dict):
        raise ExportError(
            f"the lineage is a {type(lineage).__name__}, not a mapping daughter → parent"
        )
    return {daughter: _parent(value) for daughter, value in lineage.items()}


def read_session(path: str | os.PathLike[str]) -> SavedLabels:
    """Read the labels and divisions of the session saved at ``path`` (the engine's
    :func:`~napari_sam_lora.engine.tracking.session_files.read_saved_labels`: after an
    interrupted save, the previous complete pair).

    Parameters
    ----------
    path : path
        The base path, or either file (``<base>.session.json`` / ``.session.npz``).

    Raises
    ------
    ExportError
        Missing, unreadable or damaged files, or not a session file.
    """
    from napari_sam_lora.engine.tracking.session_files import (
        SessionFileError,
        read_saved_labels,
    )

    json_path, _ = state_paths(path)
    try:
        labels, doc = read_saved_labels(path)
    except SessionFileError as exc:
        raise ExportError(str(exc)) from exc
    return SavedLabels(labels, lineage_of(doc), json_path)
