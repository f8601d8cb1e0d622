"""The annotation model: the one source of truth for what a stack's annotation is.

An :class:`AnnotationModel` owns, for one stack,

- the label images ``(T, H, W)`` that every view (the masks layer, a script) shows,
- the prompts the user gave,
- the source of every (frame, object) mask (:class:`~.annotations.AnnotationState`:
  prompt, correction, accepted, auto-accepted, model-made), with the confirmed masks,
- which corrections no adapter has learned from yet (``Entry.learned``),

and its own undo/redo history. Every change happens inside an :meth:`AnnotationModel.action`
and every action is one history entry, whatever it touched (an accept *with* its
re-propagation is one entry); an action that ends in an exception — a cancelled job is a
``GeneratorExit`` at its ``yield`` — is rolled back and leaves no trace.

The model knows nothing of SAM2, napari or Qt. :class:`~.session.Session` drives it (and keeps
SAM2's conditioning equal to its confirmed masks); views listen to :attr:`AnnotationModel.events`
(in the spirit of napari's evented models): each finished action, undo and redo emits a
:class:`Change` naming the frames whose labels changed.

Example
-------
>>> model = AnnotationModel(num_frames=5, frame_shape=(64, 64))
>>> with model.action("paint"):
...     model.paint(2, rows, cols, values)        # the user's stroke: a correction
>>> model.undo()                                   # the stroke is gone, labels and sources
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from napari_sam_lora.engine.annotation.history import Action, Change, Key, Signal
from napari_sam_lora.engine.annotation.label_frames import LabelFrames
from napari_sam_lora.engine.annotation.prompts import Prompt
from napari_sam_lora.engine.annotation.state import (
    CONFIRMED_SOURCES,
    MODEL_SOURCES,
    AnnotationState,
    Entry,
)
from napari_sam_lora.engine.core.errors import PromptError

__all__ = ["Action", "AnnotationModel", "Change", "Signal"]


class AnnotationModel:
    """Labels, prompts and mask sources of one stack, with an undo/redo history.

    Parameters
    ----------
    num_frames : int
    frame_shape : tuple of int
        ``(height, width)``.
    history_limit : int
        Most actions kept for undo (the oldest are dropped).
    history_mb : float
        Most megabytes of undo data kept (the oldest actions are dropped; the newest is
        always kept).

    Attributes
    ----------
    events : Signal
        Emits a :class:`Change` after each finished action, undo, redo and rollback.
    frame_versions : np.ndarray
        Per frame, how many times its labels changed (a view skips a frame it showed).
    """

    def __init__(
        self,
        num_frames: int,
        frame_shape: tuple[int, int],
        history_limit: int = 200,
        history_mb: float = 512.0,
    ) -> None:
        self.labels = LabelFrames(int(num_frames), (int(frame_shape[0]), int(frame_shape[1])))
        self.frame_versions = np.zeros(int(num_frames), dtype=np.int64)
        self.entries = AnnotationState()
        self._prompts: list[Prompt] = []
        self._lineage: dict[int, tuple[int, int]] = {}  # daughter -> (parent, frame)
        self.events = Signal()
        self.history_limit = int(history_limit)
        self.history_bytes = int(history_mb * 2**20)
        self._undo: list[Action] = []
        self._redo: list[Action] = []
        self._open: Action | None = None
        self._owner: int | None = None
        self._lock = threading.RLock()

    # -- facts -----------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        """Number of frames."""
        return int(self.labels.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return int(self.labels.shape[1]), int(self.labels.shape[2])

    @property
    def prompts(self) -> list[Prompt]:
        """The user's prompts, in the order given (a copy)."""
        return list(self._prompts)

    @property
    def lineage(self) -> dict[int, tuple[int, int]]:
        """Divisions: daughter id → ``(parent id, frame the daughter begins on)`` (a copy)."""
        return dict(self._lineage)

    def parents(self) -> dict[int, int]:
        """Daughter id → parent id."""
        return {daughter: parent for daughter, (parent, _) in self._lineage.items()}

    def alive(self, obj_id: int, frame: int) -> bool:
        """Whether ``obj_id`` exists on ``frame`` as far as divisions say: a daughter from
        its division frame on, a parent until its first daughter's division frame."""
        obj_id, frame = int(obj_id), int(frame)
        born = self._lineage.get(obj_id)
        if born is not None and frame < born[1]:
            return False
        ends = [f for parent, f in self._lineage.values() if parent == obj_id]
        return not ends or frame < min(ends)

    @property
    def object_ids(self) -> list[int]:
        """Objects the user made: with a prompt or a confirmed mask, ascending."""
        ids = {int(p.obj_id) for p in self._prompts}
        ids |= {o for _, o in self.entries.confirmed()}
        return sorted(ids)

    @property
    def busy(self) -> bool:
        """Whether an action is open (a job is changing the model)."""
        return self._open is not None

    @property
    def can_undo(self) -> bool:
        """Whether there is an action to undo."""
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        """Whether there is an undone action to redo."""
        return bool(self._redo)

    @property
    def undo_names(self) -> list[str]:
        """Names of the actions :meth:`undo` would undo, newest first."""
        return [a.name for a in reversed(self._undo)]

    @property
    def redo_names(self) -> list[str]:
        """Names of the actions :meth:`redo` would redo, next first."""
        return [a.name for a in reversed(self._redo)]

    def unlearned(self, frame: int | None = None) -> list[Key]:
        """Corrections no adapter has learned from yet (on ``frame``, if given)."""
        return [
            (f, o)
            for f, o in self.entries.confirmed(frame=frame)
            if self.entries.source(f, o) == "correction" and not self.entries.entry(f, o).learned
        ]

    def check_unlearned(self, frame: int) -> list[Key]:
        """:meth:`unlearned` of ``frame``, which must not be empty.

        Raises
        ------
        PromptError
            Frame out of range, or no correction of it waits to be learned (saying
            whether its corrections were learned already).
        """
        frame = int(frame)
        if not 0 <= frame < self.num_frames:
            raise PromptError(f"frame {frame} is out of range (0–{self.num_frames - 1})")
        pending = self.unlearned(frame)
        if pending:
            return pending
        learned = [
            o
            for _, o in self.entries.confirmed(frame=frame)
            if self.entries.source(frame, o) == "correction"
        ]
        why = (
            f"its corrections (object(s) {learned}) were learned already"
            if learned
            else "you have not corrected it"
        )
        raise PromptError(
            f"nothing to learn on frame {frame}: {why}. Paint, erase or fill the mask "
            "in the masks layer first."
        )

    # -- actions ---------------------------------------------------------------------------
    @contextmanager
    def action(self, name: str) -> Iterator[Action]:
        """Group every change made in the block into ONE history entry.

        Nested blocks join the outer action. An exception leaving the outermost block
        (``GeneratorExit`` when a job's generator is closed: a cancel) undoes what the
        block changed and re-raises: a failed or cancelled action leaves no trace.

        Raises
        ------
        PromptError
            Another thread has an action open (one job changes the model at a time).
        """
        me = threading.get_ident()
        with self._lock:
            if self._open is not None and self._owner != me:
                raise PromptError(
                    f"the annotation is being changed by another job ({self._open.name!r}); "
                    "wait for it or cancel it first"
                )
            outer = self._open is None
            if outer:
                self._open, self._owner = Action(name), me
        action = self._open
        try:
            yield action
        except BaseException:
            if outer:
                self._finish(action, rollback=True)
            raise
        else:
            if outer:
                self._finish(action, rollback=False)

    def _finish(self, action: Action, rollback: bool) -> None:
        with self._lock:
            self._open, self._owner = None, None
        if rollback:
            self._apply(action, undoing=True)
            kind = "rollback"
        else:
            if action.empty:
                return
            self._undo.append(action)
            self._redo.clear()
            self._trim()
            kind = "do"
        if not action.empty:
            self.events.emit(Change(kind, action.name, action.frames, action.objects))

    def _trim(self) -> None:
        while len(self._undo) > max(self.history_limit, 1):
            self._undo.pop(0)
        held = sum(a.nbytes for a in self._undo)
        while len(self._undo) > 1 and held > self.history_bytes:
            held -= self._undo.pop(0).nbytes

    def _current(self) -> Action:
        action = self._open
        if action is None or self._owner != threading.get_ident():
            raise RuntimeError("change the annotation model inside `with model.action(...)`")
        return action

    def undo(self) -> Change | None:
        """Undo the last action (labels, sources and prompts); ``None`` if there is none.

        Raises
        ------
        PromptError
            An action is open (a job is running).
        """
        return self._step(self._undo, self._redo, "undo")

    def redo(self) -> Change | None:
        """Redo the last undone action; ``None`` if there is none.

        Raises
        ------
        PromptError
            An action is open (a job is running).
        """
        return self._step(self._redo, self._undo, "redo")

    def _step(self, source: list[Action], target: list[Action], kind: str) -> Change | None:
        with self._lock:
            if self._open is not None:
                raise PromptError(
                    f"cannot {kind} while {self._open.name!r} is running: wait for it or "
                    "cancel it first"
                )
            if not source:
                return None
            action = source.pop()
            self._apply(action, undoing=kind == "undo")
            target.append(action)
        change = Change(kind, action.name, action.frames, action.objects)
        self.events.emit(change)
        return change

    def _apply(self, action: Action, undoing: bool) -> None:
        pixels = reversed(action.pixels) if undoing else action.pixels
        for frame, before, after in pixels:
            self.labels.restore(frame, before if undoing else after)
            self.frame_versions[frame] += 1
        entries = reversed(action.entries) if undoing else action.entries
        for key, old_entry, new_entry in entries:
            self.entries.put(key, old_entry if undoing else new_entry)
        prompts = reversed(action.prompts) if undoing else action.prompts
        for old_list, new_list in prompts:
            self._prompts = list(old_list if undoing else new_list)
        lineage = reversed(action.lineage) if undoing else action.lineage
        for old_map, new_map in lineage:
            self._lineage = dict(old_map if undoing else new_map)
        effects = reversed(action.effects) if undoing else action.effects
        for undo, redo in effects:
            (undo if undoing else redo)()

    # -- changes (inside an action) --------------------------------------------------------
    def write_frame(self, frame: int, labels: np.ndarray) -> bool:
        """Make ``labels`` the label image of ``frame``; says whether a pixel changed."""
        frame = int(frame)
        new = np.asarray(labels, dtype=np.int32).reshape(-1)
        old = self.labels.frame(frame).reshape(-1)
        index = np.flatnonzero(old != new)
        if index.size == 0:
            return False
        action = self._current()
        before = self.labels.snapshot(frame)
        self.labels.write(frame, new.reshape(self.frame_shape), (old[index], new[index]))
        action.pixels.append((frame, before, self.labels.snapshot(frame)))  # compressed
        self.frame_versions[frame] += 1
        return True

    def erase_entry(self, frame: int, obj_id: int) -> None:
        """Forget who made ``obj_id``'s mask on ``frame`` (its pixels stay until written)."""
        key = (int(frame), int(obj_id))
        if self.entries.entry(*key) is not None:
            self._put(key, None)

    def _put(self, key: Key, entry: Entry | None) -> None:
        action = self._current()
        action.entries.append((key, self.entries.entry(*key), entry))
        self.entries.put(key, entry)

    def confirm(
        self,
        frame: int,
        obj_id: int,
        source: str,
        mask: np.ndarray,
        adapter: str | None = None,
        paint: bool = True,
    ) -> None:
        """Record a confirmed mask (the user's) and, with ``paint``, put it into the labels
        (other objects keep their pixels outside it)."""
        if source not in CONFIRMED_SOURCES:
            raise ValueError(f"{source!r} is not a confirmed source: {sorted(CONFIRMED_SOURCES)}")
        mask = np.asarray(mask, bool)
        key = (int(frame), int(obj_id))
        self._put(key, self.entries.make_entry(source, mask.copy(), adapter))
        if paint:
            labels = self.labels[key[0]].copy()
            labels[labels == key[1]] = 0
            labels[mask] = key[1]
            self.write_frame(key[0], labels)

    def model_made(self, frame: int, obj_id: int, source: str, adapter: str | None = None) -> bool:
        """Record a model-made mask unless the (frame, object) is confirmed; says if it was."""
        if source not in MODEL_SOURCES:
            raise ValueError(f"{source!r} is not a model source: {sorted(MODEL_SOURCES)}")
        key = (int(frame), int(obj_id))
        current = self.entries.entry(*key)
        if current is not None and current.confirmed:
            return False
        if current is None or (current.source, current.adapter) != (source, adapter):
            self._put(key, Entry(source, None, adapter))
        return True

    def reinstate(self, frame: int, obj_id: int, entry: Entry) -> None:
        """Put a confirmed ``entry`` back as it was (its order and learned flag kept) and
        its mask into the labels."""
        key = (int(frame), int(obj_id))
        self._put(key, entry)
        labels = self.labels[key[0]].copy()
        labels[labels == key[1]] = 0
        labels[entry.mask] = key[1]
        self.write_frame(key[0], labels)

    def demote(self, frame: int, obj_id: int) -> None:
        """Make a confirmed (frame, object) model-made again (``sam2``): the next
        propagation may rewrite it."""
        key = (int(frame), int(obj_id))
        entry = self.entries.entry(*key)
        if entry is not None and entry.confirmed:
            self._put(key, Entry("sam2", None, None))

    def mark_learned(self, keys: Sequence[Key]) -> None:
        """Record that an adapter learned from these corrections."""
        for frame, obj_id in keys:
            entry = self.entries.entry(frame, obj_id)
            if entry is not None and not entry.learned:
                self._put((int(frame), int(obj_id)), replace(entry, learned=True))

    def set_prompts(self, prompts: Sequence[Prompt]) -> None:
        """Make the prompt list ``prompts``."""
        new = list(prompts)
        if len(new) == len(self._prompts) and all(
            a is b for a, b in zip(new, self._prompts, strict=True)
        ):
            return
        self._current().prompts.append((list(self._prompts), new))
        self._prompts = new

    def set_lineage(self, lineage: dict[int, tuple[int, int]]) -> None:
        """Make the divisions ``lineage`` (daughter → ``(parent, frame)``)."""
        new = {int(d): (int(p), int(f)) for d, (p, f) in lineage.items()}
        if new != self._lineage:
            self._current().lineage.append((dict(self._lineage), new))
            self._lineage = new

    def erase_object(self, obj_id: int) -> None:
        """Remove one object: its prompts, its entries, its pixels on every frame and the
        divisions it takes part in."""
        obj_id = int(obj_id)
        self.set_lineage({d: (p, f) for d, (p, f) in self._lineage.items() if obj_id not in (d, p)})
        self.set_prompts([p for p in self._prompts if int(p.obj_id) != obj_id])
        for key in [k for k in self.entries.keys_in_order() if k[1] == obj_id]:
            self._put(key, None)
        for frame in self.labels.frames_with(obj_id):
            labels = self.labels[frame].copy()
            labels[labels == obj_id] = 0
            self.write_frame(int(frame), labels)

    def erase_all(self) -> None:
        """Remove every prompt, entry, pixel and division."""
        self.set_lineage({})
        self.set_prompts([])
        for key in list(self.entries.keys_in_order()):
            self._put(key, None)
        for frame in self.labels.nonempty_frames():
            self.write_frame(int(frame), np.zeros(self.frame_shape, np.int32))

    def paint(self, frame: int, index: np.ndarray, values: np.ndarray) -> list[int]:
        """The user's stroke on ``frame``: pixels ``index`` (flat, or ``(rows, cols)``)
        get ``values``. Every object whose mask the stroke changed becomes a correction
        (confirmed, not yet learned). Returns those objects' ids.

        Raises
        ------
        PromptError
            A value that is no object id, or pixels outside the frame.
        """
        frame = int(frame)
        if not 0 <= frame < self.num_frames:
            raise PromptError(f"frame {frame} is out of range (0–{self.num_frames - 1})")
        height, width = self.frame_shape
        if isinstance(index, tuple):
            rows, cols = (np.asarray(i, dtype=np.int64).reshape(-1) for i in index)
            if rows.size and (
                rows.min() < 0 or cols.min() < 0 or rows.max() >= height or cols.max() >= width
            ):
                raise PromptError(f"the stroke on frame {frame} leaves the {height}×{width} frame")
            flat = rows * width + cols
        else:
            flat = np.asarray(index, dtype=np.int64).reshape(-1)
        values = np.broadcast_to(np.asarray(values), flat.shape)
        if values.size and (values.min() < 0 or values.max() > np.iinfo(np.int32).max):
            raise PromptError(f"the stroke on frame {frame} holds a value that is no object id")
        before = self.labels.frame(frame).reshape(-1)
        after = before.copy()
        after[flat] = values.astype(np.int32)
        touched = np.flatnonzero(before != after)
        if touched.size == 0:
            return []
        changed = sorted((set(np.unique(before[touched])) | set(np.unique(after[touched]))) - {0})
        plane = after.reshape(self.frame_shape)
        for obj_id in changed:
            key = (frame, int(obj_id))
            self._put(key, self.entries.make_entry("correction", plane == obj_id, None))
        self.write_frame(frame, plane)
        return [int(o) for o in changed]

    def replace_all(
        self,
        prompts: Sequence[Prompt],
        entries: AnnotationState,
        labels: np.ndarray,
        lineage: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        """Make prompts, entries, labels and divisions those given (a restored session)."""
        labels = np.asarray(labels, dtype=np.int32)
        if labels.shape != self.labels.shape:
            raise PromptError(f"labels of shape {labels.shape}, not {self.labels.shape}")
        self.set_lineage(lineage or {})
        self.set_prompts(prompts)
        for key in list(self.entries.keys_in_order()):
            if entries.entry(*key) is None:
                self._put(key, None)
        for key in entries.keys_in_order():
            self._put(key, entries.entry(*key))
        for frame in range(self.num_frames):
            self.write_frame(frame, labels[frame])
