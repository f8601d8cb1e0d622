"""Command line: ``napari-sam-lora <command> ...`` (also ``python -m napari_sam_lora``).

Commands
--------
demo
    Open napari with a synthetic sample stack and the plugin docked.
synthetic
    Write the synthetic test suite (TIFF stacks + ground truth + ``suite.json``).
evaluate
    The simulated-user benchmark (LIT protocol): corrections without and with learning.
train
    Config-driven LoRA fine-tuning from annotated stacks (``configs/finetune/``).
check-data
    Check a fine-tuning config's data (counts, shapes, labels) before training.

Each command is a function ``_add_<name>(subparsers)`` that builds its parser and sets
``handler``; add new commands to :data:`_COMMANDS`. Expected errors (bad arguments,
invalid data, missing files, model problems) print one line to stderr and return a non-zero
exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from napari_sam_lora import __version__
from napari_sam_lora.finetune.cli import add_check_data, add_train
from napari_sam_lora.synthetic import KIND_DESCRIPTIONS, KINDS

__all__ = ["DEFAULT_DEMO_MODEL", "PLUGIN_NAME", "WIDGET_NAME", "build_demo_viewer", "main"]

PROG = "napari-sam-lora"
PLUGIN_NAME = "napari-sam-lora"
WIDGET_NAME = "SAM2 LoRA"
#: No weights can be downloaded everywhere; the demo uses random weights unless asked.
DEFAULT_DEMO_MODEL = "untrained:sam2.1_hiera_tiny"
DEFAULT_DEMO_SAMPLE = "decoy"


class CliError(Exception):
    """An expected error: its message is printed without a traceback."""


# --------------------------------------------------------------------------- demo


def build_demo_viewer(
    sample: str = DEFAULT_DEMO_SAMPLE,
    model: str = DEFAULT_DEMO_MODEL,
    image_size: int | None = None,
    show: bool = True,
) -> Any:
    """Create a napari viewer with a synthetic stack and the plugin widget docked.

    Parameters
    ----------
    sample : str
        Synthetic kind (see :data:`napari_sam_lora.synthetic.KINDS`).
    model : str
        Model name handed to the widget's ``set_model`` (when it has one).
    image_size : int, optional
        SAM2 input size handed to the widget's ``set_image_size``, or set as its
        ``image_size`` attribute (when it has either).
    show : bool
        Show the viewer window.

    Returns
    -------
    napari.Viewer
        The viewer; the widget is ``viewer.window._dock_widgets[...]``.
    """
    from napari_sam_lora.sample_data import sample_layers

    layers = sample_layers(sample)  # validates ``sample`` before any window opens
    _check_display()
    try:
        import napari

        viewer = napari.Viewer(title=f"napari-sam-lora demo: synthetic {sample}", show=show)
    except ImportError as exc:
        raise CliError(
            f"cannot start the napari viewer ({exc}); install a Qt binding, e.g. "
            "pip install 'napari-sam-lora[pyqt6]'"
        ) from exc

    image_layer = None
    for data, kwargs, layer_type in layers:
        layer = getattr(viewer, f"add_{layer_type}")(data, **kwargs)
        if layer_type == "image":
            image_layer = layer
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, WIDGET_NAME)
    if image_layer is not None:
        viewer.layers.selection.active = image_layer

    set_model = getattr(widget, "set_model", None)
    if callable(set_model):
        set_model(model)
    elif model != DEFAULT_DEMO_MODEL:
        print(f"{PROG} demo: the widget cannot be told the model; choose {model!r} in it")
    if image_size is not None:
        set_image_size = getattr(widget, "set_image_size", None)
        if callable(set_image_size):
            set_image_size(image_size)
        elif hasattr(widget, "image_size"):
            widget.image_size = image_size
        else:
            print(f"{PROG} demo: the widget has no image-size setting; --image-size ignored")
    return viewer


def _check_display() -> None:
    """Fail with a clear message instead of letting Qt abort the process."""
    if not sys.platform.startswith("linux"):
        return
    if os.environ.get("QT_QPA_PLATFORM") or os.environ.get("DISPLAY"):
        return
    if os.environ.get("WAYLAND_DISPLAY"):
        return
    raise CliError(
        "no display found (DISPLAY is not set); run on a desktop session, or on a headless "
        "machine under a virtual display: xvfb-run -a napari-sam-lora demo"
    )


def _run_demo(args: argparse.Namespace) -> int:
    viewer = build_demo_viewer(
        sample=args.sample, model=args.model, image_size=args.image_size, show=True
    )
    if args.no_run:
        return 0
    print(
        f"{PROG} demo: synthetic {args.sample!r} stack, model {args.model!r}. "
        "Add a Points layer, click the object on a frame, then propagate in the widget."
    )
    import napari

    napari.run()
    del viewer
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_demo(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="open napari with a synthetic stack and the plugin docked",
        description=(
            "Open napari with a synthetic sample stack (image + hidden ground-truth labels) "
            "and the SAM2 LoRA widget docked."
        ),
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_DEMO_MODEL,
        help=(
            "model: a variant name (sam2.1_hiera_tiny|small|base_plus|large, sam2_hiera_*), "
            "a local .pt checkpoint, or untrained:<variant> for random weights "
            f"(default: {DEFAULT_DEMO_MODEL})"
        ),
    )
    parser.add_argument(
        "--sample",
        default=DEFAULT_DEMO_SAMPLE,
        choices=KINDS,
        metavar="KIND",
        help=f"synthetic stack to open, one of: {', '.join(KINDS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--image-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="SAM2 input size in pixels (smaller is faster on a CPU; default: the model's)",
    )
    parser.add_argument(
        "--no-run",
        action="store_true",
        help="build the viewer and return without starting the event loop (for tests)",
    )
    parser.set_defaults(handler=_run_demo)


# --------------------------------------------------------------------------- synthetic


def _run_synthetic(args: argparse.Namespace) -> int:
    from napari_sam_lora.synthetic import write_suite

    height, width = args.size
    suite = write_suite(
        args.outdir,
        kinds=args.kinds or KINDS,
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


def _add_synthetic(subparsers: Any) -> None:
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
        help=f"kinds to write (default: all): {', '.join(KINDS)}",
    )
    parser.add_argument(
        "--frames", type=_positive_int, default=8, metavar="N", help="frames per stack (8)"
    )
    parser.add_argument(
        "--size",
        type=_positive_int,
        nargs=2,
        default=(128, 128),
        metavar=("H", "W"),
        help="frame height and width (128 128; at least 16 each)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.set_defaults(handler=_run_synthetic)


# --------------------------------------------------------------------------- evaluate


def _run_evaluate(args: argparse.Namespace) -> int:
    from napari_sam_lora.evaluation.command import prepare, run_settings
    from napari_sam_lora.evaluation.report import write_report
    from napari_sam_lora.evaluation.runner import evaluate

    # Everything is checked before the model loads; nothing is written until the end.
    datasets, config, output = prepare(args)
    from napari_sam_lora.engine.predictor import load_model

    model = load_model(config.model, config.device, config.image_size)
    result = evaluate(datasets, config, model=model, progress=not args.no_progress)
    report = write_report(result, datasets, output, run_settings(args, model))
    lora = report["lora"]
    for name in ("baseline", "lora"):
        run = report[name]
        print(
            f"{name:>8}: {run['corrections']} corrections ({run['clicks']} clicks, "
            f"{run['mask_corrections']} full masks) on {run['scored_frames']} scored frames, "
            f"{run['accepted_candidates']} candidates accepted, mean IoU "
            f"{_number(run['mean_iou'])}, {run['seconds']['total']:.1f} s"
        )
    print(
        f"reduction {_percent(report['reduction'])}; candidates accepted by confidence "
        f"{lora['accepted_candidates']}, by oracle {report['accepted_candidates_oracle']} "
        f"({_percent(report['confidence_vs_oracle'])})"
    )
    written = [n for n in ("report.json", "report.md", "report.png") if (output / n).is_file()]
    print(f"wrote {', '.join(written)} to {output} ({result.total_seconds:.0f} s)")
    return 0


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _add_evaluate(subparsers: Any) -> None:
    from napari_sam_lora.evaluation.command import DESCRIPTION, add_arguments

    parser = subparsers.add_parser(
        "evaluate",
        help="simulated-user benchmark: corrections without and with learning (LIT protocol)",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(handler=_run_evaluate)


# --------------------------------------------------------------------------- main

_COMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_demo,
    _add_synthetic,
    _add_evaluate,
    add_train,
    add_check_data,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="SAM2 on image stacks in napari, learning from every correction (LIT-LoRA).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(subparsers)
    return parser


def _is_expected(exc: BaseException) -> bool:
    """Errors users can cause and fix; anything else is a bug and keeps its traceback."""
    if isinstance(exc, CliError | ValueError | OSError):
        return True
    # The engine's errors are expected too; its module is only loaded if it was used.
    errors = sys.modules.get("napari_sam_lora.engine.errors")
    return errors is not None and isinstance(exc, errors.SamLoraError)


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
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug or not _is_expected(exc):
            raise
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
