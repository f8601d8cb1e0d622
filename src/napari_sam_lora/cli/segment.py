"""``napari-sam-lora segment``: the batch job (:func:`napari_sam_lora.batch.segment`) from a shell.

Registered in the main command line by ``add_parser(subparsers)`` (it sets ``handler`` to
:func:`run`); errors go through the command line's one error boundary.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
Segment many stacks (TIFF, zarr / OME-Zarr, .npy, folders of frames) with SAM2 on
dask.distributed: one labels image per stack (OME-Zarr by default), summary.csv and a
resumable manifest.json in OUTPUT. Prompts: seed labels per stack (--seeds) or a points
table (--points). With --adapter, propagation is adapter-assisted (files saved from the
plugin or by `train`). By default a LocalCluster sized to the machine runs the job;
--scheduler runs it on an existing dask cluster (see docs/batch.md for SLURM/PBS).
Stacks done in an earlier run with the same inputs and settings are skipped."""

EPILOG = """\
examples:
  napari-sam-lora segment 'data/*.tif' -o out --seeds seeds/
  napari-sam-lora segment data/z.ome.zarr -o out --seeds 'seeds/{name}_masks.tif' --axis z
  napari-sam-lora segment 'data/*.tif' -o out --points clicks.csv --adapter cells.safetensors
  napari-sam-lora segment 'data/*.tif' -o out --seeds seeds/ --scheduler tcp://10.0.0.5:8786"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``segment`` options."""
    parser.add_argument("inputs", nargs="+", metavar="STACK", help="stack paths or glob patterns")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument(
        "--seeds",
        metavar="DIR|PATTERN|FILE",
        help="seed labels per stack: a folder with files named like the stacks, a pattern "
        "with {name}, or one file for one stack; full (T,H,W) labels or one (H,W) frame",
    )
    prompts.add_argument(
        "--points",
        metavar="TABLE",
        help="CSV/JSON table with columns stack, frame, object, row, col, positive",
    )
    parser.add_argument(
        "--model",
        default="sam2.1_hiera_tiny",
        help="SAM2 variant, untrained:<variant> (random weights) or a checkpoint path "
        "(default: %(default)s)",
    )
    parser.add_argument("--image-size", type=int, metavar="PX", help="SAM2 input size (1024)")
    parser.add_argument("--device", help="auto (default), cuda, cpu or mps")
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="FILE",
        help="adapter file (.safetensors + .json) for adapter-assisted tracking; repeatable",
    )
    parser.add_argument(
        "--direction",
        choices=("both", "forward", "backward"),
        default="both",
        help="propagation from the seeded frames (default: %(default)s)",
    )
    parser.add_argument(
        "--start",
        default="middle",
        metavar="first|middle|last|N",
        help="frame a single-frame seed image goes on (default: %(default)s)",
    )
    parser.add_argument(
        "--format",
        dest="output_format",
        choices=("ome-zarr", "tiff"),
        default="ome-zarr",
        help="labels format (default: %(default)s)",
    )
    parser.add_argument(
        "--axis", choices=("t", "z"), default="t", help="stack axis: time or z (metadata)"
    )
    parser.add_argument(
        "--tracks",
        choices=("ctc", "geff"),
        help="also write each segmented stack's tracks beside its labels "
        "(<name>.tracks.ctc/ or <name>.tracks.geff; docs/export.md)",
    )
    parser.add_argument(
        "--restart", action="store_true", help="redo every stack (ignore the manifest)"
    )
    cluster = parser.add_argument_group("dask")
    cluster.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on this dask scheduler (default: dask config scheduler-address, else a "
        "new LocalCluster)",
    )
    cluster.add_argument(
        "--workers", type=_positive_int, help="LocalCluster workers (default: cores or GPUs)"
    )
    cluster.add_argument(
        "--memory-limit",
        metavar="SIZE",
        help="memory per LocalCluster worker, e.g. 4GB; a stack that cannot fit in it is "
        "refused (failed) before it is submitted",
    )
    cluster.add_argument(
        "--dashboard-address",
        metavar="HOST:PORT",
        help="where a LocalCluster serves the dask dashboard (default: 127.0.0.1:8787, this "
        "machine only; 0.0.0.0:8787 serves it on every interface)",
    )
    cluster.add_argument(
        "--torch-threads",
        type=_positive_int,
        help="torch threads per worker (default: cores/workers)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``segment`` to the main command line's subparsers (sets ``handler``)."""
    parser = subparsers.add_parser(
        "segment",
        help="segment many stacks with SAM2 (+ adapters) on dask.distributed",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run ``segment``; print the summary. Exit code 0 when every stack is done, else 1."""
    from napari_sam_lora.batch.job import segment

    result = segment(
        args.inputs,
        args.output,
        seeds=args.seeds,
        points=args.points,
        model=args.model,
        image_size=args.image_size,
        device=args.device,
        adapters=args.adapter,
        direction=args.direction,
        start=args.start,
        output_format=args.output_format,
        axis=args.axis,
        resume=not args.restart,
        scheduler=args.scheduler,
        workers=args.workers,
        memory_limit=args.memory_limit,
        torch_threads=args.torch_threads,
        dashboard_address=args.dashboard_address,
        progress=not args.no_progress,
        log=_stderr,
    )
    counts: dict[str, int] = {}
    for row in result.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    for row in result.failed:
        print(f"FAILED {row['stack']}: {row.get('error')}")
    tracks_ok = _write_tracks(result, args.tracks) if args.tracks else True
    print(f"summary: {result.summary}")
    print(f"manifest: {result.manifest}")
    return 0 if result.ok and tracks_ok else 1


def _write_tracks(result: Any, fmt: str) -> bool:
    """Export the tracks of every stack segmented now or before (``--tracks``), reading
    each labels output lazily; says whether all were written."""
    from pathlib import Path

    from napari_sam_lora.data.readers import open_stack
    from napari_sam_lora.export import ExportError, export_tracks

    ok = True
    for row in result.rows:
        if row.get("status") not in ("done", "skipped") or not row.get("output"):
            continue
        labels_path = Path(row["output"])
        name = labels_path.name.split(".")[0]
        target = labels_path.parent / f"{name}.tracks.{fmt}"
        try:
            export_tracks(open_stack(labels_path), {}, fmt, target, overwrite=True)
        except (ExportError, OSError, ValueError) as exc:
            print(f"FAILED tracks of {row['stack']}: {exc}")
            ok = False
        else:
            print(f"tracks: {target}")
    return ok
