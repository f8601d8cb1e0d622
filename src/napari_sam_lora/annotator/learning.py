"""The learner of the dock's session and the checks before each learning action (Qt-free).

Everything here runs on the main thread; the worker jobs are in
:mod:`napari_sam_lora.annotator.jobs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from napari_sam_lora.engine.core.errors import PromptError, SamLoraError, StackError
from napari_sam_lora.engine.learning.lora_settings import load_settings
from napari_sam_lora.layers import (
    StackSource,
    add_candidate_layer,
    candidate_layers,
    candidate_of,
    drop_candidate_frames,
    is_candidate_layer,
    reject_candidate,
    same_layer,
)
from napari_sam_lora.layers.masks_view import Region

if TYPE_CHECKING:
    from napari_sam_lora.annotator.annotator import Annotator

__all__ = ["AcceptPlan", "Context", "LearningControl", "describe_report"]

NO_CANDIDATE = (
    "no candidate layer selected: select a 'cand …' (candidate) layer in the layer list "
    "(Propose makes them)"
)


@dataclass(frozen=True)
class Context:
    """What a learning action acts on, read on the main thread.

    ``region``: the rectangle the session annotates (its frames, and so its candidates'
    masks, have its shape), ``None`` for whole frames.
    """

    image: Any
    source: StackSource
    session: Any
    learner: Any  # None until the first learn or load (importing peft takes seconds)
    output: Any  # the masks layer, or None
    region: Region | None = None


@dataclass(frozen=True)
class AcceptPlan:
    """What Accept does: the candidate of ``layer`` on ``frames`` (``skipped``: frames the
    user confirmed, left alone)."""

    layer: Any
    learner: Any
    candidate: Any
    frames: list[int]
    skipped: list[int]
    overwrite: bool


def describe_report(report: Any) -> str:
    """One line per learn call: steps, seconds, final IoU and stop reason per adapter."""
    parts = [
        f"{r.adapter_name} ({'fine-tuned' if r.fine_tune else 'new'}): {r.steps} steps, "
        f"{r.seconds:.1f} s, final IoU {r.final_iou:.2f}, stop: {r.stop_reason}"
        for r in report.trained
    ]
    parts += [f"object {obj}: {why}" for obj, why in report.skipped.items()]
    parts += [f"⚠ {r.warning}" for r in report.trained if getattr(r, "warning", None)]
    scope = getattr(report, "scope_note", "")
    return (
        f"learned from frame {report.frame}: "
        + ("; ".join(parts) or "nothing trained")
        + (f" ({scope})" if scope else "")
    )


class LearningControl:
    """The learner of the annotator's session, and the checks before each action.

    Parameters
    ----------
    annotator : Annotator
        The chosen stack and its session.
    preset : str
        LoRA settings preset of new learners.
    scope : {"object", "class"}
        What an adapter learns for: each object its own (LIT), or one shared adapter pool
        for every object (look-alike cells).

    Attributes
    ----------
    learner : Learner or None
        Recreated when the session changes; the adapters carry over when the new
        session's model has the same decoder (they live on it).
    """

    def __init__(
        self, annotator: Annotator, preset: str = "default", scope: str = "object"
    ) -> None:
        self.annotator = annotator
        self.viewer = annotator.viewer
        self.preset = preset
        self.scope = scope
        self.learner: Any = None

    # -- context ------------------------------------------------------------------------------
    def context(self) -> Context:
        """Image, stack, session, learner and masks layer; errors say what to do first."""
        annotator = self.annotator
        image = annotator.selection.image
        if image is None:
            raise StackError("no image layer: open a stack, propagate, then correct a frame")
        source = annotator.source()
        session = annotator.session()
        if session is None:
            raise PromptError(
                f"no segmentation of '{image.name}' here yet: propagate it first "
                f"(Propagate), then correct a frame"
            )
        learner = None if self.learner is None else self.learner_for(session)
        region = annotator.sessions.region  # the cached session's: it is ``session``
        return Context(image, source, session, learner, annotator.output(), region)

    def learner_for(self, session: Any) -> Any:
        """The learner of ``session`` (made on first use: the first import takes seconds)."""
        from napari_sam_lora.engine.learning.learner import Learner

        old = self.learner
        if old is not None and old.session is session:
            return old
        same_scope = old is not None and getattr(old, "scope", "object") == self.scope
        if same_scope and old.decoder is session.model.predictor.sam_mask_decoder:
            # same model: the adapters (they live on its decoder) go on with the new stack
            old.session = session
            old.adapter_frames.clear()
            return old
        if old is not None:
            old.close()
        self.learner = Learner(session, self.preset, scope=self.scope)
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

    def set_scope(self, scope: str) -> bool:
        """Learn per object or per class from now on. A learner of the other scope is closed
        (its adapters leave the decoder: save them first); says whether one was closed.

        Raises
        ------
        SettingsError
            Not a scope.
        """
        from napari_sam_lora.engine.learning.records import check_scope

        scope = check_scope(scope)
        if scope == self.scope:
            return False
        self.scope = scope
        closed = self.learner is not None and bool(self.learner.adapter_names())
        self.release()
        return closed

    def set_preset(self, preset: str) -> None:
        """Use ``preset`` from now on (also for the current learner's next trainings)."""
        settings = load_settings(preset)
        self.preset = preset
        if self.learner is not None:
            self.learner.settings = settings
            for pool in self.learner.pools.values():
                pool.settings = settings

    # -- actions ------------------------------------------------------------------------------
    def prepare_learn(self, frame: int | None, quiet: bool = False) -> tuple[Any, int] | None:
        """``(session, frame)`` to learn from: the frame's corrections no adapter learned
        from yet (the user's strokes made them).

        Returns ``None`` when ``quiet`` and there is nothing to learn.

        Raises
        ------
        SamLoraError
            No session, or nothing to learn on the frame.
        """
        ctx = self.context()
        frame = ctx.source.current_frame if frame is None else int(frame)
        try:
            ctx.session.annotation.check_unlearned(frame)
        except PromptError:
            if quiet:
                return None
            raise
        return ctx.session, frame

    def prepare_propose(self, first: int, last: int) -> Context:
        """Check that proposing frames ``first``–``last`` makes sense."""
        ctx = self.context()
        if ctx.learner is None or not ctx.learner.adapter_names():
            raise PromptError(
                "no adapters yet: correct a frame and click 'Learn from this frame' first "
                "(or load adapters)"
            )
        if first > last:
            raise PromptError(f"empty frame range {first} to {last}: set 'propose frames'")
        return ctx

    def show_candidates(
        self,
        image: Any,
        source: StackSource,
        candidates: list[Any],
        region: Region | None = None,
    ) -> int:
        """Add candidate layers (replacing older ones of the same adapter); returns how many.

        ``region``: the rectangle of the session that proposed them (their masks have its
        shape; the layers have the image's, with the masks at the region's offset)."""
        if not candidates or not any(same_layer(image, x) for x in self.viewer.layers):
            return 0
        new = {(c.obj_id, c.adapter_name) for c in candidates}
        for layer in candidate_layers(self.viewer):
            info = layer.metadata["napari_sam_lora"]
            if info.get("image") == image.name and (info["obj_id"], info["adapter"]) in new:
                reject_candidate(self.viewer, layer)
        for candidate in reversed(candidates):  # the most confident ends on top, selected
            add_candidate_layer(self.viewer, image, source, candidate, region)
        return len(candidates)

    def plan_accept(
        self, layer: Any, frames: list[int] | None = None, overwrite_confirmed: bool = False
    ) -> AcceptPlan:
        """Check an accept of the candidate ``layer`` (all its frames or ``frames``);
        frames the user confirmed are skipped unless ``overwrite_confirmed``.

        Raises
        ------
        PromptError
            Not a candidate layer, an adapter this session lacks, frames it does not
            propose, or nothing left to accept.
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
        candidate = candidate_of(layer, ctx.source, ctx.region)  # the session's shape
        asked = candidate.frames if frames is None else [int(f) for f in frames]
        missing = [f for f in asked if f not in candidate.frames]
        if missing:
            raise PromptError(
                f"candidate '{layer.name}' proposes frames {candidate.frames}, not {missing}: "
                f"step onto one of its frames first"
            )
        annotations = ctx.session.annotations
        skipped = (
            []
            if overwrite_confirmed
            else [f for f in asked if annotations.kept_by_accepts(f, candidate.obj_id)]
        )
        chosen = [f for f in asked if f not in skipped]
        if not chosen:
            raise PromptError(
                f"frame(s) {skipped} of object {candidate.obj_id} are confirmed by you: "
                f"nothing to accept (tick 'overwrite confirmed frames' to replace them)"
            )
        return AcceptPlan(layer, ctx.learner, candidate, chosen, skipped, overwrite_confirmed)

    def drop_accepted(
        self, image: Any, source: StackSource, accepted: list[tuple[Any, Any]]
    ) -> None:
        """Take the accepted frames out of the candidate layers (a layer with no frame
        left goes)."""
        for candidate, report in accepted:
            for layer in candidate_layers(self.viewer):
                info = layer.metadata["napari_sam_lora"]
                if (
                    info.get("image") == image.name
                    and info["obj_id"] == candidate.obj_id
                    and info["adapter"] == candidate.adapter_name
                ):
                    drop_candidate_frames(self.viewer, layer, source, report.frames)

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
        if learner is None or not learner.adapter_names():
            raise SamLoraError("no adapters to save yet: correct a frame and Learn first")
        weights, _ = learner.save(path)
        return str(weights)

    def prepare_load(self) -> Any:
        """The session to load adapters for (with :func:`~.jobs.load_job`)."""
        return self.context().session
