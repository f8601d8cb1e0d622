"""npe2 writers (``napari.yaml``): save a Labels layer ``(T, H, W)`` as tracks.

*File › Save Selected Layer(s)…* with a Labels layer (or ``layer.save(path)``): a name
ending in ``.ctc`` writes a Cell Tracking Challenge folder, ``.geff`` GEFF, ``.ome.zarr``
OME-Zarr. Divisions come from the layer's metadata
(``layer.metadata["lineage"] = {daughter: parent}``), if any. An existing non-empty output
is refused, never replaced.

A refusal is raised as :class:`SaveRefused`, not as the ``ValueError`` that
:class:`~.tracks.ExportError` also is: napari reads a ``ValueError`` from a writer as "no
writer found" and would hide the message.
"""

from __future__ import annotations

from typing import Any

from napari_sam_lora.engine import SamLoraError
from napari_sam_lora.export.api import export_tracks
from napari_sam_lora.export.session import lineage_of
from napari_sam_lora.export.tracks import ExportError

__all__ = ["SaveRefused", "write_ctc", "write_geff", "write_ome_zarr"]


class SaveRefused(SamLoraError):
    """napari asked to save a layer that cannot be exported (the message says why);
    nothing was written."""


def _write(path: str, data: Any, meta: dict, fmt: str) -> list[str]:
    try:
        parents = lineage_of((meta or {}).get("metadata") or {})
        return [str(p) for p in export_tracks(data, parents, fmt, path)]
    except ExportError as exc:
        raise SaveRefused(str(exc)) from None


def write_ctc(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer's ``data`` as a Cell Tracking Challenge folder ``path``."""
    return _write(path, data, meta, "ctc")


def write_geff(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer's ``data`` as a GEFF tracking graph ``path``."""
    return _write(path, data, meta, "geff")


def write_ome_zarr(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer's ``data`` as an OME-Zarr label image ``path``."""
    return _write(path, data, meta, "ome-zarr")
