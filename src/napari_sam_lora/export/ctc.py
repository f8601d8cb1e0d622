"""The Cell Tracking Challenge (CTC) format: a folder of 16-bit label TIFFs and a track table.

``man_track.txt`` (ground truth, the default) or ``res_track.txt`` (a tracking result) has
one line ``L B E P`` per track: its label, first and last frame (0-based) and its parent's
label (0 for none). One TIFF per frame, ``man_track000.tif`` … (or ``mask000.tif`` … for a
result; four digits from 1001 frames on), holds the tracks' labels as ``uint16``. Tracks
are continuous in time: gaps and a parent that keeps one daughter's id are split into new
tracks (:mod:`.tracks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_lora.export.tracks import ExportError, Tracks, read_frame

__all__ = ["LAYOUTS", "MAX_ID", "check_ctc", "frame_name", "track_table", "write_ctc"]

#: CTC label images are 16-bit.
MAX_ID = 65535
#: layout → (track file, frame file prefix): ground truth (``TRA``) or a tracking result.
LAYOUTS = {"gt": ("man_track.txt", "man_track"), "res": ("res_track.txt", "mask")}


def frame_name(t: int, num_frames: int, layout: str = "gt") -> str:
    """The TIFF name of frame ``t``: three digits, four (or more) beyond 1000 frames."""
    digits = max(3, len(str(num_frames - 1)))
    return f"{LAYOUTS[layout][1]}{t:0{digits}d}.tif"


def check_ctc(tracks: Tracks, layout: str) -> None:
    """Refuse what CTC cannot hold: a layout it does not name, ids beyond ``uint16``."""
    if layout not in LAYOUTS:
        raise ExportError(f"unknown CTC layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    largest = tracks.max_track_id
    if largest > MAX_ID:
        split = max(t.object_id for t in tracks.tracks) <= MAX_ID
        why = " after splitting tracks at gaps and divisions" if split else ""
        raise ExportError(
            f"the CTC format stores 16-bit labels (1 … {MAX_ID}), but track id {largest} is "
            f"needed{why}; relabel the objects with smaller ids or export as geff or ome-zarr"
        )


def track_table(tracks: Tracks) -> str:
    """The ``L B E P`` lines, by label."""
    return "".join(f"{t.track_id} {t.start} {t.end} {t.parent}\n" for t in tracks.tracks)


def write_ctc(folder: Path, labels: Any, tracks: Tracks, layout: str = "gt") -> None:
    """Write the CTC folder ``folder`` (created here), reading ``labels`` frame by frame."""
    import tifffile

    num_frames = int(np.shape(labels)[0])
    frame_shape = tuple(int(s) for s in np.shape(labels)[1:3])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LAYOUTS[layout][0]).write_text(track_table(tracks), encoding="utf-8")
    for t in range(num_frames):
        frame = read_frame(labels, t, frame_shape)  # type: ignore[arg-type]
        out = frame.astype(np.uint16)
        for obj, track_id in tracks.relabel.get(t, {}).items():
            out[frame == obj] = track_id
        tifffile.imwrite(folder / frame_name(t, num_frames, layout), out, compression="zlib")
