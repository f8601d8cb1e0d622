"""Adapter pools: LIT's new-vs-fine-tune rule and a bounded replay buffer.

A pool belongs to one object (the learner's ``scope="object"``) or is shared by every
object of the stack (``scope="class"``: :data:`SHARED_POOL_ID`); the rule, the replay and
the calibrator are the same either way.

Adapters are ranked by the model's own confidence (predicted IoU × object score), never
by ground truth. Each pool also holds the object's
:class:`~napari_sam_lora.engine.learning.calibration.OnlineCalibrator`: every correction, before
training, reveals the true IoU of what each adapter would have proposed on that frame
(:meth:`AdapterPool.plan` observes those pairs), and :meth:`AdapterPool.estimate_ious`
turns raw scores into estimated IoUs.

The raw score the calibrator maps is :func:`raw_score`: the proposal's agreement (IoU)
with the object's mask on the nearest frame the user confirmed, or the model's confidence
when there is no such frame.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from napari_sam_lora.engine.learning.adapters import (
    InjectionReport,
    Proposal,
    cpu_copy,
    delete_adapter,
    inject_adapter,
    propose,
)
from napari_sam_lora.engine.learning.calibration import OnlineCalibrator
from napari_sam_lora.engine.learning.lora_settings import LoraSettings
from napari_sam_lora.engine.learning.losses import logits_iou
from napari_sam_lora.engine.tracking.features import DecoderInputs

#: The id of a class-scope learner's shared pool: label 0 is the background, never an object.
SHARED_POOL_ID = 0


@dataclass
class ReplayEntry:
    """A past correction kept for fine-tuning: CPU inputs, target mask, adapter trained."""

    adapter_name: str
    inputs: DecoderInputs
    target: np.ndarray


@dataclass
class CorrectionPlan:
    """What :meth:`AdapterPool.plan` decided for one correction.

    ``examples`` (newest first) is what to pass to ``train_adapter``; ``fine_tune`` selects
    the fine-tuning learning rate and step cap; ``ious`` are each adapter's IoU on the
    correction (used only for the new-adapter rule), ``proposals`` their proposals.
    ``obj_id`` is the pool's (:data:`SHARED_POOL_ID` for a shared pool).
    """

    obj_id: int
    adapter_name: str
    is_new: bool
    fine_tune: bool
    reason: str
    examples: list[tuple[DecoderInputs, np.ndarray]]
    proposals: dict[str, Proposal] = field(default_factory=dict)
    ious: dict[str, float] = field(default_factory=dict)


def raw_score(proposal: Proposal, reference: np.ndarray | None) -> float:
    """The score the calibrator maps to an estimated IoU.

    With a ``reference`` (the object's confirmed mask on the nearest other frame), the IoU
    between the proposal and it: objects change little between neighbouring frames, so a
    proposal far from what the user confirmed next door is unlikely to be right (two empty
    masks agree fully). Without one, the model's confidence.
    """
    if reference is None:
        return float(proposal.confidence)
    return logits_iou(proposal.logits, reference)


class AdapterPool:
    """The adapters of one object, or of every object (at most
    ``settings.max_adapters_per_object`` either way).

    LIT's rule: a correction on which *every* adapter's IoU is ``<= new_adapter_iou``
    starts a new adapter (while there is room); otherwise the adapter the model itself is
    most confident in (predicted IoU × object score; never ground truth) is fine-tuned on
    the correction plus its replay entries. Flow: ``plan`` → ``begin`` → ``train_adapter``
    → ``commit`` (or ``abort`` when cancelled).

    Parameters
    ----------
    obj_id : int
        The object, or :data:`SHARED_POOL_ID` for a pool every object shares (its
        adapters are named ``<prefix>class_a<k>``, and it belongs to no object).
    settings : LoraSettings
        Pool size, replay size, new-adapter rule.
    prefix : str
        The owning learner's namespace on a shared decoder.
    """

    def __init__(self, obj_id: int, settings: LoraSettings, prefix: str = "") -> None:
        self.obj_id = int(obj_id)
        self.settings = settings
        self.prefix = prefix  # the owning learner's namespace on a shared decoder
        self.label = "class" if self.shared else f"obj{self.obj_id}"
        self.names: list[str] = []
        self.replay: deque[ReplayEntry] = deque(maxlen=settings.replay_size)
        self.reports: dict[str, list[Any]] = {}
        self.calibrator = OnlineCalibrator()

    def __len__(self) -> int:
        return len(self.names)

    @property
    def shared(self) -> bool:
        """Whether every object shares this pool (a class-scope learner's)."""
        return self.obj_id == SHARED_POOL_ID

    def next_name(self) -> str:
        """First free slot name, ``<prefix>obj<id>_a<k>`` (``<prefix>class_a<k>`` shared)."""
        k = 0
        while f"{self.prefix}{self.label}_a{k}" in self.names:
            k += 1
        return f"{self.prefix}{self.label}_a{k}"

    def adopt(self, name: str) -> None:
        """Register an adapter already on the decoder (e.g. loaded from a file)."""
        if name not in self.names:
            self.names.append(name)

    def proposals(self, decoder: nn.Module, inputs: DecoderInputs) -> list[Proposal]:
        """Every adapter's proposal for ``inputs``, most confident first."""
        props = [propose(decoder, name, inputs) for name in self.names]
        return sorted(props, key=lambda p: p.confidence, reverse=True)

    def best(self, decoder: nn.Module, inputs: DecoderInputs) -> Proposal | None:
        """The most confident adapter's proposal (``None`` with no adapter)."""
        props = self.proposals(decoder, inputs)
        return props[0] if props else None

    def estimate_ious(self, raw_scores: np.ndarray | list[float]) -> np.ndarray:
        """Estimated IoUs (float32, in ``[0, 1]``) for :func:`raw_score` values of this
        pool's adapters, from the pool's calibrator (near the raw values before any
        correction). A shared pool's calibrator learns from every object's evidence."""
        return self.calibrator.estimate_many(raw_scores)

    def observe(
        self,
        decoder: nn.Module,
        inputs: DecoderInputs,
        mask: np.ndarray,
        exclude: str | None = None,
        reference: np.ndarray | None = None,
    ) -> dict[str, float]:
        """Feed the calibrator every adapter's ``(raw score, IoU with mask)`` on ``inputs``.

        Call it with a mask the *user* confirmed for that frame (a correction, which
        :meth:`plan` does itself, or a candidate the user accepted — never an auto-accept),
        before anything trains on it. The accepted adapter itself is observed at IoU 1
        (the user took its mask as theirs) unless passed as ``exclude``. Measured on the
        seed-11 synthetic suite (docs/learning.md): with it, ECE 0.10 and Spearman 0.33;
        without it (corrections only), ECE 0.26 and Spearman 0.30 — but it makes the
        estimate rise with every accept, also where the object drifts away, so it is no
        basis for auto-accept. ``reference`` is the :func:`raw_score` reference of the
        frame. Returns the IoUs observed.
        """
        props = {
            p.adapter_name: p for p in self.proposals(decoder, inputs) if p.adapter_name != exclude
        }
        return self._observe(props, np.asarray(mask).astype(bool), reference)

    def _observe(
        self, props: dict[str, Proposal], target: np.ndarray, reference: np.ndarray | None
    ) -> dict[str, float]:
        ious = {name: logits_iou(p.logits, target) for name, p in props.items()}
        for name, p in props.items():
            self.calibrator.observe(raw_score(p, reference), ious[name])
        return ious

    def plan(
        self,
        decoder: nn.Module,
        inputs: DecoderInputs,
        target: np.ndarray,
        reference: np.ndarray | None = None,
    ) -> CorrectionPlan:
        """Decide, for a correction ``target`` on ``inputs``, which adapter to train and how.

        Every adapter's ``(raw score, IoU with the correction)`` on this frame, measured
        before any training on it, is given to the object's calibrator (``reference``: the
        :func:`raw_score` reference of the frame).
        """
        target = np.asarray(target).astype(bool)
        props = {p.adapter_name: p for p in self.proposals(decoder, inputs)}
        ious = self._observe(props, target, reference)
        examples = [(inputs, target)]
        room = len(self.names) < self.settings.max_adapters_per_object
        if not self.names or (room and max(ious.values()) <= self.settings.new_adapter_iou):
            reason = "first correction" if not self.names else "every adapter failed"
            return CorrectionPlan(
                self.obj_id, self.next_name(), True, False, reason, examples, props, ious
            )
        name = max(props.values(), key=lambda p: p.confidence).adapter_name
        reason = "most confident adapter" if room else "pool full: most confident adapter"
        examples += [(e.inputs, e.target) for e in reversed(self.replay) if e.adapter_name == name]
        return CorrectionPlan(self.obj_id, str(name), False, True, reason, examples, props, ious)

    def begin(self, decoder: nn.Module, plan: CorrectionPlan) -> InjectionReport | None:
        """Inject the plan's adapter when it is new."""
        if not plan.is_new:
            return None
        report = inject_adapter(decoder, plan.adapter_name, self.settings)
        self.adopt(plan.adapter_name)
        return report

    def commit(self, plan: CorrectionPlan, report: Any = None) -> None:
        """Record a finished training: keep the correction (on CPU) for replay."""
        inputs, target = plan.examples[0]
        if self.settings.replay_size > 0:
            self.replay.append(ReplayEntry(plan.adapter_name, cpu_copy(inputs), target.copy()))
        self.reports.setdefault(plan.adapter_name, []).append(report)

    def abort(self, decoder: nn.Module, plan: CorrectionPlan) -> None:
        """Undo :meth:`begin` after a cancelled run (drops a newly injected adapter)."""
        if plan.is_new and plan.adapter_name in self.names:
            delete_adapter(decoder, plan.adapter_name)
            self.names.remove(plan.adapter_name)
