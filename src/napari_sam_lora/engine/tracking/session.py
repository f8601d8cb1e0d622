"""``Session``: the one object widgets and scripts use to segment a stack with SAM2.

A session keeps, per (frame, object), who made the mask (:mod:`.annotations`): frames the
user confirmed — prompted, corrected or accepted — stay SAM2 conditioning frames for the
whole session and keep their masks exactly; propagation continues from all of them and
rewrites only model-made masks.

Example
-------
>>> from napari_sam_lora import Session
>>> session = Session(stack, model="untrained:sam2.1_hiera_tiny", image_size=512)
>>> session.add_points(frame=0, obj_id=1, points=[[64, 40]], labels=[1])  # (row, col)
>>> labels = session.propagate_all(direction="forward")                    # (T, H, W)
>>> edited = labels[5].copy(); edited[10:20, 10:20] = 1                   # the user's fix
>>> session.add_correction(5, edited)                                      # confirmed
>>> report = session.repropagate(5)          # re-tracks only what the correction changes
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_lora.engine.annotation.corrections import Correction, diff_corrections
from napari_sam_lora.engine.annotation.model import AnnotationModel
from napari_sam_lora.engine.annotation.prompts import (
    BoxPrompt,
    MaskPrompt,
    PointPrompt,
    Prompt,
    prompt_key,
)
from napari_sam_lora.engine.annotation.state import AnnotationState, overlay_confirmed
from napari_sam_lora.engine.core.errors import ModelError, PromptError, SamLoraError
from napari_sam_lora.engine.core.jobs import drain
from napari_sam_lora.engine.core.validation import (
    check_frame,
    check_frames,
    check_object_id,
    short_repr,
)
from napari_sam_lora.engine.tracking import sam2_bridge as bridge
from napari_sam_lora.engine.tracking.conditioning import Conditioning
from napari_sam_lora.engine.tracking.features import BoundedStore, DecoderInputs
from napari_sam_lora.engine.tracking.frames import NormalisedFrames, new_inference_state
from napari_sam_lora.engine.tracking.models import DEFAULT_MODEL
from napari_sam_lora.engine.tracking.plans import (
    Pass,
    PropagationStep,
    compose_labels,
    plan_passes,
    prompted_frames,
    send_prompts,
    validate_prompts,
)
from napari_sam_lora.engine.tracking.predictor import LoadedModel, load_model
from napari_sam_lora.engine.tracking.repropagation import (
    RepropagationReport,
    mask_ious,
    repropagate_steps,
)

_MB = 2**20
#: Default budget for cached image features: 32 frames at 1024, 128 at 512.
DEFAULT_FEATURE_CACHE_MB = 512.0
#: Default budget for recorded decoder inputs: 64 (frame, object)s at 1024, 256 at 512.
DEFAULT_DECODER_CACHE_MB = 256.0


class Session:
    """SAM2 on one image stack: prompts and corrections in, label images out.

    Parameters
    ----------
    stack : array-like
        ``(H, W)``, ``(T, H, W)`` or ``(T, H, W, 3|4)``; numpy, dask or zarr; any dtype.
        Frames are read and normalised lazily (see :mod:`napari_sam_lora.engine.tracking.frames`).
    model : str or LoadedModel
        A variant name (``"sam2.1_hiera_tiny"``), ``"untrained:<variant>"`` (random
        weights), a checkpoint path, or an already loaded model. Several sessions may share
        one loaded model (one job at a time on it).
    device : str, optional
        ``"cuda"``, ``"mps"``, ``"cpu"``; default: the best available.
    image_size : int, optional
        SAM2 input size; default the model's own (1024). Smaller is faster, coarser.
    feature_cache_mb : float
        Memory budget for cached image features (≈16 MB per frame at 1024 in float32,
        4 MB at 512, 1 MB at 256). Evicted frames come back from the disk cache or are
        encoded again.
    decoder_cache_mb : float
        Memory budget for recorded decoder inputs (what learning from corrections and
        candidates use; ≈4 MB per tracked (frame, object) at 1024, 1 MB at 512).
    disk_cache : bool or path
        Also keep image features on disk (``True``: the user cache's ``features`` folder;
        or a folder), so reopening the stack tomorrow makes no image-encoder call.
    record_decoder_inputs : bool
        Record decoder inputs while tracking (default). ``False`` where nothing will learn
        from this session (batch segmentation): no record is kept.

    Notes
    -----
    Memory does not grow with the stack's length beyond the label images (kept compressed):
    the two budgets above bound the features and records, and SAM2 keeps its outputs only
    for conditioning frames and the frames its memory can still read (see
    :func:`~napari_sam_lora.engine.tracking.sam2_bridge.prune_tracking`).

    Raises
    ------
    StackError
        Unsupported shape, NaN/inf values or a constant image.
    ModelError
        Unknown model, unusable device, missing/corrupt/wrong checkpoint, failed download.
    """

    def __init__(
        self,
        stack: Any,
        model: str | LoadedModel = DEFAULT_MODEL,
        *,
        device: str | None = None,
        image_size: int | None = None,
        feature_cache_mb: float = DEFAULT_FEATURE_CACHE_MB,
        decoder_cache_mb: float = DEFAULT_DECODER_CACHE_MB,
        disk_cache: bool | str | os.PathLike[str] = False,
        record_decoder_inputs: bool = True,
    ) -> None:
        if not isinstance(model, str | os.PathLike | LoadedModel):
            raise ModelError(
                f"model must be a SAM2 variant name (e.g. {DEFAULT_MODEL!r}), "
                "'untrained:<variant>', the path to a .pt checkpoint, or a model from "
                f"load_model(); got a {type(model).__name__}: {short_repr(model)}"
            )
        # The stack is checked before a model is loaded: bad input fails fast.
        frames = NormalisedFrames(stack, image_size or 1024)
        self.model = (
            model if isinstance(model, LoadedModel) else load_model(model, device, image_size)
        )
        self.frames = (
            frames
            if frames.image_size == self.model.image_size
            else NormalisedFrames(stack, self.model.image_size, intensity=frames.intensity)
        )
        self.state = new_inference_state(
            self.frames, self.model.device, feature_cache_mb * _MB, decoder_cache_mb * _MB
        )
        self.state["record_inputs"] = bool(record_decoder_inputs)
        if disk_cache:
            from napari_sam_lora.engine.tracking.feature_disk import (
                FeatureDisk,
                default_feature_folder,
                model_key,
            )

            folder = default_feature_folder() if disk_cache is True else Path(disk_cache)
            self.state["feature_disk"] = FeatureDisk(folder, model_key(self.model))
        self.annotation = AnnotationModel(self.num_frames, self.frame_shape)
        self._conditioning = Conditioning(self.model.predictor, self.state)  # follows it
        self._assisted: dict[tuple[int, int], str] = {}
        self._busy = threading.Lock()

    # -- the annotation --------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        """``(T, H, W)`` int32 label images: the annotation model's, kept compressed per
        frame (:class:`~napari_sam_lora.engine.annotation.label_frames.LabelFrames`:
        ``labels[t]`` is a read-only frame, ``np.asarray(labels)`` a numpy copy)."""
        return self.annotation.labels

    @property
    def annotations(self) -> AnnotationState:
        """Who made each (frame, object) mask (the annotation model's entries)."""
        return self.annotation.entries

    @property
    def prompts(self) -> list[Prompt]:
        """The prompts given so far, in order (a copy)."""
        return self.annotation.prompts

    def undo(self) -> Any:
        """Undo the last action (prompt, correction, paint, accept, propagation…): labels,
        sources and prompts; SAM2 follows at the next job. Returns the model's ``Change``
        or ``None`` when there is nothing to undo."""
        return self.annotation.undo()

    def redo(self) -> Any:
        """Redo the last undone action; ``None`` when there is nothing to redo."""
        return self.annotation.redo()

    def paint(self, frame: int, index: Any, values: Any) -> list[int]:
        """The user's stroke on ``frame`` (one undo step): pixels ``index`` — flat indices
        or ``(rows, cols)`` — take ``values``; every object it changed becomes a confirmed,
        not yet learned correction. Returns those objects' ids."""
        with self.annotation.action(f"paint on frame {int(frame)}"):
            return self.annotation.paint(frame, index, values)

    # -- facts -----------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        """Number of frames in the stack."""
        return self.frames.num_frames

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(height, width)`` of every frame and of the label images."""
        return self.frames.frame_shape

    @property
    def model_label(self) -> str:
        """The model as shown to users; says UNTRAINED for random weights."""
        return self.model.label

    @property
    def object_ids(self) -> list[int]:
        """Ids of the objects the user made (a prompt or a confirmed mask), ascending."""
        return self.annotation.object_ids

    @property
    def prompted_frames(self) -> list[int]:
        """Frames SAM2 is conditioned on: prompted, corrected or accepted (= confirmed)."""
        return self.annotations.confirmed_frames()

    @property
    def confirmed_frames(self) -> list[int]:
        """Frames with a mask the user confirmed (prompted, corrected or accepted)."""
        return self.annotations.confirmed_frames()

    def conditioning_frames(self, obj_id: int) -> list[int]:
        """Frames SAM2 holds as conditioning frames for ``obj_id`` (once it follows the
        annotation: what the next job tracks from)."""
        with self.exclusive():
            self._follow_annotation()
        return bridge.conditioning_frames(self.state, obj_id)

    @property
    def encoder_calls(self) -> int:
        """Image-encoder runs so far on this session's model (cached frames cost none)."""
        return self.model.predictor.encoder_calls

    @property
    def encoder_seconds(self) -> float:
        """Seconds the image encoder ran so far on this session's model."""
        return self.model.predictor.encoder_seconds

    @property
    def memory_frames(self) -> int:
        """Frames SAM2's memory bank holds (7 for SAM2.1)."""
        return bridge.memory_frames(self.model.predictor)

    @property
    def feature_cache(self) -> BoundedStore:
        """Backbone features of visited frames (bounded by ``feature_cache_mb``)."""
        return self.state["feature_store"]

    def decoder_inputs(self, frame: int, obj_id: int) -> DecoderInputs | None:
        """What the mask decoder saw while tracking ``obj_id`` on ``frame`` (or ``None``:
        never tracked there, not recorded, or evicted by ``decoder_cache_mb``).

        The frame's high-resolution features come from the feature cache (or the disk
        cache, or the image encoder once more when the feature budget evicted them)."""
        with self.model.precision():
            return bridge.decoder_inputs(self.model.predictor, self.state, frame, obj_id)

    def clear_records(self, obj_id: int | None = None) -> None:
        """Forget recorded decoder inputs (of one object, or all)."""
        store: BoundedStore = self.state["decoder_store"]
        if obj_id is None:
            store.clear()
            return
        for key in [k for k in store if k[1] == int(obj_id)]:
            store.pop(key)

    # -- jobs ------------------------------------------------------------------------------
    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the session for one job; a second job meanwhile is refused, not queued.

        Raises
        ------
        SamLoraError
            Another job is running on this session.
        """
        if not self._busy.acquire(blocking=False):
            raise SamLoraError("this session is busy with another job; wait or cancel it first")
        try:
            yield
        finally:
            self._busy.release()

    # -- encoding --------------------------------------------------------------------------
    def encode_steps(
        self, frames: Iterable[int] | None = None
    ) -> Generator[tuple[int, int], None, int]:
        """Fill the feature cache, yielding ``(done, total)``; returns frames encoded.

        Stops after the first frame when the cache cannot hold every frame asked for
        (they are then encoded when tracked).
        """
        # Every frame is checked before the first is encoded.
        wanted = range(self.num_frames) if frames is None else check_frames(frames, self.num_frames)
        total, store = len(wanted), self.feature_cache
        with self.exclusive():
            for done, frame in enumerate(wanted, start=1):
                with self.model.precision():
                    bridge.encode(self.model.predictor, self.state, frame)
                yield done, total
                if done == 1 and store.nbytes * total > store.budget_bytes:
                    return 1
        return total

    def encode(self, frames: Iterable[int] | None = None) -> int:
        """Eager :meth:`encode_steps`."""
        return drain(self.encode_steps(frames))

    # -- prompts ---------------------------------------------------------------------------
    def validate_prompts(self, prompts: Sequence[Prompt]) -> None:
        """Raise :class:`PromptError` naming the first prompt SAM2 cannot use.

        An empty mask is a prompt only for an object SAM2 already tracks ("not here").
        """
        validate_prompts(prompts, self.num_frames, self.frame_shape, self.object_ids)

    def reset(self) -> None:
        """Forget prompts, corrections and tracking results (one undo step); keep cached
        image features."""
        with self.exclusive(), self.annotation.action("reset all"):
            self.annotation.erase_all()
            self._assisted.clear()

    def reset_object(self, obj_id: int) -> None:
        """Forget one object — its prompts, confirmed frames and masks (one undo step); the
        others stay.

        Raises
        ------
        PromptError
            ``obj_id`` is no object id (1 … 2³¹ − 1), as for :meth:`add_points`.
        """
        obj_id = check_object_id(obj_id, where="reset_object")
        with self.exclusive(), self.annotation.action(f"reset object {obj_id}"):
            self.annotation.erase_object(obj_id)
            self.clear_records(obj_id)

    def add_prompts(self, prompts: Iterable[Prompt]) -> np.ndarray:
        """Add prompts (validated first; one undo step); return the label images of the
        prompted frames.

        The prompted (frame, object)s become confirmed: their masks are SAM2's answer to
        the prompt (for a mask prompt, the mask itself).

        Returns
        -------
        np.ndarray
            ``(len(frames), H, W)`` int32 labels of :attr:`prompted_frames` after the call.
        """
        prompts = list(prompts)
        self.validate_prompts(prompts)
        with self.exclusive(), self.annotation.action(_describe(prompts)):
            self._follow_annotation()
            self._send(prompts)
        return self.labels[self.prompted_frames]

    def _send(self, prompts: Sequence[Prompt]) -> None:
        """Give validated prompts to SAM2 and confirm what they produce (job and action
        held; SAM2 already follows the annotation)."""
        with self.model.precision():
            send_prompts(self.model.predictor, self.state, prompts, self._shown_mask)
        self.annotation.set_prompts([*self.annotation.prompts, *prompts])
        answered = {}
        for frame, obj_id in sorted({(int(p.frame), int(p.obj_id)) for p in prompts}):
            group = [p for p in prompts if (int(p.frame), int(p.obj_id)) == (frame, obj_id)]
            if all(isinstance(p, MaskPrompt) for p in group):
                mask = np.asarray(group[-1].mask, bool)  # SAM2 takes a mask prompt as it is
            else:
                mask = self._model_mask(frame, obj_id)
            self.annotation.confirm(frame, obj_id, "prompt", mask, paint=False)
            answered[(frame, obj_id)] = self.annotations.entry(frame, obj_id)
            self._assisted.pop((frame, obj_id), None)
        self._conditioning.sent(prompts, answered)
        for frame in prompted_frames(prompts):
            self.annotation.write_frame(frame, self._frame_labels(frame))

    def _shown_mask(self, frame: int, obj_id: int) -> np.ndarray | None:
        """What the labels show of ``obj_id`` on ``frame`` (``None``: nothing), for SAM2 to
        refine a click from where it no longer holds its own mask there."""
        shown = self.labels[frame] == obj_id
        return shown if shown.any() else None

    def add_points(self, frame: int, obj_id: int, points: Any, labels: Any = None) -> np.ndarray:
        """Clicks ``(N, 2)`` in ``(row, col)``; labels 1 positive / 0 negative (default 1).

        Returns the ``(H, W)`` label image of ``frame``.
        """
        self.add_prompts([PointPrompt(frame, obj_id, points, labels)])
        return self.labels[frame]

    def add_box(self, frame: int, obj_id: int, box: Any) -> np.ndarray:
        """A box ``(row0, col0, row1, col1)``; returns the label image of ``frame``."""
        self.add_prompts([BoxPrompt(frame, obj_id, box)])
        return self.labels[frame]

    def add_mask(self, frame: int, obj_id: int, mask: Any) -> np.ndarray:
        """A boolean ``(H, W)`` mask; returns the label image of ``frame``."""
        self.add_prompts([MaskPrompt(frame, obj_id, mask)])
        return self.labels[frame]

    def add_label_image(self, frame: int, label_image: Any) -> list[int]:
        """Seed objects from a label image: every non-zero id on ``frame`` becomes an object
        (its id kept) with its mask as prompt — one undo step.

        Returns
        -------
        list of int
            The ids seeded, ascending.

        Raises
        ------
        PromptError
            Frame out of range, a label image of another shape, no object in it, or values
            that are no object ids (fractions, negatives, beyond 2³¹ − 1).
        """
        from napari_sam_lora.engine.tracking import fields

        return fields.seed_label_image(self, frame, label_image)

    def segment_all(self, frame: int, options: Any = None) -> list[int]:
        """*Segment all* on ``frame``: sam2's automatic mask generator, its masks made
        objects with new ids (:meth:`add_label_image`; one undo step). The user's objects on
        the frame keep their pixels.

        Parameters
        ----------
        options : AutomaticOptions, optional
            Minimum area, overlap and the generator's settings
            (:class:`~napari_sam_lora.engine.tracking.automatic.AutomaticOptions`).

        Returns
        -------
        list of int
            The new objects' ids (empty when the generator found nothing to keep).
        """
        from napari_sam_lora.engine.tracking.automatic import AutomaticOptions, automatic_labels

        frame = check_frame(frame, self.num_frames)
        options = AutomaticOptions() if options is None else options
        if not isinstance(options, AutomaticOptions):
            raise PromptError(f"options must be AutomaticOptions, not {type(options).__name__}")
        with self.exclusive():
            labels = automatic_labels(self, frame, options)
        if not labels.any():
            return []
        return self.add_label_image(frame, labels)

    def preview(self, frame: int, obj_id: int, prompts: Sequence[Prompt]) -> np.ndarray:
        """SAM2's mask for ``prompts`` (points and/or a box of one object on ``frame``) as a
        first prompt there, at once: the frame's cached features (encoded once if needed)
        and the mask decoder only. Nothing changes — no object, no undo step; what the
        user sees while clicking, before any propagation.

        Returns
        -------
        np.ndarray
            ``(H, W)`` bool mask (a mask prompt is its own preview).

        Raises
        ------
        PromptError
            A prompt SAM2 cannot use, of another frame or object, or no prompt.
        """
        from napari_sam_lora.engine.tracking import fields

        return fields.preview_mask(self, frame, obj_id, prompts)

    def split_object(self, frame: int, obj_id: int, daughter_masks: Sequence[Any]) -> list[int]:
        """A division: from ``frame`` on, ``obj_id`` is gone and its two daughters — new
        ids, masks ``daughter_masks`` (the user's) as their prompts — go on; the lineage
        (daughter → parent, frame) is part of the annotation. One undo step.

        The parent keeps its masks before ``frame``; its masks from ``frame`` on are
        removed, and propagation writes it only before ``frame`` and the daughters only from
        ``frame`` on.

        Returns
        -------
        list of int
            The daughters' ids.

        Raises
        ------
        PromptError
            Not an object, not two non-empty, non-overlapping masks of the frame's shape, or
            ``obj_id`` already divided.
        """
        from napari_sam_lora.engine.tracking import fields

        return fields.split_object(self, frame, obj_id, daughter_masks)

    def set_prompts(self, prompts: Sequence[Prompt]) -> bool:
        """Make the prompts equal to ``prompts``, keeping corrections and accepts (one undo
        step).

        What the dock calls with the prompt layers' content before propagating. New
        prompts are added; when a prompt was changed or removed, SAM2 is given the prompts
        and then every other confirmed mask again (cached image features are kept); a
        frame that lost its prompt becomes model-made. Returns whether anything changed.
        """
        prompts = list(prompts)
        if prompts:
            self.validate_prompts(prompts)
        old = [prompt_key(p) for p in self.annotation.prompts]
        new = [prompt_key(p) for p in prompts]
        if new == old:
            return False
        if new[: len(old)] == old:
            self.add_prompts(prompts[len(old) :])
            return True
        with self.exclusive(), self.annotation.action("change prompts"):
            kept = []  # corrections and accepts: they win over a re-sent prompt's answer
            for frame, obj_id in self.annotations.confirmed():
                entry = self.annotations.entry(frame, obj_id)
                if entry.source == "prompt":
                    self.annotation.demote(frame, obj_id)
                else:
                    kept.append((frame, obj_id, entry))
            self.annotation.set_prompts([])
            self._conditioning.restart()
            if prompts:
                self._send(prompts)
            for frame, obj_id, entry in kept:
                if self.annotations.entry(frame, obj_id) is not entry:
                    self.annotation.reinstate(frame, obj_id, entry)
            self._follow_annotation()
        return True

    # -- SAM2 follows the annotation -------------------------------------------------------
    def _follow_annotation(self) -> None:
        """Make SAM2's conditioning equal to the annotation model (job held); see
        :mod:`.conditioning`."""
        with self.model.precision():
            self._conditioning.follow(self.annotation, self._model_mask)

    # -- corrections -----------------------------------------------------------------------
    def diff(self, frame: int, user_labels: np.ndarray) -> list[Correction]:
        """The corrections ``user_labels`` makes to the session's labels of ``frame``.

        Raises
        ------
        PromptError
            Frame out of range, wrong shape, invalid ids, or nothing changed.
        """
        if not 0 <= int(frame) < self.num_frames:
            raise PromptError(f"frame {frame} is out of range (0–{self.num_frames - 1})")
        return diff_corrections(
            int(frame), self.labels[int(frame)], user_labels, set(self.object_ids)
        )

    def add_correction(self, frame: int, user_labels: np.ndarray) -> list[Correction]:
        """Commit the user's edited label image of ``frame``: every object it changes
        becomes a confirmed correction (one undo step; no training).

        Returns the corrections (one per changed object).
        """
        corrections = self.diff(frame, user_labels)
        with self.exclusive(), self.annotation.action(f"correction on frame {int(frame)}"):
            self.condition_on(corrections, "correction")
        return corrections

    def condition_on(
        self,
        masks: Iterable[MaskPrompt | Correction],
        source: str = "correction",
        adapter: str | None = None,
    ) -> None:
        """Make masks confirmed (SAM2 conditioning frames from the next job on); callers
        hold :meth:`exclusive` (and may hold an annotation action to join).

        Parameters
        ----------
        masks : iterable of MaskPrompt or Correction
            ``frame``, ``obj_id`` and ``mask`` of each.
        source : {"correction", "accepted", "auto_accepted", "prompt"}
            Recorded in :attr:`annotations`.
        adapter : str, optional
            The adapter whose candidate was accepted.
        """
        masks = list(masks)
        if not masks:
            return
        with self.annotation.action(f"{source} on frame(s) {sorted({m.frame for m in masks})}"):
            for item in masks:
                self.annotation.confirm(
                    int(item.frame), int(item.obj_id), source, np.asarray(item.mask, bool), adapter
                )
                self._assisted.pop((int(item.frame), int(item.obj_id)), None)

    # -- files -----------------------------------------------------------------------------
    def save_state(self, path: str | os.PathLike[str]) -> list[Path]:
        """Save prompts, confirmed frames, sources and labels (``<path>.session.json/.npz``).

        Save the adapters beside it with :meth:`Learner.save`.
        """
        from napari_sam_lora.engine.tracking.session_files import write_state

        return write_state(self, path)

    def restore_state(self, path: str | os.PathLike[str]) -> None:
        """Continue a session saved by :meth:`save_state` (on this session's stack).

        Raises
        ------
        SessionFileError
            Missing or damaged files, or a file saved for another stack.
        """
        from napari_sam_lora.engine.tracking.session_files import read_state

        read_state(self, path)

    def restore(
        self,
        prompts: Sequence[Prompt],
        state: AnnotationState,
        labels: Any,
        lineage: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        """Start over from saved prompts, annotation state, labels and divisions (see
        :meth:`restore_state`; one undo step). SAM2 is given the prompts, then every other
        confirmed mask, at the next job."""
        prompts = list(prompts)
        if prompts:
            self.validate_prompts(prompts)
        with self.exclusive(), self.annotation.action("restore session"):
            self.annotation.replace_all(prompts, state, labels, lineage)
            self._conditioning.restart()
            self._assisted.clear()

    # -- tracking single frames (learning, evaluation, fine-tuning) ------------------------
    def track_frame(self, frame: int, obj_id: int) -> DecoderInputs:
        """Track ``frame`` for ``obj_id`` from memory (its own prompt hidden) and return the
        decoder inputs that records; callers hold :meth:`exclusive`.

        Raises
        ------
        PromptError
            The object has no other conditioning frame, so the frame cannot be tracked.
        """
        self._follow_annotation()
        with self.model.precision():
            tracked = bridge.track_hidden(self.model.predictor, self.state, frame, obj_id)
        if not tracked:
            raise PromptError(
                f"frame {frame} was never tracked for object {obj_id} and cannot be: "
                "the object has no other prompted frame yet. Prompt it elsewhere and "
                "propagate first."
            )
        return self.decoder_inputs(frame, obj_id)

    @contextmanager
    def recording_prompts(self, frame: int, obj_id: int) -> Iterator[None]:
        """Record the decoder inputs of prompts added to ``frame`` for ``obj_id`` in the
        block (read them with :meth:`decoder_inputs`)."""
        self.state["decoder_store"].pop((int(frame), int(obj_id)))
        with bridge.recording(self.model.predictor, self.state, int(frame), int(obj_id)):
            yield

    @contextmanager
    def assisting(self, hook: bridge.AssistHook) -> Iterator[None]:
        """Let ``hook(frame, obj_id, decoder_kwargs, output)`` replace SAM2's decoder output
        on tracked frames while the block runs.

        The hook returns ``None`` (keep SAM2's) or ``(output, adapter_name)``; frames where
        it replaced the output get the source ``"adapter"``.
        """

        def wrapped(frame: int, obj_id: int, kwargs: dict, output: tuple) -> tuple | None:
            result = hook(frame, obj_id, kwargs, output)
            if result is None:
                self._assisted.pop((frame, obj_id), None)
                return None
            replaced, adapter_name = result
            self._assisted[(frame, obj_id)] = adapter_name
            return replaced

        with bridge.assisting(self.state, wrapped):
            yield

    # -- propagation -----------------------------------------------------------------------
    def propagate_steps(
        self,
        direction: str = "forward",
        frame_range: tuple[int, int] | None = None,
        assist: bridge.AssistHook | None = None,
    ) -> Iterator[PropagationStep]:
        """Track every object through the stack, one :class:`PropagationStep` per frame.

        Continues from every confirmed frame and rewrites only model-made masks; the
        frames it visits are tracked afresh (SAM2's earlier memory of them is dropped), so
        the same annotation gives the same masks every time: propagating with nothing
        changed changes nothing. The whole propagation is one undo step. Stop iterating
        (``close()`` the generator) to cancel: the annotation returns to what it was.

        Parameters
        ----------
        direction : {"forward", "backward", "both"}
        frame_range : tuple of int, optional
            Inclusive ``(first, last)``; default the whole stack.
        assist : callable, optional
            ``assist(frame, obj_id, decoder_kwargs, output)`` may replace SAM2's decoder
            output on tracked frames (a learner's adapters: :meth:`Learner.assist`);
            frames it replaced get the source ``"adapter"``.
        """
        anchors = self.annotations.confirmed_frames()
        if not anchors:
            raise PromptError("no prompts: add a point, box or mask before propagating")
        passes = plan_passes(direction, frame_range, anchors, self.num_frames)
        total = sum(len(p.frames) for p in passes)
        done = 0
        name = f"propagate {direction}" + (
            f" over frames {frame_range[0]}–{frame_range[1]}" if frame_range else ""
        )
        with self.exclusive(), self.annotation.action(name), self._assisting(assist):
            self._follow_annotation()
            bridge.forget_tracking(self.state, {f for p in passes for f in p.frames})
            for sam_pass in passes:
                for frame in self._run_pass(sam_pass):
                    done += 1
                    yield PropagationStep(frame, done, total, self.labels[frame].copy())

    propagate = propagate_steps  # the name scripts of version 0.1 used

    def propagate_all(
        self,
        direction: str = "both",
        frame_range: tuple[int, int] | None = None,
        assist: bridge.AssistHook | None = None,
    ) -> np.ndarray:
        """Run :meth:`propagate_steps` to the end; return :attr:`labels` (``(T, H, W)``
        int32, array-like: ``np.asarray`` for a numpy copy)."""
        for _ in self.propagate_steps(direction, frame_range, assist):
            pass
        return self.labels

    def repropagate_steps(
        self,
        frame: int,
        direction: str = "both",
        agree_iou: float = 0.98,
        agree_frames: int | None = None,
        full: bool = False,
        frame_range: tuple[int, int] | None = None,
        assist: bridge.AssistHook | None = None,
    ) -> Generator[PropagationStep, None, RepropagationReport]:
        """Re-track after a change on ``frame`` (a correction or an accept), only as far as
        it changes anything, within ``frame_range`` (inclusive; default the whole stack).
        One undo step (joined to the caller's action when one is open, as an accept with
        its re-propagation); closing the generator rolls it back.

        From ``frame``, each direction re-tracks until the new masks agree with the previous
        ones (IoU ≥ ``agree_iou`` for every object) on ``agree_frames`` consecutive frames
        (default: SAM2's memory bank, 7 for SAM2.1). ``full=True`` re-tracks the whole stack
        in ``direction`` (``both``: forward from the first confirmed frame, then backward).
        Yields a :class:`PropagationStep` per frame (``total`` is the most it could track);
        returns a :class:`RepropagationReport`. ``assist`` as in :meth:`propagate_steps`.
        """
        name = f"re-propagate from frame {int(frame)}"
        with self.annotation.action(name), self._assisting(assist):
            return (
                yield from repropagate_steps(
                    self, frame, direction, agree_iou, agree_frames, full, frame_range
                )
            )

    def _assisting(self, assist: bridge.AssistHook | None) -> Any:
        return nullcontext() if assist is None else self.assisting(assist)

    def repropagate(self, frame: int, **options: Any) -> RepropagationReport:
        """Eager :meth:`repropagate_steps`."""
        return drain(self.repropagate_steps(frame, **options))

    def _run_pass(self, sam_pass: Pass, compare: bool = False) -> Iterator[Any]:
        """Track one pass; yields each frame (with per-object IoUs vs before if ``compare``)."""
        predictor = self.model.predictor
        reach = bridge.memory_reach(predictor)
        steps = predictor.propagate_in_video(
            self.state,
            start_frame_idx=sam_pass.start,
            max_frame_num_to_track=sam_pass.count,
            reverse=sam_pass.reverse,
        )
        try:
            while True:
                with self.model.precision():
                    try:
                        frame, obj_ids, logits = next(steps)
                    except StopIteration:
                        return
                bridge.prune_tracking(self.state, frame, sam_pass.reverse, reach)
                before = self.labels[frame].copy() if compare else None
                self.annotation.write_frame(frame, self._compose(frame, obj_ids, logits))
                if compare:
                    yield frame, mask_ious(before, self.labels[frame], obj_ids)
                else:
                    yield frame
        finally:
            steps.close()

    def _compose(self, frame: int, obj_ids: Sequence[int], logits: Any) -> np.ndarray:
        """Label image of ``frame``: model-made masks, then confirmed masks over them."""
        obj_ids = [int(i) for i in obj_ids]
        scores = logits.float().cpu().numpy() if hasattr(logits, "float") else np.asarray(logits)
        model_made = []
        for k, obj_id in enumerate(obj_ids):
            adapter = self._assisted.pop((frame, obj_id), None)  # set by the assist hook
            if not self.annotation.alive(obj_id, frame):
                continue  # a parent after its division, a daughter before it
            source = "adapter" if adapter else "sam2"
            if self.annotation.model_made(frame, obj_id, source, adapter):
                model_made.append(k)
        labels = np.zeros(self.frame_shape, dtype=np.int32)
        if model_made:
            labels = compose_labels([obj_ids[k] for k in model_made], scores[model_made])
        return overlay_confirmed(labels, self.annotations, frame)

    def _model_mask(self, frame: int, obj_id: int) -> np.ndarray:
        """SAM2's current mask of ``obj_id`` on ``frame`` at the stack's resolution."""
        out = bridge.frame_output(self.state, obj_id, frame)
        if out is None:
            return np.zeros(self.frame_shape, dtype=bool)
        masks = bridge.video_masks(self.model.predictor, self.state, out["pred_masks"])
        return masks[0, 0] > 0

    def _frame_labels(self, frame: int) -> np.ndarray:
        """Current label image of ``frame`` from SAM2's outputs and the confirmed masks."""
        import torch

        ids, logits, kept = [], [], []
        current = self.labels[frame]
        for obj_id in self.object_ids:
            if self.annotations.is_confirmed(frame, obj_id) or not self.annotation.alive(
                obj_id, frame
            ):
                continue
            out = bridge.frame_output(self.state, obj_id, frame)
            if out is not None:
                ids.append(obj_id)
                logits.append(out["pred_masks"])
            else:  # SAM2 no longer holds this frame (see prune_tracking): keep its mask
                kept.append(obj_id)
        labels = np.zeros(self.frame_shape, dtype=np.int32)
        if ids:
            masks = bridge.video_masks(self.model.predictor, self.state, torch.cat(logits, dim=0))
            labels = compose_labels(ids, masks)
        for obj_id in kept:
            labels[(current == obj_id) & (labels == 0)] = obj_id
        return overlay_confirmed(labels, self.annotations, frame)

    def segment(
        self,
        prompts: Sequence[Prompt],
        direction: str = "forward",
        frame_range: tuple[int, int] | None = None,
    ) -> Iterator[PropagationStep]:
        """Validate, reset, add ``prompts`` and propagate from scratch, in one generator.

        Everything confirmed before is forgotten (use :meth:`set_prompts` and
        :meth:`propagate_steps` to keep corrections). Nothing is reset unless every prompt
        and the frame range are valid. One undo step.
        """
        prompts = list(prompts)
        self.validate_prompts(prompts)
        plan_passes(direction, frame_range, prompted_frames(prompts), self.num_frames)
        with self.annotation.action("segment"):
            self.reset()
            self.add_prompts(prompts)
            yield from self.propagate_steps(direction, frame_range)


def _describe(prompts: Sequence[Prompt]) -> str:
    objects = sorted({int(p.obj_id) for p in prompts})
    frames = sorted({int(p.frame) for p in prompts})
    return f"prompt object(s) {objects} on frame(s) {frames}"
