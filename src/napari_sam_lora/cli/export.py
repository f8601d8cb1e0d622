"""``napari-sam-lora export SESSION --format ctc|geff|ome-zarr --output DIR``: a saved
session's labels and divisions for the tracking tools users chain next (docs/export.md)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]

#: the formats (kept here so ``--help`` needs no import of the export package's writers)
FORMATS = ("ctc", "geff", "ome-zarr")


def run(args: argparse.Namespace) -> int:
    """Read the session, export it, and say what was written."""
    from napari_sam_lora.export import export_tracks, read_session

    saved = read_session(args.session)
    (path,) = export_tracks(
        saved.labels,
        saved.parents,
        args.format,
        args.output,
        overwrite=args.overwrite,
        ctc_layout=args.ctc_layout,
    )
    frames = int(saved.labels.shape[0])
    divisions = f", {len(saved.parents)} division(s)" if saved.parents else ""
    print(f"exported {saved.path.name} ({frames} frames{divisions}) as {args.format} to {path}")
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``export`` to the main command line's subparsers."""
    parser = subparsers.add_parser(
        "export",
        help="export a saved session's labels as tracks (CTC, GEFF, OME-Zarr)",
        description=(
            "Read a saved session (<base>.session.json / .npz: its labels and, if saved, its "
            "divisions) and write it for tracking tools: ctc — a Cell Tracking Challenge "
            "folder (man_track.txt and one 16-bit TIFF per frame); geff — the Graph Exchange "
            "File Format (a zarr tracking graph); ome-zarr — an OME-Zarr label image (t, y, "
            "x). A track missing on some frames is split into tracks linked as parent and "
            "child (docs/export.md). Nothing is written when a check fails."
        ),
    )
    parser.add_argument(
        "session",
        metavar="SESSION",
        help="the saved session: its base path or either file (<base>.session.json/.npz)",
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="the format to write")
    parser.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="the folder (ctc) or zarr store (geff, ome-zarr) to write; must not exist or "
        "be empty unless --overwrite",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty output"
    )
    parser.add_argument(
        "--ctc-layout",
        choices=("gt", "res"),
        default="gt",
        help="CTC file names: gt = ground truth (man_track.txt, man_track000.tif …, the "
        "default) or res = a tracking result (res_track.txt, mask000.tif …)",
    )
    parser.set_defaults(handler=run)
