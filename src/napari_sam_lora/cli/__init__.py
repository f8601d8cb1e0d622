"""Command line: ``napari-sam-lora <command> ...`` (also ``python -m napari_sam_lora``).

One module per command, each owning its parser (``add_parser(subparsers)``) and its
``run(args)``:

demo (:mod:`.demo`)
    Open napari with a synthetic sample stack and the plugin docked.
synthetic (:mod:`.synthetic`)
    Write the synthetic test suite (TIFF stacks + ground truth + ``suite.json``).
evaluate (:mod:`.evaluate`)
    The simulated-user benchmark (LIT protocol): corrections without and with learning.
train (:mod:`.train`)
    Config-driven LoRA fine-tuning from annotated stacks (``configs/finetune/``).
check-data (:mod:`.check_data`)
    Check a fine-tuning config's data (counts, shapes, labels) before training.
segment (:mod:`.segment`)
    Segment many stacks on dask.distributed (the ``batch`` extra).
export (:mod:`.export`)
    Export a saved session's labels as tracks: CTC, GEFF, OME-Zarr (the ``export`` extra).

Every command runs inside the one error boundary (:mod:`._boundary`): an expected failure
prints one line naming the file or option and what to do, exit code 1; an unexpected one
prints its traceback and says it is a bug to report. ``--debug`` shows every traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Any

from napari_sam_lora import __version__
from napari_sam_lora.cli._boundary import PROG, CliError, describe, run_command
from napari_sam_lora.cli.demo import (
    DEFAULT_DEMO_MODEL,
    DEFAULT_DEMO_SAMPLE,
    PLUGIN_NAME,
    WIDGET_NAME,
    build_demo_viewer,
)

__all__ = [
    "DEFAULT_DEMO_MODEL",
    "DEFAULT_DEMO_SAMPLE",
    "PLUGIN_NAME",
    "PROG",
    "WIDGET_NAME",
    "CliError",
    "build_demo_viewer",
    "build_parser",
    "describe",
    "main",
]

#: Modules with ``add_parser(subparsers)``, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = (
    "napari_sam_lora.cli.demo",
    "napari_sam_lora.cli.synthetic",
    "napari_sam_lora.cli.evaluate",
    "napari_sam_lora.cli.train",
    "napari_sam_lora.cli.check_data",
    "napari_sam_lora.cli.segment",
    "napari_sam_lora.cli.export",
)


def _adders() -> list[Callable[[Any], Any]]:
    return [import_module(name).add_parser for name in COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="SAM2 on image stacks in napari, learning from every correction (LIT-LoRA).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _adders():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit code: ``0`` on success, ``1`` for errors, ``2`` for usage errors, ``130``
        when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return run_command(args.command, handler, args, debug=args.debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
