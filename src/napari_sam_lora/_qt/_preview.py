"""The instant preview of the *Whole fields* panel: SAM2's mask of the current object's clicks.

:class:`InstantPreview` owns the *instant preview of clicks* checkbox, its debounce timer,
its state and the "<image> preview" layer. A click or box of the current object shows
SAM2's mask on that frame in "<image> preview" (decoder only, on the worker, debounced by
:data:`PREVIEW_DELAY_MS`: a newer click supersedes an older preview; no undo step, nothing
changed). The preview is hidden when the frame changes, and, as the panel says, when the
stack changes and when Propagate runs.

It starts its job through the panel's job plumbing (one job slot for the whole dock) and
writes to the panel's status line; the panel hands it the job's
:class:`~napari_sam_lora.annotator.jobs.Previewed` results (:meth:`InstantPreview.show`).
:data:`ROLE_KEY` and :func:`plane_transform` are shared with the panel's daughters layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QCheckBox, QWidget

from napari_sam_lora._qt import threading as _threading
from napari_sam_lora._qt._slot import JobSlot
from napari_sam_lora.annotator import Annotator, Lifecycle
from napari_sam_lora.annotator.jobs import Previewed, preview_job
from napari_sam_lora.layers import box_prompts, point_prompts, same_layer
from napari_sam_lora.layers.prompts import prompts_in_region

__all__ = ["PREVIEW_COLOR", "PREVIEW_DELAY_MS", "ROLE_KEY", "InstantPreview", "plane_transform"]

#: Milliseconds after the last click before a preview starts (a newer click supersedes).
PREVIEW_DELAY_MS = 250
#: The metadata key marking the *Whole fields* panel's own layers ("<image> preview",
#: "<image> daughters"): never offered as seed layers.
ROLE_KEY = "napari_sam_lora_role"
#: Colour of the preview (one colour, semi-transparent).
PREVIEW_COLOR = "yellow"


class InstantPreview(QObject):
    """The instant preview: its checkbox, its debounce, its result in "<image> preview".

    Parameters
    ----------
    annotator : Annotator
        The dock's model: the chosen image, prompt layers and object, the session.
    slot : JobSlot
        The dock's one job slot: a preview starts only while it is free.
    life : Lifecycle
        The dock's teardown.
    start : callable
        ``start(kind, fn, *args, on_done=...)``: the panel starts the job on the slot
        (recorded as the panel's job; its results reach :meth:`show`) and returns whether
        it started; a refusal is silent.
    say : callable
        ``say(text)``: writes a line in the panel's status.
    parent : QWidget
        The panel: it owns this object and holds :attr:`check`.

    Attributes
    ----------
    check : QCheckBox
        *instant preview of clicks* (ticked at first).
    """

    def __init__(
        self,
        annotator: Annotator,
        slot: JobSlot,
        life: Lifecycle,
        start: Callable[..., bool],
        say: Callable[[str], None],
        parent: QWidget,
    ) -> None:
        super().__init__(parent)
        self.annotator, self.slot, self.life = annotator, slot, life
        self.viewer = annotator.viewer
        self._start_job = start
        self._say = say
        self._frame: int | None = None  # the frame the shown preview is of
        self._again = False  # a newer click came while a preview ran
        self.check = QCheckBox("instant preview of clicks", parent)
        self.check.setChecked(True)
        self.check.setToolTip(
            "Show SAM2's mask of the current object's clicks and box on this frame in "
            "'<image> preview' (no propagation, no undo step)"
        )
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(PREVIEW_DELAY_MS)
        self.check.toggled.connect(self._on_toggled)
        self._timer.timeout.connect(self.start)
        life.on_shutdown(self._timer.stop)
        life.connect(self.viewer.dims.events.current_step, self._on_step)

    # -- public API --------------------------------------------------------------------------
    def prompts_edited(self) -> None:
        """A click or box was added, moved or removed: preview after a short pause (a
        newer click supersedes an older preview)."""
        if not self.life.alive or not self.check.isChecked():
            return
        self._timer.start()

    def start(self) -> bool:
        """Start the preview of the current object's clicks and box on the current frame
        (on the worker); returns whether it started. Problems show quietly in the panel."""
        if not self.life.alive or not self.check.isChecked():
            return False
        if self.slot.busy:
            if self.slot.kind == "preview":  # superseded: the running one's result is dropped
                self._again = True
                self.slot.cancel()
            return False
        try:
            found = self._request()
        except Exception as exc:
            self._say(f"preview: {_threading.describe_error(exc)}")
            return False
        if found is None:
            self.hide()
            return False
        request, frame, obj_id, prompts = found
        return self._start_job(
            "preview",
            preview_job,
            self.annotator.sessions,
            request,
            frame,
            obj_id,
            prompts,
            on_done=self._on_done,
        )

    def cancel_pending(self) -> None:
        """Drop the preview waiting for the pause after a click (a running one goes on)."""
        self._timer.stop()

    def show(self, item: Previewed) -> None:
        """Show what a preview job yielded: its mask, or its problem in the status line."""
        if item.mask is not None:
            self._show_mask(item)
        elif item.error is not None:
            self._say(f"preview: {_threading.describe_error(item.error)}")

    def layer(self) -> Any:
        """The "<image> preview" layer, or ``None``."""
        image = self.annotator.selection.image
        if image is None:
            return None
        name = f"{image.name} preview"
        return next(
            (x for x in self.viewer.layers if x.name == name and isinstance(x, Labels)), None
        )

    def hide(self) -> None:
        """Clear and hide the preview."""
        self._frame = None
        layer = self.layer()
        if layer is not None and layer.visible:
            with contextlib.suppress(Exception):  # the viewer may be closing
                layer.data = np.zeros_like(np.asarray(layer.data))
                layer.visible = False

    # -- internals ---------------------------------------------------------------------------
    def _request(self) -> tuple[Any, int, int, list[Any]] | None:
        """The session request, frame, object and prompts to preview (``None``: nothing
        to preview, or another model or size than the session's)."""
        chosen = self.annotator.selection
        if chosen.image is None or (chosen.points is None and chosen.shapes is None):
            return None
        request = self.annotator.session_request()
        cache = self.annotator.sessions
        if cache.session_for(request) is None and self.annotator.session() is not None:
            return None  # another model or size: only Propagate starts a new session
        source, obj_id = request.source, int(chosen.obj_id)
        frame = int(source.current_frame)
        prompts: list[Any] = []
        if chosen.points is not None and len(chosen.points.data):
            prompts += point_prompts(chosen.points, source, chosen.image, obj_id)
        if chosen.shapes is not None and len(chosen.shapes.data):
            prompts += box_prompts(chosen.shapes, source, chosen.image, obj_id)
        prompts = [p for p in prompts if int(p.frame) == frame and int(p.obj_id) == obj_id]
        if not prompts:
            return None
        if request.region is not None:
            prompts = prompts_in_region(prompts, request.region)
        return request, frame, obj_id, prompts

    def _show_mask(self, item: Previewed) -> None:
        source = self.annotator.try_source()
        image = self.annotator.selection.image
        if source is None or image is None or item.frame != source.current_frame:
            return  # the user moved on
        plane = np.zeros(source.frame_shape, np.uint8)
        region = self.annotator.sessions.region
        inner = plane if region is None else plane[region.slices]
        inner[np.asarray(item.mask, bool)] = 1
        layer = self.layer()
        if layer is None:
            layer = self._add_layer(image, plane)
        else:
            layer.data = plane
            layer.visible = True
        self._frame = item.frame
        self._say(
            f"preview of object {item.obj_id} on frame {item.frame}: {int(plane.sum())} px "
            "(Propagate tracks it)"
        )

    def _add_layer(self, image: Any, plane: np.ndarray) -> Any:
        viewer = self.viewer
        active = viewer.layers.selection.active
        layer = viewer.add_labels(
            plane,
            name=f"{image.name} preview",
            opacity=0.5,
            metadata={ROLE_KEY: "preview"},
            **plane_transform(image),
        )
        with contextlib.suppress(Exception):  # older napari: its default colour
            from napari.utils.colormaps import DirectLabelColormap

            layer.colormap = DirectLabelColormap(
                color_dict={None: "transparent", 0: "transparent", 1: PREVIEW_COLOR}
            )
        layer.editable = False
        chosen = self.annotator.selection
        prompts = [
            viewer.layers.index(x)
            for x in viewer.layers
            if any(same_layer(x, p) for p in (chosen.points, chosen.shapes))
        ]
        here = viewer.layers.index(layer)
        if prompts and min(prompts) < here:  # below the clicks: it must not hide them
            viewer.layers.move(here, min(prompts))
        if active is not None:  # keep the user's tool (adding points) active
            viewer.layers.selection.active = active
        return layer

    def _on_done(self, state: str) -> None:
        if not self.life.alive:
            return
        self.annotator.apply_strokes()  # strokes painted while it ran
        if self._again:
            self._again = False
            self._timer.start()

    def _on_toggled(self, on: bool) -> None:
        if on:
            self.prompts_edited()
        else:
            self._timer.stop()
            self.hide()

    def _on_step(self, *_: Any) -> None:
        if self._frame is not None and self.annotator.current_frame() != self._frame:
            self.hide()


def plane_transform(image: Any) -> dict[str, Any]:
    """Scale and translate of the image's two spatial axes: a one-frame layer over it."""
    return {
        "scale": tuple(float(s) for s in image.scale[-2:]),
        "translate": tuple(float(t) for t in image.translate[-2:]),
    }
