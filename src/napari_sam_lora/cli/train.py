"""``napari-sam-lora train CONFIG.yaml``: config-driven LoRA fine-tuning.

A damaged, truncated or foreign ``checkpoint.pt`` in the output folder is reported before
the model loads, with the advice to use ``--restart``; a read-only or full output folder is
reported before training (the writes are atomic, nothing is left half-written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_sam_lora.cli.check_data import CONFIG_HELP, load_cli_config

__all__ = ["add_parser", "run"]


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


def run(args: argparse.Namespace) -> int:
    """Train, printing the modules, per-epoch metrics and the diagnosis; exit code 0."""
    from napari_sam_lora.finetune.trainer import train

    config = load_cli_config(args)
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
        steps.close()  # writes the checkpoint when training had started
        bars.close()
        print(f"interrupted: {_left_behind(config.output)}", file=sys.stderr)
        raise
    finally:
        bars.close()
    _summary(result)
    return 0


def _left_behind(output: Path) -> str:
    """What an interrupted run leaves in ``output`` (only what really exists)."""
    adapter = (output / "adapter.safetensors").is_file()
    checkpoint = (output / "checkpoint.pt").is_file()
    if adapter and checkpoint:
        return (
            f"the best adapter so far and a checkpoint are in {output}; run the same "
            "command again to resume"
        )
    if checkpoint:
        return f"a checkpoint is in {output} (no adapter yet); run the same command to resume"
    if adapter:
        return f"the best adapter so far is in {output}"
    return (
        "nothing was saved yet (training had not started); recorded examples are reused "
        "when complete, so run the same command again"
    )


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


def add_parser(subparsers: Any) -> None:
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
    parser.set_defaults(handler=run)
