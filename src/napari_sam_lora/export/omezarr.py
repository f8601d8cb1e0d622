"""OME-Zarr (NGFF 0.4, zarr format 2): the label stack as a label image.

The store's root is a one-level ``multiscales`` image with axes ``t``, ``y``, ``x`` (one
chunk per frame) and ``image-label`` metadata whose ``properties`` give each object's
first and last frame and, for a daughter, its ``parent``; there is no intensity image in
an annotation session, so the label image is the root rather than a ``labels/`` group of
one. Written by the project's one OME-Zarr writer
(:func:`napari_sam_lora.data.ome_zarr_labels.write_ome_zarr_labels`, with ``ome-zarr``), one
frame at a time; the object ids are kept as they are (gaps need no splitting in a label
image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_lora.export.tracks import ExportError, Tracks, read_frame

__all__ = ["label_dtype", "label_properties", "write_ome_zarr"]


def label_dtype(max_id: int) -> np.dtype:
    """The unsigned type of the written labels: 16-bit, or wider when an id needs it."""
    return np.promote_types(np.uint16, np.min_scalar_type(max_id))


def label_properties(tracks: Tracks, parents: dict[int, int]) -> list[dict[str, int]]:
    """``image-label`` ``properties``: per object id, its frames and parent."""
    spans: dict[int, list[int]] = {}
    for track in tracks.tracks:
        span = spans.setdefault(track.object_id, [track.start, track.end])
        span[0], span[1] = min(span[0], track.start), max(span[1], track.end)
    properties = []
    for obj, (start, end) in sorted(spans.items()):
        entry = {"label-value": obj, "first-frame": start, "last-frame": end}
        if obj in parents:
            entry["parent"] = parents[obj]
        properties.append(entry)
    return properties


def write_ome_zarr(
    store: Path, labels: Any, tracks: Tracks, parents: dict[int, int], max_id: int
) -> None:
    """Write the OME-Zarr group ``store`` (created here), reading ``labels`` frame by frame."""
    from napari_sam_lora.data.ome_zarr_labels import write_ome_zarr_labels

    frame_shape = tuple(int(s) for s in np.shape(labels)[1:3])
    image_label = {"version": "0.4", "properties": label_properties(tracks, parents)}
    try:
        write_ome_zarr_labels(
            store,
            labels,
            axis="t",
            dtype=label_dtype(max_id),
            metadata={"image-label": image_label},
            read_frame=lambda t: read_frame(labels, t, frame_shape),  # type: ignore[arg-type]
            extra="export",
        )
    except ImportError as exc:  # pragma: no cover - the export extra is not installed
        raise ExportError(str(exc)) from exc
