"""Image layer -> lazy stack of 2D frames (Qt-free).

Axis vocabulary
---------------
*Layer axes* are the image layer's non-channel axes (``image_layer.ndim`` of them; an RGB(A)
layer's colour axis is the last data axis and is not a layer axis). Of the layer axes, one is
the *stack axis* (time or z), the last two others are the *spatial axes* (rows, columns), and
any remaining ones are *fixed* at the viewer's current position (4D+ images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.layers import Image

from napari_sam_lora.engine.core.errors import StackError

__all__ = ["StackSource", "StackView", "stack_from_image_layer"]


class LazyArray:
    """What a lazy array-like view needs besides ``shape``, ``dtype`` and ``__getitem__``:
    ``ndim``, ``len``, a repr and ``np.asarray`` (which reads everything)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> Any:
        raise NotImplementedError

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.asarray(self[...])
        return out if dtype is None else out.astype(dtype, copy=False)


class StackView(LazyArray):
    """Lazy ``(T, H, W[, C])`` view of an array with its axes moved and some axes fixed.

    Indexing returns the sub-array of the underlying data (numpy, dask, zarr...), indexed with
    basic indices only, so lazy arrays stay lazy until ``np.asarray`` is called on a frame.

    Parameters
    ----------
    data : array-like
        The image layer's data (full resolution).
    stack_axis : int or None
        Data axis that becomes ``T``; ``None`` for a single 2D frame (``T == 1``).
    spatial_axes : tuple of int
        Data axes that become ``H`` and ``W``.
    fixed : dict of int to int
        Data axes held at one index.
    channel_axis : int or None
        Data axis that becomes ``C`` (RGB/RGBA), or ``None``.
    """

    def __init__(
        self,
        data: Any,
        stack_axis: int | None,
        spatial_axes: tuple[int, int],
        fixed: dict[int, int],
        channel_axis: int | None = None,
    ) -> None:
        self._data = data
        self._axes: list[int | None] = [stack_axis, *spatial_axes]
        if channel_axis is not None:
            self._axes.append(channel_axis)
        self._fixed = dict(fixed)
        shape = tuple(int(s) for s in data.shape)
        self.shape: tuple[int, ...] = tuple(1 if a is None else shape[a] for a in self._axes)
        self.dtype = np.dtype(data.dtype)

    def __getitem__(self, key: Any) -> Any:
        key = _expand_key(key, self.ndim)
        basic: list[int | slice] = []
        fancy: list[Any] = []
        for k in key:
            if isinstance(k, int | np.integer):
                basic.append(int(k))
                fancy.append(None)
            elif isinstance(k, slice):
                basic.append(k)
                fancy.append(None)
            else:  # arrays / lists: take everything, apply afterwards
                basic.append(slice(None))
                fancy.append(k)
        for i, (k, n) in enumerate(zip(basic, self.shape, strict=True)):
            if isinstance(k, int):
                if not -n <= k < n:
                    raise IndexError(f"index {k} is out of bounds for axis {i} with size {n}")
                basic[i] = k % n
        out_key: list[Any] = [slice(None)] * len(self._data.shape)
        for axis, value in self._fixed.items():
            out_key[axis] = value
        new_axis = None
        for view_axis, (axis, k) in enumerate(zip(self._axes, basic, strict=True)):
            if axis is None:  # the virtual T axis of a 2D image
                if isinstance(k, slice) and len(range(1)[k]) == 1:
                    new_axis = view_axis
                elif isinstance(k, slice):
                    raise IndexError("empty selection of the single frame of a 2D image")
                continue
            out_key[axis] = k
        result = self._data[tuple(out_key)]
        kept = [
            a
            for a, k in zip(self._axes, basic, strict=True)
            if a is not None and not isinstance(k, int)
        ]
        ordered = sorted(kept)
        perm = [ordered.index(a) for a in kept]
        if perm != sorted(perm):
            result = np.transpose(result, perm)
        if new_axis is not None:
            result = result[None]
        if any(f is not None for f in fancy):
            sub = tuple(
                f if f is not None else slice(None)
                for f, k in zip(fancy, basic, strict=True)
                if not isinstance(k, int)
            )
            result = np.asarray(result)[sub]
        return result


def _expand_key(key: Any, ndim: int) -> tuple[Any, ...]:
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices: {len(key)} for a {ndim}-dimensional stack")
    return key + (slice(None),) * (ndim - len(key))


@dataclass(frozen=True)
class StackSource:
    """An image layer seen as a stack of 2D frames.

    Attributes
    ----------
    frames : array-like
        ``(T, H, W)`` grey or ``(T, H, W, C)`` colour frames; lazily indexed (the layer's own
        array when no axis has to move, else a :class:`StackView`).
    image_name : str
        Name of the image layer (used in messages).
    layer_shape : tuple of int
        The image layer's non-channel shape; output Labels layers get this shape.
    stack_axis : int or None
        Layer axis used as the stack (``None`` for a 2D image: one frame).
    spatial_axes : tuple of int
        Layer axes of rows and columns.
    fixed_indices : dict of int to int
        Other layer axes (4D+), held at the viewer's current position.
    current_frame : int
        Frame shown by the viewer when the source was made (0 without a dims point).
    """

    frames: Any
    image_name: str
    layer_shape: tuple[int, ...]
    stack_axis: int | None
    spatial_axes: tuple[int, int]
    fixed_indices: dict[int, int] = field(default_factory=dict)
    current_frame: int = 0

    @property
    def num_frames(self) -> int:
        """Number of frames ``T``."""
        return int(self.frames.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(H, W)`` of one frame."""
        return (int(self.frames.shape[1]), int(self.frames.shape[2]))

    @property
    def frames_shape(self) -> tuple[int, int, int]:
        """``(T, H, W)``."""
        return (self.num_frames, *self.frame_shape)

    def frame_index(self, frame: int) -> tuple[int | slice, ...]:
        """Index into a ``layer_shape`` array selecting frame ``frame`` as an ``(H, W)`` plane."""
        index: list[int | slice] = [slice(None)] * len(self.layer_shape)
        for axis, value in self.fixed_indices.items():
            index[axis] = value
        if self.stack_axis is not None:
            index[self.stack_axis] = int(frame)
        elif frame != 0:
            raise IndexError(f"image '{self.image_name}' is 2D: it has only frame 0")
        return tuple(index)

    def to_frame_coords(self, data_coords: Sequence[float]) -> tuple[int, float, float]:
        """Convert image data coordinates (layer axes) to ``(frame, row, col)``.

        The frame is rounded to the nearest integer; rows and columns stay sub-pixel.
        """
        c = np.asarray(data_coords, dtype=float)
        frame = 0 if self.stack_axis is None else round(float(c[self.stack_axis]))
        return frame, float(c[self.spatial_axes[0]]), float(c[self.spatial_axes[1]])

    def off_plane_axes(self, data_coords: Sequence[float]) -> dict[int, int]:
        """Fixed axes on which ``data_coords`` lie on another plane: ``{axis: its index}``."""
        c = np.asarray(data_coords, dtype=float)
        return {
            axis: round(float(c[axis]))
            for axis, value in self.fixed_indices.items()
            if round(float(c[axis])) != value
        }

    def to_data_coords(self, frame: int, row: float, col: float) -> np.ndarray:
        """Convert ``(frame, row, col)`` to image data coordinates (layer axes)."""
        c = np.zeros(len(self.layer_shape), dtype=float)
        for axis, value in self.fixed_indices.items():
            c[axis] = value
        if self.stack_axis is not None:
            c[self.stack_axis] = frame
        c[self.spatial_axes[0]] = row
        c[self.spatial_axes[1]] = col
        return c

    def describe(self) -> str:
        """Short human description, e.g. ``"4 frames of 64×64"``."""
        t, (h, w) = self.num_frames, self.frame_shape
        return f"{t} frame{'s' if t != 1 else ''} of {h}×{w}"


def stack_from_image_layer(
    layer: Image, stack_axis: int = 0, dims_point: Sequence[float] | None = None
) -> StackSource:
    """Read an image layer as a stack of 2D frames, without loading its data.

    Parameters
    ----------
    layer : napari.layers.Image
        2D (one frame), 3D (a stack), or 4D+ image, grey or RGB(A) (``layer.rgb``). Multiscale
        layers use their full-resolution level.
    stack_axis : int
        Layer axis (non-channel) that is the stack; negative values count from the end. Ignored
        for 2D images.
    dims_point : sequence of float, optional
        The viewer's current position in world coordinates (``viewer.dims.point``). Fixes the
        extra axes of 4D+ images and sets ``current_frame``; without it they are 0.

    Returns
    -------
    StackSource

    Raises
    ------
    StackError
        If the image has fewer than 2 layer dimensions or the stack axis does not exist.
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    rgb = bool(getattr(layer, "rgb", False))
    shape = tuple(int(s) for s in data.shape)
    layer_shape = shape[:-1] if rgb else shape
    nd = len(layer_shape)
    if nd < 2:
        raise StackError(
            f"image '{layer.name}' has {nd} dimension{'s' if nd != 1 else ''}; need 2D, "
            f"3D (a stack) or 4D+ with a stack axis (its shape is {shape})"
        )
    if any(s == 0 for s in layer_shape):
        raise StackError(f"image '{layer.name}' is empty (shape {shape})")
    position = None
    if dims_point is not None:
        position = np.asarray(layer.world_to_data(np.asarray(dims_point, dtype=float)))
    channel = nd if rgb else None
    if nd == 2:
        frames = StackView(data, None, (0, 1), {}, channel)
        return StackSource(frames, layer.name, layer_shape, None, (0, 1))
    if not -nd <= stack_axis < nd:
        raise StackError(
            f"stack axis {stack_axis} does not exist: image '{layer.name}' has {nd} axes "
            f"(shape {layer_shape}); choose 0 to {nd - 1}"
        )
    stack_axis = stack_axis % nd
    others = [a for a in range(nd) if a != stack_axis]
    spatial = (others[-2], others[-1])
    fixed: dict[int, int] = {}
    for axis in others[:-2]:
        value = 0 if position is None else round(float(position[axis]))
        fixed[axis] = min(max(value, 0), layer_shape[axis] - 1)
    current = 0 if position is None else round(float(position[stack_axis]))
    current = min(max(current, 0), layer_shape[stack_axis] - 1)
    if stack_axis == 0 and not fixed:
        frames = data  # already (T, H, W[, C])
    else:
        frames = StackView(data, stack_axis, spatial, fixed, channel)
    return StackSource(frames, layer.name, layer_shape, stack_axis, spatial, fixed, current)
