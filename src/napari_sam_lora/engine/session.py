"""``Session``: the one object widgets and scripts use to segment a stack with SAM2.

Example
-------
>>> from napari_sam_lora import Session
>>> session = Session(stack, model="untrained:sam2.1_hiera_tiny", image_size=512)
>>> session.add_points(frame=0, obj_id=1, points=[[64, 40]], labels=[1])  # (row, col)
>>> labels = session.propagate_all(direction="forward")                    # (T, H, W)
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from napari_sam_lora.engine.errors import PromptError, SamLoraError
from napari_sam_lora.engine.features import BoundedStore, DecoderInputs
from napari_sam_lora.engine.frames import NormalisedFrames, new_inference_state
from napari_sam_lora.engine.models import DEFAULT_MODEL
from napari_sam_lora.engine.predictor import LoadedModel, load_model
from napari_sam_lora.engine.prompts import BoxPrompt, MaskPrompt, PointPrompt, Prompt
from napari_sam_lora.engine.tracking import (
    PropagationStep,
    compose_labels,
    plan_passes,
    prompted_frames,
    send_prompts,
    validate_prompts,
)

_MB = 2**20


class Session:
    """SAM2 on one image stack: prompts in, label images out.

    Parameters
    ----------
    stack : array-like
        ``(H, W)``, ``(T, H, W)`` or ``(T, H, W, 3|4)``; numpy, dask or zarr; any dtype.
        Frames are read and normalised lazily (see :mod:`napari_sam_lora.engine.frames`).
    model : str or LoadedModel
        A variant name (``"sam2.1_hiera_tiny"``), ``"untrained:<variant>"`` (random
        weights), a checkpoint path, or an already loaded model to share between stacks.
    device : str, optional
        ``"cuda"``, ``"mps"``, ``"cpu"``; default: the best available.
    image_size : int, optional
        SAM2 input size; default the model's own (1024). Smaller is faster, coarser.
    feature_cache_mb : float
        Memory budget for cached image features (≈16 MB per frame at 1024 in float32).
    decoder_cache_mb : float
        Memory budget for recorded decoder inputs (used to learn from corrections).

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
        feature_cache_mb: float = 2048.0,
        decoder_cache_mb: float = 1024.0,
    ) -> None:
        self.model = (
            model if isinstance(model, LoadedModel) else load_model(model, device, image_size)
        )
        self.frames = NormalisedFrames(stack, self.model.image_size)
        self.state = new_inference_state(
            self.frames, self.model.device, feature_cache_mb * _MB, decoder_cache_mb * _MB
        )
        self.labels = np.zeros((self.num_frames, *self.frame_shape), dtype=np.int32)
        self.prompts: list[Prompt] = []
        self._busy = threading.Lock()

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
        """Ids of the objects SAM2 currently tracks."""
        return list(self.state["obj_ids"])

    @property
    def prompted_frames(self) -> list[int]:
        """Frames that carry a prompt."""
        return prompted_frames(self.prompts)

    @property
    def encoder_calls(self) -> int:
        """Image-encoder runs so far (cached frames cost none)."""
        return self.model.predictor.encoder_calls

    @property
    def feature_cache(self) -> BoundedStore:
        """Backbone features of visited frames (bounded by ``feature_cache_mb``)."""
        return self.state["feature_store"]

    def decoder_inputs(self, frame: int, obj_id: int) -> DecoderInputs | None:
        """What the mask decoder saw while tracking ``obj_id`` on ``frame`` (or ``None``)."""
        return self.state["decoder_store"].get((int(frame), int(obj_id)))

    # -- prompts ---------------------------------------------------------------------------
    def validate_prompts(self, prompts: Sequence[Prompt]) -> None:
        """Raise :class:`PromptError` naming the first prompt SAM2 cannot use."""
        validate_prompts(prompts, self.num_frames, self.frame_shape)

    def reset(self) -> None:
        """Forget prompts and tracking results; keep cached image features."""
        with self._job():
            self.model.predictor.reset_state(self.state)
            self.prompts = []
            self.labels[:] = 0

    def add_prompts(self, prompts: Iterable[Prompt]) -> np.ndarray:
        """Add prompts (validated first); return the label images of the prompted frames.

        Returns
        -------
        np.ndarray
            ``(len(frames), H, W)`` int32 labels of :attr:`prompted_frames` after the call.
        """
        prompts = list(prompts)
        self.validate_prompts(prompts)
        with self._job(), self.model.precision():
            send_prompts(self.model.predictor, self.state, prompts)
            self.prompts.extend(prompts)
            for frame in prompted_frames(prompts):
                self.labels[frame] = self._frame_labels(frame)
        return self.labels[self.prompted_frames]

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

    # -- propagation -----------------------------------------------------------------------
    def propagate(
        self, direction: str = "forward", frame_range: tuple[int, int] | None = None
    ) -> Iterator[PropagationStep]:
        """Track every object through the stack, one :class:`PropagationStep` per frame.

        Stop iterating (or ``close()`` the generator) to cancel: frames already yielded
        stay in :attr:`labels`.

        Parameters
        ----------
        direction : {"forward", "backward", "both"}
        frame_range : tuple of int, optional
            Inclusive ``(first, last)``; default the whole stack.
        """
        if not self.prompts:
            raise PromptError("no prompts: add a point, box or mask before propagating")
        passes = plan_passes(direction, frame_range, self.prompted_frames, self.num_frames)
        total = sum(len(p.frames) for p in passes)
        done = 0
        with self._job():
            for sam_pass in passes:
                for frame in self._run_pass(sam_pass):
                    done += 1
                    yield PropagationStep(frame, done, total, self.labels[frame].copy())

    def _run_pass(self, sam_pass: Any) -> Iterator[int]:
        predictor = self.model.predictor
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
                self.labels[frame] = compose_labels(obj_ids, logits.float().cpu().numpy())
                yield frame
        finally:
            steps.close()

    def propagate_all(
        self, direction: str = "both", frame_range: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Run :meth:`propagate` to the end; return :attr:`labels` ``(T, H, W)`` int32."""
        for _ in self.propagate(direction, frame_range):
            pass
        return self.labels

    def segment(
        self,
        prompts: Sequence[Prompt],
        direction: str = "forward",
        frame_range: tuple[int, int] | None = None,
    ) -> Iterator[PropagationStep]:
        """Validate, reset, add ``prompts`` and propagate: what the widget's button does.

        Nothing is reset unless every prompt and the frame range are valid.
        """
        prompts = list(prompts)
        self.validate_prompts(prompts)
        plan_passes(direction, frame_range, prompted_frames(prompts), self.num_frames)
        self.reset()
        self.add_prompts(prompts)
        yield from self.propagate(direction, frame_range)

    # -- for the learner (callers hold the job) ----------------------------------------
    def _track_to_record(self, frame: int, obj_id: int) -> DecoderInputs:
        """Track ``frame`` for ``obj_id`` from memory, its own outputs hidden, and return the
        decoder inputs that records (the frame's prompt must not leak into its features).

        Raises
        ------
        PromptError
            The object has no other conditioning frame, so the frame cannot be tracked.
        """
        import torch

        state = self.state
        obj_idx = state["obj_id_to_idx"].get(obj_id)
        outputs = state["output_dict_per_obj"][obj_idx] if obj_idx is not None else {}
        hidden = {k: outputs[k].pop(frame) for k in outputs if frame in outputs[k]}
        try:
            if not outputs or not outputs["cond_frame_outputs"]:
                raise PromptError(
                    f"frame {frame} was never tracked for object {obj_id} and cannot be: "
                    "the object has no other prompted frame yet. Prompt it elsewhere and "
                    "propagate first."
                )
            tracked = state["frames_tracked_per_obj"][obj_idx].get(frame, {})
            with torch.inference_mode():
                self.model.predictor._run_single_frame_inference(
                    inference_state=state,
                    output_dict=outputs,
                    frame_idx=frame,
                    batch_size=1,
                    is_init_cond_frame=False,
                    point_inputs=None,
                    mask_inputs=None,
                    reverse=tracked.get("reverse", False),
                    run_mem_encoder=False,
                )
        finally:
            for key, value in hidden.items():
                outputs[key][frame] = value
        return self.decoder_inputs(frame, obj_id)

    def _condition_on(self, masks: Iterable[MaskPrompt]) -> None:
        """Make masks SAM2 conditioning frames (corrections, accepted candidates)."""
        frames = set()
        for prompt in masks:
            self.model.predictor.add_new_mask(
                self.state, frame_idx=prompt.frame, obj_id=prompt.obj_id, mask=prompt.mask
            )
            self.prompts.append(prompt)
            frames.add(prompt.frame)
        for frame in frames:
            self.labels[frame] = self._frame_labels(frame)

    # -- helpers ---------------------------------------------------------------------------
    def _frame_labels(self, frame: int) -> np.ndarray:
        """Current label image of ``frame`` from SAM2's per-object outputs."""
        logits, ids = [], []
        for obj_idx, obj_id in self.state["obj_idx_to_id"].items():
            out = _frame_output(self.state, obj_idx, frame)
            if out is not None:
                ids.append(obj_id)
                logits.append(out["pred_masks"])
        if not ids:
            return np.zeros(self.frame_shape, dtype=np.int32)
        import torch

        with torch.inference_mode():
            _, video_masks = self.model.predictor._get_orig_video_res_output(
                self.state, torch.cat(logits, dim=0)
            )
        return compose_labels(ids, video_masks.float().cpu().numpy())

    @contextmanager
    def _job(self) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            raise SamLoraError("this session is busy with another job; wait or cancel it first")
        try:
            yield
        finally:
            self._busy.release()


def _frame_output(state: dict, obj_idx: int, frame: int) -> dict | None:
    """SAM2's latest output for one object on one frame (temporary outputs first)."""
    for store in (state["temp_output_dict_per_obj"], state["output_dict_per_obj"]):
        outputs = store[obj_idx]
        for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
            if frame in outputs[key]:
                return outputs[key][frame]
    return None
