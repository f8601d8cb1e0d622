"""The tracks view of the *Whole fields* panel: "<image> tracks" following the masks.

:class:`TracksView` owns the *show tracks* checkbox, its refresh timer and its state: the
tracks cache (centroids per frame), the frames changed since the last refresh and the
annotation model it watches. While ticked, "<image> tracks" shows the session's objects'
centroids per frame with the divisions as its graph, refreshed on the main thread
:data:`TRACKS_DELAY_MS` after the last change the dock names (and, as the panel says,
after each of its jobs); only the changed frames are re-read: those the dock names and
those the annotation model reports (a propagation's frames reach the masks layer before
its end, so the dock's event does not name them). Unticked, the layer is removed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QCheckBox, QWidget

from napari_sam_lora._qt import threading as _threading
from napari_sam_lora.annotator import Annotator, Lifecycle
from napari_sam_lora.layers import TrackCache, show_tracks, tracks_layer_name

__all__ = ["TRACKS_DELAY_MS", "TracksView"]

#: Milliseconds after the last change before the tracks are refreshed.
TRACKS_DELAY_MS = 200


class TracksView(QObject):
    """*show tracks*: its checkbox, its refresh timer, "<image> tracks".

    Parameters
    ----------
    annotator : Annotator
        The dock's model: the chosen image and its session.
    life : Lifecycle
        The dock's teardown.
    say : callable
        ``say(text)``: writes a line in the panel's status.
    parent : QWidget
        The panel: it owns this object and holds :attr:`check`.

    Attributes
    ----------
    check : QCheckBox
        *show tracks* (unticked at first).
    """

    def __init__(
        self,
        annotator: Annotator,
        life: Lifecycle,
        say: Callable[[str], None],
        parent: QWidget,
    ) -> None:
        super().__init__(parent)
        self.annotator, self.life = annotator, life
        self.viewer = annotator.viewer
        self._say = say
        self._frames: set[int] | None = set()  # named by the dock since the last refresh
        self._cache = TrackCache()
        self._model: Any = None  # the annotation model whose changes the tracks follow
        self._changed: set[int] = set()  # its frames changed since the last refresh
        self._changed_lock = threading.Lock()
        self.check = QCheckBox("show tracks", parent)
        self.check.setToolTip(
            "'<image> tracks': the objects' centroids per frame, divisions linked"
        )
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(TRACKS_DELAY_MS)
        self.check.toggled.connect(self._on_toggled)
        self._timer.timeout.connect(self.refresh_now)
        life.on_shutdown(self._timer.stop)
        life.on_shutdown(lambda: self._watch(None))

    # -- public API --------------------------------------------------------------------------
    def refresh(self, frames: Iterable[int] | None = None) -> Any:
        """Add or update "<image> tracks" from the session's masks (only ``frames`` re-read;
        all for ``None``); returns the layer (``None`` without a session or tracks)."""
        if not self.life.alive or not self.check.isChecked():
            return None
        image, session = self.annotator.selection.image, self.annotator.session()
        if image is None or session is None:
            return None
        region = self.annotator.sessions.region
        offset = (0.0, 0.0) if region is None else (float(region.r0), float(region.c0))
        source = self.annotator.try_source()
        axis = 0 if source is None else source.stack_axis
        if session.annotation is not self._model:
            self._watch(session.annotation)
            frames = None
        with self._changed_lock:
            changed, self._changed = self._changed, set()
        if frames is not None:
            frames = set(frames) | changed
        try:
            data = self._cache.update(session.labels, session.annotation, frames)
            return show_tracks(self.viewer, image, data, session.annotation.parents(), offset, axis)
        except Exception as exc:  # a display problem: say it, never fail the change
            self._say(f"tracks: {_threading.describe_error(exc)}")
            return None

    def refresh_now(self) -> None:
        """Refresh at once, re-reading the frames changed since the last refresh."""
        frames, self._frames = self._frames, set()
        self.refresh(frames)

    def frames_changed(self, frames: Iterable[int]) -> None:
        """The dock changed ``frames``: refresh after a short pause (only while ticked)."""
        if not self.check.isChecked():
            return
        if self._frames is not None:
            self._frames |= {int(t) for t in frames}
        self._timer.start()

    def forget(self) -> None:
        """Drop the cached centroids (another stack: every frame is re-read)."""
        self._cache.clear()

    # -- internals ---------------------------------------------------------------------------
    def _watch(self, model: Any) -> None:
        """Follow ``model``'s changes (the frames each action, undo or redo changed: a
        propagation's frames reach the masks layer before its end, so the dock's event
        does not name them)."""
        if self._model is not None:
            self._model.events.disconnect(self._on_model_change)
        self._model = model
        with self._changed_lock:
            self._changed = set()
        if model is not None:
            model.events.connect(self._on_model_change)

    def _on_model_change(self, change: Any) -> None:  # any thread
        with self._changed_lock:
            self._changed |= {int(t) for t in getattr(change, "frames", ())}

    def _on_toggled(self, on: bool) -> None:
        if on:
            self._frames = None  # every frame
            self.refresh_now()
            return
        image = self.annotator.selection.image
        self._cache.clear()
        self._watch(None)
        if image is not None:
            name = tracks_layer_name(image)
            for layer in [x for x in self.viewer.layers if x.name == name]:
                self.viewer.layers.remove(layer)
