"""``napari-sam-lora check-data CONFIG.yaml``: report on a fine-tuning config's data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_HELP", "add_parser", "load_cli_config", "run"]

CONFIG_HELP = (
    "fine-tuning config (YAML): data pairs or a folder of pairs, split, model, LoRA preset "
    "and overrides, training, early stopping, output folder; see "
    "configs/finetune/example.yaml. Relative paths are relative to the config file"
)


def load_cli_config(args: argparse.Namespace) -> Any:
    """The config named on the command line, with --output and --restart applied."""
    from napari_sam_lora.finetune.config import load_config

    overrides: dict[str, Any] = {}
    if getattr(args, "output", None):
        overrides["output"] = str(Path(args.output).resolve())
    if getattr(args, "restart", False):
        overrides["resume"] = False
    return load_config(args.config, **overrides)


def run(args: argparse.Namespace) -> int:
    """Print the data report; exit code 1 when it finds problems."""
    from napari_sam_lora.finetune.data_check import check_data

    report = check_data(load_cli_config(args))
    print(report.format())
    if args.json:
        from napari_sam_lora.engine.core.atomic import write_files

        write_files({Path(args.json): json.dumps(report.to_dict(), indent=2) + "\n"})
    return 0 if report.ok else 1


def add_parser(subparsers: Any) -> None:
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
    parser.set_defaults(handler=run)
