"""What the learning panel does, without its widgets: context checks, jobs, candidate layers.

Everything here runs on the main thread except the ``*_job`` generators, which run on the
worker (through :func:`napari_sam_lora._qt.threading.start_job`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam_lora.engine.corrections import diff_corrections
from napari_sam_lora.engine.errors import PromptError, SamLoraError, StackError
from napari_sam_lora.engine.lora_settings import load_settings
from napari_sam_lora.engine.native import preload_triton
from napari_sam_lora.layers import (
    StackSource,
    accept_candidate,
    add_candidate_layer,
    candidate_layers,
    candidate_of,
    find_output_layer,
    frame_labels,
    is_candidate_layer,
    output_labels_layer,
    reject_candidate,
    same_layer,
    stack_from_image_layer,
)

__all__ = [
    "Context",
    "LearningControl",
    "accept_job",
    "describe_report",
    "learn_job",
    "load_job",
    "propose_job",
]

NO_CANDIDATE = (
    "no candidate layer selected: select a 'candidate …' layer in the layer list "
    "(Propose makes them)"
)


@dataclass(frozen=True)
class Context:
    """What the panel acts on, read on the main thread."""

    image: Any
    source: StackSource
    session: Any
    learner: Any  # None until the first learn or load (importing peft takes seconds)
    output: Any  # the output Labels layer, or None


def learn_job(control: LearningControl, session: Any, frame: int, user: np.ndarray) -> Generator:
    """Worker: yields a ``LearnStep`` per training step, then the ``LearnReport``.

    The learner is made here, so the first one's import of peft does not block the viewer.
    """
    learner = control.learner_for(session)
    report = yield from learner.learn(frame, user)
    yield report


def load_job(control: LearningControl, session: Any, path: str) -> Generator:
    """Worker: loads adapters onto the session's model; yields their names."""
    yield control.learner_for(session).load(path)


def propose_job(learner: Any, frames: list[int]) -> Generator:
    """Worker: yields the list of candidates (decoder only: fast)."""
    yield learner.propose(frames=frames)


def accept_job(learner: Any, candidate: Any) -> Generator:
    """Worker: feeds an accepted candidate to SAM2's memory and the replay buffer."""
    learner.accept(candidate)
    yield candidate


def describe_report(report: Any) -> str:
    """One line per learn call: steps, seconds, final IoU and stop reason per adapter."""
    parts = [
        f"{r.adapter_name} ({'fine-tuned' if r.fine_tune else 'new'}): {r.steps} steps, "
        f"{r.seconds:.1f} s, final IoU {r.final_iou:.2f}, stop: {r.stop_reason}"
        for r in report.trained
    ]
    parts += [f"object {obj}: {why}" for obj, why in report.skipped.items()]
    return f"learned from frame {report.frame}: " + ("; ".join(parts) or "nothing trained")


def _has_adapters(learner: Any) -> bool:
    return any(pool.names for pool in learner.pools.values())


class LearningControl:
    """The learner of the host widget's session, and the checks before each action.

    Parameters
    ----------
    host : SamLoraWidget
        Provides ``viewer``, ``sessions``, ``image_combo`` and ``axis_spin``.
    preset : str
        LoRA settings preset of new learners.

    Attributes
    ----------
    learner : Learner or None
        Recreated when the host's session changes; the adapters carry over when the new
        session's model has the same decoder (they live on it).
    writing : bool
        True while an accepted candidate is being written (its paint event is ours).
    """

    def __init__(self, host: Any, preset: str = "default") -> None:
        self.host, self.viewer = host, host.viewer
        self.preset = preset
        self.learner: Any = None
        self.writing = False

    # -- context ------------------------------------------------------------------------------
    def source(self, image: Any) -> StackSource:
        """The host's image as a stack, at the viewer's current position."""
        axis = self.host.axis_spin.value() if image.ndim >= 4 else 0
        return stack_from_image_layer(image, axis, tuple(self.viewer.dims.point))

    def context(self) -> Context:
        """Image, stack, session, learner and output layer; errors say what to do first."""
        image = self.host.image_combo.layer
        if image is None:
            raise StackError("no image layer: open a stack, propagate, then correct a frame")
        source = self.source(image)
        sessions = self.host.sessions
        key = getattr(sessions, "_session_key", None)  # (image id, data id, axis, fixed, ...)
        here = (image.unique_id, id(image.data), source.stack_axis)
        fixed = tuple(sorted(source.fixed_indices.items()))
        if sessions.session is None or key is None or tuple(key[:4]) != (*here, fixed):
            raise PromptError(
                f"no segmentation of '{image.name}' here yet: propagate it first "
                f"(Propagate, Shift-P), then correct a frame"
            )
        output = find_output_layer(self.viewer, image, source)
        session = sessions.session
        learner = None if self.learner is None else self.learner_for(session)
        return Context(image, source, session, learner, output)

    def learner_for(self, session: Any) -> Any:
        """The learner of ``session`` (made on first use: the first import takes seconds)."""
        from napari_sam_lora.engine.learning import Learner

        old = self.learner
        if old is not None and old.session is session:
            return old
        learner = Learner(session, self.preset)
        if old is not None and old.decoder is learner.decoder:
            learner.pools, learner.reports = old.pools, old.reports
        self.learner = learner
        return learner

    def set_preset(self, preset: str) -> None:
        """Use ``preset`` from now on (also for the current learner's next trainings)."""
        settings = load_settings(preset)
        self.preset = preset
        if self.learner is not None:
            self.learner.settings = settings
            for pool in self.learner.pools.values():
                pool.settings = settings

    # -- actions ------------------------------------------------------------------------------
    def prepare_learn(self, frame: int | None, quiet: bool = False) -> tuple | None:
        """``(self, session, frame, user_labels)`` for :func:`learn_job`.

        Returns ``None`` when ``quiet`` and the frame is unchanged.

        Raises
        ------
        SamLoraError
            No session or masks layer, or nothing to learn on the frame.
        """
        ctx = self.context()
        if ctx.output is None:
            raise PromptError(
                f"no masks layer '{ctx.image.name} masks' to learn from: propagate first, "
                f"then correct a frame in it"
            )
        frame = ctx.source.current_frame if frame is None else int(frame)
        user = frame_labels(ctx.output, ctx.source, frame)
        model = ctx.session.labels[frame]
        if quiet and np.array_equal(user, model):
            return None
        diff_corrections(frame, model, user, set(ctx.session.object_ids))  # nothing to learn?
        preload_triton()
        return self, ctx.session, frame, user

    def prepare_propose(self, first: int, last: int) -> Context:
        """Check that proposing frames ``first``–``last`` makes sense."""
        ctx = self.context()
        if ctx.learner is None or not _has_adapters(ctx.learner):
            raise PromptError(
                "no adapters yet: correct a frame and click 'Learn from this frame' first "
                "(or load adapters)"
            )
        if first > last:
            raise PromptError(f"empty frame range {first} to {last}: set 'propose frames'")
        return ctx

    def show_candidates(self, image: Any, source: StackSource, candidates: list[Any]) -> int:
        """Add candidate layers (replacing older ones of the same adapter); returns how many."""
        if not candidates or not any(same_layer(image, x) for x in self.viewer.layers):
            return 0
        new = {(c.obj_id, c.adapter_name) for c in candidates}
        for layer in candidate_layers(self.viewer):
            info = layer.metadata["napari_sam_lora"]
            if info.get("image") == image.name and (info["obj_id"], info["adapter"]) in new:
                reject_candidate(self.viewer, layer)
        for candidate in reversed(candidates):  # the most confident ends on top, selected
            add_candidate_layer(self.viewer, image, source, candidate)
        return len(candidates)

    def accept(self, layer: Any) -> tuple[Any, Any, list[int]]:
        """Write a candidate layer into the masks layer (one undo step) and drop it.

        Returns ``(learner, candidate, frames)`` for :func:`accept_job`.
        """
        if layer is None or not is_candidate_layer(layer):
            raise PromptError(f"{NO_CANDIDATE}, then Accept")
        ctx = self.context()
        info = layer.metadata["napari_sam_lora"]
        pool = None if ctx.learner is None else ctx.learner.pools.get(info["obj_id"])
        if pool is None or info["adapter"] not in pool.names:
            raise PromptError(
                f"candidate '{layer.name}' comes from adapter '{info['adapter']}', which this "
                f"session does not have (any more); Propose again"
            )
        candidate = candidate_of(layer, ctx.source)
        output = ctx.output or output_labels_layer(self.viewer, ctx.image, ctx.source)
        self.writing = True
        try:
            frames = accept_candidate(output, ctx.source, layer, viewer=self.viewer)
        finally:
            self.writing = False
        return ctx.learner, candidate, frames

    def reject(self, layer: Any) -> str:
        """Remove a candidate layer; returns its name."""
        if layer is None or not is_candidate_layer(layer):
            raise PromptError(f"{NO_CANDIDATE}, then Reject")
        name = layer.name
        reject_candidate(self.viewer, layer)
        return name

    def save(self, path: str) -> str:
        """Save every adapter; returns the weights file."""
        learner = self.context().learner
        if learner is None or not _has_adapters(learner):
            raise SamLoraError("no adapters to save yet: correct a frame and Learn first")
        weights, _ = learner.save(path)
        return str(weights)

    def prepare_load(self) -> Any:
        """The session to load adapters for (with :func:`load_job`)."""
        session = self.context().session
        preload_triton()
        return session

    def painted_frame(self, layer: Any) -> int | None:
        """The current frame when ``layer`` is the host image's masks layer, else ``None``."""
        image = self.host.image_combo.layer
        if self.writing or image is None:
            return None
        try:
            source = self.source(image)
        except Exception:  # unsupported image
            return None
        output = find_output_layer(self.viewer, image, source)
        return source.current_frame if output is not None and same_layer(layer, output) else None

    def frame_range(self) -> tuple[int, int]:
        """``(frame count, current frame)`` of the host image (``(1, 0)`` without one)."""
        image = self.host.image_combo.layer
        if image is None:
            return 1, 0
        try:
            source = self.source(image)
        except Exception:  # unsupported image: the actions will say why
            return 1, 0
        return source.num_frames, source.current_frame
