"""The dock widget: choose an image, a model and prompt layers, propagate with SAM2."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import napari.layers
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam_lora._qt import threading as _threading
from napari_sam_lora._qt._layer_combo import LayerCombo
from napari_sam_lora._qt._learning import LearningPanel
from napari_sam_lora._qt._model_combo import MODELS, ModelCombo
from napari_sam_lora._qt._propagation import (
    Lifecycle,
    LoadProgress,
    ModelReady,
    PropagateRequest,
    Run,
    SessionCache,
    build_request,
    propagation_job,
)
from napari_sam_lora.layers import (
    EditGroup,
    make_prompt_layers,
    output_labels_layer,
    same_layer,
    stack_from_image_layer,
    write_frame,
)

if TYPE_CHECKING:
    import napari

__all__ = ["DEVICES", "MODELS", "SamLoraWidget"]

DEVICES = ("auto", "cuda", "mps", "cpu")
DIRECTIONS = ("forward", "backward", "both")
PROPAGATE_KEY = "Shift-P"


class SamLoraWidget(QWidget):
    """Segment an image stack with SAM2 from point, box and mask prompts.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (napari injects it).

    Attributes
    ----------
    image_size : int or None
        SAM2 input size; ``None`` uses the model's own (1024). Smaller is faster.
    sessions : SessionCache
        Reuses the loaded model and session between propagations.
    job : Job or None
        The last job (propagation or learning; one at a time).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.image_size: int | None = None
        self.sessions = SessionCache()
        self.job: _threading.Job | None = None
        self._run: Run | None = None
        self._life = Lifecycle()
        self._build_ui()
        self._connect()
        self._on_image_changed()

    # -- UI ---------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        v = self.viewer
        self.image_combo = LayerCombo(v, napari.layers.Image, parent=self)
        self.axis_spin = QSpinBox(self)
        self.axis_spin.setToolTip("Axis of the image that is the stack (time or z)")
        self.model_combo = ModelCombo(self)
        self.device_combo = QComboBox(self)
        self.device_combo.addItems(DEVICES)
        self.obj_spin = QSpinBox(self)
        self.obj_spin.setRange(1, 65535)
        self.obj_spin.setToolTip("Object id (label value) of new clicks and boxes")
        self.add_prompts_button = QPushButton("Add prompt layers", self)
        self.points_combo = LayerCombo(v, napari.layers.Points, nullable=True, parent=self)
        self.shapes_combo = LayerCombo(v, napari.layers.Shapes, nullable=True, parent=self)
        self.mask_combo = LayerCombo(v, napari.layers.Labels, nullable=True, parent=self)
        self.direction_combo = QComboBox(self)
        self.direction_combo.addItems(DIRECTIONS)
        self.from_spin, self.to_spin = QSpinBox(self), QSpinBox(self)
        frames = QHBoxLayout()
        frames.addWidget(self.from_spin)
        frames.addWidget(QLabel("to", self))
        frames.addWidget(self.to_spin)
        self.propagate_button = QPushButton(f"Propagate ({PROPAGATE_KEY})", self)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.propagate_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar(self)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.progress.setValue(0)
        self.status = QLabel(self)
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        self.axis_label = QLabel("stack axis", self)
        form.addRow(self.axis_label, self.axis_spin)
        form.addRow("model", self.model_combo)
        form.addRow("device", self.device_combo)
        form.addRow("object id", self.obj_spin)
        form.addRow(self.add_prompts_button)
        form.addRow("points", self.points_combo)
        form.addRow("boxes", self.shapes_combo)
        form.addRow("mask", self.mask_combo)
        form.addRow("direction", self.direction_combo)
        form.addRow("frames", frames)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.learning = LearningPanel(self)
        layout.addWidget(self.learning)
        layout.addStretch(1)
        self._show_model_status()

    def _connect(self) -> None:
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.axis_spin.valueChanged.connect(self._reset_frame_range)
        self.model_combo.model_changed.connect(self._show_model_status)
        self.obj_spin.valueChanged.connect(self._apply_obj_id)
        self.points_combo.currentIndexChanged.connect(self._apply_obj_id)
        self.shapes_combo.currentIndexChanged.connect(self._apply_obj_id)
        self.add_prompts_button.clicked.connect(lambda: self.add_prompt_layers())
        self.propagate_button.clicked.connect(lambda: self.propagate())
        self.cancel_button.clicked.connect(lambda: self.cancel())
        events = self.viewer.layers.events
        for emitter, callback in (
            (events.inserted, self._on_layer_inserted),
            (events.removed, self._on_layer_removed),
            (events.moved, self._refresh_layers),
        ):
            emitter.connect(callback)
            self._life.teardown.append(lambda e=emitter, c=callback: e.disconnect(c))
        for layer in self.viewer.layers:
            self._watch_name(layer)
        self.viewer.bind_key(PROPAGATE_KEY, self._on_propagate_key, overwrite=True)
        viewer = self.viewer
        self._life.teardown.append(lambda: viewer.bind_key(PROPAGATE_KEY, None))
        self.destroyed.connect(self._life.shutdown)

    def _watch_name(self, layer: Any) -> None:
        layer.events.name.connect(self._refresh_layers)
        self._life.teardown.append(lambda: layer.events.name.disconnect(self._refresh_layers))

    # -- public API --------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The selected model: a variant name, ``untrained:<variant>`` or a checkpoint path."""
        return self.model_combo.model

    @property
    def device(self) -> str | None:
        """The selected device; ``None`` for auto."""
        text = self.device_combo.currentText()
        return None if text == "auto" else text

    def set_model(self, name: str) -> None:
        """Select a model by variant name, ``untrained:<variant>`` or checkpoint path."""
        self.model_combo.set_model(name)

    def add_prompt_layers(self) -> None:
        """Add "<image> prompts" (Points) and "<image> boxes" (Shapes) and select them."""
        image = self.image_combo.layer
        if image is None:
            _threading.notify_error("no image layer: open an image or a stack first")
            return
        points, shapes = make_prompt_layers(self.viewer, image, self.obj_spin.value())
        self.points_combo.set_layer(points)
        self.shapes_combo.set_layer(shapes)

    def propagate(self) -> bool:
        """Read the prompts, then segment the stack on a worker thread.

        Returns
        -------
        bool
            Whether a job was started (errors are shown as notifications).
        """
        if self.job is not None and self.job.is_running:
            self.status.setText("a propagation is already running; cancel it first")
            return False
        try:
            request = self._request()
            session = self.sessions.session_for(request)
            if session is not None:
                session.validate_prompts(request.prompts)
        except Exception as exc:
            _threading.notify_error(exc)
            return False
        self._run = Run(request)
        self._set_running(True)
        self.progress.setRange(0, 0)  # busy until the first frame
        self.progress.setFormat("loading model…")
        self.job = _threading.start_job(
            propagation_job,
            self.sessions,
            request,
            on_yield=self._on_yield,
            on_done=self._on_done,
        )
        self._life.job = self.job
        return True

    def cancel(self, reason: str = "") -> None:
        """Stop the running job after the current frame; frames written so far stay."""
        if self.job is None or not self.job.is_running:
            return
        if self._run is not None and reason and not self._run.stop_reason:
            self._run.stop_reason = reason
        self.job.cancel()
        self.cancel_button.setEnabled(False)
        self.status.setText("cancelling… (stops after the current frame)")

    # -- internals ---------------------------------------------------------------------------
    def _request(self) -> PropagateRequest:
        image = self.image_combo.layer
        if image is not None and self._frame_count() != self.to_spin.maximum() + 1:
            self._reset_frame_range()  # the image data changed since it was selected
        axis = self.axis_spin.value() if image is not None and image.ndim >= 4 else 0
        first, last = self.from_spin.value(), self.to_spin.value()
        return build_request(
            image,
            stack_axis=axis,
            dims_point=tuple(self.viewer.dims.point),
            points_layer=self.points_combo.layer,
            shapes_layer=self.shapes_combo.layer,
            labels_layer=self.mask_combo.layer,
            default_obj_id=self.obj_spin.value(),
            model=self.model,
            device=self.device,
            image_size=self.image_size,
            direction=self.direction_combo.currentText(),
            frame_range=(first, last),
        )

    def _on_yield(self, item: Any) -> None:
        run = self._run
        if not self._life.alive or run is None:
            return
        if isinstance(item, LoadProgress):
            verb = "downloading" if item.stage == "download" else "building"
            self.progress.setFormat(f"{verb} model…")
            return
        if isinstance(item, ModelReady):
            run.model_label = item.label
            self.status.setText(f"model: {item.label}")
            return
        source = run.request.source
        if run.output is None:
            if not self._in_viewer(run.request.image_layer):
                self.cancel(f"image '{source.image_name}' was removed")
                return
            run.output = output_labels_layer(self.viewer, run.request.image_layer, source)
            run.group = EditGroup(run.output)
        if not write_frame(run.output, source, item.frame, item.labels, viewer=self.viewer):
            self.cancel(f"output layer '{run.output.name}' was removed")
            return
        run.written, run.total = run.written + 1, item.total
        self.progress.setRange(0, item.total)
        self.progress.setValue(item.done)
        self.progress.setFormat(f"frame {item.done} of {item.total}")

    def _on_done(self, state: str) -> None:
        run, self._run = self._run, None
        if run is not None and run.group is not None:
            run.group.close()
        if run is not None and not self._in_viewer(run.request.image_layer):
            self.sessions.forget_image(run.request.image_layer)
        if not self._life.alive:
            return
        self._set_running(False)
        self.progress.setRange(0, max(run.total if run else 0, 1))
        model = f" ({run.model_label})" if run and run.model_label else ""
        if state == _threading.FINISHED and run is not None:
            self.progress.setValue(run.total)
            self.status.setText(f"done: {run.written} frame(s) segmented{model}")
        elif state == _threading.CANCELLED and run is not None:
            why = f": {run.stop_reason}" if run.stop_reason else ""
            self.status.setText(f"cancelled{why}; kept {run.written} of {run.total} frame(s)")
            self.progress.setFormat(f"cancelled at frame {run.written} of {run.total}")
        else:
            error = self.job.error if self.job is not None else None
            text = _threading.describe_error(error) if error is not None else "unknown error"
            self.status.setText(f"failed: {text}")
            self.progress.setFormat("failed")

    def _set_running(self, running: bool) -> None:
        for widget in (
            self.propagate_button,
            self.add_prompts_button,
            self.image_combo,
            self.axis_spin,
            self.model_combo,
            self.device_combo,
        ):
            widget.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _in_viewer(self, layer: Any) -> bool:
        return any(same_layer(layer, x) for x in self.viewer.layers)

    def _on_propagate_key(self, _viewer: Any = None) -> None:
        if self._life.alive:
            self.propagate()

    def _on_layer_inserted(self, event: Any) -> None:
        if self._life.alive:
            self._watch_name(event.value)
            self._refresh_layers()

    def _on_layer_removed(self, event: Any) -> None:
        if not self._life.alive:
            return
        layer, run = event.value, self._run
        if run is not None and same_layer(layer, run.request.image_layer):
            self.cancel(f"image '{layer.name}' was removed")
        elif run is not None and same_layer(layer, run.output):
            self.cancel(f"output layer '{layer.name}' was removed")
        if run is None:
            self.sessions.forget_image(layer)
        self._refresh_layers()

    def _refresh_layers(self, *_: Any) -> None:
        if not self._life.alive:
            return
        for combo in (self.image_combo, self.points_combo, self.shapes_combo, self.mask_combo):
            combo.refresh()

    def _on_image_changed(self, *_: Any) -> None:
        image = self.image_combo.layer
        ndim = 0 if image is None else image.ndim
        self.axis_spin.blockSignals(True)
        self.axis_spin.setRange(0, max(ndim - 1, 0))
        self.axis_spin.setValue(0)
        self.axis_spin.blockSignals(False)
        self.axis_label.setVisible(ndim >= 4)
        self.axis_spin.setVisible(ndim >= 4)
        self._reset_frame_range()

    def _frame_count(self) -> int:
        image = self.image_combo.layer
        if image is None:
            return 1
        try:
            axis = self.axis_spin.value() if image.ndim >= 4 else 0
            return stack_from_image_layer(image, axis).num_frames
        except Exception:  # unsupported image: Propagate will say why
            return 1

    def _reset_frame_range(self, *_: Any) -> None:
        count = self._frame_count()
        for spin in (self.from_spin, self.to_spin):
            spin.setRange(0, count - 1)
        self.from_spin.setValue(0)
        self.to_spin.setValue(count - 1)

    def _show_model_status(self, *_: Any) -> None:
        if self._run is None:
            self.status.setText(f"model: {self.model} (loads on the first propagation)")

    def _apply_obj_id(self, *_: Any) -> None:
        for layer in (self.points_combo.layer, self.shapes_combo.layer):
            defaults = getattr(layer, "feature_defaults", None)
            if defaults is None or "obj_id" not in defaults.columns:
                continue
            values = {c: defaults[c].iloc[0] for c in defaults.columns}
            values["obj_id"] = self.obj_spin.value()
            layer.feature_defaults = values

    def closeEvent(self, event: Any) -> None:
        """Cancel the job and disconnect from the viewer."""
        self._life.shutdown()
        super().closeEvent(event)
