"""``LabelFrames``: a stack's ``(T, H, W)`` int32 label images, kept compressed per frame.

A label image is mostly background and long runs of one id, so each frame is stored as the
zlib-compressed bytes of its smallest integer type (a 1024² frame of a few nuclei: ~30 kB
instead of 4 MB); a few recently used frames stay decoded. Memory then grows with what the
masks hold, not with ``T × H × W``: a 300-frame stack costs little more than a 20-frame one.

It reads like the numpy array it replaces: ``labels[t]`` is frame ``t`` (read-only: the
annotation model writes frames through :meth:`LabelFrames.write`, so every change is one
undo step), ``labels[a:b]``, ``labels[[t0, t1]]``, ``labels[t, rows, cols]`` and
``np.asarray(labels)`` give numpy arrays, and ``shape``, ``dtype``, ``len`` are those of the
full array. Comparisons (``labels == 3``) and other array methods work on the whole stack,
decoded (what a test or a small stack may do; the engine reads frame by frame).
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FrameSnapshot", "LabelFrames"]

#: Decoded frames kept (the frames being shown, painted or tracked).
DECODED_FRAMES = 4
_LEVEL = 1  # zlib: fast, and label images compress well at any level


@dataclass(frozen=True)
class FrameSnapshot:
    """One frame as stored: its compressed bytes (``None``: all background) and the pixels
    per id; what an undo step keeps of a frame before and after a change."""

    packed: tuple[np.dtype, bytes] | None
    counts: dict[int, int]

    @property
    def nbytes(self) -> int:
        """Bytes of its compressed pixels."""
        return 0 if self.packed is None else len(self.packed[1])


class LabelFrames:
    """``(T, H, W)`` int32 label images, compressed frame by frame.

    Parameters
    ----------
    num_frames : int
        ``T``.
    frame_shape : tuple of int
        ``(H, W)``.
    """

    dtype = np.dtype(np.int32)
    ndim = 3
    __array_priority__ = 20  # ``array == labels`` asks this class first

    def __init__(self, num_frames: int, frame_shape: tuple[int, int]) -> None:
        self.shape = (int(num_frames), int(frame_shape[0]), int(frame_shape[1]))
        self._packed: list[tuple[np.dtype, bytes] | None] = [None] * self.shape[0]
        self._ids: list[frozenset[int]] = [frozenset()] * self.shape[0]
        self._counts: list[dict[int, int]] = [{}] * self.shape[0]  # id -> pixels, per frame
        self._decoded: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._zeros = np.zeros(self.shape[1:], dtype=np.int32)
        self._zeros.flags.writeable = False

    # -- facts -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        """``T × H × W``."""
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes held: the compressed frames plus the decoded ones kept."""
        with self._lock:
            packed = sum(len(p[1]) for p in self._packed if p is not None)
            return packed + sum(a.nbytes for a in self._decoded.values())

    def ids(self, frame: int) -> frozenset[int]:
        """The object ids present on ``frame`` (no decoding)."""
        return self._ids[self._index(frame)]

    def frames_with(self, obj_id: int) -> list[int]:
        """Frames where ``obj_id`` has pixels, ascending (no decoding)."""
        return [t for t, ids in enumerate(self._ids) if int(obj_id) in ids]

    def nonempty_frames(self) -> list[int]:
        """Frames with any object pixel, ascending (no decoding)."""
        return [t for t, ids in enumerate(self._ids) if ids]

    # -- reading ---------------------------------------------------------------------------
    def frame(self, frame: int) -> np.ndarray:
        """Frame ``frame`` as a read-only ``(H, W)`` int32 array."""
        frame = self._index(frame)
        with self._lock:
            decoded = self._decoded.get(frame)
            if decoded is not None:
                self._decoded.move_to_end(frame)
                return decoded
            packed = self._packed[frame]
        if packed is None:
            return self._zeros
        dtype, data = packed
        decoded = np.frombuffer(zlib.decompress(data), dtype=dtype).astype(np.int32)
        decoded = decoded.reshape(self.shape[1:])
        decoded.flags.writeable = False
        self._keep(frame, decoded)
        return decoded

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            if not key:
                return np.asarray(self)
            head, rest = key[0], key[1:]
            if _is_int(head):
                return self.frame(int(head))[rest]
            return self[head][(slice(None), *rest)]
        if _is_int(key):
            return self.frame(int(key))
        if isinstance(key, slice):
            frames = range(*key.indices(self.shape[0]))
        else:
            index = np.asarray(key)
            if index.dtype == bool:
                if index.shape != (self.shape[0],):
                    return np.asarray(self)[index]
                index = np.flatnonzero(index)
            frames = index.reshape(-1).tolist()
            if index.ndim != 1:
                return self._stack(frames).reshape(*index.shape, *self.shape[1:])
        return self._stack(frames)

    def _stack(self, frames: Any) -> np.ndarray:
        out = np.empty((len(frames), *self.shape[1:]), dtype=np.int32)
        for k, frame in enumerate(frames):
            out[k] = self.frame(frame)
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in range(self.shape[0]):
            yield self.frame(frame)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        full = self._stack(range(self.shape[0]))
        return full if dtype is None else full.astype(dtype, copy=False)

    def copy(self) -> np.ndarray:
        """The whole stack as a new numpy array."""
        return np.asarray(self)

    def __eq__(self, other: object) -> Any:  # type: ignore[override]
        return np.asarray(self) == np.asarray(other)

    def __ne__(self, other: object) -> Any:  # type: ignore[override]
        return np.asarray(self) != np.asarray(other)

    __hash__ = None  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        """Other numpy array methods (``any``, ``max``, ``astype``…) on the whole stack,
        decoded (``any()``/``max()`` without arguments use the per-frame ids instead)."""
        if name.startswith("_") or not hasattr(np.ndarray, name):
            raise AttributeError(f"'LabelFrames' object has no attribute {name!r}")
        return getattr(np.asarray(self), name)

    def any(self, *args: Any, **kwargs: Any) -> Any:
        """Like ``ndarray.any``; without arguments: whether any frame has an object."""
        if args or kwargs:
            return np.asarray(self).any(*args, **kwargs)
        return np.bool_(any(self._ids))

    def max(self, *args: Any, **kwargs: Any) -> Any:
        """Like ``ndarray.max``; without arguments: the largest id (0 when empty)."""
        if args or kwargs:
            return np.asarray(self).max(*args, **kwargs)
        return np.int32(max((max(ids) for ids in self._ids if ids), default=0))

    def __repr__(self) -> str:
        return f"LabelFrames(shape={self.shape}, {self.nbytes / 2**20:.1f} MB held)"

    # -- writing (the annotation model's) --------------------------------------------------
    def write(
        self,
        frame: int,
        labels: np.ndarray,
        changed: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Make ``labels`` (an ``(H, W)`` array of ids) frame ``frame``.

        ``changed``: the ``(old, new)`` values of the pixels that differ from the frame as
        it was, when the caller knows them (a stroke): the ids present are then updated from
        those alone, not counted over the whole frame.
        """
        frame = self._index(frame)
        labels = np.asarray(labels)
        if labels.shape != self.shape[1:]:
            raise ValueError(f"a frame of shape {labels.shape}, not {self.shape[1:]}")
        counts = self._counts[frame]
        counts = _updated(counts, *changed) if changed is not None else _counted(labels)
        ids = [i for i in counts if i != 0]
        if not ids:
            packed, decoded = None, self._zeros
        else:
            small = np.min_scalar_type(max(ids))
            data = zlib.compress(np.ascontiguousarray(labels, dtype=small).tobytes(), _LEVEL)
            packed = (np.dtype(small), data)
            decoded = np.array(labels, dtype=np.int32)
            decoded.flags.writeable = False
        with self._lock:
            self._packed[frame] = packed
            self._counts[frame] = counts
            self._ids[frame] = frozenset(ids)
            self._decoded.pop(frame, None)
        if packed is not None:
            self._keep(frame, decoded)

    def snapshot(self, frame: int) -> FrameSnapshot:
        """Frame ``frame`` as stored (no copy, no decoding)."""
        frame = self._index(frame)
        with self._lock:
            return FrameSnapshot(self._packed[frame], self._counts[frame])

    def restore(self, frame: int, snapshot: FrameSnapshot) -> None:
        """Make frame ``frame`` what ``snapshot`` holds (an undo or a redo)."""
        frame = self._index(frame)
        with self._lock:
            self._packed[frame] = snapshot.packed
            self._counts[frame] = snapshot.counts
            self._ids[frame] = frozenset(i for i in snapshot.counts if i != 0)
            self._decoded.pop(frame, None)

    def _keep(self, frame: int, decoded: np.ndarray) -> None:
        with self._lock:
            self._decoded[frame] = decoded
            self._decoded.move_to_end(frame)
            while len(self._decoded) > DECODED_FRAMES:
                self._decoded.popitem(last=False)

    def _index(self, frame: Any) -> int:
        frame = int(frame)
        if frame < 0:
            frame += self.shape[0]
        if not 0 <= frame < self.shape[0]:
            raise IndexError(f"frame {frame} is out of range (0–{self.shape[0] - 1})")
        return frame


def _counted(labels: np.ndarray) -> dict[int, int]:
    """Pixels per id of a label image (background 0 included)."""
    top = int(labels.max()) if labels.size else 0
    if top < 1 << 16 and labels.min() >= 0:
        small = labels.astype(np.uint16, copy=False).ravel()
        counts = np.bincount(small, minlength=top + 1)
        present = np.flatnonzero(counts)
        return {int(i): int(counts[i]) for i in present}
    ids, counts = np.unique(labels, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}


def _updated(counts: dict[int, int], old: np.ndarray, new: np.ndarray) -> dict[int, int]:
    """``counts`` after the pixels holding ``old`` values took ``new`` ones."""
    counts = dict(counts)
    for values, sign in ((old, -1), (new, 1)):
        ids, n = np.unique(np.asarray(values), return_counts=True)
        for i, c in zip(ids.tolist(), n.tolist(), strict=True):
            counts[int(i)] = counts.get(int(i), 0) + sign * int(c)
    return {i: c for i, c in counts.items() if c > 0}


def _is_int(key: Any) -> bool:
    return isinstance(key, int | np.integer) and not isinstance(key, bool)
