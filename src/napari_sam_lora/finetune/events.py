"""What the fine-tuning generators yield: progress per stage, and metrics per epoch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["STAGES", "EpochMetrics", "Progress"]

#: Stages in the order a training run goes through them.
STAGES = ("check", "load", "inject", "record", "validate", "train", "diagnose", "done")


@dataclass(frozen=True)
class EpochMetrics:
    """Losses and IoUs after one epoch (epoch 0: the base model, before any step).

    ``train_*`` are means over the epoch's steps (train mode, before each update; NaN for
    epoch 0); ``val_*`` are measured on the whole validation set in eval mode. The IoU is
    that of the mask SAM2 would output (highest predicted IoU, object-score gated).
    """

    epoch: int
    step: int
    train_loss: float
    train_iou: float
    val_loss: float
    val_iou: float
    lr: float
    seconds: float
    best: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (NaN kept as float)."""
        return asdict(self)

    def describe(self) -> str:
        """One line for logs and the widget."""
        train = (
            ""
            if math.isnan(self.train_loss)
            else f"train loss {self.train_loss:.4f} IoU {self.train_iou:.3f}, "
        )
        mark = " (best)" if self.best else ""
        return (
            f"epoch {self.epoch}: {train}val loss {self.val_loss:.4f} IoU {self.val_iou:.3f}{mark}"
        )


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Attributes
    ----------
    stage : str
        One of :data:`STAGES`.
    done, total : int
        Units done and expected in this stage (frames, steps, examples...).
    message : str
        What is happening, for a status line.
    epoch : EpochMetrics or None
        Set on the report that closes an epoch (and on the epoch-0 validation).
    """

    stage: str
    done: int
    total: int
    message: str = ""
    epoch: EpochMetrics | None = None
