"""The optimisation loop over recorded examples: batches, steps, validation, checkpoints.

One epoch visits every training example once in shuffled batches (examples are grouped by
prompt shape so they can be stacked; the order depends only on the seed and the epoch, so
a resumed run sees the same batches). Train mode (LoRA dropout on) for the steps, eval mode
for validation. Batches, the forward pass and the loss are the live learner's own
(:mod:`napari_sam_lora.engine.learning.training`: one training core): the best of SAM2's masks
against
the target (focal + dice) plus predicted-IoU and object-score terms, weighted by the
``lora`` settings.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_sam_lora.engine.core.atomic import write_files
from napari_sam_lora.engine.learning import training
from napari_sam_lora.engine.learning.adapters import adapter_state, decoder_device
from napari_sam_lora.engine.learning.lora_settings import LoraSettings
from napari_sam_lora.finetune.events import Progress
from napari_sam_lora.finetune.store import ExampleSet

__all__ = [
    "Batch",
    "epoch_batches",
    "evaluate_set",
    "load_checkpoint",
    "lr_at",
    "make_batch",
    "save_checkpoint",
    "snapshot",
    "steps_per_epoch",
    "train_step",
]

Batch = training.Batch
CHECKPOINT_VERSION = 1


def _groups(examples: ExampleSet) -> dict[tuple[int, bool], list[int]]:
    groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
    for i in range(len(examples)):
        groups[examples.group_key(i)].append(i)
    return dict(sorted(groups.items()))


def steps_per_epoch(examples: ExampleSet, batch_size: int) -> int:
    """Batches in one epoch."""
    return sum(math.ceil(len(g) / batch_size) for g in _groups(examples).values())


def epoch_batches(
    examples: ExampleSet, batch_size: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[int]]:
    """Example indices per batch for ``epoch`` (deterministic given the seed and epoch)."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    batches = []
    for indices in _groups(examples).values():
        order = rng.permutation(indices) if shuffle else np.asarray(indices)
        batches += [order[k : k + batch_size].tolist() for k in range(0, len(order), batch_size)]
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def make_batch(
    examples: ExampleSet, indices: Sequence[int], settings: LoraSettings, device: torch.device
) -> Batch:
    """Decoder kwargs with the examples stacked on ``device``, and targets at loss size."""
    return training.make_batch([examples.get(i) for i in indices], settings, device)


def lr_at(step: int, total: int, base: float, schedule: str) -> float:
    """Learning rate of step ``step`` (0-based) out of ``total``."""
    if schedule == "constant" or total <= 1:
        return base
    return base * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def train_step(
    decoder: nn.Module,
    name: str,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    settings: LoraSettings,
    lr: float,
    updating: list[bool],
) -> tuple[float, float, int]:
    """One AdamW step on ``batch``; returns (loss, summed IoU of SAM2's picks, batch size).

    ``settings`` weigh the loss terms. ``updating[0]`` is True while the optimiser changes
    the weights (an interruption then leaves them half-updated: no checkpoint should be
    written from that state).
    """
    with training.adapter_mode(decoder, name, train=True):
        optimizer.zero_grad(set_to_none=True)
        out = training.batch_loss(decoder, batch, settings)
        out.loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = lr
        updating[0] = True
        optimizer.step()
        updating[0] = False
    return float(out.loss.item()), float(out.chosen_iou.sum()), batch.size


def evaluate_set(
    decoder: nn.Module,
    name: str | None,
    examples: ExampleSet,
    settings: LoraSettings,
    batch_size: int,
    epoch: int = 0,
) -> Generator[Progress, None, tuple[float, float]]:
    """Mean loss and mean IoU of SAM2's pick over ``examples`` in eval mode; yields per batch.

    ``name`` ``None`` evaluates the base model; ``epoch`` only labels the progress.
    """
    device = decoder_device(decoder)
    loss_sum, iou_sum, n = 0.0, 0.0, 0
    batches = epoch_batches(examples, batch_size, 0, 0, shuffle=False)
    for k, indices in enumerate(batches):
        batch = make_batch(examples, indices, settings, device)
        with training.adapter_mode(decoder, name, train=False):
            out = training.batch_loss(decoder, batch, settings)
        loss_sum += float(out.loss) * len(indices)
        iou_sum += float(out.chosen_iou.sum())
        n += len(indices)
        yield Progress("validate", k + 1, len(batches), f"validating epoch {epoch}")
    return loss_sum / n, iou_sum / n


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write ``state`` atomically with ``torch.save`` (tensors, numbers, strings, lists).

    Raises
    ------
    WriteError
        Naming ``path`` (disk full, read-only folder); the previous checkpoint stays and no
        temporary file is left.
    """
    payload = {"version": CHECKPOINT_VERSION, **state}
    write_files({path: lambda temp: torch.save(payload, temp)})


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or ``None`` when there is none."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != CHECKPOINT_VERSION:
        return None
    return dict(state)


def snapshot(decoder: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """CPU copies of the adapter's tensors."""
    return {k: v.cpu() for k, v in adapter_state(decoder, name).items()}
