"""The annotation model's history: one :class:`Action` per undo step, the :class:`Change`
each finished action, undo or redo reports, and the minimal :class:`Signal` views listen on
(numpy only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from napari_sam_lora.engine.annotation.label_frames import FrameSnapshot
from napari_sam_lora.engine.annotation.prompts import Prompt
from napari_sam_lora.engine.annotation.state import Entry

__all__ = ["Action", "Change", "Key", "Signal"]

Key = tuple[int, int]


@dataclass(frozen=True)
class Change:
    """What one action, undo or redo changed.

    Attributes
    ----------
    kind : {"do", "undo", "redo", "rollback"}
        How it happened.
    name : str
        The action's name (shown in an undo menu or a status line).
    frames : tuple of int
        Frames whose label image changed, ascending.
    objects : tuple of int
        Objects whose entries or prompts changed, ascending.
    """

    kind: str
    name: str
    frames: tuple[int, ...]
    objects: tuple[int, ...]


class Signal:
    """A minimal evented emitter: ``connect(callback)``, ``disconnect``, ``emit(value)``.

    Callbacks run on the thread that emits; a view that lives on a GUI thread must hand
    them over itself (the dock does).
    """

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Any], Any]] = []

    def connect(self, callback: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Call ``callback(value)`` on every :meth:`emit`; returns ``callback``."""
        if callback not in self._callbacks:
            self._callbacks.append(callback)
        return callback

    def disconnect(self, callback: Callable[[Any], Any]) -> None:
        """Stop calling ``callback`` (no error if it was not connected)."""
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self, value: Any) -> None:
        """Call every connected callback with ``value``."""
        for callback in list(self._callbacks):
            callback(value)


@dataclass
class Action:
    """One history entry: everything an action changed, in order, to undo and redo it.

    ``pixels`` holds ``(frame, before, after)``: the frame's compressed snapshots
    (:class:`~napari_sam_lora.engine.annotation.label_frames.FrameSnapshot`); ``entries``
    ``((frame, obj_id), old entry, new entry)`` (``None``: no entry); ``prompts``
    ``(old list, new list)``; ``lineage`` ``(old, new)`` daughter → ``(parent, division
    frame)`` mappings; ``effects`` ``(undo, redo)`` callables a view attached with
    :meth:`also` (e.g. the prompt layers a reset emptied).
    """

    name: str
    pixels: list[tuple[int, FrameSnapshot, FrameSnapshot]] = field(default_factory=list)
    entries: list[tuple[Key, Entry | None, Entry | None]] = field(default_factory=list)
    prompts: list[tuple[list[Prompt], list[Prompt]]] = field(default_factory=list)
    lineage: list[tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]] = field(
        default_factory=list
    )
    effects: list[tuple[Callable[[], Any], Callable[[], Any]]] = field(default_factory=list)

    def also(self, undo: Callable[[], Any], redo: Callable[[], Any]) -> None:
        """Run ``undo()`` when this action is undone (or rolled back) and ``redo()`` when
        it is redone: what a view changed outside the model as part of the action."""
        self.effects.append((undo, redo))

    @property
    def empty(self) -> bool:
        """Whether the action changed nothing."""
        return not (self.pixels or self.entries or self.prompts or self.lineage or self.effects)

    @property
    def frames(self) -> tuple[int, ...]:
        """Frames whose labels it changed."""
        return tuple(sorted({p[0] for p in self.pixels}))

    @property
    def objects(self) -> tuple[int, ...]:
        """Objects whose entries or prompts it changed."""
        ids = {key[1] for key, _, _ in self.entries}
        for old, new in self.prompts:
            ids |= {int(p.obj_id) for p in old} ^ {int(p.obj_id) for p in new}
        return tuple(sorted(ids))

    @property
    def nbytes(self) -> int:
        """Bytes its undo data holds."""
        return sum(old.nbytes + new.nbytes for _, old, new in self.pixels) + sum(
            e.mask.nbytes for _, a, b in self.entries for e in (a, b) if e and e.mask is not None
        )
