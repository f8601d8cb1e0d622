"""The dock widget: choose an image, a model and prompt layers, propagate with SAM2.

Lifecycle: napari's dock close button (✕) and ``viewer.window.remove_dock_widget`` only
take the widget out of its dock (``setParent(None)``); ``closeEvent`` never runs. The widget
therefore shuts down when it loses its dock, when it is closed and when it is destroyed:
its job is cancelled, its keys unbound, its viewer connections dropped and its session and
model released (:meth:`SamLoraWidget.shutdown`).
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import napari.layers
import numpy as np
from qtpy.QtCore import QEvent, Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFrame,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam_lora._qt import threading as _threading
from napari_sam_lora._qt._annotation_files import AnnotationFilesPanel
from napari_sam_lora._qt._fields import FieldsPanel
from napari_sam_lora._qt._layer_combo import LayerCombo
from napari_sam_lora._qt._layout import ShortcutHelp, form, row, section
from napari_sam_lora._qt._learning import LearningPanel
from napari_sam_lora._qt._model_combo import MODELS
from napari_sam_lora._qt._objects import ObjectList, ObjectRow
from napari_sam_lora._qt._setup import DEVICES, SetupPanel
from napari_sam_lora._qt._shortcuts import bind_shortcuts, with_key
from napari_sam_lora._qt._slot import Activity, JobSlot
from napari_sam_lora.annotator import (
    AnnotationChanged,
    Annotator,
    Lifecycle,
    LoadProgress,
    ModelReady,
    PromptLayersChosen,
    PropagateRequest,
    SessionCache,
)
from napari_sam_lora.annotator import imports as _imports
from napari_sam_lora.annotator.jobs import propagation_job
from napari_sam_lora.engine.tracking.plans import PropagationStep
from napari_sam_lora.layers import (
    find_output_layer,
    install_click_labels,
    make_prompt_layers,
    object_color,
    same_layer,
    stack_from_image_layer,
    style_prompt_layers,
)

if TYPE_CHECKING:
    import napari

__all__ = ["DEVICES", "MODELS", "SamLoraWidget", "live_widgets"]

DIRECTIONS = ("forward", "backward", "both")
#: Above this many objects on a frame the frame line counts them by source.
MANY_OBJECTS = 8

_LIVE: weakref.WeakSet = weakref.WeakSet()


def live_widgets() -> list[SamLoraWidget]:
    """The SAM2 LoRA dock widgets that are not shut down (one per open dock)."""
    return [w for w in list(_LIVE) if w.life.alive]


class SamLoraWidget(QWidget):
    """Segment an image stack with SAM2 from point, box and mask prompts.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (napari injects it).

    Attributes
    ----------
    annotator : Annotator
        The dock's model (Qt-free): the user's choices, the session of the chosen stack
        and the masks layer bound to its annotation. The panels take it, not the dock.
    image_size : int or None
        SAM2 input size (the *image size* box); ``None`` uses the model's own (1024).
        Smaller is faster and coarser.
    setup : SetupPanel
        The *Image and model* section: image, stack axis, model, image size, device and
        region (``image_combo``, ``axis_spin``, ``model_combo``, ``size_combo``,
        ``size_label``, ``device_combo`` and ``region_check`` are its widgets).
    sessions : SessionCache
        Reuses the loaded model and session between propagations.
    slot : JobSlot
        The one job slot (propagation and learning; one job at a time).
    life : Lifecycle
        Teardown of everything the widget connected; ``life.alive`` is False once shut down.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.annotator = Annotator(napari_viewer)
        self.slot = JobSlot()
        self._owned = _Owned(self.annotator, self.slot)
        self.annotator.is_busy = lambda: self.slot.busy
        self.life = Lifecycle()
        self._run: _Run | None = None
        self._activity: Activity | None = None
        self._docked = False
        self._watched: Any = None  # weakref to the top-level window whose close shuts us down
        self._styled: dict[str, Any] = {}  # prompt layer unique_id -> uninstall callback
        self._help: ShortcutHelp | None = None
        self._layer_freezes: dict[Any, int] = {}  # layer unique_id -> heap freezes then
        self._build_ui()
        self._connect()
        self._on_image_changed()  # the panel showed the first image's axis: the rest here
        self._show_history()
        _LIVE.add(self)
        # pandas (the prompt layers' features) on a worker now, not at the first click
        self._panel_imports = _threading.start_job(_imports.panel_job)

    @property
    def sessions(self) -> SessionCache:
        """Reuses the loaded model and session between propagations."""
        return self.annotator.sessions

    @sessions.setter
    def sessions(self, cache: SessionCache) -> None:
        self.annotator.sessions = cache

    @property
    def job(self) -> _threading.Job | None:
        """The running or last job (propagation or learning)."""
        return self.slot.job

    # -- UI ---------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        v = self.viewer
        self.setup = SetupPanel(self.annotator, self.slot, self.life, sync=self.update_selection)
        setup = self.setup
        self.image_combo, self.axis_spin = setup.image_combo, setup.axis_spin
        self.model_combo, self.device_combo = setup.model_combo, setup.device_combo
        self.size_combo, self.size_label = setup.size_combo, setup.size_label
        self.region_check = setup.region_check

        self.obj_spin = QSpinBox(self)
        self.obj_spin.setRange(1, 65535)
        self.obj_spin.setToolTip("Object id (label value) of new clicks and boxes")
        self.negative_check = QCheckBox("negative clicks", self)
        self.negative_check.setToolTip(
            with_key(
                "New clicks are negative (background); Shift+click is always negative", "negative"
            )
        )
        self.add_prompts_button = QPushButton("Add prompt layers", self)
        self.add_prompts_button.setToolTip(
            "Add '<image> prompts' (clicks) and '<image> boxes' (rectangles) and select them, "
            "and the empty '<image> masks' layer the results go to"
        )
        self.points_combo = LayerCombo(v, napari.layers.Points, nullable=True, parent=self)
        self.shapes_combo = LayerCombo(v, napari.layers.Shapes, nullable=True, parent=self)
        self.mask_combo = LayerCombo(v, napari.layers.Labels, nullable=True, parent=self)
        self.objects = ObjectList(self)
        self.new_object_button = QPushButton("New object", self)
        self.new_object_button.setToolTip(with_key("Use the next free object id", "new_object"))
        self.clear_prompts_button = QPushButton("Clear prompts", self)
        self.clear_prompts_button.setToolTip(
            "Remove the selected object's clicks and boxes on the current frame"
        )
        self.reset_object_button = QPushButton("Reset object", self)
        self.reset_object_button.setToolTip(
            "Start the selected object over: its prompts, its masks (one undo step) and "
            "SAM2's memory of it"
        )
        self.reset_all_button = QPushButton("Reset all", self)
        self.reset_all_button.setToolTip(
            "Start over: every prompt, the masks layer (one undo step) and SAM2's memory"
        )
        self.undo_button = QPushButton("Undo", self)
        self.undo_button.setToolTip(
            "Undo the last action on the masks: a stroke, a propagation, a Learn or an Accept "
            "with its re-propagation, a reset (also Ctrl+Z in the masks layer)"
        )
        self.redo_button = QPushButton("Redo", self)
        self.redo_button.setToolTip("Redo the last undone action (also Ctrl+Shift+Z)")
        self.frame_info = QLabel(self)
        self.frame_info.setWordWrap(True)
        self.frame_info.setToolTip("Who made the masks of the current frame")

        self.direction_combo = QComboBox(self)
        self.direction_combo.addItems(DIRECTIONS)
        self.from_spin, self.to_spin = QSpinBox(self), QSpinBox(self)
        self.assist_check = QCheckBox("adapters assist tracking", self)
        self.assist_check.setChecked(True)
        self.assist_check.setToolTip(
            "Once an object has an adapter, its mask replaces SAM2's on frames where it is "
            "more confident (those frames are marked 'adapter')"
        )
        self.propagate_button = QPushButton(with_key("Propagate", "propagate"), self)
        self.propagate_button.setToolTip(
            with_key(
                "Track the prompts through the frame range; frames you confirmed are kept",
                "propagate",
            )
        )
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop after the current frame; frames written so far stay")
        self.progress = QProgressBar(self)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.progress.setValue(0)

        self.status = QLabel(self)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.status.setFrameShape(QFrame.StyledPanel)
        self.help_button = QPushButton("Shortcuts…", self)
        self.help_button.setToolTip("The keyboard shortcuts of this panel")

        for combo in (
            self.points_combo,
            self.shapes_combo,
            self.mask_combo,
            self.direction_combo,
        ):  # long layer or model names must not widen the panel past the dock
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(10)
        self.help_button.setMaximumWidth(90)
        prompts = form(
            self.add_prompts_button,
            ("points", self.points_combo),
            ("boxes", self.shapes_combo),
            ("mask", self.mask_combo),
            ("object id", row(self.obj_spin, self.negative_check)),
            self.objects,
            row(self.new_object_button, self.clear_prompts_button),
            row(self.reset_object_button, self.reset_all_button),
            row(self.undo_button, self.redo_button),
            self.frame_info,
        )
        track = form(
            ("direction", self.direction_combo),
            ("frames", row(self.from_spin, QLabel("to", self), self.to_spin)),
            self.assist_check,
            row(self.propagate_button, self.cancel_button),
            self.progress,
        )
        self.learning = LearningPanel(self.annotator, self.slot, self.life)
        self.annotation_files = AnnotationFilesPanel(self.annotator, self.slot, self.life)
        self.fields = FieldsPanel(self.annotator, self.slot, self.life)
        self.sections = {
            "setup": section("Image and model", setup),
            "prompts": section("Prompts and objects", prompts),
            "propagate": section("Propagate", track),
            "learn": section("Learn from corrections (LoRA)", self.learning),
            "fields": section("Whole fields", self.fields, expanded=False),
            "files": section("Save and restore", self.annotation_files, expanded=False),
        }
        content = QWidget(self)
        inner = QVBoxLayout(content)
        inner.setContentsMargins(0, 0, 0, 0)
        for box in self.sections.values():
            inner.addWidget(box)
        inner.addStretch(1)
        self.scroll = QScrollArea(self)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setWidget(content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.scroll, 1)
        layout.addLayout(row(self.status, self.help_button))
        self._fit_width()
        self._show_model_status()

    def _fit_width(self) -> None:
        """Wide enough for the widest section (nothing clipped), scrolled vertically."""
        bar = self.scroll.verticalScrollBar().sizeHint().width()
        self.setMinimumWidth(self.scroll.widget().minimumSizeHint().width() + bar + 8)

    def showEvent(self, event: Any) -> None:
        """Fit the width once napari's style sheet applies (it changes the sizes), and watch
        the main window: closing the viewer only hides it."""
        super().showEvent(event)
        self._fit_width()
        window = self.window()
        if window is not self and window is not self._watched_window():
            previous = self._watched_window()
            if previous is not None:
                previous.removeEventFilter(self)
            window.installEventFilter(self)
            self._watched = weakref.ref(window)  # no strong reference to the viewer

    def eventFilter(self, obj: Any, event: Any) -> bool:
        """Shut down once the viewer window closes (checked after the close is decided:
        napari may ask the user and keep the window open)."""
        if event.type() == QEvent.Close and obj is self._watched_window() and self.life.alive:
            QTimer.singleShot(0, self._after_window_close)
        return False

    def _watched_window(self) -> Any:
        return None if self._watched is None else self._watched()

    def _after_window_close(self) -> None:
        window = self._watched_window()
        if window is not None and self.life.alive and not window.isVisible():
            self.shutdown()

    def _connect(self) -> None:
        life = self.life
        self.setup.image_changed.connect(self._on_image_changed)
        self.setup.axis_changed.connect(self._on_axis_changed)
        self.setup.message.connect(self.status.setText)
        self.setup.error.connect(self.report_error)
        self.model_combo.model_changed.connect(self._show_model_status)
        self.obj_spin.valueChanged.connect(self._apply_obj_id)
        self.negative_check.toggled.connect(self._apply_obj_id)
        self.points_combo.currentIndexChanged.connect(self._on_prompt_layers_changed)
        self.shapes_combo.currentIndexChanged.connect(self._on_prompt_layers_changed)
        self.objects.selected.connect(self.obj_spin.setValue)
        for signal in (
            self.mask_combo.currentIndexChanged,
            self.model_combo.model_changed,
            self.device_combo.currentIndexChanged,
            self.direction_combo.currentIndexChanged,
            self.from_spin.valueChanged,
            self.to_spin.valueChanged,
            self.assist_check.toggled,
        ):
            signal.connect(self.update_selection)
        self.annotator.events.connect(self._on_annotator_event)
        life.on_shutdown(lambda: self.annotator.events.disconnect(self._on_annotator_event))
        for button, action in (
            (self.add_prompts_button, self.add_prompt_layers),
            (self.propagate_button, self.propagate),
            (self.cancel_button, self.cancel),
            (self.new_object_button, self.new_object),
            (self.clear_prompts_button, self.clear_prompts),
            (self.reset_object_button, self.reset_object),
            (self.reset_all_button, self.reset_all),
            (self.undo_button, self.undo),
            (self.redo_button, self.redo),
            (self.help_button, self.show_shortcuts),
        ):
            button.clicked.connect(lambda *_, a=action: a())
        events = self.viewer.layers.events
        life.connect(events.inserted, self._on_layer_inserted)
        life.connect(events.removed, self._on_layer_removed)
        life.connect(events.moved, self._refresh_layers)
        life.connect(self.viewer.dims.events.current_step, self.show_frame_info)
        life.connect(self.viewer.layers.selection.events.active, self.show_frame_info)
        for layer in self.viewer.layers:
            self._watch_name(layer)
        self.slot.add_listener(self._on_slot)
        actions = {
            "propagate": self.propagate,
            "negative": self.negative_check.toggle,
            "new_object": self.new_object,
            **self.learning.shortcut_actions(),
        }
        life.on_shutdown(bind_shortcuts(self.viewer, actions, lambda: self.life.alive))
        life.on_shutdown(self._unstyle_all)
        # when the Qt object is destroyed (viewer closed): plain-Python teardown only
        self.destroyed.connect(_release(life, self._owned))

    def _watch_name(self, layer: Any) -> None:
        self.life.connect(layer.events.name, self._refresh_layers)
        self._layer_freezes[layer.unique_id] = _imports.freezes()

    # -- lifecycle ---------------------------------------------------------------------------
    def event(self, event: Any) -> bool:
        """Shut down when napari takes the widget out of its dock (✕, remove_dock_widget)."""
        if event.type() == QEvent.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self.shutdown()
        return super().event(event)

    def closeEvent(self, event: Any) -> None:
        """Shut down (cancel the job, disconnect from the viewer, release the model)."""
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Cancel the job, unbind the keys, disconnect from the viewer, release the session,
        the learner and the model. Idempotent; the widget is inert afterwards."""
        if not self.life.alive:
            return
        self.life.shutdown()
        window = self._watched_window()
        if window is not None:
            with contextlib.suppress(RuntimeError):  # the window may be deleted already
                window.removeEventFilter(self)
        self._watched = None
        if self._activity is not None:
            self._activity.close()
        self.learning.release()
        _release_after_job(self.slot, self.annotator)
        _LIVE.discard(self)

    # -- public API --------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The selected model: a variant name, ``untrained:<variant>`` or a checkpoint path."""
        return self.setup.model

    @property
    def device(self) -> str | None:
        """The selected device; ``None`` for auto."""
        return self.setup.device

    @property
    def image_size(self) -> int | None:
        """SAM2's input size (``None``: the model's own, 1024)."""
        return self.setup.image_size

    @image_size.setter
    def image_size(self, size: int | None) -> None:
        self.setup.image_size = size

    @property
    def busy(self) -> bool:
        """Whether a job (propagation or learning) is running."""
        return self.slot.busy

    def set_model(self, name: str) -> None:
        """Select a model by variant name, ``untrained:<variant>`` or checkpoint path."""
        self.setup.set_model(name)

    def draw_region(self) -> Any:
        """Add (or select) "<image> region" in rectangle mode; returns the layer."""
        return self.setup.draw_region()

    def report_error(self, exc: BaseException | str, quiet: bool = False) -> None:
        """Show an error in full in the status line, and as a napari notification unless
        ``quiet``."""
        text = exc if isinstance(exc, str) else _threading.describe_error(exc)
        self.status.setText(f"error: {text}")
        if not quiet:
            _threading.notify_error(exc)

    def add_prompt_layers(self) -> None:
        """Add "<image> prompts" (Points) and "<image> boxes" (Shapes) and select them, and
        the (empty) "<image> masks" layer below them when no session exists yet (so no
        propagation has to create a layer while it runs)."""
        image = self.setup.image
        if image is None:
            self.report_error("no image layer: open an image or a stack first")
            return
        points, shapes = make_prompt_layers(self.viewer, image, self.obj_spin.value())
        self.points_combo.set_layer(points)
        self.shapes_combo.set_layer(shapes)
        self._on_prompt_layers_changed()
        # the masks layer in the next event-loop turn: each napari layer takes the main
        # thread for 0.1-0.3 s (more on a busy machine), so not all three in one turn
        QTimer.singleShot(0, lambda: self._prepare_output(image))

    def _prepare_output(self, image: Any) -> None:
        """Make the (empty) masks layer of ``image`` before any propagation needs it."""
        if not self.life.alive or not self._in_viewer(image):
            return
        with contextlib.suppress(Exception):  # unsupported image: Propagate says why
            self._make_output(image, self._source(image))

    def propagate(self) -> bool:
        """Read the prompts, then segment the stack on a worker thread.

        Frames the user confirmed (prompted, corrected, accepted) are kept; the masks
        layer shows the session's annotation (the user's strokes reached it as they were
        painted). The whole propagation is one undo step; Cancel leaves no trace.

        Returns
        -------
        bool
            Whether a job was started (errors are shown as notifications).
        """
        job = self.slot.job
        if self.busy and self.slot.kind == "preview" and job is not None:
            job.cancel()  # a preview gives way: Propagate starts once it has ended
            job.when_done(lambda _state: self.propagate() if self.life.alive else None)
            self.status.setText("propagating…")
            return True
        if self.busy:
            self.status.setText(f"a {self.slot.kind} job is running; cancel it first")
            return False
        try:
            request = self._request()
            session = self.sessions.session_for(request)
            if session is not None and request.prompts:  # none: the seeded objects'
                session.validate_prompts(request.prompts)
        except Exception as exc:
            self.report_error(exc)
            return False
        warning = self._range_warning(request, session)
        self._run = _Run(request)
        self.progress.setRange(0, 0)  # busy until the first frame
        self.progress.setFormat("loading model…" if session is None else "propagating…")
        self.status.setText(warning or "propagating…")
        if warning:
            from napari.utils.notifications import show_warning

            show_warning(warning)
        # The masks layer now, not with the first frame: creating a napari layer takes the
        # main thread for a few hundred ms, and the worker's frames then only write pixels.
        existed = find_output_layer(self.viewer, request.image_layer, request.source)
        self._run.made_output = existed is None
        self._run.output = self._make_output(request.image_layer, request.source)
        self._activity = Activity("SAM2 propagation", len(request.frames))
        self.slot.start(
            "propagate",
            propagation_job,
            self.sessions,
            request,
            self.annotator.learning.learner_of,
            self.annotator.keeps_prompt,
            on_yield=self._on_yield,
            on_done=self._on_done,
        )
        self.life.job = self.slot.job
        return True

    def cancel(self, reason: str = "") -> None:
        """Stop the running job after the current frame; the annotation returns to what it
        was before the job (nothing of it stays)."""
        if not self.busy:
            return
        if self._run is not None and reason and not self._run.stop_reason:
            self._run.stop_reason = reason
        self.slot.cancel()
        self.cancel_button.setEnabled(False)
        self.status.setText("cancelling… (stops after the current frame)")

    def undo(self) -> str:
        """Undo the last action on the annotation (what Ctrl+Z in the masks layer does)."""
        return self.annotator.undo()

    def redo(self) -> str:
        """Redo the last undone action (Ctrl+Shift+Z in the masks layer)."""
        return self.annotator.redo()

    def new_object(self) -> int:
        """Select the next free object id (one above every id in use); returns it."""
        used = {r.obj_id for r in self.objects.rows} | set(self.annotator.prompt_ids())
        session = self._session()
        if session is not None:
            used |= {int(i) for i in session.object_ids}
        output = self._output()
        if output is not None:
            used |= {int(v) for v in np.unique(np.asarray(output.data)) if v > 0}
        new = max(used, default=0) + 1
        self.obj_spin.setValue(new)
        self.refresh_objects()
        self.status.setText(f"object {new}: click on it (Shift+click for background)")
        return new

    def clear_prompts(self, obj_id: int | None = None) -> int:
        """Remove the object's clicks and boxes on the current frame; returns how many."""
        obj_id = self.obj_spin.value() if obj_id is None else int(obj_id)
        self.update_selection()
        try:
            removed = self.annotator.clear_prompts(obj_id)
        except Exception as exc:
            self.report_error(exc)
            return 0
        self.refresh_objects()
        frame = self.annotator.current_frame()
        self.status.setText(f"removed {removed} prompt(s) of object {obj_id} on frame {frame}")
        return removed

    def reset_object(self, obj_id: int | None = None) -> bool:
        """Start object ``obj_id`` over: its prompts, its masks (one undo step) and SAM2's
        memory of it (its adapters stay)."""
        obj_id = self.obj_spin.value() if obj_id is None else int(obj_id)
        return self._reset([obj_id])

    def reset_all(self) -> bool:
        """Start over: every prompt, the masks layer (one undo step) and SAM2's memory."""
        return self._reset(None)

    def show_shortcuts(self) -> ShortcutHelp:
        """Open the shortcut table."""
        if self._help is None:
            self._help = ShortcutHelp(self)
        self._help.show()
        self._help.raise_()
        return self._help

    def refresh_objects(self) -> None:
        """Re-read the object list (prompt layers, session, adapters)."""
        if not self.life.alive:
            return
        output = self._output()
        session = self._session()
        ids = set(self.annotator.prompt_ids()) | {self.obj_spin.value()}
        if session is not None:
            ids |= {int(i) for i in session.object_ids}
        learner = self.annotator.learning.learner_of(session) if session is not None else None
        confirmed: dict[int, set[int]] = {}
        if session is not None:  # one pass over the entries, not one per object
            for frame, obj in session.annotations.confirmed():
                confirmed.setdefault(int(obj), set()).add(int(frame))
        rows = []
        for obj in sorted(ids):
            adapters = len(learner.adapter_names(obj)) if learner is not None else 0
            color = tuple(float(c) for c in object_color(obj, output))
            frames = tuple(sorted(confirmed.get(obj, ())))
            rows.append(ObjectRow(obj, color, frames, adapters))
        self.objects.set_rows(rows, self.obj_spin.value())

    # -- internals ---------------------------------------------------------------------------
    def update_selection(self, *_: Any) -> None:
        """Write the dock's choices into the annotator (its panels read them there)."""
        chosen = self.annotator.selection
        chosen.image = self.setup.image
        chosen.stack_axis = self.setup.stack_axis
        chosen.points, chosen.shapes = self.points_combo.layer, self.shapes_combo.layer
        chosen.mask = self.mask_combo.layer
        chosen.obj_id = self.obj_spin.value()
        chosen.model, chosen.device, chosen.image_size = self.model, self.device, self.image_size
        chosen.direction = self.direction_combo.currentText()
        chosen.first, chosen.last = self.from_spin.value(), self.to_spin.value()
        chosen.assist = self.assist_check.isChecked()
        chosen.only_region = self.setup.only_region

    def _on_annotator_event(self, event: Any) -> None:
        if not self.life.alive:
            return
        if isinstance(event, AnnotationChanged):
            self.refresh_objects()
            self.show_frame_info()
            self._show_history()
        elif isinstance(event, PromptLayersChosen):
            self.points_combo.set_layer(event.points)
            self.shapes_combo.set_layer(event.shapes)
            self.mask_combo.set_layer(event.mask)
            self._on_prompt_layers_changed()
        elif isinstance(event, str):
            self.status.setText(event)

    def _show_history(self) -> None:
        session = self._session()
        undo = session.annotation.undo_names if session is not None else []
        redo = session.annotation.redo_names if session is not None else []
        self.undo_button.setEnabled(bool(undo))
        self.redo_button.setEnabled(bool(redo))
        self.undo_button.setToolTip(
            f"Undo: {undo[0]} (Ctrl+Z in the masks layer)" if undo else "Nothing to undo"
        )
        self.redo_button.setToolTip(
            f"Redo: {redo[0]} (Ctrl+Shift+Z)" if redo else "Nothing to redo"
        )

    def _source(self, image: Any) -> Any:
        axis = self.setup.axis_spin.value() if image.ndim >= 4 else 0
        return stack_from_image_layer(image, axis, tuple(self.viewer.dims.point))

    def _session(self) -> Any:
        self.update_selection()
        return self.annotator.session()

    def _output(self) -> Any:
        self.update_selection()
        return self.annotator.output()

    def _request(self) -> PropagateRequest:
        image = self.setup.image
        if image is not None and self.setup.frame_count() != self.to_spin.maximum() + 1:
            self._reset_frame_range()  # the image data changed since it was selected
        self.update_selection()
        return self.annotator.propagate_request()

    def _range_warning(self, request: PropagateRequest, session: Any) -> str:
        if request.frame_range is None:
            return ""
        first, last = request.frame_range
        prompted = {p.frame for p in request.prompts}
        if session is not None:
            prompted |= set(session.annotations.confirmed_frames())
        if any(first <= t <= last for t in prompted):
            return ""
        where = ", ".join(str(t) for t in sorted(prompted)) or "none"
        return (
            f"frames {first}–{last} hold no prompt or confirmed frame (prompted: {where}): "
            f"tracking starts at frame {first if request.direction != 'backward' else last} "
            f"from SAM2's memory of the other frames"
        )

    def _on_yield(self, item: Any) -> None:
        run = self._run
        if not self.life.alive or run is None:
            return
        if isinstance(item, LoadProgress):
            verb = "downloading" if item.stage == "download" else "building"
            self.progress.setFormat(f"{verb} model…")
            return
        if isinstance(item, ModelReady):
            run.model_label = item.label
            self.status.setText(f"model: {item.label}")
            self.annotator.bind()  # the masks layer now shows this session's annotation
            return
        if not isinstance(item, PropagationStep):
            return
        source = run.request.source
        if not self._in_viewer(run.request.image_layer):
            self.cancel(f"image '{source.image_name}' was removed")
            return
        if run.output is None or not self._in_viewer(run.output):
            self.cancel("the masks layer was removed")
            return
        self.annotator.show_step(item.frame, item.labels)
        run.seen.add(int(item.frame))
        # "both" passes over the prompted frame twice: count frames, not passes
        total = len(run.request.frames) if run.request.direction == "both" else item.total
        run.written, run.total = len(run.seen), max(total, len(run.seen))
        self.progress.setRange(0, run.total)
        self.progress.setValue(run.written)
        self.progress.setFormat(f"frame {run.written} of {run.total}")
        if self._activity is not None:
            self._activity.update(run.written, run.total)

    def _make_output(self, image: Any, source: Any) -> Any:
        """The masks layer, created below the prompt layers (so it does not tint them)."""
        self.update_selection()
        return self.annotator.masks_layer(image, source)

    def _drop_empty_output(self, output: Any) -> None:
        if output is None or not self._in_viewer(output):
            return
        with contextlib.suppress(Exception):  # the viewer may be closing
            if not np.asarray(output.data).any():
                self.viewer.layers.remove(output)

    def _on_done(self, state: str) -> None:
        run, self._run = self._run, None
        if self._activity is not None:
            self._activity.close()
            self._activity = None
        if run is not None and not self._in_viewer(run.request.image_layer):
            self.sessions.forget_image(run.request.image_layer)
        if not self.life.alive:
            return
        self.annotator.apply_strokes()  # strokes painted while the job ran
        self.annotator.flush("propagate")
        if run is not None and run.made_output and state != _threading.FINISHED:
            self._drop_empty_output(run.output)  # a refused first run leaves no layer behind
        self.progress.setRange(0, max(run.total if run else 0, 1))
        model = f" ({run.model_label})" if run and run.model_label else ""
        if state == _threading.FINISHED and run is not None:
            self.progress.setValue(run.total)
            self.status.setText(f"done: {run.written} frame(s) segmented{model}")
        elif state == _threading.CANCELLED and run is not None:
            why = f": {run.stop_reason}" if run.stop_reason else ""
            self.status.setText(
                f"cancelled{why} after {run.written} of {run.total} frame(s); the masks are "
                "as before the propagation"
            )
            self.progress.setFormat(f"cancelled at frame {run.written} of {run.total}")
        else:
            error = self.job.error if self.job is not None else None
            text = _threading.describe_error(error) if error is not None else "unknown error"
            self.status.setText(f"failed: {text}")
            self.progress.setFormat("failed")
        self.refresh_objects()
        self.show_frame_info()

    def _on_slot(self, kind: str, running: bool) -> None:
        if not self.life.alive or kind == "preview":  # a preview gives way to any action
            return
        for widget in (  # the setup panel locks its own choices
            self.propagate_button,
            self.add_prompts_button,
            self.reset_object_button,
            self.reset_all_button,
        ):
            widget.setEnabled(not running)
        self.cancel_button.setEnabled(running and kind == "propagate")

    def _reset(self, obj_ids: list[int] | None) -> bool:
        """Reset objects (all with ``None``): one undo step (:meth:`Annotator.reset`)."""
        self.update_selection()
        try:
            what = self.annotator.reset(obj_ids)
        except Exception as exc:
            self.report_error(exc)
            return False
        self.refresh_objects()
        self.status.setText(f"reset {what} (Undo or Ctrl+Z in the masks layer brings it back)")
        return True

    def _in_viewer(self, layer: Any) -> bool:
        return any(same_layer(layer, x) for x in self.viewer.layers)

    def _on_layer_inserted(self, event: Any) -> None:
        if self.life.alive:
            self._watch_name(event.value)
            self._refresh_layers()

    def _on_layer_removed(self, event: Any) -> None:
        if not self.life.alive:
            return
        layer, run = event.value, self._run
        if run is not None and same_layer(layer, run.request.image_layer):
            self.cancel(f"image '{layer.name}' was removed")
        elif run is not None and same_layer(layer, run.output):
            self.cancel(f"output layer '{layer.name}' was removed")
        if run is None:
            self.sessions.forget_image(layer)
        if _imports.freezes() > self._layer_freezes.pop(layer.unique_id, -1):
            _imports.thaw()  # the layer was frozen with the heap: let its memory go
        self._refresh_layers()

    def _refresh_layers(self, *_: Any) -> None:
        if not self.life.alive:
            return
        self.setup.refresh_layers()
        for combo in (self.points_combo, self.shapes_combo, self.mask_combo):
            combo.refresh()
        self.fields.refresh_layers()

    def _on_axis_changed(self, *_: Any) -> None:
        self._reset_frame_range()
        self.update_selection()
        self.annotator.stack_changed()

    def _on_image_changed(self, *_: Any) -> None:
        self._reset_frame_range()
        self.update_selection()
        self.annotator.stack_changed()
        self.refresh_objects()

    def _reset_frame_range(self, *_: Any) -> None:
        count = self.setup.frame_count()
        for spin in (self.from_spin, self.to_spin):
            spin.setRange(0, count - 1)
        self.from_spin.setValue(0)
        self.to_spin.setValue(count - 1)

    def _show_model_status(self, *_: Any) -> None:
        """The model in the status line, unless a propagation reports there."""
        if self._run is None:
            self.status.setText(f"model: {self.model_combo.label} (loads on the first propagation)")

    def show_frame_info(self, *_: Any) -> None:
        """Show who made the current frame's masks (and a candidate's estimated IoU)."""
        learning = getattr(self, "learning", None)
        if not self.life.alive or learning is None:
            return
        session = self._session()
        parts = []
        if session is not None:
            frame = self.annotator.current_frame()
            sources = session.annotations.frame_sources(frame)
            if len(sources) > MANY_OBJECTS:  # a whole field: counts, not one entry each
                counts: dict[str, int] = {}
                for source in sources.values():
                    counts[source] = counts.get(source, 0) + 1
                parts.append(
                    f"frame {frame}: {len(sources)} objects ("
                    + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                    + ")"
                )
            elif sources:
                parts.append(
                    f"frame {frame}: "
                    + ", ".join(f"object {o} {s}" for o, s in sorted(sources.items()))
                )
        parts += learning.frame_notes()
        self.frame_info.setText("; ".join(parts))

    def _apply_obj_id(self, *_: Any) -> None:
        for layer in (self.points_combo.layer, self.shapes_combo.layer):
            defaults = getattr(layer, "feature_defaults", None)
            if defaults is None or "obj_id" not in defaults.columns:
                continue
            values = {c: defaults[c].iloc[0] for c in defaults.columns}
            values["obj_id"] = self.obj_spin.value()
            if "label" in values:
                values["label"] = 0 if self.negative_check.isChecked() else 1
            layer.feature_defaults = values
        self.update_selection()
        self.objects.select(self.obj_spin.value())
        if self.obj_spin.value() not in {r.obj_id for r in self.objects.rows}:
            self.refresh_objects()

    def _on_prompt_layers_changed(self, *_: Any) -> None:
        if not self.life.alive:
            return
        for layer in (self.points_combo.layer, self.shapes_combo.layer):
            if layer is None or layer.unique_id in self._styled:
                continue
            undo = [lambda e=layer.events.data, c=self._on_prompts_edited: e.disconnect(c)]
            layer.events.data.connect(self._on_prompts_edited)
            if isinstance(layer, napari.layers.Points):
                undo.append(install_click_labels(layer, self.negative_check.isChecked))
            self._styled[layer.unique_id] = undo
        self.update_selection()
        self._apply_obj_id()
        self._restyle()
        self.refresh_objects()

    def _on_prompts_edited(self, event: Any) -> None:
        if not self.life.alive or str(getattr(event, "action", "")).endswith("ing"):
            return  # "adding"/"removing"/"changing": wait for the change itself
        self._restyle()
        self.refresh_objects()
        self.fields.prompts_edited()  # the instant preview (debounced, on the worker)

    def _restyle(self) -> None:
        style_prompt_layers(self.points_combo.layer, self.shapes_combo.layer, self._output())

    def _unstyle_all(self) -> None:
        for undo in self._styled.values():
            for fn in undo:
                with contextlib.suppress(Exception):  # the layer may be gone
                    fn()
        self._styled.clear()


@dataclass
class _Owned:
    """What the widget owns that must be released even after its Qt object is gone."""

    annotator: Annotator
    slot: JobSlot


def _release_after_job(slot: JobSlot, annotator: Annotator) -> None:
    """Release the session, learner and model — once the (cancelled) job that may still
    use them has ended: a learner closed under a training step would fail it."""
    job = slot.job
    if job is not None and job.is_running:
        job.when_done(lambda _state: annotator.release())
    else:
        annotator.release()


@dataclass
class _Run:
    """The propagation in progress (main thread only)."""

    request: PropagateRequest
    output: Any = None
    written: int = 0
    total: int = 0
    seen: set[int] = field(default_factory=set)
    model_label: str = ""
    stop_reason: str = ""
    made_output: bool = False  # the run created its (empty) masks layer at the click


def _release(life: Lifecycle, owned: _Owned) -> Any:
    """A teardown that holds no Qt object: safe after the widget was deleted."""

    def release(*_: Any) -> None:
        life.shutdown()
        with contextlib.suppress(Exception):  # the viewer may be half gone
            _release_after_job(owned.slot, owned.annotator)

    return release
