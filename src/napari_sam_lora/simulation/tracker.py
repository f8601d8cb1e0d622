"""The simulated user's :class:`~napari_sam_lora.simulation.protocol.Tracker` on a SAM2
:class:`~napari_sam_lora.engine.Session`, used by ``evaluate`` and by fine-tuning's
example recording.

With a ``learner`` (a learning run), corrections train the adapters serving the object (its
own, or with a class-scope learner the ones every object shares, kept across objects) and
candidates are the learner's proposals for the object; without one (the baseline, or
recording), corrections only condition SAM2 and there are no candidates. With
``on_record``, the decoder inputs of every tracked frame and every prompt are handed over
as they are recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.simulation.protocol import CandidateMask

__all__ = ["RecordSink", "SessionTracker"]

logger = logging.getLogger(__name__)

#: ``on_record(kind, frame, obj_id, decoder_inputs_or_None)``; kind is ``"tracking"``,
#: ``"click"``, ``"point"`` or ``"box"``.
RecordSink = Callable[[str, int, int, Any], None]


class SessionTracker:
    """Track one object on a session for the simulated user.

    Parameters
    ----------
    session : Session
        The stack's session (its image features are shared by every run on it).
    obj_id : int
        The object (label value).
    learner : Learner, optional
        Learn from corrections and offer candidates (the learning run).
    phase : callable, optional
        ``phase(name)`` → context manager timing the block as ``"track"``, ``"train"`` or
        ``"propose"`` (see the evaluation's ``PhaseTimer``); default: no timing.
    on_record : RecordSink, optional
        Receives the decoder inputs recorded on tracked and prompted frames.
    """

    def __init__(
        self,
        session: Any,
        obj_id: int,
        learner: Any = None,
        phase: Callable[[str], AbstractContextManager] | None = None,
        on_record: RecordSink | None = None,
    ) -> None:
        self.session, self.obj_id, self.learner = session, int(obj_id), learner
        self.phase = phase or (lambda _name: nullcontext())
        self.on_record = on_record
        self.trainings: list[Any] = []
        self._tracked: dict[int, np.ndarray] = {}

    # -- the Tracker protocol ----------------------------------------------------------------
    def begin(self, frame: int, mask: np.ndarray) -> None:
        """Reset (forgetting earlier runs' records), then prompt ``frame`` with ``mask``."""
        with self.phase("track"):
            self.begin_fresh()
            self.session.add_mask(frame, self.obj_id, mask)

    def begin_fresh(self) -> None:
        """Forget every prompt and record: the next prompt lands on an untracked frame."""
        self.session.reset()
        self.session.clear_records()

    def track(self, frame: int, reverse: bool, record: bool = True) -> np.ndarray:
        """Track ``frame`` from memory; the object's mask."""
        direction = "backward" if reverse else "forward"
        with self.phase("track"):
            for _ in self.session.propagate_steps(direction, frame_range=(frame, frame)):
                pass
        self._tracked[frame] = self.session.labels[frame].copy()
        if record:
            self._record("tracking", frame)
        return self.session.labels[frame] == self.obj_id

    def click(self, frame: int, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """All clicks so far on ``frame``; the new mask."""
        with self.phase("track"):
            mask = self.prompt("click", frame, points=points, labels=labels)
        return mask

    def prompt(self, kind: str, frame: int, **prompt: Any) -> np.ndarray:
        """Points (``points``, ``labels``) or a ``box`` on ``frame``; records them as ``kind``."""
        recording = self.on_record is not None
        with self._recording(frame) if recording else nullcontext():
            if "box" in prompt:
                labels = self.session.add_box(frame, self.obj_id, prompt["box"])
            else:
                labels = self.session.add_points(
                    frame, self.obj_id, prompt["points"], prompt["labels"]
                )
        if recording:
            self._record(kind, frame)
        return labels == self.obj_id

    def correct(self, frame: int, mask: np.ndarray) -> None:
        """The user's final mask: condition SAM2 on it (and learn from it)."""
        if self.learner is None:
            with self.phase("track"):
                self.session.add_mask(frame, self.obj_id, mask)
            return
        # The correction is the user's final mask against what SAM2 tracked on the frame.
        model = self.session.annotation
        with model.action(f"tracked frame {frame}"):
            model.write_frame(frame, self._tracked[frame])
        user = np.where(mask, self.obj_id, 0).astype(np.int32)
        with self.phase("train"):
            try:
                report = self.learner.learn(frame, user)
            except PromptError as exc:  # nothing to learn: still condition SAM2
                logger.info("frame %d: not trained (%s)", frame, exc)
                self.session.add_mask(frame, self.obj_id, mask)
                return
        self.trainings.extend(report.trained)

    def candidates(self, frame: int) -> list[CandidateMask]:
        """The learner's proposals for ``frame`` (none without a learner or while no adapter
        serves the object; a class-scope learner's shared adapters serve every object)."""
        if self.learner is None or not self.learner.adapter_names(self.obj_id):
            return []
        with self.phase("propose"):
            found = self.learner.propose(frames=[frame], obj_ids=[self.obj_id])
        return [
            CandidateMask(c.masks[0], float(c.estimated_ious[0]), c.adapter_name, c) for c in found
        ]

    def accept(self, frame: int, candidate: CandidateMask) -> None:
        """Accept ``candidate`` on ``frame``."""
        with self.phase("propose"):
            self.learner.accept(candidate.payload, frames=[frame])

    # -- recording ----------------------------------------------------------------------------
    def _recording(self, frame: int) -> AbstractContextManager:
        return self.session.recording_prompts(frame, self.obj_id)

    def _record(self, kind: str, frame: int) -> None:
        if self.on_record is not None:
            inputs = self.session.decoder_inputs(frame, self.obj_id)
            self.on_record(kind, frame, self.obj_id, inputs)
