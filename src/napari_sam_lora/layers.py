"""Thin adapter between napari layers and the engine (Qt-free).

Reads an image layer as a lazy stack of frames, reads prompts from Points/Shapes/Labels
layers, and writes per-frame results into an output Labels layer as undoable edits.

Axis vocabulary
---------------
*Layer axes* are the image layer's non-channel axes (``image_layer.ndim`` of them; an RGB(A)
layer's colour axis is the last data axis and is not a layer axis). Of the layer axes, one is
the *stack axis* (time or z), the last two others are the *spatial axes* (rows, columns), and
any remaining ones are *fixed* at the viewer's current position (4D+ images).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes

from napari_sam_lora.engine.errors import PromptError, StackError
from napari_sam_lora.engine.prompts import BoxPrompt, MaskPrompt, PointPrompt

if TYPE_CHECKING:
    import napari

__all__ = [
    "EditGroup",
    "StackSource",
    "StackView",
    "box_prompts",
    "make_prompt_layers",
    "mask_prompts",
    "output_labels_layer",
    "point_prompts",
    "same_layer",
    "stack_from_image_layer",
    "write_frame",
]

POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"


def same_layer(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same layer.

    Plugins receive napari objects wrapped in proxies (a new proxy per access), so identity
    (``is``) is not reliable; layers' ``unique_id`` is.
    """
    if a is None or b is None:
        return a is b
    return a is b or getattr(a, "unique_id", object()) == getattr(b, "unique_id", object())


# --------------------------------------------------------------------------------------------
# Image layer -> stack of frames
# --------------------------------------------------------------------------------------------
class StackView:
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

    @property
    def ndim(self) -> int:
        """Number of dimensions (3 for grey, 4 for RGB(A))."""
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"StackView(shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.asarray(self[...])
        return out if dtype is None else out.astype(dtype, copy=False)

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


# --------------------------------------------------------------------------------------------
# Prompt layers -> prompts
# --------------------------------------------------------------------------------------------
def _to_image_coords(
    layer: Any, coords: np.ndarray, image_layer: Image, source: StackSource
) -> np.ndarray:
    """Data coordinates of ``layer`` -> data coordinates of ``image_layer`` (via world)."""
    world = np.asarray(layer.data_to_world(coords), dtype=float)
    nd = image_layer.ndim
    if world.size < nd:  # a 2D prompt layer over a stack: it lies on the current plane
        here = image_layer.data_to_world(source.to_data_coords(source.current_frame, 0.0, 0.0))
        world = np.concatenate([np.asarray(here, dtype=float)[: nd - world.size], world])
    return np.asarray(image_layer.world_to_data(world), dtype=float)


def _frame_point(
    what: str, layer: Any, coords: np.ndarray, image_layer: Image, source: StackSource
) -> tuple[int, float, float]:
    c = _to_image_coords(layer, coords, image_layer, source)
    off = source.off_plane_axes(c)
    if off:
        axis, value = next(iter(off.items()))
        raise PromptError(
            f"{what} of '{layer.name}' is at index {value} of axis {axis}, but the stack of "
            f"image '{source.image_name}' is taken at index {source.fixed_indices[axis]} of "
            f"that axis; move the viewer to that plane or put the prompt on this one"
        )
    frame, row, col = source.to_frame_coords(c)
    if not 0 <= frame < source.num_frames:
        raise PromptError(
            f"{what} of '{layer.name}' is on frame {frame}, but image '{source.image_name}' "
            f"has {source.num_frames} frame(s) (0 to {source.num_frames - 1})"
        )
    return frame, row, col


def _inside(row: float, col: float, shape: tuple[int, int]) -> bool:
    return -0.5 <= row < shape[0] - 0.5 and -0.5 <= col < shape[1] - 0.5


def _column(layer: Any, name: str, n: int) -> list[Any] | None:
    features = getattr(layer, "features", None)
    if features is None or name not in features.columns or len(features) != n:
        return None
    return list(features[name])


def _obj_ids(what: str, layer: Any, n: int, default_obj_id: int) -> list[int]:
    values = _column(layer, "obj_id", n)
    if values is None:
        return [int(default_obj_id)] * n
    ids = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            ids.append(int(default_obj_id))
            continue
        try:
            obj = int(v)
        except (TypeError, ValueError):
            obj = 0
        if obj < 1 or obj != v:
            raise PromptError(
                f"{what} {i} of '{layer.name}' has obj_id {v!r}; object ids are integers >= 1"
            )
        ids.append(obj)
    return ids


_POSITIVE = {"1", "true", "positive", "pos", "+", "foreground", "fg"}
_NEGATIVE = {"0", "false", "negative", "neg", "-", "background", "bg"}


def _point_labels(layer: Points, n: int) -> list[int]:
    values = _column(layer, "label", n)
    if values is None:
        return [1] * n
    out = []
    for i, v in enumerate(values):
        key = str(v).strip().lower()
        if isinstance(v, float) and v in (0.0, 1.0):
            key = str(int(v))
        if key in _POSITIVE:
            out.append(1)
        elif key in _NEGATIVE:
            out.append(0)
        else:
            raise PromptError(
                f"point {i} of '{layer.name}' has label {v!r}; use 1 (positive) or 0 (negative)"
            )
    return out


def point_prompts(
    points_layer: Points, source: StackSource, image_layer: Image, default_obj_id: int = 1
) -> list[PointPrompt]:
    """Read positive/negative clicks from a Points layer.

    Parameters
    ----------
    points_layer : napari.layers.Points
        Features column ``label`` (1 positive, 0 negative; all positive if missing) and
        optional ``obj_id`` (else ``default_obj_id``).
    source : StackSource
        The image stack (from :func:`stack_from_image_layer`).
    image_layer : napari.layers.Image
        The image; coordinates go through world coordinates, so scaled or translated layers
        work.
    default_obj_id : int
        Object id for points without an ``obj_id``.

    Returns
    -------
    list of PointPrompt
        One per (frame, object), sorted by frame then object.

    Raises
    ------
    PromptError
        Naming the point: outside the image, on a frame out of range, on another plane of a
        4D image, bad label or object id.
    """
    data = np.asarray(points_layer.data, dtype=float)
    n = len(data)
    if n == 0:
        return []
    labels = _point_labels(points_layer, n)
    ids = _obj_ids("point", points_layer, n, default_obj_id)
    h, w = source.frame_shape
    groups: dict[tuple[int, int], tuple[list[tuple[float, float]], list[int]]] = {}
    for i in range(n):
        frame, row, col = _frame_point(f"point {i}", points_layer, data[i], image_layer, source)
        if not _inside(row, col, (h, w)):
            raise PromptError(
                f"point {i} of '{points_layer.name}' at (row {row:.1f}, col {col:.1f}) is "
                f"outside image '{source.image_name}' ({h}×{w} pixels)"
            )
        pts, lbl = groups.setdefault((frame, ids[i]), ([], []))
        pts.append((min(max(row, 0.0), h - 1.0), min(max(col, 0.0), w - 1.0)))
        lbl.append(labels[i])
    return [
        PointPrompt(frame=f, obj_id=o, points=np.array(p), labels=np.array(lb))
        for (f, o), (p, lb) in sorted(groups.items())
    ]


def box_prompts(
    shapes_layer: Shapes, source: StackSource, image_layer: Image, default_obj_id: int = 1
) -> list[BoxPrompt]:
    """Read boxes from the rectangles of a Shapes layer.

    Parameters
    ----------
    shapes_layer : napari.layers.Shapes
        Rectangles only; optional features column ``obj_id``.
    source, image_layer, default_obj_id
        As in :func:`point_prompts`.

    Returns
    -------
    list of BoxPrompt
        One per rectangle, clipped to the image, sorted by frame then object.

    Raises
    ------
    PromptError
        Naming the shape: not a rectangle, across frames, fully outside the image, on a frame
        out of range, or a second box for the same object on the same frame.
    """
    shapes = list(shapes_layer.data)
    n = len(shapes)
    if n == 0:
        return []
    types = list(shapes_layer.shape_type)
    ids = _obj_ids("shape", shapes_layer, n, default_obj_id)
    h, w = source.frame_shape
    seen: dict[tuple[int, int], int] = {}
    out = []
    for i, (vertices, kind) in enumerate(zip(shapes, types, strict=True)):
        if kind != "rectangle":
            raise PromptError(
                f"shape {i} of '{shapes_layer.name}' is a {kind}; only rectangles are boxes "
                f"(delete it or move it to another Shapes layer)"
            )
        corners = [
            _frame_point(f"box {i}", shapes_layer, v, image_layer, source)
            for v in np.asarray(vertices, dtype=float)
        ]
        frames = sorted({c[0] for c in corners})
        if len(frames) > 1:
            raise PromptError(
                f"box {i} of '{shapes_layer.name}' spans frames {frames[0]} to {frames[-1]}; "
                f"draw each box on one frame"
            )
        rows = [c[1] for c in corners]
        cols = [c[2] for c in corners]
        r0, r1 = max(min(rows), 0.0), min(max(rows), h - 1.0)
        c0, c1 = max(min(cols), 0.0), min(max(cols), w - 1.0)
        if r0 > r1 or c0 > c1:
            raise PromptError(
                f"box {i} of '{shapes_layer.name}' is outside image '{source.image_name}' "
                f"({h}×{w} pixels)"
            )
        key = (frames[0], ids[i])
        if key in seen:
            raise PromptError(
                f"boxes {seen[key]} and {i} of '{shapes_layer.name}' both give object {ids[i]} "
                f"a box on frame {frames[0]}; SAM2 takes one box per object per frame"
            )
        seen[key] = i
        out.append(BoxPrompt(frame=frames[0], obj_id=ids[i], box=np.array([r0, c0, r1, c1])))
    return sorted(out, key=lambda p: (p.frame, p.obj_id))


def _labels_plane_reader(labels_layer: Labels, source: StackSource) -> dict[int, Any]:
    multiscale = getattr(labels_layer, "multiscale", False)
    data = labels_layer.data[0] if multiscale else labels_layer.data
    shape = tuple(int(s) for s in data.shape)
    if shape == tuple(source.layer_shape):
        return {t: (data, source.frame_index(t)) for t in range(source.num_frames)}
    if shape == source.frames_shape:
        return {t: (data, (t, slice(None), slice(None))) for t in range(source.num_frames)}
    if shape == source.frame_shape:
        return {source.current_frame: (data, (slice(None), slice(None)))}
    raise PromptError(
        f"prompt labels '{labels_layer.name}' has shape {shape} but image "
        f"'{source.image_name}' has {tuple(source.layer_shape)} ({source.describe()}); "
        f"paint prompts in a Labels layer of the image's shape, or of one frame "
        f"{source.frame_shape}"
    )


def mask_prompts(
    labels_layer: Labels, source: StackSource, image_layer: Image | None = None
) -> list[MaskPrompt]:
    """Read painted masks: one :class:`MaskPrompt` per (frame, non-zero label value).

    Parameters
    ----------
    labels_layer : napari.layers.Labels
        Same shape as the image (without colour axis), as the stack ``(T, H, W)``, or as one
        frame ``(H, W)`` (then it applies to ``source.current_frame``). Label value = object id.
    source : StackSource
        The image stack.
    image_layer : napari.layers.Image, optional
        Unused; accepted for symmetry with the other readers.

    Returns
    -------
    list of MaskPrompt
        Sorted by frame then object.

    Raises
    ------
    PromptError
        If the shape matches neither, or a label value is negative.
    """
    del image_layer
    planes = _labels_plane_reader(labels_layer, source)
    out = []
    for frame, (data, index) in planes.items():
        plane = np.asarray(data[index])
        values = np.unique(plane)
        values = values[values != 0]
        if values.size and values.min() < 0:
            raise PromptError(
                f"prompt labels '{labels_layer.name}' has the negative value "
                f"{int(values.min())} on frame {frame}; object ids are integers >= 1"
            )
        out.extend(MaskPrompt(frame=frame, obj_id=int(v), mask=plane == v) for v in values)
    return out


def make_prompt_layers(
    viewer: napari.viewer.Viewer, image_layer: Image, obj_id: int = 1
) -> tuple[Points, Shapes]:
    """Add (or find) the prompt layers of an image: "<image> prompts" and "<image> boxes".

    The Points layer has features ``label`` (1 positive, green; 0 negative, red) and
    ``obj_id``, with ``feature_defaults`` label 1 and ``obj_id``; the Shapes layer has
    ``obj_id``. Both have the image's dimensionality and transform. The Points layer is left
    selected in "add" mode.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    image_layer : napari.layers.Image
    obj_id : int
        Object id for new clicks and boxes.

    Returns
    -------
    tuple of (Points, Shapes)
    """
    import pandas as pd

    ndim = image_layer.ndim
    transform = _transform_kwargs(image_layer)
    shapes_name = f"{image_layer.name} boxes"
    points_name = f"{image_layer.name} prompts"
    shapes = _find_layer(viewer, shapes_name, Shapes, ndim)
    if shapes is None:
        shapes = viewer.add_shapes(
            ndim=ndim,
            name=shapes_name,
            features=pd.DataFrame({"obj_id": pd.Series([], dtype="int64")}),
            feature_defaults={"obj_id": int(obj_id)},
            edge_color="yellow",
            face_color="transparent",
            **transform,
        )
    points = _find_layer(viewer, points_name, Points, ndim)
    if points is None:
        with warnings.catch_warnings():  # "'label' looks like categorical data": it is
            warnings.simplefilter("ignore", RuntimeWarning)
            points = viewer.add_points(
                ndim=ndim,
                name=points_name,
                features=pd.DataFrame(
                    {"label": pd.Series([], dtype="int64"), "obj_id": pd.Series([], dtype="int64")}
                ),
                feature_defaults={"label": 1, "obj_id": int(obj_id)},
                face_color="label",
                face_color_cycle={1: POSITIVE_COLOR, 0: NEGATIVE_COLOR},
                **transform,
            )
    viewer.layers.selection.active = points
    points.mode = "add"
    return points, shapes


def _find_layer(viewer: Any, name: str, kind: type, ndim: int) -> Any:
    for layer in viewer.layers:
        if layer.name == name and isinstance(layer, kind) and layer.ndim == ndim:
            return layer
    return None


def _transform_kwargs(image_layer: Image) -> dict[str, Any]:
    return {
        "scale": tuple(image_layer.scale),
        "translate": tuple(image_layer.translate),
        "rotate": np.asarray(image_layer.rotate),
        "shear": np.asarray(image_layer.shear),
        "affine": np.asarray(image_layer.affine.affine_matrix),
    }


# --------------------------------------------------------------------------------------------
# Output Labels layer
# --------------------------------------------------------------------------------------------
def output_labels_layer(
    viewer: napari.viewer.Viewer, image_layer: Image, source: StackSource
) -> Labels:
    """Get or create the output Labels layer "<image> masks".

    An existing Labels layer of that name (or "<image> masks [n]", napari's renaming) is
    reused when its shape is the image's non-channel shape; otherwise a new int32 layer of
    that shape, with the image's transform, is added; the active layer stays active.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    image_layer : napari.layers.Image
    source : StackSource
        The stack the results belong to.

    Returns
    -------
    napari.layers.Labels
    """
    name = f"{image_layer.name} masks"
    pattern = re.compile(re.escape(name) + r"( \[\d+\])?")
    for layer in viewer.layers:
        if (
            isinstance(layer, Labels)
            and pattern.fullmatch(layer.name)
            and tuple(layer.data.shape) == tuple(source.layer_shape)
        ):
            return layer
    active = viewer.layers.selection.active
    data = np.zeros(source.layer_shape, dtype=np.int32)
    layer = viewer.add_labels(data, name=name, **_transform_kwargs(image_layer))
    if active is not None:  # keep the user's tool (e.g. adding points) active
        viewer.layers.selection.active = active
    return layer


def write_frame(
    labels_layer: Labels,
    source: StackSource,
    frame: int,
    label_image: np.ndarray,
    viewer: napari.viewer.Viewer | None = None,
) -> bool:
    """Write one frame's label image into a Labels layer, undoably.

    Only changed pixels are written, through ``Labels.data_setitem`` (recorded in the layer's
    undo history as one step, or as part of an open :class:`EditGroup`), and the display is
    refreshed.

    Parameters
    ----------
    labels_layer : napari.layers.Labels
        Of the image's non-channel shape (``source.layer_shape``) or the stack's ``(T, H, W)``.
    source : StackSource
    frame : int
        Frame index.
    label_image : np.ndarray
        ``(H, W)`` integer label image (0 background).
    viewer : napari.viewer.Viewer, optional
        When given and the layer is no longer in ``viewer.layers``, nothing is written.

    Returns
    -------
    bool
        Whether the frame was written (``False`` if the layer was removed from the viewer).

    Raises
    ------
    ValueError
        If the label image or the layer has the wrong shape.
    """
    if viewer is not None and not any(same_layer(labels_layer, x) for x in viewer.layers):
        return False
    new = np.asarray(label_image)
    if new.shape != source.frame_shape:
        raise ValueError(
            f"label image has shape {new.shape}; frames of '{source.image_name}' are "
            f"{source.frame_shape}"
        )
    data = labels_layer.data
    shape = tuple(int(s) for s in data.shape)
    if shape == tuple(source.layer_shape):
        index = source.frame_index(frame)
    elif shape == source.frames_shape:
        index = (int(frame), slice(None), slice(None))
    else:
        raise ValueError(
            f"labels layer '{labels_layer.name}' has shape {shape}; expected "
            f"{tuple(source.layer_shape)} for image '{source.image_name}'"
        )
    new = new.astype(data.dtype, copy=False)
    rows, cols = np.nonzero(np.asarray(data[index]) != new)
    if rows.size == 0:
        return True
    small = np.min_scalar_type(max(shape))  # compact undo history
    rows, cols = rows.astype(small), cols.astype(small)
    spatial = iter((rows, cols))
    indices = tuple(
        np.full(rows.size, k, dtype=small) if isinstance(k, int) else next(spatial) for k in index
    )
    labels_layer.data_setitem(indices, new[rows, cols])
    return True


class EditGroup:
    """Merge frame writes spread over many event-loop turns into ONE undo step.

    Opens the layer's ``block_history()`` context until :meth:`close`; every
    :func:`write_frame` in between becomes part of a single undo item. Always close it (also
    on error or cancel); closing twice is harmless. A brush stroke the user paints in the same
    layer while the group is open ends the grouping early (napari commits staged edits at the
    end of a stroke): later writes then become one undo step each.

    Parameters
    ----------
    labels_layer : napari.layers.Labels
    """

    def __init__(self, labels_layer: Labels) -> None:
        self.layer = labels_layer
        self._context: Any = labels_layer.block_history()
        self._context.__enter__()

    @property
    def is_open(self) -> bool:
        """Whether writes are still being grouped."""
        return self._context is not None

    def close(self) -> None:
        """Commit the grouped writes as one undo step."""
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)
