"""The one training core: batches, forward, loss and the live training of an adapter.

Live learning (:func:`train_adapter`) and fine-tuning (:mod:`napari_sam_lora.finetune.loop`)
share :func:`make_batch` (examples with equal input shapes stacked on the device, targets
at the loss resolution), :func:`forward` (the decoder on a batch, logits at the targets'
size), :func:`batch_loss` (:func:`~napari_sam_lora.engine.learning.losses.multimask_loss` weighted
by
the :class:`LoraSettings`) and :func:`adapter_mode` (adapter active, train/eval mode, grads).

When a *new* adapter cannot fit the correction it was made for (it stopped on its plateau
or fail rule with an eval IoU below ``target_iou - ESCALATE_MARGIN``), the run escalates
capacity once: the adapter is re-made with :data:`ESCALATED_ADAPTER` (rank 16 on every
Linear of the two-way transformer and the hypernetwork MLPs) and trained again; the better
of the two is kept. A fit still far below the target is never a silent stop: the report
carries a ``warning``.

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
import warnings
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_sam_lora.engine.learning.adapters import (
    adapter_parameters,
    adapter_state,
    decoder_device,
    delete_adapter,
    freeze_except,
    inject_adapter,
    restore_adapter_state,
    use_adapter,
)
from napari_sam_lora.engine.learning.lora_settings import STRONG_TARGET_MODULES, LoraSettings
from napari_sam_lora.engine.learning.losses import (
    MultimaskLoss,
    chosen_mask_iou,
    multimask_loss,
    resize_mask,
)
from napari_sam_lora.engine.tracking.features import DecoderInputs

logger = logging.getLogger(__name__)

__all__ = [
    "ESCALATED_ADAPTER",
    "ESCALATE_MARGIN",
    "Batch",
    "Example",
    "TrainStep",
    "TrainingReport",
    "adapter_mode",
    "batch_key",
    "batch_loss",
    "escalated_settings",
    "forward",
    "make_batch",
    "make_batches",
    "train_adapter",
]

Example = tuple[DecoderInputs, np.ndarray]

#: A new adapter whose eval IoU on its correction stays below ``target_iou - ESCALATE_MARGIN``
#: is re-made with more capacity (see :func:`escalated_settings`).
ESCALATE_MARGIN = 0.25
#: The escalated adapter: the ``strong`` preset's shape (rank 16 on the 44 Linears of the
#: two-way transformer and hypernetwork MLPs), its step caps, no dropout.
ESCALATED_ADAPTER: dict[str, Any] = {
    "target_modules": STRONG_TARGET_MODULES,
    "rank": 16,
    "alpha": 16.0,
    "dropout": 0.0,
    "max_steps_new": 100,
    "plateau_patience": 25,
    "fail_step": 50,
}


#: The clock training time is measured with (only reported, and used by ``max_seconds``).
_clock = time.perf_counter


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
    ``escalation`` describes a capacity escalation (``""`` when none ran); ``rank`` and
    ``n_modules`` are the kept adapter's shape; ``warning`` is set when the kept adapter
    still fits its own correction far below the target (a message for the user).
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
    escalation: str = ""
    rank: int | None = None
    warning: str | None = None

    @property
    def escalated(self) -> bool:
        """Whether a capacity escalation ran (its adapter may or may not have been kept)."""
        return bool(self.escalation)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (history as lists of numbers)."""
        return asdict(self)


@dataclass
class Batch:
    """Examples sharing input shapes, stacked along the batch dimension.

    Attributes
    ----------
    kwargs : dict
        Keyword arguments of ``sam_mask_decoder`` (tensors on the training device).
    targets : torch.Tensor
        ``(B, 1, h, w)`` float targets at the loss resolution.
    size : int
        ``B``.
    has_newest : bool
        Whether item 0 is the newest correction (live learning's stop rules watch it).
    """

    kwargs: dict[str, Any]
    targets: torch.Tensor
    size: int
    has_newest: bool = False


def _clone(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A normal (not inference-mode) float copy of ``t`` on ``device``."""
    with torch.inference_mode(False):
        return t.detach().to(device).clone()


def _stack(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Concatenate along the batch dim on ``device`` (stored examples live on the CPU)."""
    return torch.cat([_clone(t, device) for t in tensors])


def loss_size(inputs: DecoderInputs, settings: LoraSettings) -> tuple[int, int]:
    """Resolution of the loss: the decoder's own ``4h × 4w`` logits, or the image size."""
    h, w = inputs.low_res_size
    return (h, w) if settings.loss_resolution == "low" else (4 * h, 4 * w)


def batch_key(inputs: DecoderInputs) -> tuple:
    """Examples with equal keys have equal input shapes and can share a batch."""
    return (
        tuple(inputs.image_embeddings.shape[1:]),
        tuple(inputs.sparse_prompt_embeddings.shape[1:]),
        inputs.multimask_output,
    )


def make_batch(
    items: Sequence[Example],
    settings: LoraSettings,
    device: torch.device,
    has_newest: bool = False,
) -> Batch:
    """One batch from ``(DecoderInputs, (H, W) mask)`` items of equal :func:`batch_key`.

    Inputs are stacked (as normal tensors, so inference-mode records can be trained on) on
    ``device``; targets are resized to the loss resolution of ``settings``.
    """
    first = items[0][0]
    size = loss_size(first, settings)
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
    return Batch(kwargs, targets, len(items), has_newest)


def make_batches(
    examples: Sequence[Example], settings: LoraSettings, device: torch.device
) -> list[Batch]:
    """Group examples by :func:`batch_key` into batches; the one holding ``examples[0]``
    has it first and ``has_newest`` set."""
    groups: dict[tuple, list[int]] = {}
    for i, (inputs, _) in enumerate(examples):
        groups.setdefault(batch_key(inputs), []).append(i)
    return [
        make_batch([examples[i] for i in indices], settings, device, 0 in indices)
        for indices in groups.values()
    ]


def forward(decoder: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the decoder on ``batch``: float mask logits at the targets' size, IoUs, object logits."""
    masks, ious, _, obj = decoder(**batch.kwargs)
    if masks.shape[-2:] != batch.targets.shape[-2:]:
        masks = F.interpolate(
            masks.float(), size=batch.targets.shape[-2:], mode="bilinear", align_corners=False
        )
    return masks.float(), ious.float(), obj.float()


def batch_loss(decoder: nn.Module, batch: Batch, settings: LoraSettings) -> MultimaskLoss:
    """:func:`forward` then the multimask loss weighted by ``settings``' loss weights."""
    return multimask_loss(*forward(decoder, batch), batch.targets, settings)


@contextmanager
def adapter_mode(decoder: nn.Module, name: str | None, train: bool) -> Iterator[None]:
    """Adapter ``name`` active (``None``: base model) and the decoder in train or eval mode.

    In train mode gradients are enabled (even inside ``torch.no_grad``/inference mode of
    the caller); in eval mode they are off. Mode and active adapter are restored after.
    """
    was_training = decoder.training
    decoder.train(train)
    try:
        grad = torch.enable_grad() if train else torch.no_grad()
        with use_adapter(decoder, name), torch.inference_mode(False), grad:
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


def _eval_iou(decoder: nn.Module, name: str, batch: Batch) -> float:
    """Eval-mode IoU of SAM2's pick on the newest example (index 0 of ``batch``)."""
    with adapter_mode(decoder, name, train=False):
        masks, ious, obj = forward(decoder, batch)
        return float(chosen_mask_iou(masks, ious, obj, batch.targets)[0])


def escalated_settings(settings: LoraSettings) -> LoraSettings | None:
    """The recipe a new adapter that cannot fit its correction is re-made with.

    ``None`` when there is nothing to escalate to: the recipe has no ``target_iou`` (LIT's
    reference recipe is reproduced as published) or already has the escalated shape.
    """
    if settings.target_iou is None:
        return None
    changes = dict(ESCALATED_ADAPTER)
    changes["max_steps_new"] = max(settings.max_steps_new, changes["max_steps_new"])
    bigger = settings.replace(**changes)
    if bigger.target_modules == settings.target_modules and bigger.rank <= settings.rank:
        return None
    return bigger


def escalation_iou(settings: LoraSettings) -> float | None:
    """Eval IoU on its own correction below which a fit counts as failed (``None``: never)."""
    if settings.target_iou is None:
        return None
    return max(0.0, settings.target_iou - ESCALATE_MARGIN)


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
        As ``StopIteration.value`` (see :func:`napari_sam_lora.engine.core.jobs.drain`).
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
    return _train_escalating(decoder, adapter_name, list(examples), settings, fine_tune)


def _train_escalating(
    decoder: nn.Module,
    name: str,
    examples: list[Example],
    settings: LoraSettings,
    fine_tune: bool,
) -> Generator[TrainStep, None, TrainingReport]:
    """:func:`_train`, then, for a new adapter that failed to fit, once more with more capacity."""
    config = decoder.peft_config[name]
    start = adapter_state(decoder, name)
    report = yield from _train(decoder, name, examples, settings, fine_tune)
    report.rank = int(config.r)
    floor = escalation_iou(settings)
    if floor is None or report.final_iou >= floor:
        return report
    capped = report.stop_reason in ("max_steps", "max_seconds")  # the caller's budget is spent
    bigger = None if fine_tune or capped else escalated_settings(settings)
    if bigger is None:
        report.warning = _fit_warning(report, floor, "")
        return report
    kept = adapter_state(decoder, name)
    _reinject(decoder, name, bigger)
    finished = False
    try:
        offset = report.steps, report.seconds
        second = yield from _train(decoder, name, examples, bigger, False, offset)
        finished = True
    finally:
        if not finished:  # cancelled: the adapter as it was before the whole run
            _reinject(decoder, name, settings, start)
    what = f"rank {bigger.rank} on {len(_modules(decoder, name))} modules"
    if second.final_iou > report.final_iou:
        second.escalation = f"{what}: IoU {report.final_iou:.2f} -> {second.final_iou:.2f}"
        second.history = report.history + second.history
        second.rank = bigger.rank
        result = second
    else:
        _reinject(decoder, name, settings, kept)
        report.escalation = (
            f"{what} did not fit better (IoU {second.final_iou:.2f}); kept rank {report.rank}"
        )
        report.history += second.history
        report.steps, report.seconds = second.steps, second.seconds
        result = report
    if result.final_iou < floor:
        result.warning = _fit_warning(result, floor, what)
    logger.info("Escalated %s: %s", name, result.escalation)
    return result


def _modules(decoder: nn.Module, name: str) -> list[str]:
    from napari_sam_lora.engine.learning.adapters import matching_modules

    return matching_modules(decoder, decoder.peft_config[name].target_modules)


def _reinject(
    decoder: nn.Module,
    name: str,
    settings: LoraSettings,
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Replace adapter ``name`` by a fresh one of ``settings``' shape (with ``state``)."""
    with warnings.catch_warnings():  # peft warns when the deleted adapter was its active one
        warnings.filterwarnings("ignore", message=".*was active which is now deleted")
        delete_adapter(decoder, name)
    inject_adapter(decoder, name, settings)
    if state is not None:
        restore_adapter_state(decoder, name, state)


def _fit_warning(report: TrainingReport, floor: float, escalated: str) -> str:
    tried = f" even after escalating to {escalated}" if escalated else ""
    return (
        f"the adapter could not fit this correction{tried}: IoU {report.final_iou:.2f} on the "
        f"corrected frame (wanted >= {floor:.2f}; stopped: {report.stop_reason}). Its proposals "
        "for this object will be unreliable: correct another frame, or try the 'strong' preset."
    )


def _train(
    decoder: nn.Module,
    name: str,
    examples: list[Example],
    settings: LoraSettings,
    fine_tune: bool,
    offset: tuple[int, float] = (0, 0.0),
) -> Generator[TrainStep, None, TrainingReport]:
    batches = make_batches(examples, settings, decoder_device(decoder))
    newest = next(b for b in batches if b.has_newest)
    total = sum(b.size for b in batches)
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
            tic = _clock()
            with adapter_mode(decoder, name, train=True):
                optimizer.zero_grad(set_to_none=True)
                loss, iou = 0.0, math.nan
                for batch in batches:
                    out = batch_loss(decoder, batch, settings)
                    (out.loss * (batch.size / total)).backward()
                    loss += out.loss.item() * batch.size / total
                    if batch.has_newest:
                        iou = float(out.chosen_iou[0])
                if settings.restore_best and iou > max((h.iou for h in history), default=-1):
                    best_state = adapter_state(decoder, name)
                optimizer.step()
            seconds += _clock() - tic
            step = TrainStep(offset[0] + len(history) + 1, loss, iou, offset[1] + seconds)
            history.append(step)
            reason = stopper.update(len(history), iou, seconds)
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
        steps=offset[0] + len(history),
        seconds=offset[1] + seconds,
        final_loss=history[-1].loss,
        best_iou=max(s.iou for s in history),
        best_step=offset[0] + int(np.argmax([s.iou for s in history])) + 1,
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
    decoder: nn.Module, name: str, newest: Batch, best_state: dict[str, torch.Tensor] | None
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
