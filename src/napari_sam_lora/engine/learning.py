"""Learning from corrections on a :class:`Session`: train at once, propose, accept.

A correction on frame *t* trains the object's adapter on the decoder inputs SAM2 recorded
while *tracking* frame *t* — looked up by ``(frame, object)``, so another frame's features
can never be used. A frame that was never tracked is tracked first (without its own
prompt in memory). The adapted decoder then proposes masks for other frames; accepting a
proposal makes it a conditioning frame for SAM2 and a replay example for the adapter.

Example
-------
>>> from napari_sam_lora.engine.jobs import drain
>>> learner = Learner(session, settings="default")
>>> report = drain(learner.learn(frame=3, user_labels=edited_frame))
>>> candidates = learner.propose(frames=range(4, 10))
>>> learner.accept(candidates[0])
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam_lora.engine.adapter_files import (
    adapter_paths,
    decoder_checksum,
    load_adapters,
    save_adapters,
)
from napari_sam_lora.engine.adapter_pool import AdapterPool, CorrectionPlan, ReplayEntry
from napari_sam_lora.engine.adapters import Proposal, cpu_copy, propose, use_adapter
from napari_sam_lora.engine.corrections import Correction, diff_corrections, merge_object
from napari_sam_lora.engine.errors import PromptError, SamLoraError
from napari_sam_lora.engine.features import DecoderInputs
from napari_sam_lora.engine.lora_settings import LoraSettings, load_settings
from napari_sam_lora.engine.prompts import MaskPrompt
from napari_sam_lora.engine.session import Session
from napari_sam_lora.engine.tracking import PropagationStep
from napari_sam_lora.engine.training import TrainingReport, TrainStep, train_adapter


@dataclass(frozen=True)
class LearnStep:
    """Progress of :meth:`Learner.learn`: one training step of one object's adapter."""

    obj_id: int
    adapter_name: str
    index: int
    count: int
    step: TrainStep


@dataclass
class LearnReport:
    """What one :meth:`Learner.learn` call did."""

    frame: int
    corrections: list[Correction]
    trained: list[TrainingReport] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)


@dataclass
class Candidate:
    """One adapter's proposed masks for one object over some frames.

    Attributes
    ----------
    obj_id, adapter_name : int, str
        Whose proposal it is.
    frames : list of int
        Frames proposed, ascending.
    masks : np.ndarray
        ``(len(frames), H, W)`` bool masks at the stack's resolution.
    confidences : np.ndarray
        Per frame: the model's own predicted IoU × object-score probability.
    """

    obj_id: int
    adapter_name: str
    frames: list[int]
    masks: np.ndarray
    confidences: np.ndarray

    @property
    def confidence(self) -> float:
        """Mean confidence over the frames."""
        return float(np.mean(self.confidences)) if len(self.confidences) else 0.0

    @property
    def name(self) -> str:
        """Human-readable name: object, adapter, frame range, confidence."""
        span = (
            f"{self.frames[0]}" if len(self.frames) == 1 else f"{self.frames[0]}-{self.frames[-1]}"
        )
        return f"obj {self.obj_id} {self.adapter_name} frames {span} conf {self.confidence:.2f}"


class Learner:
    """Per-object LoRA adapters for one session, trained from corrections.

    Parameters
    ----------
    session : Session
        The stack being annotated; its SAM2 decoder receives the adapters.
    settings : str, Path or LoraSettings
        A preset name from ``configs/`` (``"default"``, ``"lit"``, ``"strong"``), a YAML
        path, or settings.
    assist_margin : float
        In adapter-assisted propagation, an adapter's mask replaces SAM2's when its
        confidence beats the base model's by this much.
    """

    def __init__(
        self,
        session: Session,
        settings: str | Path | LoraSettings = "default",
        assist_margin: float = 0.1,
    ) -> None:
        self.session = session
        self.settings = settings if isinstance(settings, LoraSettings) else load_settings(settings)
        self.pools: dict[int, AdapterPool] = {}
        self.reports: list[TrainingReport] = []
        self.assist_margin = float(assist_margin)
        self.adapter_frames: dict[int, set[int]] = {}

    @property
    def decoder(self) -> torch.nn.Module:
        """SAM2's mask decoder (the adapters live on it, in place)."""
        return self.session.model.predictor.sam_mask_decoder

    # -- learning -------------------------------------------------------------------------
    def learn(self, frame: int, user_labels: np.ndarray) -> Generator[LearnStep, None, LearnReport]:
        """Turn the user's edit of ``frame`` into corrections and train on them right away.

        The corrections become SAM2 conditioning masks; each corrected object's adapter
        (new or fine-tuned, LIT's rule) trains on that frame's own recorded inputs.
        Closing the generator cancels: the adapter being trained keeps its old weights.

        Raises
        ------
        PromptError
            Nothing changed, shape mismatch, frame out of range, or a frame that cannot
            be tracked (no memory for the object yet).
        """
        session = self.session
        if not 0 <= int(frame) < session.num_frames:
            raise PromptError(f"frame {frame} is out of range (0–{session.num_frames - 1})")
        corrections = diff_corrections(
            frame, session.labels[frame], user_labels, set(session.object_ids)
        )
        report = LearnReport(int(frame), corrections)
        with session._job(), session.model.precision():
            inputs = {c.obj_id: self._inputs_for(c, report) for c in corrections}
            session._condition_on([MaskPrompt(c.frame, c.obj_id, c.mask) for c in corrections])
        to_train = [c for c in corrections if inputs.get(c.obj_id) is not None]
        with session._job():
            for index, correction in enumerate(to_train, start=1):
                trained = yield from self._train_one(
                    correction, inputs[correction.obj_id], index, len(to_train)
                )
                report.trained.append(trained)
        self._base_mode()
        return report

    def _inputs_for(self, correction: Correction, report: LearnReport) -> DecoderInputs | None:
        if correction.kind == "new":
            report.skipped[correction.obj_id] = "new object: learning starts at its next correction"
            return None
        record = self.session.decoder_inputs(correction.frame, correction.obj_id)
        if record is None:
            self._base_mode()
            record = self.session._track_to_record(correction.frame, correction.obj_id)
        if (record.frame, record.obj_id) != (correction.frame, correction.obj_id):
            raise SamLoraError(
                f"recorded inputs belong to frame {record.frame}, object {record.obj_id}, not "
                f"frame {correction.frame}, object {correction.obj_id}"
            )
        return record

    def _train_one(
        self, correction: Correction, inputs: DecoderInputs, index: int, count: int
    ) -> Generator[LearnStep, None, TrainingReport]:
        obj_id = correction.obj_id
        pool = self.pools.setdefault(obj_id, AdapterPool(obj_id, self.settings))
        plan: CorrectionPlan = pool.plan(self.decoder, inputs, correction.mask)
        pool.begin(self.decoder, plan)
        steps = train_adapter(
            self.decoder, plan.adapter_name, plan.examples, self.settings, fine_tune=plan.fine_tune
        )
        finished = False
        try:
            while True:
                try:
                    step = next(steps)
                except StopIteration as stop:
                    report = stop.value
                    break
                yield LearnStep(obj_id, plan.adapter_name, index, count, step)
            finished = True
        finally:
            steps.close()
            if not finished:
                pool.abort(self.decoder, plan)
        pool.commit(plan, report)
        self.reports.append(report)
        return report

    def _base_mode(self) -> None:
        from napari_sam_lora.engine.adapters import activate, lora_layers

        if lora_layers(self.decoder):
            activate(self.decoder, None)

    # -- adapter-assisted propagation -----------------------------------------------------
    def propagate(
        self, direction: str = "forward", frame_range: tuple[int, int] | None = None
    ) -> Iterator[PropagationStep]:
        """:meth:`Session.propagate` with the adapters assisting.

        On every tracked frame, where an object's most confident adapter beats SAM2's own
        confidence by ``assist_margin``, the adapter's mask is used (and goes to memory);
        such frames are recorded in :attr:`adapter_frames` (frame → object ids).
        """
        state = self.session.state
        state["assist"] = self._assist
        try:
            yield from self.session.propagate(direction, frame_range)
        finally:
            state.pop("assist", None)
            self._base_mode()

    def _assist(self, frame: int, obj_id: int, kwargs: dict, output: tuple) -> tuple | None:
        pool = self.pools.get(obj_id)
        record = self.session.decoder_inputs(frame, obj_id)
        if pool is None or not pool.names or record is None:
            return None
        _, ious, _, object_logits = output
        base = float(ious[0].max()) * float(torch.sigmoid(object_logits.reshape(-1)[0]))
        best = pool.best(self.decoder, record)
        if best is None or best.confidence <= base + self.assist_margin:
            return None
        with use_adapter(self.decoder, best.adapter_name):
            replaced = self.decoder(**kwargs)
        self.adapter_frames.setdefault(frame, set()).add(obj_id)
        return replaced

    # -- candidates -----------------------------------------------------------------------
    def propose(
        self, frames: Iterable[int] | None = None, obj_ids: Iterable[int] | None = None
    ) -> list[Candidate]:
        """Every adapter's masks for ``frames`` (default: all tracked), best first.

        Uses the decoder inputs recorded while tracking (decoder only: fast). Frames
        without recorded inputs for an object are skipped for it.
        """
        wanted = range(self.session.num_frames) if frames is None else sorted(set(frames))
        ids = self.pools if obj_ids is None else [i for i in obj_ids if i in self.pools]
        candidates = []
        with self.session._job():
            for obj_id in ids:
                records = [r for f in wanted if (r := self.session.decoder_inputs(f, obj_id))]
                for name in self.pools[obj_id].names:
                    if records:
                        candidates.append(self._candidate(obj_id, name, records))
            self._base_mode()
        return sorted(candidates, key=lambda c: c.confidence, reverse=True)

    def _candidate(self, obj_id: int, name: str, records: list[DecoderInputs]) -> Candidate:
        proposals = [propose(self.decoder, name, r) for r in records]
        masks = np.stack([self._full_res(p) for p in proposals])
        confidences = np.array([p.confidence for p in proposals], dtype=np.float32)
        return Candidate(obj_id, name, [r.frame for r in records], masks, confidences)

    def _full_res(self, proposal: Proposal) -> np.ndarray:
        logits = torch.from_numpy(proposal.logits)[None, None]
        size = self.session.frame_shape
        return (
            F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0, 0].numpy() > 0
        )

    def accept(self, candidate: Candidate, frames: Iterable[int] | None = None) -> np.ndarray:
        """Make a candidate's masks SAM2 conditioning frames and replay examples.

        Returns the ``(n, H, W)`` label images of the accepted frames after merging the
        object's mask into the session's labels (other objects' pixels are kept).
        """
        chosen = [f for f in candidate.frames if frames is None or f in set(frames)]
        pool = self.pools[candidate.obj_id]
        corrections = []
        for frame in chosen:
            mask = candidate.masks[candidate.frames.index(frame)]
            merged = merge_object(self.session.labels[frame], candidate.obj_id, mask)
            obj_mask = merged == candidate.obj_id
            corrections.append(Correction(frame, candidate.obj_id, obj_mask, "changed", 0))
            record = self.session.decoder_inputs(frame, candidate.obj_id)
            if record is not None and self.settings.replay_size > 0:
                pool.replay.append(ReplayEntry(candidate.adapter_name, cpu_copy(record), obj_mask))
        with self.session._job(), self.session.model.precision():
            self.session._condition_on([MaskPrompt(c.frame, c.obj_id, c.mask) for c in corrections])
        return self.session.labels[chosen]

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> tuple[Path, Path]:
        """Save every adapter (safetensors + JSON with base model, settings, reports)."""
        names = [n for pool in self.pools.values() for n in pool.names]
        if not names:
            raise SamLoraError("no adapters to save yet: correct a frame first")
        spec = self.session.model.spec
        return save_adapters(
            path,
            self.decoder,
            names,
            {"model": spec.label, "untrained": spec.untrained, **(metadata or {})},
            variant=spec.variant.name,
            settings=self.settings,
            object_ids={n: obj for obj, pool in self.pools.items() for n in pool.names},
            reports={
                n: [r.to_dict() for r in pool.reports.get(n, []) if r]
                for obj, pool in self.pools.items()
                for n in pool.names
            },
        )

    def load(self, path: str | Path) -> list[str]:
        """Load adapters from a file onto this session's model; returns their names.

        Names already in use are renamed to the object's next free slot. On any error
        (damaged file, other base model) the current adapters are kept unchanged.
        """
        existing = {n for pool in self.pools.values() for n in pool.names}
        rename = _free_names(path, existing)
        loaded = load_adapters(path, self.decoder, decoder_checksum(self.decoder), rename=rename)
        for name in loaded.names:
            obj_id = loaded.object_ids.get(name)
            if obj_id is None:
                continue
            self.pools.setdefault(int(obj_id), AdapterPool(int(obj_id), self.settings)).adopt(name)
        self._base_mode()
        return loaded.names


def _free_names(path: str | Path, existing: set[str]) -> dict[str, str]:
    import json

    json_path = adapter_paths(path)[1]
    try:
        names = [e["name"] for e in json.loads(json_path.read_text())["adapters"]]
    except Exception:
        return {}  # load_adapters reports the problem
    rename, taken = {}, set(existing)
    for name in names:
        new, k = name, 1
        while new in taken:
            new, k = f"{name}_{k}", k + 1
        taken.add(new)
        rename[name] = new
    return rename
