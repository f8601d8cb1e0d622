"""Export annotations for the tracking tools users chain next (docs/export.md).

An application layer (like ``evaluation``): numpy in, files out; no Qt, no torch.

>>> from napari_sam_lora.export import export_tracks, read_session
>>> saved = read_session("cells")                      # cells.session.json / .npz
>>> export_tracks(saved.labels, saved.parents, "ctc", "cells_ctc")
>>> export_tracks(labels, {4: 1, 5: 1}, "geff", "cells.geff")   # daughters 4, 5 of 1

Formats (:data:`FORMATS`): ``ctc`` (:mod:`.ctc`), ``geff`` (:mod:`.graph`), ``ome-zarr``
(:mod:`.omezarr`). Tracks and the track-gap rule: :mod:`.tracks`. The command line:
``napari-sam-lora export SESSION --format ctc --output DIR``; napari's writers:
:mod:`.napari_writers`.
"""

from napari_sam_lora.export.api import FORMATS, export_tracks
from napari_sam_lora.export.session import SavedLabels, read_session
from napari_sam_lora.export.tracks import ExportError, Track, Tracks, build_tracks, scan

__all__ = [
    "FORMATS",
    "ExportError",
    "SavedLabels",
    "Track",
    "Tracks",
    "build_tracks",
    "export_tracks",
    "read_session",
    "scan",
]
