"""``napari-sam-lora synthetic``: write the synthetic test suite (TIFF + ``suite.json``)."""

from __future__ import annotations

import argparse
from typing import Any

from napari_sam_lora.cli._args import positive_int
from napari_sam_lora.synthetic import DEFAULT_SUITE, KIND_DESCRIPTIONS, KINDS

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    """Write the suite and list its files."""
    from napari_sam_lora.synthetic import write_suite

    height, width = args.size
    suite = write_suite(
        args.outdir,
        kinds=args.kinds or DEFAULT_SUITE,
        n_frames=args.frames,
        shape=(height, width),
        seed=args.seed,
    )
    stacks = suite["stacks"]
    print(
        f"wrote {len(stacks)} synthetic stack(s) of {args.frames} frames, "
        f"{height}x{width}, seed {args.seed}, to {args.outdir}:"
    )
    for item in stacks:
        print(f"  {item['image']:<28} {item['labels']:<28} {item['dtype']:<7} {item['kind']}")
    print("  suite.json")
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``synthetic`` to the main command line's subparsers."""
    kinds_help = "; ".join(f"{k}: {d}" for k, d in KIND_DESCRIPTIONS.items())
    parser = subparsers.add_parser(
        "synthetic",
        help="write synthetic test stacks with ground truth (TIFF + suite.json)",
        description=(
            "Write <kind>_image.tif and <kind>_labels.tif (axes TYX; labels int32, object "
            "id 1, decoys unlabelled) for each kind, plus suite.json, into OUTDIR. "
            f"Kinds: {kinds_help}."
        ),
    )
    parser.add_argument("outdir", metavar="OUTDIR", help="output folder (created if needed)")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=KINDS,
        metavar="KIND",
        help=f"kinds to write (default: {', '.join(DEFAULT_SUITE)}); also: "
        + ", ".join(k for k in KINDS if k not in DEFAULT_SUITE),
    )
    parser.add_argument(
        "--frames", type=positive_int, default=8, metavar="N", help="frames per stack (8)"
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        nargs=2,
        default=(128, 128),
        metavar=("H", "W"),
        help="frame height and width (128 128; at least 16 each)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.set_defaults(handler=run)
