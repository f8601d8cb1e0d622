"""Stacks → lazily normalised SAM2 input frames, and the inference state built on them.

SAM2 reads ``inference_state["images"]`` only as ``images[t]`` and ``len(images)``, so
:class:`NormalisedFrames` hands it one normalised ``(3, S, S)`` tensor per frame, read
from the user's array (numpy, dask, zarr...) when asked for: no JPEG round trip, no loss
of 16-bit range.

Intensity normalisation: ``uint8`` and ``bool`` use their full range; every other dtype
is scaled between the 0.5th and 99.5th percentiles of the stack (estimated from up to 16
evenly spaced frames) and clipped to ``[0, 1]``. Grey frames are repeated to three
channels, RGBA drops alpha, frames are resized to ``S × S`` and normalised with ImageNet's
mean and standard deviation, as SAM2 was trained.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam_lora.engine.core.errors import StackError
from napari_sam_lora.engine.core.memory import check_stack_fits
from napari_sam_lora.engine.core.validation import check_image_size
from napari_sam_lora.engine.tracking.features import BoundedStore

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
_SAMPLE_FRAMES = 16
_SAMPLE_PIXELS = 1 << 18


def stack_geometry(stack: Any) -> tuple[int, tuple[int, int], bool]:
    """``(num_frames, (height, width), is_rgb)`` of an array-like stack.

    Accepts ``(H, W)`` (one frame), ``(T, H, W)`` and ``(T, H, W, C)`` with C = 3 or 4.

    Raises
    ------
    StackError
        Not an array (a list, ``None``...), any other shape, or an empty axis.
    """
    if not hasattr(stack, "shape") or not hasattr(stack, "dtype"):
        kind = "None" if stack is None else f"a {type(stack).__name__}"
        raise StackError(
            f"cannot segment {kind}: pass an image array (numpy, dask or zarr) of shape "
            "(H, W), (T, H, W) or (T, H, W, 3|4), e.g. np.asarray(frames)"
        )
    shape = tuple(int(s) for s in stack.shape)
    if len(shape) == 2:
        geometry = 1, (shape[0], shape[1]), False
    elif len(shape) == 3:
        geometry = shape[0], (shape[1], shape[2]), False
    elif len(shape) == 4 and shape[-1] in (3, 4):
        geometry = shape[0], (shape[1], shape[2]), True
    else:
        raise StackError(
            f"cannot segment an array of shape {shape}: expected (H, W), (T, H, W) or "
            "(T, H, W, 3|4) RGB(A); choose the stack axis of 4D data in the plugin"
        )
    if 0 in shape:
        raise StackError(
            f"cannot segment an empty array of shape {shape}: every axis needs at least one "
            "frame or pixel"
        )
    return geometry


def check_stack_dtype(dtype: Any) -> np.dtype:
    """The dtype of a stack SAM2 can read: booleans, integers or real floats.

    Raises
    ------
    StackError
        Complex, string, object or structured dtypes (never silently cast).
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise StackError(
            f"the stack is complex-valued ({dtype}); take np.abs(), .real or .imag first"
        )
    if dtype.kind not in "buif":
        raise StackError(
            f"the stack has dtype {dtype}; expected numbers (bool, integer or float pixels)"
        )
    return dtype


def check_stack(stack: Any) -> tuple[int, tuple[int, int], bool]:
    """:func:`stack_geometry` plus :func:`check_stack_dtype`: the one stack check.

    Used by :class:`NormalisedFrames` (so by every ``Session``) and by the evaluation and
    fine-tuning readers, so the API, the viewer and the command line accept the same stacks.
    """
    geometry = stack_geometry(stack)
    check_stack_dtype(stack.dtype)
    return geometry


def intensity_range(stack: Any, num_frames: int) -> tuple[float, float]:
    """Robust ``(low, high)`` intensities of a stack, checking it is finite and not constant.

    Raises
    ------
    StackError
        NaN/inf values in the sampled frames, or a constant stack.
    """
    dtype = np.dtype(getattr(stack, "dtype", np.float32))
    if dtype == np.uint8:
        low, high = 0.0, 255.0
    elif dtype == np.bool_:
        low, high = 0.0, 1.0
    else:
        low = high = None
    picks = np.unique(np.linspace(0, num_frames - 1, min(num_frames, _SAMPLE_FRAMES)).round())
    samples = []
    for t in picks.astype(int):
        frame = np.asarray(frame_at(stack, t, num_frames))
        step = max(1, int(np.sqrt(frame.size / _SAMPLE_PIXELS)))
        sample = frame[::step, ::step].astype(np.float64, copy=False).ravel()
        if not np.all(np.isfinite(sample)):
            raise StackError(f"frame {t} contains NaN or infinite values; clean the image first")
        samples.append(sample)
    values = np.concatenate(samples)
    if values.max() == values.min():
        raise StackError(
            f"the image is constant (every sampled pixel is {values.min():g}); nothing to segment"
        )
    if low is None:
        low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
        if high <= low:
            low, high = float(values.min()), float(values.max())
    return float(low), float(high)


def frame_at(stack: Any, index: int, num_frames: int) -> Any:
    """Frame ``index`` of a stack (a 2D array is its only frame)."""
    if len(getattr(stack, "shape", ())) == 2:
        if index != 0:
            raise IndexError(index)
        return stack
    return stack[index]


class NormalisedFrames:
    """An indexable view of a stack that yields SAM2-ready ``(3, S, S)`` float tensors.

    Parameters
    ----------
    stack : array-like
        ``(H, W)``, ``(T, H, W)`` or ``(T, H, W, 3|4)``; read lazily, frame by frame.
    image_size : int
        Side ``S`` of SAM2's square input.
    intensity : tuple of float, optional
        ``(low, high)``; by default :func:`intensity_range` of the stack.
    """

    def __init__(
        self, stack: Any, image_size: int, intensity: tuple[float, float] | None = None
    ) -> None:
        self.stack = stack
        self.num_frames, self.frame_shape, self.rgb = check_stack(stack)
        channels = int(np.shape(stack)[-1]) if self.rgb else 1
        check_stack_fits(self.num_frames, self.frame_shape, channels)  # before any read
        self.image_size = check_image_size(image_size)
        self.intensity = intensity or intensity_range(stack, self.num_frames)
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return self.num_frames

    def scaled(self, index: int) -> np.ndarray:
        """Frame ``index`` at the stack's resolution, intensities scaled to ``[0, 1]``
        (float32; ``(H, W)`` or ``(H, W, C)``)."""
        raw = np.asarray(frame_at(self.stack, int(index), self.num_frames))
        values = raw.astype(np.float32, copy=False)
        if not np.all(np.isfinite(values)):
            raise StackError(f"frame {index} contains NaN or infinite values")
        low, high = self.intensity
        return np.clip((values - low) / (high - low), 0.0, 1.0)

    def rgb8(self, index: int) -> np.ndarray:
        """Frame ``index`` as an ``(H, W, 3)`` uint8 RGB image, scaled like SAM2's input
        (what sam2's image tools take)."""
        scaled = self.scaled(index)
        rgb = scaled[..., :3] if self.rgb else np.repeat(scaled[..., None], 3, axis=-1)
        return np.round(rgb * 255).astype(np.uint8)

    def __getitem__(self, index: int) -> torch.Tensor:
        scaled = self.scaled(index)
        tensor = torch.from_numpy(np.ascontiguousarray(scaled))
        tensor = tensor[..., :3].permute(2, 0, 1) if self.rgb else tensor[None].expand(3, -1, -1)
        resized = F.interpolate(
            tensor[None].float(),
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )[0]
        return (resized - self._mean) / self._std


def new_inference_state(
    frames: NormalisedFrames,
    device: torch.device,
    feature_budget_bytes: float,
    decoder_budget_bytes: float,
) -> dict[str, Any]:
    """An inference state for ``SAM2VideoPredictor`` over ``frames``.

    Holds the same keys as ``SAM2VideoPredictor.init_state`` (sam2 1.x), plus the
    bounded backbone-feature and decoder-input stores :class:`StackPredictor` uses.
    """
    height, width = frames.frame_shape
    return {
        "images": frames,
        "num_frames": len(frames),
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": height,
        "video_width": width,
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
        "feature_store": BoundedStore(feature_budget_bytes),
        "decoder_store": BoundedStore(decoder_budget_bytes),
        "image_placeholder": torch.zeros(1, 3, 1, 1, device=device),
    }
