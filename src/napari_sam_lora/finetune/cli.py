"""``napari-sam-lora train CONFIG.yaml`` and ``napari-sam-lora check-data CONFIG.yaml``.

Register with ``add_train(subparsers)`` and ``add_check_data(subparsers)`` in the main
command line (:mod:`napari_sam_lora.cli`). Handlers return exit codes; expected errors
(bad config, data problems, a target pattern matching nothing...) are raised as
``ValueError``/``SamLoraError`` for the main command line to print as one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_check_data", "add_train", "run_check_data", "run_train"]

CONFIG_HELP = (
    "fine-tuning config (YAML): data pairs or a folder of pairs, split, model, LoRA preset "
    "and overrides, training, early stopping, output folder; see "
    "configs/finetune/example.yaml. Relative paths are relative to the config file"
)


def _config(args: argparse.Namespace) -> Any:
    from napari_sam_lora.finetune.config import load_config

    overrides: dict[str, Any] = {}
    if getattr(args, "output", None):
        overrides["output"] = str(Path(args.output).resolve())
    if getattr(args, "restart", False):
        overrides["resume"] = False
    return load_config(args.config, **overrides)


# --------------------------------------------------------------------------- check-data


def run_check_data(args: argparse.Namespace) -> int:
    """Print the data report; exit code 1 when it finds problems."""
    from napari_sam_lora.finetune.data_check import check_data

    report = check_data(_config(args))
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n", "utf-8")
    return 0 if report.ok else 1


def add_check_data(subparsers: Any) -> None:
    """Add ``check-data`` to the main command line's subparsers."""
    parser = subparsers.add_parser(
        "check-data",
        help="check the annotated stacks of a fine-tuning config (exit 1 on problems)",
        description=(
            "Read every image/label stack the config names and report counts, shapes, "
            "dtypes, intensity ranges, annotated frames, frames with no labels, label-id "
            "statistics, image/label mismatches and the train/validation split. Exits 1 "
            "when there are problems that would stop training."
        ),
    )
    parser.add_argument("config", metavar="CONFIG.yaml", help=CONFIG_HELP)
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    parser.set_defaults(handler=run_check_data)


# --------------------------------------------------------------------------- train


class _Bars:
    """One tqdm bar per stage, on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar, self.stage = enabled, None, None

    def update(self, progress: Any) -> None:
        from tqdm.auto import tqdm

        if progress.stage != self.stage:
            self.close()
            self.stage = progress.stage
            self.bar = tqdm(
                total=progress.total, desc=progress.stage, disable=not self.enabled, leave=False
            )
        bar = self.bar
        if bar.total != progress.total:
            bar.total = progress.total
        bar.n = progress.done
        bar.set_postfix_str(progress.message[:60], refresh=False)
        bar.refresh()

    def write(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_train(args: argparse.Namespace) -> int:
    """Train, printing the modules, per-epoch metrics and the diagnosis; exit code 0."""
    from napari_sam_lora.finetune.trainer import train

    config = _config(args)
    bars = _Bars(not args.no_progress)
    steps = train(config)
    try:
        while True:
            try:
                progress = next(steps)
            except StopIteration as stop:
                result = stop.value
                break
            if (
                progress.stage == "inject"
                or (progress.epoch is not None)
                or (progress.stage == "train" and progress.message.startswith("resumed"))
            ):
                bars.write(progress.message)
            bars.update(progress)
    except KeyboardInterrupt:
        steps.close()  # writes the checkpoint
        bars.close()
        print(
            f"interrupted: the best adapter so far and a checkpoint are in {config.output}; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        raise
    finally:
        bars.close()
    _summary(result)
    return 0


def _summary(result: Any) -> None:
    base = result.history[0]
    best = next((r for r in result.history if r.epoch == result.best_epoch), None)
    print(
        f"{result.steps} steps ({result.train_seconds:.1f} s training, "
        f"{result.record_seconds:.1f} s recording examples), stopped: {result.stop_reason}"
    )
    counts = {split: sum(c.values()) for split, c in result.examples.items()}
    print(f"examples: {counts['train']} train, {counts['val']} validation ({result.examples})")
    if best is not None:
        print(
            f"best epoch {best.epoch}: validation loss {base.val_loss:.4f} -> {best.val_loss:.4f}, "
            f"IoU {base.val_iou:.3f} -> {best.val_iou:.3f} (epoch 0 = base model)"
        )
    if result.adapter_path is not None:
        print(f"adapter: {result.adapter_path} (+ .json)")
    else:
        print("no adapter saved: no epoch finished")
    if result.diagnosis is not None:
        print(result.diagnosis.summary().splitlines()[0])
    for warning in result.warnings:
        print(f"WARNING: {warning}")
    print(
        f"wrote metrics.csv, metrics.png, diagnosis.json, diagnosis.md, checkpoint.pt to "
        f"{result.output}"
    )


def add_train(subparsers: Any) -> None:
    """Add ``train`` to the main command line's subparsers."""
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a LoRA adapter on annotated stacks from a YAML config",
        description=(
            "Check the data, record SAM2's decoder inputs while tracking each annotated "
            "object (and with point/box prompts sampled from the labels), train a LoRA "
            "adapter on them with per-epoch validation, keep the best-validation adapter as "
            "<output>/adapter.safetensors + .json (the live-adapter format), write "
            "metrics.csv/png and a diagnosis. Interrupted runs resume from the checkpoint."
        ),
    )
    parser.add_argument("config", metavar="CONFIG.yaml", help=CONFIG_HELP)
    parser.add_argument("--output", metavar="DIR", help="output folder (overrides the config)")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="ignore a checkpoint in the output folder and start over (resume: false)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(handler=run_train)
