"""Per-epoch metrics of a fine-tuning run: ``metrics.csv`` and ``metrics.png``."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from napari_sam_lora.finetune.events import EpochMetrics

__all__ = ["plot_metrics", "read_metrics_csv", "write_metrics_csv"]

logger = logging.getLogger(__name__)

COLUMNS = tuple(f.name for f in fields(EpochMetrics))


def write_metrics_csv(rows: Sequence[EpochMetrics], path: str | Path) -> Path:
    """Write one line per epoch (epoch 0 = base model) to ``path``; returns it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_cell(getattr(row, c)) for c in COLUMNS])
    tmp.replace(path)
    return path


def _cell(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return int(value) if isinstance(value, bool) else value


def read_metrics_csv(path: str | Path) -> list[EpochMetrics]:
    """Rows written by :func:`write_metrics_csv`."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        out = []
        for rec in csv.DictReader(handle):
            values = {}
            for f in fields(EpochMetrics):
                text = rec[f.name]
                if f.type == "int":
                    values[f.name] = int(text)
                elif f.type == "bool":
                    values[f.name] = text == "1"
                else:
                    values[f.name] = float(text) if text else math.nan
            out.append(EpochMetrics(**values))
    return out


def plot_metrics(rows: Sequence[EpochMetrics], path: str | Path, title: str = "") -> Path | None:
    """Draw loss and IoU per epoch (train and validation) to a PNG with matplotlib (Agg).

    Returns ``None`` (and logs a warning) when matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        logger.warning("matplotlib is not installed: %s not drawn", path)
        return None
    path = Path(path)
    fig = Figure(figsize=(9, 3.6), dpi=100)
    epochs = [r.epoch for r in rows]
    for k, (metric, label) in enumerate((("loss", "loss"), ("iou", "IoU of SAM2's mask"))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.plot(epochs, [getattr(r, f"val_{metric}") for r in rows], "o-", label="validation")
        train = [(r.epoch, getattr(r, f"train_{metric}")) for r in rows if r.epoch > 0]
        if train:
            ax.plot(*zip(*train, strict=True), "s--", label="train (during epoch)")
        best = [r for r in rows if r.best]
        if best:
            ax.axvline(best[-1].epoch, color="grey", lw=0.8, ls=":", label="best (kept)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (0 = base model)")
        ax.set_ylabel(label)
        if metric == "iou":
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path
