"""The dock's keyboard shortcuts: one table for the bindings, the tooltips and the help.

napari looks a key up in the active layer's keymap before the viewer's, so a viewer key
that a layer type also binds (Shift-P is the Shapes polygon lasso, Shift-A "select all in
slice" for Points) does nothing while such a layer is active. Every key here is free in the
keymaps of the viewer and of every built-in layer type: :func:`clashes` checks it, and a test
presses each key with each layer type active.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.utils.key_bindings import KeyBinding

__all__ = [
    "SHORTCUTS",
    "Shortcut",
    "bind_shortcuts",
    "clashes",
    "key_of",
    "shortcut_rows",
    "with_key",
]


@dataclass(frozen=True)
class Shortcut:
    """One action of the dock and its key."""

    action: str
    key: str
    description: str


SHORTCUTS: tuple[Shortcut, ...] = (
    Shortcut("propagate", "Shift-T", "Propagate (track) the prompts through the frame range"),
    Shortcut("negative", "Shift-N", "Toggle negative clicks (Shift+click is always negative)"),
    Shortcut("new_object", "Shift-M", "New object: the next free object id"),
    Shortcut("learn", "Shift-E", "Learn from this frame's edit (train the object's adapter)"),
    Shortcut("propose", "Shift-O", "Propose masks with the adapters over 'propose frames'"),
    Shortcut("accept", "Shift-C", "Accept (commit) the selected candidate on all its frames"),
    Shortcut("accept_frame", "Shift-F", "Accept the selected candidate on the current frame"),
    Shortcut("reject", "Shift-R", "Reject (remove) the selected candidate layer"),
)

_BY_ACTION = {s.action: s for s in SHORTCUTS}


def key_of(action: str) -> str:
    """The key of ``action`` (e.g. ``"Shift-T"`` for ``"propagate"``)."""
    return _BY_ACTION[action].key


def with_key(text: str, action: str) -> str:
    """``"text (key)"``: a button label or tooltip naming the shortcut."""
    return f"{text} ({key_of(action)})"


def clashes(key: str) -> list[str]:
    """Names of the napari keymaps (viewer and built-in layer classes) that bind ``key``."""
    from napari.components import ViewerModel
    from napari.layers import Image, Labels, Points, Shapes, Surface, Tracks, Vectors

    binding = KeyBinding.from_str(key)
    found = []
    for cls in (ViewerModel, Image, Labels, Points, Shapes, Surface, Tracks, Vectors):
        for klass in cls.__mro__:
            if binding in getattr(klass, "class_keymap", {}):
                found.append(cls.__name__)
                break
    return found


def bind_shortcuts(
    viewer: Any, actions: dict[str, Callable[[], Any]], alive: Callable[[], bool]
) -> Callable[[], None]:
    """Bind each ``actions[name]`` to its key on ``viewer``; returns the function unbinding them.

    Handlers do nothing once ``alive()`` is false (a closed dock), and the returned function
    removes only the bindings that are still ours.
    """
    bound: dict[KeyBinding, Any] = {}
    for name, action in actions.items():

        def handler(_viewer: Any = None, _action: Callable[[], Any] = action) -> None:
            if alive():
                _action()

        key = key_of(name)
        viewer.bind_key(key, handler, overwrite=True)
        bound[KeyBinding.from_str(key)] = handler

    def unbind() -> None:
        for binding, handler in bound.items():
            if viewer.keymap.get(binding) is handler:
                del viewer.keymap[binding]
        bound.clear()

    return unbind


def shortcut_rows() -> list[tuple[str, str]]:
    """``(key, description)`` for the help table (the same rows as ``docs/gui.md``)."""
    return [(s.key, s.description) for s in SHORTCUTS]
