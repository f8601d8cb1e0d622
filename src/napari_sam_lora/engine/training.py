"""Train one LoRA adapter on recorded decoder inputs, as a cancellable generator.

``train_adapter`` yields a :class:`TrainStep` after every optimisation step and returns a
:class:`TrainingReport` (``StopIteration.value``; ``engine.jobs.drain`` collects it). Closing
the generator before it finishes restores the adapter's weights to what they were before
the run. Between yields the decoder is left as the caller had it (mode, active adapter,
grad mode), so the generator can be driven from a worker thread step by step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_sam_lora.engine.adapters import (
    adapter_parameters,
    adapter_state,
    decoder_device,
    freeze_except,
    restore_adapter_state,
    use_adapter,
)
from napari_sam_lora.engine.features import DecoderInputs
from napari_sam_lora.engine.lora_settings import LoraSettings
from napari_sam_lora.engine.losses import LossWeights, chosen_mask_iou, multimask_loss, resize_mask

logger = logging.getLogger(__name__)

Example = tuple[DecoderInputs, np.ndarray]


@dataclass(frozen=True)
class TrainStep:
    """Progress after one optimisation step.

    Attributes
    ----------
    step : int
        1-based step number.
    loss : float
        Loss of the step (mean over the batch).
    iou : float
        IoU of the mask SAM2 would pick on the newest correction (train mode, before the
        step's update).
    seconds : float
        Training compute time since the start of the run.
    """

    step: int
    loss: float
    iou: float
    seconds: float


@dataclass
class TrainingReport:
    """Summary of a finished run.

    ``stop_reason`` is one of ``target_reached``, ``plateau``, ``failed``, ``max_steps``,
    ``max_seconds``. ``final_iou`` is measured in eval mode (no dropout) on the newest
    correction with the weights kept; ``best_iou``/``best_step`` come from training steps.
    """

    adapter_name: str
    fine_tune: bool
    steps: int
    seconds: float
    final_loss: float
    best_iou: float
    best_step: int
    final_iou: float
    stop_reason: str
    n_examples: int
    history: list[TrainStep] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (history as lists of numbers)."""
        return asdict(self)


@dataclass
class _Batch:
    """Examples sharing input shapes, stacked along the batch dimension."""

    kwargs: dict[str, Any]
    targets: torch.Tensor
    size: int
    has_newest: bool


def _clone(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A normal (not inference-mode) copy of ``t`` on ``device``."""
    with torch.inference_mode(False):
        return t.detach().to(device).clone()


def _stack(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Concatenate along the batch dim on ``device`` (replay entries live on the CPU)."""
    return torch.cat([_clone(t, device) for t in tensors])


def _make_batch(
    items: list[Example], has_newest: bool, settings: LoraSettings, device: torch.device
) -> _Batch:
    """One batch: inputs stacked on ``device``, targets resized to the loss resolution."""
    first = items[0][0]
    h, w = first.low_res_size
    size = (h, w) if settings.loss_resolution == "low" else (4 * h, 4 * w)
    inputs = [inp for inp, _ in items]
    kwargs = {
        "image_embeddings": _stack([x.image_embeddings for x in inputs], device),
        "image_pe": _clone(first.image_pe, device),
        "sparse_prompt_embeddings": _stack([x.sparse_prompt_embeddings for x in inputs], device),
        "dense_prompt_embeddings": _stack([x.dense_prompt_embeddings for x in inputs], device),
        "multimask_output": first.multimask_output,
        "repeat_image": False,
        "high_res_features": [
            _stack([x.high_res_features[k] for x in inputs], device)
            for k in range(len(first.high_res_features))
        ],
    }
    targets = torch.stack([resize_mask(t, size) for _, t in items])[:, None].to(device)
    return _Batch(kwargs, targets, len(items), has_newest)


def _make_batches(
    examples: Sequence[Example], settings: LoraSettings, device: torch.device
) -> list[_Batch]:
    """Group examples with equal input shapes into batches (targets at the loss resolution)."""
    groups: dict[tuple, list[int]] = {}
    for i, (inputs, _) in enumerate(examples):
        key = (
            tuple(inputs.image_embeddings.shape[1:]),
            tuple(inputs.sparse_prompt_embeddings.shape[1:]),
            inputs.multimask_output,
        )
        groups.setdefault(key, []).append(i)
    return [
        _make_batch([examples[i] for i in indices], 0 in indices, settings, device)
        for indices in groups.values()
    ]


def _forward(decoder: nn.Module, batch: _Batch) -> tuple[torch.Tensor, ...]:
    masks, ious, _, obj = decoder(**batch.kwargs)
    if masks.shape[-2:] != batch.targets.shape[-2:]:
        masks = F.interpolate(
            masks.float(), size=batch.targets.shape[-2:], mode="bilinear", align_corners=False
        )
    return masks.float(), ious.float(), obj.float()


@contextmanager
def _training_state(decoder: nn.Module, name: str, train: bool) -> Iterator[None]:
    """Adapter ``name`` active, decoder in train/eval mode, grads on; all restored after."""
    was_training = decoder.training
    decoder.train(train)
    try:
        with use_adapter(decoder, name), torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        decoder.train(was_training)


class _Stopper:
    """Early-stop and cap rules of a :class:`LoraSettings`."""

    def __init__(self, settings: LoraSettings, max_steps: int) -> None:
        self.s = settings
        self.max_steps = max_steps
        self.streak = 0
        self.best = -math.inf
        self.reference = -math.inf
        self.since_best = 0

    def update(self, step: int, iou: float, seconds: float) -> str | None:
        """Record one step's IoU; return the stop reason, or ``None`` to go on."""
        s = self.s
        self.streak = self.streak + 1 if s.target_iou is not None and iou >= s.target_iou else 0
        self.best = max(self.best, iou)
        if iou > self.reference + s.min_improvement:
            self.reference, self.since_best = iou, 0
        else:
            self.since_best += 1
        if s.target_iou is not None and self.streak >= s.patience:
            return "target_reached"
        if (
            s.plateau_patience is not None
            and self.best > s.plateau_min_iou
            and self.since_best >= s.plateau_patience
        ):
            return "plateau"
        if s.fail_iou is not None and step >= s.fail_step and self.best < s.fail_iou:
            return "failed"
        if step >= self.max_steps:
            return "max_steps"
        if s.max_seconds is not None and seconds >= s.max_seconds:
            return "max_seconds"
        return None


def _eval_iou(decoder: nn.Module, name: str, batch: _Batch) -> float:
    """Eval-mode IoU of SAM2's pick on the newest example (index 0 of ``batch``)."""
    with _training_state(decoder, name, train=False), torch.no_grad():
        masks, ious, obj = _forward(decoder, batch)
        return float(chosen_mask_iou(masks, ious, obj, batch.targets)[0])


def train_adapter(
    decoder: nn.Module,
    adapter_name: str,
    examples: Sequence[Example],
    settings: LoraSettings,
    *,
    fine_tune: bool = False,
) -> Generator[TrainStep, None, TrainingReport]:
    """Train adapter ``adapter_name`` of ``decoder`` on ``examples``.

    Parameters
    ----------
    decoder : nn.Module
        ``sam_mask_decoder`` with the adapter injected (see ``adapters.inject_adapter``).
    adapter_name : str
        Adapter to train; only its LoRA weights get gradients (AdamW).
    examples : sequence of (DecoderInputs, np.ndarray)
        Recorded decoder inputs and ``(H, W)`` boolean target masks, the newest correction
        first (its IoU drives early stopping); the rest are replayed in the same batch.
    settings : LoraSettings
        Learning rates, caps, stop rules, loss weights and resolution.
    fine_tune : bool
        Use ``lr_finetune``/``max_steps_finetune`` instead of the new-adapter values.

    Yields
    ------
    TrainStep
        After every optimisation step. Close the generator to cancel: the adapter's
        weights are then restored to their state before the run.

    Returns
    -------
    TrainingReport
        As ``StopIteration.value`` (see :func:`napari_sam_lora.engine.jobs.drain`).
    """
    if not examples:
        raise ValueError("train_adapter needs at least one (inputs, target mask) example.")
    for inputs, target in examples:
        if inputs.image_embeddings.shape[0] != 1 or np.ndim(target) != 2:
            raise ValueError(
                "Each example must be (DecoderInputs of one object, (H, W) mask); got inputs "
                f"of batch {inputs.image_embeddings.shape[0]} and a mask of shape "
                f"{np.shape(target)}."
            )
    adapter_parameters(decoder, adapter_name)  # raises AdapterError when unknown
    return _train(decoder, adapter_name, list(examples), settings, fine_tune)


def _train(
    decoder: nn.Module,
    name: str,
    examples: list[Example],
    settings: LoraSettings,
    fine_tune: bool,
) -> Generator[TrainStep, None, TrainingReport]:
    batches = _make_batches(examples, settings, decoder_device(decoder))
    newest = next(b for b in batches if b.has_newest)
    total = sum(b.size for b in batches)
    weights = LossWeights.from_settings(settings)
    start_state = adapter_state(decoder, name)
    lr = settings.lr_finetune if fine_tune else settings.lr_new
    stopper = _Stopper(
        settings, settings.max_steps_finetune if fine_tune else settings.max_steps_new
    )
    optimizer = torch.optim.AdamW(
        freeze_except(decoder, name), lr=lr, weight_decay=settings.weight_decay
    )
    history: list[TrainStep] = []
    best_state, seconds, reason, completed = None, 0.0, None, False
    try:
        while reason is None:
            tic = time.perf_counter()
            with _training_state(decoder, name, train=True):
                optimizer.zero_grad(set_to_none=True)
                loss, iou = 0.0, math.nan
                for batch in batches:
                    out = multimask_loss(*_forward(decoder, batch), batch.targets, weights)
                    (out.loss * (batch.size / total)).backward()
                    loss += out.loss.item() * batch.size / total
                    if batch.has_newest:
                        iou = float(out.chosen_iou[0])
                if settings.restore_best and iou > max((h.iou for h in history), default=-1):
                    best_state = adapter_state(decoder, name)
                optimizer.step()
            seconds += time.perf_counter() - tic
            step = TrainStep(len(history) + 1, loss, iou, seconds)
            history.append(step)
            reason = stopper.update(step.step, iou, seconds)
            yield step
        final_iou = _keep_better(decoder, name, newest, best_state)
        completed = True
    finally:
        freeze_except(decoder, None)
        if not completed:
            restore_adapter_state(decoder, name, start_state)
            logger.info("Training of %s cancelled; weights restored", name)
    report = TrainingReport(
        adapter_name=name,
        fine_tune=fine_tune,
        steps=len(history),
        seconds=seconds,
        final_loss=history[-1].loss,
        best_iou=max(s.iou for s in history),
        best_step=int(np.argmax([s.iou for s in history])) + 1,
        final_iou=final_iou,
        stop_reason=str(reason),
        n_examples=total,
        history=history,
    )
    logger.info(
        "Trained %s: %d steps, %.2f s, IoU %.3f (%s)",
        name,
        report.steps,
        seconds,
        final_iou,
        reason,
    )
    return report


def _keep_better(
    decoder: nn.Module, name: str, newest: _Batch, best_state: dict[str, torch.Tensor] | None
) -> float:
    """Keep the final or the best-step weights, whichever has the higher eval-mode IoU."""
    final_iou = _eval_iou(decoder, name, newest)
    if best_state is None:
        return final_iou
    final_state = adapter_state(decoder, name)
    restore_adapter_state(decoder, name, best_state)
    best_iou = _eval_iou(decoder, name, newest)
    if best_iou > final_iou:
        return best_iou
    restore_adapter_state(decoder, name, final_state)
    return final_iou
