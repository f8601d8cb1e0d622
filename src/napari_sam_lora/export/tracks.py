"""Tracks from a ``(T, H, W)`` label stack and its divisions, read one frame at a time.

:func:`scan` reads every frame once and keeps, per frame and object, its area and centroid
(never the frames themselves). :func:`build_tracks` turns that and the divisions
(daughter → parent) into *tracks*: time-continuous runs of one object, as the Cell
Tracking Challenge (CTC) and tracking graphs need them.

The track-gap rule
------------------
A track must be present on every frame from its first to its last. An object missing on
some frames between two appearances (a gap), or a parent still present on or after the
frame its daughter begins (the parent kept one daughter's id), is **split**: the first run
keeps the object's id, every later run becomes a new track with the next free id (above
every id in the labels, in order of first frame, then id), whose parent is the run before
it. A daughter's parent is the parent's run that ends before the daughter begins. The label
images written for CTC carry the new ids; GEFF keeps the object ids (``seg_id``) and links
the runs with edges; OME-Zarr keeps the label images as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam_lora.engine import DataError

__all__ = [
    "ExportError",
    "FrameObjects",
    "Scan",
    "Track",
    "Tracks",
    "build_tracks",
    "frame_count",
    "read_frame",
    "scan",
]


class ExportError(DataError):
    """The labels, the divisions or the output cannot be exported (the message says why);
    nothing was written."""


@dataclass(frozen=True)
class FrameObjects:
    """The objects of one frame: ids (ascending, no background), pixel counts, centroids."""

    ids: np.ndarray
    area: np.ndarray
    y: np.ndarray
    x: np.ndarray


@dataclass(frozen=True)
class Scan:
    """What one pass over a label stack found."""

    frame_shape: tuple[int, int]
    frames: list[FrameObjects]
    max_id: int

    @property
    def num_frames(self) -> int:
        """Number of frames."""
        return len(self.frames)

    def presence(self) -> dict[int, list[int]]:
        """Object id → the frames it is on (ascending)."""
        found: dict[int, list[int]] = {}
        for t, objects in enumerate(self.frames):
            for obj in objects.ids.tolist():
                found.setdefault(obj, []).append(t)
        return found


@dataclass(frozen=True)
class Track:
    """One time-continuous run of an object: ``track_id`` on frames ``start`` … ``end``."""

    track_id: int
    object_id: int
    start: int
    end: int
    parent: int  # the parent track's id; 0 for none


@dataclass
class Tracks:
    """The tracks of a label stack (see the module docstring for the track-gap rule)."""

    tracks: list[Track]
    #: frame → {object id: track id} where the two differ (a split's later runs)
    relabel: dict[int, dict[int, int]] = field(default_factory=dict)

    def track_of(self, frame: int, object_id: int) -> int:
        """The track id of ``object_id`` on ``frame``."""
        return self.relabel.get(frame, {}).get(object_id, object_id)

    @property
    def max_track_id(self) -> int:
        """The largest track id (0 when there are no tracks)."""
        return max((t.track_id for t in self.tracks), default=0)

    def children(self) -> dict[int, list[int]]:
        """Track id → its child tracks' ids (divisions and the runs after a gap)."""
        found: dict[int, list[int]] = {}
        for track in self.tracks:
            if track.parent:
                found.setdefault(track.parent, []).append(track.track_id)
        return found


def frame_count(labels: Any) -> tuple[int, int, int]:
    """``(T, H, W)`` of a 3-D integer label stack, checked without reading its pixels.

    Raises
    ------
    ExportError
        Not 3-D, or not of an integer type.
    """
    if isinstance(labels, list | tuple) and labels and hasattr(labels[0], "shape"):
        raise ExportError(
            "the labels are a multiscale pyramid; export its full-resolution level (the "
            "first array)"
        )
    shape = tuple(int(s) for s in np.shape(labels))
    if len(shape) != 3:
        raise ExportError(
            f"the labels have shape {shape}; tracks are exported from a (T, H, W) stack of "
            "label images (one 2-D frame per time point)"
        )
    dtype = getattr(labels, "dtype", None)
    dtype = np.dtype(dtype) if dtype is not None else np.asarray(labels).dtype
    if dtype.kind not in "iu":  # not bool, float or anything else
        raise ExportError(
            f"the labels have dtype {dtype}; label images hold integer object ids (0 = background)"
        )
    if 0 in shape:
        raise ExportError(f"the labels have shape {shape}; there is nothing to export")
    return shape[0], shape[1], shape[2]


def read_frame(labels: Any, t: int, frame_shape: tuple[int, int]) -> np.ndarray:
    """Frame ``t`` of ``labels`` as a 2-D integer array (``labels[t]``; one frame read)."""
    frame = np.asarray(labels[t])
    if frame.shape != frame_shape:
        raise ExportError(
            f"frame {t} of the labels has shape {frame.shape}, not {frame_shape} like the stack"
        )
    if frame.dtype.kind not in "iu":
        raise ExportError(f"frame {t} of the labels has dtype {frame.dtype}, not an integer type")
    return frame


def scan(labels: Any) -> Scan:
    """Read every frame once: each object's area and centroid per frame.

    Parameters
    ----------
    labels : array-like
        ``(T, H, W)`` integer labels (0 = background); ``labels[t]`` is read for each
        ``t``, so a lazy stack is never held whole.

    Raises
    ------
    ExportError
        Not a 3-D integer stack, or a negative value.
    """
    num_frames, height, width = frame_count(labels)
    rows = np.repeat(np.arange(height, dtype=np.float64), width)
    cols = np.tile(np.arange(width, dtype=np.float64), height)
    frames, max_id = [], 0
    for t in range(num_frames):
        frame = read_frame(labels, t, (height, width)).ravel()
        ids, inverse = np.unique(frame, return_inverse=True)
        if ids.size and ids[0] < 0:
            raise ExportError(
                f"frame {t} of the labels holds the negative value {int(ids[0])}; object ids "
                "are positive (0 = background)"
            )
        area = np.bincount(inverse, minlength=ids.size)
        y = np.bincount(inverse, weights=rows, minlength=ids.size) / area
        x = np.bincount(inverse, weights=cols, minlength=ids.size) / area
        keep = ids != 0
        objects = FrameObjects(ids[keep].astype(np.int64), area[keep], y[keep], x[keep])
        frames.append(objects)
        if objects.ids.size:
            max_id = max(max_id, int(objects.ids[-1]))
    return Scan((height, width), frames, max_id)


def check_parents(parents: Mapping[Any, Any] | None) -> dict[int, int]:
    """``parents`` (daughter → parent) as positive ints.

    Raises
    ------
    ExportError
        An id that is not a positive integer, or a daughter its own parent.
    """
    checked: dict[int, int] = {}
    for daughter, parent in (parents or {}).items():
        pair = []
        for role, value in (("daughter", daughter), ("parent", parent)):
            try:
                number = int(value)
                whole = number == float(value) if not isinstance(value, str) else True
            except (TypeError, ValueError):
                number, whole = 0, False
            if not whole or number <= 0 or isinstance(value, bool):
                raise ExportError(
                    f"the divisions name the {role} {value!r} (of {daughter!r} → {parent!r}); "
                    "object ids are positive integers"
                )
            pair.append(number)
        if pair[0] == pair[1]:
            raise ExportError(f"the divisions make object {pair[0]} its own parent")
        checked[pair[0]] = pair[1]
    return checked


def build_tracks(found: Scan, parents: Mapping[Any, Any] | None = None) -> Tracks:
    """The tracks of ``found`` with the divisions ``parents`` (daughter id → parent id).

    Raises
    ------
    ExportError
        The labels hold no object; a daughter or a parent that is not an object in the
        labels; a parent that does not appear before its daughter.
    """
    presence = found.presence()
    if not presence:
        raise ExportError(
            "the labels hold no object (every frame is background): nothing to export"
        )
    lineage = check_parents(parents)
    births: dict[int, list[int]] = {}  # parent → frames its daughters begin on
    for daughter, parent in sorted(lineage.items()):
        for role, obj in (("daughter", daughter), ("parent", parent)):
            if obj not in presence:
                raise ExportError(
                    f"the division {parent} → {daughter} names the {role} {obj}, but the "
                    f"labels hold no object {obj}; remove that division or export the labels "
                    "it belongs to"
                )
        born, first = presence[daughter][0], presence[parent][0]
        if first >= born:
            raise ExportError(
                f"object {daughter} begins on frame {born} but its parent {parent} first "
                f"appears on frame {first}; a parent must appear before its daughter"
            )
        births.setdefault(parent, []).append(born)

    runs: list[tuple[int, int, int]] = []  # (object id, start, end)
    for obj, frames in presence.items():
        cuts = set(births.get(obj, ()))
        start = previous = frames[0]
        for t in frames[1:]:
            # a gap, or the parent still present once a daughter begins (see the module doc)
            if t != previous + 1 or any(previous < b <= t for b in cuts):
                runs.append((obj, start, previous))
                start = t
            previous = t
        runs.append((obj, start, previous))
    runs.sort(key=lambda run: (run[1], run[0]))

    next_id = found.max_id + 1
    seen: dict[int, list[tuple[int, int, int]]] = {}  # object → its (start, end, track id)
    tracks: list[Track] = []
    relabel: dict[int, dict[int, int]] = {}
    for obj, start, end in runs:
        earlier = seen.setdefault(obj, [])
        if earlier:  # a later run of a split object: a new track, child of the run before
            track_id, next_id, parent = next_id, next_id + 1, earlier[-1][2]
            for t in range(start, end + 1):
                relabel.setdefault(t, {})[obj] = track_id
        else:
            track_id, parent = obj, 0
            if obj in lineage:  # the parent's run that ends before this daughter begins
                parent = [run for run in seen[lineage[obj]] if run[1] < start][-1][2]
        earlier.append((start, end, track_id))
        tracks.append(Track(track_id, obj, start, end, parent))
    return Tracks(sorted(tracks, key=lambda track: track.track_id), relabel)
