"""The labels and divisions of a saved session (``<base>.session.json`` / ``.npz``).

Read without a model or the image stack: the NPZ's ``labels`` (``(T, H, W)``) and, when
the JSON has one, its ``lineage`` mapping (daughter → parent; at the top level or in
``annotations``; a value may also be ``[parent, frame]`` or ``{"parent": …}``).
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_lora.engine.core.file_paths import state_paths
from napari_sam_lora.engine.tracking.session_files import FORMAT, SET_KEY
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
    """Read the labels and divisions of the session saved at ``path``.

    Parameters
    ----------
    path : path
        The base path, or either file (``<base>.session.json`` / ``.session.npz``).

    Raises
    ------
    ExportError
        Missing, unreadable or mismatched files, or not a session file.
    """
    json_path, npz_path = state_paths(path)
    try:
        doc = json.loads(json_path.read_text("utf-8"))
    except FileNotFoundError:
        raise ExportError(f"no saved session at {json_path}; give the session's path") from None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ExportError(f"{json_path} cannot be read: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ExportError(f"{json_path} is not a napari-sam-lora session file")
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            if "labels" not in npz.files:
                raise ExportError(f"{npz_path} holds no labels; it is not a session's labels file")
            labels = npz["labels"]
            set_id = str(npz[SET_KEY].item()) if SET_KEY in npz.files else None
    except FileNotFoundError:
        raise ExportError(
            f"no saved session at {npz_path} (it goes with {json_path.name})"
        ) from None
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ExportError(f"{npz_path} cannot be read: {exc}") from exc
    if set_id is not None and doc.get("set_id") not in (None, set_id):
        raise ExportError(
            f"{json_path.name} and {npz_path.name} come from different saves (one was "
            "interrupted): open the session in napari and save it again, then export"
        )
    return SavedLabels(labels, lineage_of(doc), json_path)
