"""What the learning panel does, without its widgets: context checks, jobs, candidate layers.

Everything here runs on the main thread except the ``*_job`` generators, which run on the
worker (through :func:`napari_sam_lora._qt.threading.start_job`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam_lora._qt._imports import prepare_learning
from napari_sam_lora._qt._shortcuts import key_of
from napari_sam_lora.engine.annotation.corrections import diff_corrections, merge_object
from napari_sam_lora.engine.core.errors import PromptError, SamLoraError, StackError
from napari_sam_lora.engine.learning.lora_settings import load_settings
from napari_sam_lora.layers import (
    StackSource,
    accept_candidate,
    add_candidate_layer,
    candidate_layers,
    candidate_of,
    drop_candidate_frames,
    find_output_layer,
    frame_labels,
    is_candidate_layer,
    output_labels_layer,
    reject_candidate,
    same_layer,
    stack_from_image_layer,
    write_frame,
)

__all__ = [
    "Context",
    "LearningControl",
    "Loaded",
    "accept_job",
    "auto_accept_job",
    "describe_report",
    "learn_job",
    "load_job",
    "propose_job",
]

NO_CANDIDATE = (
    "no candidate layer selected: select a 'cand …' (candidate) layer in the layer list "
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
    prepare_learning()
    learner = control.learner_for(session)
    report = yield from learner.learn_steps(frame, user)
    yield report


@dataclass(frozen=True)
class Loaded:
    """Yielded by :func:`load_job`: the adapters of a file, and whether they were new."""

    names: list[str]
    new: list[str]


def load_job(control: LearningControl, session: Any, path: str) -> Generator:
    """Worker: loads adapters onto the session's model; yields :class:`Loaded`.

    Loading a file whose content is already loaded adds nothing (the learner recognises
    it); ``Loaded.new`` is then empty.
    """
    prepare_learning()
    learner = control.learner_for(session)
    before = set(learner.adapter_names())
    names = list(learner.load(path))
    yield Loaded(names, [n for n in names if n not in before])


def propose_job(learner: Any, frames: list[int]) -> Generator:
    """Worker: yields the list of candidates (decoder only: fast)."""
    yield learner.propose(frames=frames)


def accept_job(
    learner: Any, candidate: Any, frames: list[int], overwrite_confirmed: bool = False
) -> Generator:
    """Worker: makes the accepted frames SAM2 conditioning frames and replay examples;
    yields the engine's ``AcceptReport``."""
    yield learner.accept(candidate, frames=frames, overwrite_confirmed=overwrite_confirmed)


def auto_accept_job(learner: Any, candidates: list[Any], bar: float) -> Generator:
    """Worker: accepts, per (object, frame), the best candidate whose estimated IoU reaches
    ``bar`` (never on frames the user confirmed); yields ``[(Candidate, AcceptReport)]``."""
    yield learner.auto_accept(candidates, bar)


def describe_report(report: Any) -> str:
    """One line per learn call: steps, seconds, final IoU and stop reason per adapter."""
    parts = [
        f"{r.adapter_name} ({'fine-tuned' if r.fine_tune else 'new'}): {r.steps} steps, "
        f"{r.seconds:.1f} s, final IoU {r.final_iou:.2f}, stop: {r.stop_reason}"
        for r in report.trained
    ]
    parts += [f"object {obj}: {why}" for obj, why in report.skipped.items()]
    parts += [f"⚠ {r.warning}" for r in report.trained if getattr(r, "warning", None)]
    return f"learned from frame {report.frame}: " + ("; ".join(parts) or "nothing trained")


def _has_adapters(learner: Any) -> bool:
    return bool(learner.adapter_names())


def keeps_frame(annotations: Any, frame: int, obj_id: int) -> bool:
    """Whether an accept leaves ``frame`` alone for ``obj_id`` (the user confirmed it; an
    automatic accept does not count)."""
    return annotations is not None and annotations.kept_by_accepts(frame, obj_id)


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
        session = self.host.sessions.session_matching(image, source)
        if session is None:
            raise PromptError(
                f"no segmentation of '{image.name}' here yet: propagate it first "
                f"(Propagate, {key_of('propagate')}), then correct a frame"
            )
        output = find_output_layer(self.viewer, image, source)
        learner = None if self.learner is None else self.learner_for(session)
        return Context(image, source, session, learner, output)

    def learner_for(self, session: Any) -> Any:
        """The learner of ``session`` (made on first use: the first import takes seconds)."""
        from napari_sam_lora.engine.learning.learner import Learner

        old = self.learner
        if old is not None and old.session is session:
            return old
        if old is not None and old.decoder is session.model.predictor.sam_mask_decoder:
            # same model: the adapters (they live on its decoder) go on with the new stack
            old.session = session
            old.adapter_frames.clear()
            return old
        if old is not None:
            old.close()
        self.learner = Learner(session, self.preset)
        return self.learner

    def learner_of(self, session: Any) -> Any:
        """The learner of ``session`` if there is one (never makes one; any thread)."""
        learner = self.learner
        return learner if learner is not None and learner.session is session else None

    def release(self) -> None:
        """Close the learner: its adapters leave the decoder."""
        learner, self.learner = self.learner, None
        if learner is not None:
            learner.close()

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

    def accept(
        self, layer: Any, frames: list[int] | None = None, overwrite_confirmed: bool = False
    ) -> tuple[Any, Any, list[int], list[int]]:
        """Write a candidate layer into the masks layer (one undo step), all its frames or
        ``frames``; frames the user confirmed are skipped unless ``overwrite_confirmed``.

        Returns ``(learner, candidate, written, skipped)``; :func:`accept_job` takes the
        first three.
        """
        if layer is None or not is_candidate_layer(layer):
            raise PromptError(f"{NO_CANDIDATE}, then Accept")
        ctx = self.context()
        info = layer.metadata["napari_sam_lora"]
        if ctx.learner is None or info["adapter"] not in ctx.learner.adapter_names(info["obj_id"]):
            raise PromptError(
                f"candidate '{layer.name}' comes from adapter '{info['adapter']}', which this "
                f"session does not have (any more); Propose again"
            )
        candidate = candidate_of(layer, ctx.source)
        asked = candidate.frames if frames is None else [int(f) for f in frames]
        missing = [f for f in asked if f not in candidate.frames]
        if missing:
            raise PromptError(
                f"candidate '{layer.name}' proposes frames {candidate.frames}, not {missing}: "
                f"step onto one of its frames first"
            )
        annotations = getattr(ctx.session, "annotations", None)
        skipped = (
            []
            if overwrite_confirmed
            else [f for f in asked if keeps_frame(annotations, f, candidate.obj_id)]
        )
        chosen = [f for f in asked if f not in skipped]
        if not chosen:
            raise PromptError(
                f"frame(s) {skipped} of object {candidate.obj_id} are confirmed by you: "
                f"nothing to accept (tick 'overwrite confirmed frames' to replace them)"
            )
        output = ctx.output or output_labels_layer(self.viewer, ctx.image, ctx.source)
        self.writing = True
        try:
            written = accept_candidate(output, ctx.source, layer, frames=chosen, viewer=self.viewer)
        finally:
            self.writing = False
        return ctx.learner, candidate, written, skipped

    def write_auto_accepted(
        self, image: Any, source: StackSource, accepted: list[tuple[Any, Any]]
    ) -> list[int]:
        """Write what :func:`auto_accept_job` accepted into the masks layer as ONE undo step.

        On each accepted frame the object's pixels become the candidate's mask (other
        objects kept), as for a manual accept; the accepted frames leave the candidate
        layers. Returns the frames written, ascending.
        """
        if not accepted or not any(same_layer(image, x) for x in self.viewer.layers):
            return []
        output = find_output_layer(self.viewer, image, source) or output_labels_layer(
            self.viewer, image, source
        )
        planes: dict[int, np.ndarray] = {}
        for candidate, report in accepted:
            for frame in report.frames:
                plane = planes.get(frame)
                if plane is None:
                    plane = frame_labels(output, source, frame)
                mask = candidate.masks[candidate.frames.index(frame)]
                planes[frame] = merge_object(plane, candidate.obj_id, mask)
        self.writing = True
        try:
            with output.block_history():  # every frame, every object: one undo step
                for frame, labels in sorted(planes.items()):
                    write_frame(output, source, frame, labels)
        finally:
            self.writing = False
        for candidate, report in accepted:
            for layer in candidate_layers(self.viewer):
                info = layer.metadata["napari_sam_lora"]
                if (
                    info.get("image") == image.name
                    and info["obj_id"] == candidate.obj_id
                    and info["adapter"] == candidate.adapter_name
                ):
                    drop_candidate_frames(self.viewer, layer, source, report.frames)
        return sorted(planes)

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
        return self.context().session

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
