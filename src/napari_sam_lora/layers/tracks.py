"""Tracks of the masks: each object's centroid per frame, as a napari Tracks layer (Qt-free).

:func:`tracks_data` reads a ``(T, H, W)`` label stack frame by frame (``labels[t]``: the
session's compressed :class:`~napari_sam_lora.engine.annotation.label_frames.LabelFrames`
decode one frame at a time) and gives napari's ``[track_id, t, y, x]`` rows;
:func:`tracks_graph` turns the lineage (daughter → parent) into napari's graph;
:class:`TrackCache` keeps the rows per frame so that a change re-reads only the frames it
touched; :func:`show_tracks` adds or updates the "<image> tracks" layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["TrackCache", "show_tracks", "tracks_data", "tracks_graph", "tracks_layer_name"]

#: Columns of napari's tracks data.
COLUMNS = 4


def _frame_rows(plane: Any, t: int) -> np.ndarray:
    """``[id, t, y, x]`` rows of one label image: the centroid of every non-zero id."""
    plane = np.asarray(plane)
    if plane.ndim != 2:
        raise ValueError(f"a label frame must be 2D, not of shape {plane.shape}")
    flat = plane.ravel()
    if flat.size == 0 or not flat.any():
        return np.zeros((0, COLUMNS))
    if flat.min() < 0:
        raise ValueError("label images hold no negative ids")
    flat = flat.astype(np.intp, copy=False)
    height, width = plane.shape
    counts = np.bincount(flat)
    ys = np.bincount(flat, weights=np.repeat(np.arange(height, dtype=float), width))
    xs = np.bincount(flat, weights=np.tile(np.arange(width, dtype=float), height))
    ids = np.nonzero(counts)[0]
    ids = ids[ids != 0]
    n = counts[ids]
    return np.column_stack([ids, np.full(ids.size, t), ys[ids] / n, xs[ids] / n]).astype(float)


def tracks_data(labels: Any, frames: Iterable[int] | None = None) -> np.ndarray:
    """napari's tracks data of a label stack: one row ``[track_id, t, y, x]`` per object
    and frame it is on, ``(y, x)`` its centroid in pixels; sorted by id, then frame.

    Parameters
    ----------
    labels : array-like
        ``(T, H, W)`` non-negative integer labels, read frame by frame (``labels[t]``).
    frames : iterable of int, optional
        Only these frames (default: all).

    Returns
    -------
    np.ndarray
        ``(N, 4)`` float.
    """
    count = len(labels)
    todo = range(count) if frames is None else sorted({int(t) for t in frames})
    rows = [_frame_rows(labels[t], t) for t in todo]
    return _sorted(np.concatenate(rows) if rows else np.zeros((0, COLUMNS)))


def _sorted(data: np.ndarray) -> np.ndarray:
    if not len(data):
        return np.zeros((0, COLUMNS))
    return data[np.lexsort((data[:, 1], data[:, 0]))]


def tracks_graph(parents: Mapping[int, int]) -> dict[int, list[int]]:
    """napari's tracks graph of a lineage: ``{daughter: [parent]}``.

    Parameters
    ----------
    parents : mapping
        Daughter id → parent id (``session.annotation.parents()``).
    """
    return {int(d): [int(p)] for d, p in sorted(parents.items())}


class TrackCache:
    """The rows of :func:`tracks_data`, kept per frame: :meth:`update` re-reads only the
    frames a change touched.

    Attributes
    ----------
    key : object
        What the rows were read from (the dock keeps its session's annotation here): a new
        key re-reads every frame.
    """

    def __init__(self) -> None:
        self.key: Any = None
        self._rows: dict[int, np.ndarray] = {}

    def update(self, labels: Any, key: Any, frames: Iterable[int] | None = None) -> np.ndarray:
        """Re-read ``frames`` (every frame for ``None`` or a new ``key``); returns the data."""
        count = len(labels)
        if key is not self.key or frames is None:
            self.key, self._rows = key, {}
            frames = range(count)
        for t in frames:
            t = int(t)
            if 0 <= t < count:
                self._rows[t] = _frame_rows(labels[t], t)
        for t in [t for t in self._rows if t >= count]:
            del self._rows[t]
        rows = [self._rows[t] for t in sorted(self._rows)]
        return _sorted(np.concatenate(rows) if rows else np.zeros((0, COLUMNS)))

    def clear(self) -> None:
        """Forget everything."""
        self.key, self._rows = None, {}


def tracks_layer_name(image_layer: Any) -> str:
    """``"<image> tracks"``."""
    return f"{image_layer.name} tracks"


def show_tracks(
    viewer: Any,
    image_layer: Any,
    data: np.ndarray,
    parents: Mapping[int, int] | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    stack_axis: int = 0,
) -> Any:
    """Add or update the "<image> tracks" layer; returns it (``None`` and the layer
    removed when there is no track).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    image_layer : napari.layers.Image
        Its name names the layer; its scale and translate along the stack axis and the
        two spatial axes place it.
    data : np.ndarray
        ``(N, 4)`` rows of :func:`tracks_data`.
    parents : mapping, optional
        Daughter → parent (:func:`tracks_graph`); ids without a track are left out.
    offset : tuple of float
        Added to ``(y, x)``: where the labels' frame lies in the image (a region).
    stack_axis : int
        The image's stack axis (its scale and translate apply to ``t``).
    """
    from napari.layers import Tracks

    name = tracks_layer_name(image_layer)
    layer = next((x for x in viewer.layers if x.name == name and isinstance(x, Tracks)), None)
    data = np.asarray(data, float).reshape(-1, COLUMNS).copy()
    if not len(data):
        if layer is not None:
            viewer.layers.remove(layer)
        return None
    data[:, 2] += offset[0]
    data[:, 3] += offset[1]
    ids = {int(i) for i in np.unique(data[:, 0])}
    graph = {d: p for d, p in tracks_graph(parents or {}).items() if d in ids and p[0] in ids}
    axes = [stack_axis, image_layer.ndim - 2, image_layer.ndim - 1]
    scale = tuple(float(image_layer.scale[a]) for a in axes)
    translate = tuple(float(image_layer.translate[a]) for a in axes)
    if layer is None:
        active = viewer.layers.selection.active
        layer = viewer.add_tracks(
            data, graph=graph, name=name, scale=scale, translate=translate, tail_length=10
        )
        if active is not None:  # keep the user's tool active
            viewer.layers.selection.active = active
        return layer
    layer.graph = {}  # the old graph may name tracks the new data lacks
    layer.data = data
    layer.graph = graph
    return layer
