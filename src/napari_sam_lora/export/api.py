"""``export_tracks``: labels and divisions to a tracking format, all checked before writing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from napari_sam_lora.export.tracks import ExportError, build_tracks, check_parents, scan

__all__ = ["FORMATS", "PACKAGES", "check_output", "check_packages", "export_tracks"]

#: format → what it writes.
FORMATS = {
    "ctc": "Cell Tracking Challenge folder: man_track.txt and one 16-bit TIFF per frame",
    "geff": "Graph Exchange File Format (zarr): nodes per frame and object, track edges",
    "ome-zarr": "OME-Zarr 0.4 label image (t, y, x) with each object's frames and parent",
}


#: format → the packages it needs beyond the core dependencies (the ``export`` extra).
PACKAGES = {"ctc": (), "geff": ("geff", "geff_spec"), "ome-zarr": ("ome_zarr", "dask", "zarr")}


def check_packages(fmt: str) -> None:
    """Refuse a format whose packages are not installed (before anything is read)."""
    from importlib.util import find_spec

    missing = [name for name in PACKAGES[fmt] if find_spec(name) is None]
    if missing:
        raise ExportError(
            f"the {fmt} format needs {', '.join(missing)}, which is not installed: "
            "pip install 'napari-sam-lora[export]'"
        )


def check_output(output: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """The output folder, refused when it is a file or a non-empty folder (unless
    ``overwrite``); nothing is created here."""
    path = Path(output).expanduser()
    if path.is_symlink():
        raise ExportError(f"{path} is a link; choose a folder path that is not a link")
    if path.exists():
        if not path.is_dir():
            raise ExportError(f"{path} is a file, not a folder; choose another output path")
        if not overwrite and any(path.iterdir()):
            raise ExportError(
                f"{path} exists and is not empty; choose a new output folder or overwrite it "
                "(--overwrite, overwrite=True)"
            )
    return path


def export_tracks(
    labels: Any,
    parents: Mapping[Any, Any] | None,
    fmt: str,
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    ctc_layout: str = "gt",
) -> list[Path]:
    """Export a label stack and its divisions as tracks.

    Everything is checked before anything is written, and the output appears whole or not
    at all (written beside it, then renamed into place; an existing output is replaced only
    once the new one is complete).

    Parameters
    ----------
    labels : array-like
        ``(T, H, W)`` integer labels, 0 = background. Read frame by frame (``labels[t]``):
        a lazy stack (the session's labels, a dask or zarr array) is never held whole.
    parents : mapping or None
        Divisions: daughter id → parent id (empty or ``None`` for none).
    fmt : {"ctc", "geff", "ome-zarr"}
        The format (:data:`FORMATS`).
    output : path
        The folder (``ctc``) or zarr store (``geff``, ``ome-zarr``) to write.
    overwrite : bool
        Replace an existing non-empty ``output``.
    ctc_layout : {"gt", "res"}
        CTC file names: ground truth (``man_track.txt``, ``man_track000.tif`` …) or a
        tracking result (``res_track.txt``, ``mask000.tif`` …).

    Returns
    -------
    list of Path
        ``[output]``.

    Raises
    ------
    ExportError
        An unknown format; ``output`` a file or a non-empty folder; labels not a 3-D
        integer stack, negative, or empty; a division naming an id that is not an object,
        or a parent that does not appear before its daughter; ids beyond 65535 for CTC.
    WriteError
        The output could not be written (nothing was left behind).
    """
    from napari_sam_lora.engine.core.atomic import write_files

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_packages(fmt)
    path = check_output(output, overwrite)
    lineage = check_parents(parents)
    found = scan(labels)
    tracks = build_tracks(found, lineage)

    if fmt == "ctc":
        from napari_sam_lora.export.ctc import check_ctc, write_ctc

        check_ctc(tracks, ctc_layout)

        def writer(temp: Path) -> None:
            write_ctc(temp, labels, tracks, ctc_layout)

    elif fmt == "geff":
        from napari_sam_lora.export.graph import write_geff

        def writer(temp: Path) -> None:
            write_geff(temp, found, tracks)

    else:
        from napari_sam_lora.export.omezarr import write_ome_zarr

        def writer(temp: Path) -> None:
            write_ome_zarr(temp, labels, tracks, lineage, found.max_id)

    write_files({path: writer})
    return [path]
