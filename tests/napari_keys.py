"""Pressing keys in a real viewer the way the canvas does (napari's key map handler asks
the active layer's keymap first, then the viewer's)."""

from __future__ import annotations

from typing import Any

from napari.utils.key_bindings import KeyBinding


def press(viewer: Any, key: str) -> None:
    """Press and release ``key`` (e.g. ``"Control-Z"``) with the active layer's keymap first."""
    handler = viewer.window._qt_viewer._key_map_handler
    handler.press_key(KeyBinding.from_str(key))
    handler.release_key(KeyBinding.from_str(key))


def undo(viewer: Any, layer: Any) -> None:
    """Ctrl+Z with ``layer`` active (napari's own undo of a Labels layer)."""
    viewer.layers.selection.active = layer
    press(viewer, "Control-Z")


def redo(viewer: Any, layer: Any) -> None:
    """Ctrl+Shift+Z with ``layer`` active."""
    viewer.layers.selection.active = layer
    press(viewer, "Control-Shift-Z")
