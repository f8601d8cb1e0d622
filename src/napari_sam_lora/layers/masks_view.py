"""The masks layer as a view of a session's annotation model (Qt-free).

The annotation model (:class:`~napari_sam_lora.engine.annotation.model.AnnotationModel`) owns
the labels; the "<image> masks" Labels layer only shows them. :class:`MasksView` keeps both
equal in the two directions, without ever comparing the layer with the model to guess what
the user did:

- **model → layer**: every change of the model (an action, an undo, a redo, a rollback) names
  the frames it changed; :meth:`MasksView.flush` writes those frames into the layer (on the
  main thread; the model may change on a worker).
- **layer → model**: napari's ``paint`` event carries each brush stroke, fill or erase as
  (indices, old values, new values); the view hands the stroke on as an edit of one frame
  (``on_stroke(frame, rows, cols, values)``), which the dock makes one model action.
- **undo / redo**: the layer's ``undo`` and ``redo`` — what napari's Ctrl+Z and
  Ctrl+Shift+Z on a Labels layer call — become ``on_undo`` / ``on_redo`` (the model's
  history) instead of napari's own layer history, for as long as the view exists.
- **region**: a session made on a :class:`Region` of the frames (small objects in big
  frames, seen at full resolution) annotates only that rectangle: its frames are written at
  the region's offset (the rest of the layer is left as it is), strokes are handed on in
  the region's coordinates, and pixels painted outside it are put back and reported.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Labels

from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.layers.output import plane_index, write_frame
from napari_sam_lora.layers.stack import LazyArray, StackSource

__all__ = ["MasksView", "Region", "Stroke", "forget_layer_history"]

#: ``(frame, rows, cols, values)`` of one stroke on one frame.
Stroke = tuple[int, np.ndarray, np.ndarray, np.ndarray]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Region:
    """A rectangle of every frame: rows ``r0:r1``, columns ``c0:c1`` (ends excluded).

    A session made on ``region.crop(frames)`` sees that rectangle at full resolution; frame
    coordinates ``(row, col)`` are ``(row - r0, col - c0)`` in the region.

    Raises
    ------
    PromptError
        An empty or negative rectangle.
    """

    r0: int
    r1: int
    c0: int
    c1: int

    def __post_init__(self) -> None:
        if not (0 <= self.r0 < self.r1 and 0 <= self.c0 < self.c1):
            raise PromptError(f"the region {self.describe()} is empty; draw a larger rectangle")

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return (self.r1 - self.r0, self.c1 - self.c0)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices selecting the region of a frame."""
        return slice(self.r0, self.r1), slice(self.c0, self.c1)

    def describe(self) -> str:
        """E.g. ``"rows 16–47, columns 8–39 (32×32 px)"``."""
        h, w = self.r1 - self.r0, self.c1 - self.c0
        return f"rows {self.r0}–{self.r1 - 1}, columns {self.c0}–{self.c1 - 1} ({h}×{w} px)"

    def contains(self, row: Any, col: Any) -> Any:
        """Whether frame coordinates lie in the region (pixel centres; arrays work)."""
        row, col = np.asarray(row, float), np.asarray(col, float)
        return (
            (row >= self.r0 - 0.5)
            & (row < self.r1 - 0.5)
            & (col >= self.c0 - 0.5)
            & (col < self.c1 - 0.5)
        )

    def check_fits(self, frame_shape: tuple[int, int], name: str = "the image") -> None:
        """Raise :class:`PromptError` unless the region lies inside frames of
        ``frame_shape``."""
        h, w = frame_shape
        if self.r1 > h or self.c1 > w:
            raise PromptError(
                f"the region {self.describe()} is not inside {name} ({h}×{w} pixels); "
                f"draw the rectangle on the image"
            )

    def crop(self, frames: Any) -> Any:
        """A lazy ``(T, h, w[, C])`` view of the region of ``frames`` (nothing is read)."""
        return _Cropped(frames, self)


class _Cropped(LazyArray):
    """Lazy view ``frames[:, r0:r1, c0:c1]`` of a stack (what a session reads)."""

    def __init__(self, frames: Any, region: Region) -> None:
        self._frames, self._region = frames, region
        shape = tuple(int(s) for s in frames.shape)
        self.shape = (shape[0], *region.shape, *shape[3:])
        self.dtype = np.dtype(frames.dtype)

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        if first is Ellipsis:  # the whole stack (np.asarray)
            first = slice(None)
        out = self._frames[(first, *self._region.slices)]
        if rest:
            lead = () if isinstance(first, int | np.integer) else (slice(None),)
            out = np.asarray(out)[(*lead, *rest)]
        return out


class MasksView:
    """Keep a Labels layer equal to an annotation model and hand its edits to the model.

    Parameters
    ----------
    model : AnnotationModel
        The session's annotation model (``session.annotation``).
    layer : napari.layers.Labels
        The masks layer (the image's non-channel shape, or ``(T, H, W)``).
    source : StackSource
        The stack the model annotates.
    on_stroke : callable
        ``on_stroke(strokes)`` with a list of :data:`Stroke` (one per frame the user's
        stroke touched), main thread.
    on_undo, on_redo : callable
        Called instead of the layer's ``undo`` / ``redo`` (Ctrl+Z / Ctrl+Shift+Z).
    region : Region, optional
        The rectangle of the frames the model annotates (the model's frames have its
        shape); ``None``: whole frames.
    on_outside : callable, optional
        ``on_outside(pixels)``: a stroke painted that many pixels outside the region; they
        were put back as they were (not sent to the model).
    """

    def __init__(
        self,
        model: Any,
        layer: Labels,
        source: StackSource,
        on_stroke: Callable[[list[Stroke]], Any],
        on_undo: Callable[[], Any],
        on_redo: Callable[[], Any],
        region: Region | None = None,
        on_outside: Callable[[int], Any] | None = None,
    ) -> None:
        self.model, self.layer, self.source = model, layer, source
        self.region = region
        self._on_stroke = on_stroke
        self._on_outside = on_outside
        self._dirty: set[int] = set()
        self._shown: dict[int, int] = {}  # frame -> the model's frame version it shows
        self._lock = threading.Lock()
        self._writing = False
        self._closed = False
        model.events.connect(self._on_change)
        layer.events.paint.connect(self._on_paint)
        # napari's Ctrl+Z / Ctrl+Shift+Z bindings (and any menu) call these on the layer
        layer.undo = lambda: on_undo()
        layer.redo = lambda: on_redo()
        self.mark(range(model.num_frames))

    def close(self) -> None:
        """Stop viewing: disconnect from the model and the layer, give the keys back."""
        if self._closed:
            return
        self._closed = True
        self.model.events.disconnect(self._on_change)
        with contextlib.suppress(Exception):  # the layer may be gone with the viewer
            self.layer.events.paint.disconnect(self._on_paint)
            del self.layer.undo, self.layer.redo  # napari's own methods again

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._closed

    def shows(self, model: Any, layer: Any, region: Region | None = None) -> bool:
        """Whether this view binds ``model`` to ``layer`` (on ``region``)."""
        return (
            not self._closed
            and self.model is model
            and self.layer is layer
            and self.region == region
        )

    def _index(self, frame: int) -> tuple[int | slice, ...]:
        """Index into the layer's data selecting what the model's ``frame`` shows: the
        plane, or its region."""
        index = plane_index(self.layer, self.source, frame)
        if self.region is None:
            return index
        spatial = iter(self.region.slices)  # the plane's two slices are rows, then columns
        return tuple(next(spatial) if isinstance(k, slice) else k for k in index)

    # -- model -> layer ------------------------------------------------------------------
    def _on_change(self, change: Any) -> None:  # any thread
        self.mark(change.frames)

    def mark(self, frames: Iterable[int]) -> None:
        """Frames to write at the next :meth:`flush` (thread-safe)."""
        with self._lock:
            self._dirty.update(int(f) for f in frames)

    def flush(self) -> list[int]:
        """Write the frames the model changed into the layer (main thread); returns them.

        The layer's ``metadata["lineage"]`` (daughter → parent) follows the model's
        divisions, so saving the layer as tracks (the napari writers) keeps them."""
        self._show_lineage()
        with self._lock:
            frames, self._dirty = sorted(self._dirty), set()
        versions = self.model.frame_versions
        frames = [f for f in frames if self._shown.get(f) != int(versions[f])]
        return [f for f in frames if self.show(f)]

    def _show_lineage(self) -> None:
        parents = getattr(self.model, "parents", None)
        lineage = parents() if callable(parents) else {}
        if lineage or "lineage" in self.layer.metadata:
            self.layer.metadata["lineage"] = dict(lineage)

    def show(self, frame: int, labels: np.ndarray | None = None) -> bool:
        """Write ``labels`` (default: the model's) as ``frame`` of the layer; says whether
        a pixel changed. Not an edit: only the changed pixels are written (napari refreshes
        just those), no paint event reaches the model, napari's own history stays empty.

        Never raises for labels the layer cannot hold (id 300 in a user's uint8 masks
        layer; it runs inside Qt callbacks): the frame is not written, and the first such
        refusal of this view is reported (log and napari notification), not every frame's.
        """
        if self._closed:
            return False
        frame = int(frame)
        # a job's step shows the frame's latest write (steps arrive in write order)
        self._shown[frame] = int(self.model.frame_versions[frame])
        new = self.model.labels[frame] if labels is None else np.asarray(labels)
        if np.array_equal(np.asarray(self.layer.data[self._index(frame)]), new):
            return False
        if self.region is not None:  # the plane as it is, with the region's pixels new
            plane = np.array(self.layer.data[plane_index(self.layer, self.source, frame)])
            plane[self.region.slices] = new
            new = plane
        self._writing = True
        try:
            write_frame(self.layer, self.source, frame, new)
        except PromptError as exc:  # ids the layer's dtype cannot hold: nothing was written
            self._shown.pop(frame, None)  # shown once the layer can hold them
            if not getattr(self, "_refusal_reported", False):
                self._refusal_reported = True
                logger.warning("masks layer '%s' not updated: %s", self.layer.name, exc)
                with contextlib.suppress(Exception):  # no notification manager: logged
                    from napari.utils.notifications import show_error

                    show_error(f"masks layer '{self.layer.name}' not updated: {exc}")
            return False
        finally:
            self._writing = False
            forget_layer_history(self.layer)
        return True

    def equal(self) -> bool:
        """Whether the layer shows exactly the model's labels (every frame)."""
        return all(
            np.array_equal(np.asarray(self.layer.data[self._index(f)]), self.model.labels[f])
            for f in range(self.model.num_frames)
        )

    # -- layer -> model ------------------------------------------------------------------
    def _on_paint(self, event: Any) -> None:
        if self._writing or self._closed:
            return
        atoms = list(getattr(event, "value", None) or [])
        strokes = self.strokes(atoms)
        outside = self._put_back_outside(atoms) if self.region is not None else 0
        forget_layer_history(self.layer)  # the model's history is the only one
        if outside and self._on_outside is not None:
            self._on_outside(outside)
        if strokes:
            self._on_stroke(strokes)

    def _axes(self) -> tuple[int | None, int, int, dict[int, int]]:
        """``(stack axis, row axis, column axis, fixed axes)`` of the layer's data."""
        source = self.source
        if tuple(int(s) for s in np.shape(self.layer.data)) == source.frames_shape:
            return 0, 1, 2, {}
        return source.stack_axis, *source.spatial_axes, source.fixed_indices

    def _put_back_outside(self, atoms: list[Any]) -> int:
        """Restore the pixels the atoms painted outside the region; returns how many."""
        _, row_axis, col_axis, _ = self._axes()
        ndim, count = len(np.shape(self.layer.data)), 0
        self._writing = True
        try:
            for indices, old, _new in atoms:
                indices = tuple(np.asarray(i).reshape(-1) for i in indices)
                if len(indices) != ndim or indices[0].size == 0:
                    continue
                out = ~self.region.contains(indices[row_axis], indices[col_axis])
                if out.any():
                    back = np.broadcast_to(np.asarray(old).reshape(-1), indices[0].shape)
                    self.layer.data_setitem(tuple(i[out] for i in indices), back[out])
                    count += int(out.sum())
        finally:
            self._writing = False
        return count

    def strokes(self, atoms: Iterable[Any]) -> list[Stroke]:
        """napari history atoms ``(indices, old values, new values)`` as one
        :data:`Stroke` per frame of this stack (pixels on other planes of a 4D+ layer are
        left out), in the order they were painted. With a region, rows and columns are the
        region's and pixels outside it are left out."""
        ndim = len(np.shape(self.layer.data))
        stack_axis, row_axis, col_axis, fixed = self._axes()
        region = self.region
        per_frame: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        for atom in atoms:
            indices, _old, new = atom
            indices = tuple(np.asarray(i).reshape(-1) for i in indices)
            if len(indices) != ndim or indices[0].size == 0:
                continue
            values = np.broadcast_to(np.asarray(new).reshape(-1), indices[0].shape)
            keep = np.ones(indices[0].shape, bool)
            for axis, value in fixed.items():
                keep &= indices[axis] == value
            if region is not None:
                keep &= region.contains(indices[row_axis], indices[col_axis])
            frames = indices[stack_axis] if stack_axis is not None else np.zeros_like(indices[0])
            for frame in np.unique(frames[keep]):
                here = keep & (frames == frame)
                rows, cols = indices[row_axis][here], indices[col_axis][here]
                if region is not None:
                    rows = rows.astype(np.int64) - region.r0
                    cols = cols.astype(np.int64) - region.c0
                per_frame.setdefault(int(frame), []).append((rows, cols, values[here]))
        return [
            (
                frame,
                np.concatenate([p[0] for p in parts]),
                np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]),
            )
            for frame, parts in sorted(per_frame.items())
        ]


def forget_layer_history(layer: Labels) -> None:
    """Empty napari's own undo/redo history of ``layer`` (the annotation model's history
    replaces it; napari offers no public call for this)."""
    for name in ("_undo_history", "_redo_history"):
        history = getattr(layer, name, None)
        if history is not None and hasattr(history, "clear"):
            history.clear()
