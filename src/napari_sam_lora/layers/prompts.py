"""Prompt layers (Points, Shapes, Labels) -> engine prompts; prompt layer creation (Qt-free)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes

from napari_sam_lora.engine.annotation.prompts import BoxPrompt, MaskPrompt, PointPrompt, Prompt
from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.layers._common import find_layer, transform_kwargs
from napari_sam_lora.layers.masks_view import Region
from napari_sam_lora.layers.stack import StackSource

if TYPE_CHECKING:
    import napari

__all__ = [
    "NEGATIVE_COLOR",
    "NEGATIVE_SYMBOL",
    "POSITIVE_COLOR",
    "POSITIVE_SYMBOL",
    "box_prompts",
    "install_click_labels",
    "make_prompt_layers",
    "make_region_layer",
    "mask_prompts",
    "object_color",
    "point_prompts",
    "prompts_in_region",
    "region_from_shapes",
    "region_layer_name",
    "style_prompt_layers",
]

#: Border colours of positive and negative clicks; the face is the object's colour.
POSITIVE_COLOR = "white"
NEGATIVE_COLOR = "red"
#: Symbols of positive and negative clicks.
POSITIVE_SYMBOL = "disc"
NEGATIVE_SYMBOL = "x"
#: napari's colormap for new Labels layers (``label_colormap(49)``): objects keep the colour
#: the masks layer will give them.
_DEFAULT_COLORS = 49


def object_color(obj_id: int, labels_layer: Labels | None = None) -> np.ndarray:
    """RGBA colour of object ``obj_id``: the one ``labels_layer`` paints it with.

    Without a layer, the colour napari gives ``obj_id`` in a new Labels layer (the masks
    layer does not exist before the first propagation).
    """
    if labels_layer is not None:
        return np.asarray(labels_layer.get_color(int(obj_id)), dtype=float).reshape(4)
    from napari.utils.colormaps import label_colormap

    return np.asarray(label_colormap(_DEFAULT_COLORS).map(np.array([int(obj_id)]))[0], float)


def _ids_and_labels(layer: Any, n: int) -> tuple[list[int], list[int]] | None:
    try:
        return _obj_ids("item", layer, n, 1), (
            _point_labels(layer, n) if isinstance(layer, Points) else [1] * n
        )
    except PromptError:  # a bad table value: Propagate names it; keep the look as it is
        return None


def style_prompt_layers(
    points_layer: Points | None, shapes_layer: Shapes | None, labels_layer: Labels | None = None
) -> None:
    """Colour clicks and boxes by object (the masks layer's colours) and mark negatives.

    Points get their object's colour as face; positive clicks are discs with a white border,
    negative ones crosses with a red border. Boxes get their object's colour as edge.
    """
    for layer in (points_layer, shapes_layer):
        if layer is None:
            continue
        n = len(layer.data)
        found = _ids_and_labels(layer, n) if n else ([], [])
        if found is None:
            continue
        ids, labels = found
        colors = np.array([object_color(i, labels_layer) for i in ids]).reshape(-1, 4)
        if isinstance(layer, Points):
            if n:
                layer.face_color = colors
                layer.border_color = [POSITIVE_COLOR if v else NEGATIVE_COLOR for v in labels]
                layer.symbol = [POSITIVE_SYMBOL if v else NEGATIVE_SYMBOL for v in labels]
        elif n:
            layer.edge_color = colors
        layer.refresh()


def install_click_labels(points_layer: Points, negative: Any) -> Any:
    """Make each click in ``points_layer`` positive or negative as it is placed.

    A click is negative when Shift is held or ``negative()`` is true (the panel's toggle);
    the layer's ``feature_defaults["label"]`` is set on the mouse press, before napari adds
    the point on release. Returns the function removing the callback.
    """

    def on_press(layer: Points, event: Any) -> None:
        if getattr(layer, "mode", "") != "add":
            return
        label = 0 if ("Shift" in (event.modifiers or ()) or negative()) else 1
        defaults = layer.feature_defaults
        if "label" in defaults.columns and int(defaults["label"].iloc[0]) != label:
            values = {c: defaults[c].iloc[0] for c in defaults.columns}
            values["label"] = label
            layer.feature_defaults = values

    points_layer.mouse_drag_callbacks.insert(0, on_press)

    def uninstall() -> None:
        if on_press in points_layer.mouse_drag_callbacks:
            points_layer.mouse_drag_callbacks.remove(on_press)

    return uninstall


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

    The Points layer has features ``label`` (1 positive, 0 negative) and ``obj_id``, with
    ``feature_defaults`` label 1 and ``obj_id``; the Shapes layer has ``obj_id``
    (:func:`style_prompt_layers` colours them by object). Both have the image's
    dimensionality and transform. The Points layer is left selected in "add" mode.

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
    transform = transform_kwargs(image_layer)
    shapes_name = f"{image_layer.name} boxes"
    points_name = f"{image_layer.name} prompts"
    shapes = find_layer(viewer, shapes_name, Shapes, ndim)
    if shapes is None:
        shapes = viewer.add_shapes(
            ndim=ndim,
            name=shapes_name,
            features=pd.DataFrame({"obj_id": pd.Series([], dtype="int64")}),
            feature_defaults={"obj_id": int(obj_id)},
            edge_color=object_color(obj_id),
            face_color="transparent",
            **transform,
        )
    points = find_layer(viewer, points_name, Points, ndim)
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
                face_color=object_color(obj_id),
                border_color=POSITIVE_COLOR,
                symbol=POSITIVE_SYMBOL,
                **transform,
            )
    viewer.layers.selection.active = points
    points.mode = "add"
    return points, shapes


def prompt_layer_state(layer: Points | Shapes) -> tuple:
    """What a prompt layer holds (its points or shapes and their features), to put back
    with :func:`set_prompt_layer_state`."""
    features = layer.features.copy()
    if isinstance(layer, Shapes):
        return [np.array(d, copy=True) for d in layer.data], list(layer.shape_type), features
    return np.array(layer.data, copy=True), None, features


def set_prompt_layer_state(layer: Points | Shapes, state: tuple) -> None:
    """Make a prompt layer hold what :func:`prompt_layer_state` read."""
    data, shape_types, features = state
    if isinstance(layer, Shapes):
        if len(layer.data):
            layer.selected_data = set(range(len(layer.data)))
            layer.remove_selected()
        if data:
            layer.add(data, shape_type=shape_types)
    else:
        layer.data = data
    layer.features = features.copy()


def prompt_items(
    layer: Points | Shapes, image: Image, source: StackSource, default_obj_id: int
) -> list[tuple[int, int]]:
    """``(obj_id, frame)`` of each point or shape of a prompt layer (``default_obj_id``
    where the layer has no ``obj_id`` feature)."""
    n = len(layer.data)
    features = getattr(layer, "features", None)
    if features is not None and "obj_id" in features.columns and len(features) == n:
        ids = [int(v) if v == v else default_obj_id for v in features["obj_id"]]
    else:
        ids = [default_obj_id] * n
    frames = []
    for item in layer.data:
        coords = np.asarray(item, float).reshape(-1, layer.ndim)[0]
        data = np.asarray(image.world_to_data(layer.data_to_world(coords)), float)
        frames.append(source.to_frame_coords(data)[0] if data.size == image.ndim else 0)
    return list(zip(ids, frames, strict=True))


def prompt_object_ids(*layers: Points | Shapes | None) -> list[int]:
    """The object ids the ``obj_id`` features of prompt layers name."""
    ids: list[int] = []
    for layer in layers:
        features = getattr(layer, "features", None)
        if features is not None and "obj_id" in features.columns:
            ids += [int(v) for v in features["obj_id"] if v == v and v >= 1]
    return ids


def remove_prompt_items(layer: Points | Shapes, indices: list[int]) -> None:
    """Remove points or shapes by index."""
    if indices:
        layer.selected_data = set(indices)
        layer.remove_selected()


def region_layer_name(image_layer: Image) -> str:
    """The name of an image's region layer: ``"<image> region"``."""
    return f"{image_layer.name} region"


def make_region_layer(viewer: napari.viewer.Viewer, image_layer: Image) -> Shapes:
    """Add (or find) "<image> region": a 2D Shapes layer shown on every frame, with the
    image's spatial transform, selected in rectangle mode (draw one rectangle)."""
    name = region_layer_name(image_layer)
    layer = find_layer(viewer, name, Shapes, 2)
    if layer is None:
        layer = viewer.add_shapes(
            ndim=2,
            name=name,
            edge_color="yellow",
            face_color="transparent",
            edge_width=2,
            scale=tuple(image_layer.scale)[-2:],
            translate=tuple(image_layer.translate)[-2:],
        )
    viewer.layers.selection.active = layer
    layer.mode = "add_rectangle"
    return layer


def region_from_shapes(shapes_layer: Shapes, source: StackSource, image_layer: Image) -> Region:
    """The region the one rectangle of ``shapes_layer`` covers, in frame pixels (the same
    rectangle on every frame), clipped to the image.

    Raises
    ------
    PromptError
        Naming the layer: no shape, more than one, not a rectangle, or outside the image.
    """
    shapes, kinds = list(shapes_layer.data), list(shapes_layer.shape_type)
    if len(shapes) != 1 or kinds[0] != "rectangle":
        found = f"{len(shapes)} shapes" if len(shapes) != 1 else f"a {kinds[0]}"
        raise PromptError(
            f"'{shapes_layer.name}' holds {found}: draw exactly one rectangle in it to choose "
            f"the region (or untick 'only this region')"
        )
    corners = [
        _to_image_coords(shapes_layer, v, image_layer, source)
        for v in np.asarray(shapes[0], dtype=float)
    ]
    rows = [source.to_frame_coords(c)[1] for c in corners]
    cols = [source.to_frame_coords(c)[2] for c in corners]
    h, w = source.frame_shape
    # the pixels whose centres the rectangle covers
    r0, r1 = max(int(np.ceil(min(rows))), 0), min(int(np.floor(max(rows))) + 1, h)
    c0, c1 = max(int(np.ceil(min(cols))), 0), min(int(np.floor(max(cols))) + 1, w)
    if r1 - r0 < 2 or c1 - c0 < 2:
        raise PromptError(
            f"the rectangle of '{shapes_layer.name}' covers no part of image "
            f"'{source.image_name}' ({h}×{w} pixels); draw it on the image"
        )
    return Region(r0, r1, c0, c1)


def prompts_in_region(prompts: list[Prompt], region: Region) -> list[Prompt]:
    """The prompts in the region's coordinates (what a session on the region takes).

    Raises
    ------
    PromptError
        Naming the first prompt that lies (even in part) outside the region: nothing is
        translated then.
    """
    out: list[Prompt] = []
    h, w = region.shape
    where = f"the region ({region.describe()})"
    hint = "move it into the region, or draw the region around it"
    for p in prompts:
        what = f"object {p.obj_id} on frame {p.frame}"
        if isinstance(p, PointPrompt):
            inside = region.contains(p.points[:, 0], p.points[:, 1])
            if not inside.all():
                row, col = p.points[int(np.argmin(inside))]
                raise PromptError(
                    f"the click of {what} at (row {row:.1f}, col {col:.1f}) is outside "
                    f"{where}; {hint}"
                )
            points = p.points - (region.r0, region.c0)
            points = np.clip(points, 0.0, (h - 1.0, w - 1.0))
            out.append(PointPrompt(p.frame, p.obj_id, points, p.labels))
        elif isinstance(p, BoxPrompt):
            r0, c0, r1, c1 = (float(v) for v in p.box)
            if not bool(region.contains([r0, r1], [c0, c1]).all()):
                raise PromptError(
                    f"the box of {what} (rows {r0:.0f}–{r1:.0f}, columns {c0:.0f}–{c1:.0f}) "
                    f"is not inside {where}; {hint}"
                )
            box = np.clip(
                np.array([r0 - region.r0, c0 - region.c0, r1 - region.r0, c1 - region.c0]),
                0.0,
                (h - 1.0, w - 1.0, h - 1.0, w - 1.0),
            )
            out.append(BoxPrompt(p.frame, p.obj_id, box))
        elif isinstance(p, MaskPrompt):
            mask = np.asarray(p.mask, bool)
            inner = mask[region.slices]
            if int(inner.sum()) != int(mask.sum()):
                raise PromptError(f"the painted mask of {what} reaches outside {where}; {hint}")
            out.append(MaskPrompt(p.frame, p.obj_id, inner))
        else:
            raise PromptError(f"a {type(p).__name__} cannot be moved into a region")
    return out
