"""The *Image and model* section: what to segment and with which model.

It owns the choice of the input image (and, for images of four or more dimensions, the
axis that is the stack), of the model, of SAM2's input size (with what it costs), of the
device, and of the region of interest (*only this region* and *Draw region*, which adds
"<image> region"). It refuses a new image size or region while the chosen stack's session
holds an annotation made with the other one (:meth:`Annotator.check_keeps_annotation`).

A thin view like the other panels: it takes the dock's
:class:`~napari_sam_lora.annotator.Annotator`, job slot and lifecycle — never the dock
widget. What the rest of the dock does about its choices goes out through Qt signals
(:attr:`SetupPanel.image_changed`, :attr:`~SetupPanel.axis_changed`,
:attr:`~SetupPanel.message`, :attr:`~SetupPanel.error`) and one callback, ``sync``, that
writes the dock's choices into the annotator before the panel reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import napari.layers
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam_lora._qt._layer_combo import LayerCombo
from napari_sam_lora._qt._layout import form, row
from napari_sam_lora._qt._model_combo import ImageSizeCombo, ModelCombo
from napari_sam_lora._qt._slot import JobSlot
from napari_sam_lora.annotator import Annotator, Lifecycle
from napari_sam_lora.annotator.annotator import RegionChosen
from napari_sam_lora.layers import stack_from_image_layer
from napari_sam_lora.layers.prompts import make_region_layer

__all__ = ["DEVICES", "SetupPanel"]

DEVICES = ("auto", "cuda", "mps", "cpu")


class SetupPanel(QWidget):
    """The image, stack axis, model, image size, device and region of the dock.

    Parameters
    ----------
    annotator : Annotator
        The dock's model: its selection, the chosen stack's session.
    slot : JobSlot
        The dock's one job slot (the choices are locked while a job runs).
    life : Lifecycle
        The dock's teardown.
    sync : callable
        Writes the dock's choices into ``annotator.selection``; called before the panel
        reads the annotator (the session of the chosen stack, the drawn region).

    Attributes
    ----------
    image_combo : LayerCombo
        The input image.
    axis_spin : QSpinBox
        The stack axis (shown for images of four or more dimensions).
    model_combo : ModelCombo
        The model.
    size_combo : ImageSizeCombo
        SAM2's input size; ``size_label`` says what it costs.
    device_combo : QComboBox
        The device (:data:`DEVICES`).
    region_check : QCheckBox
        *only this region*: track inside the rectangle of "<image> region".
    image_changed : Signal()
        Another image was chosen (the stack axis is back at 0).
    axis_changed : Signal()
        Another stack axis was chosen.
    message : Signal(str)
        A text for the dock's status line.
    error : Signal(object)
        An error to report (an exception or a text): status line and notification.
    """

    image_changed = Signal()
    axis_changed = Signal()
    message = Signal(str)
    error = Signal(object)

    def __init__(
        self,
        annotator: Annotator,
        slot: JobSlot,
        life: Lifecycle,
        sync: Callable[[], None],
    ) -> None:
        super().__init__()
        self.annotator, self.slot, self.life = annotator, slot, life
        self.viewer = annotator.viewer
        self._sync = sync
        self._build_ui()
        self._connect()
        self._show_axis()
        self._show_size()

    # -- UI ---------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.image_combo = LayerCombo(self.viewer, napari.layers.Image, parent=self)
        self.axis_spin = QSpinBox(self)
        self.axis_spin.setToolTip("Axis of the image that is the stack (time or z)")
        self.axis_label = QLabel("stack axis", self)
        self.model_combo = ModelCombo(self)
        self.device_combo = QComboBox(self)
        self.device_combo.addItems(DEVICES)
        self.size_combo = ImageSizeCombo(self)
        self.size_label = QLabel(self)
        self.size_label.setWordWrap(True)
        self.region_check = QCheckBox("only this region", self)
        self.region_check.setToolTip(
            "Track only inside the rectangle drawn in '<image> region', at full resolution "
            "(small objects in big frames); prompts must lie inside it"
        )
        self.region_button = QPushButton("Draw region", self)
        self.region_button.setToolTip(
            "Add '<image> region' in rectangle mode: draw one rectangle, then tick "
            "'only this region'"
        )
        for combo in (self.image_combo, self.model_combo, self.device_combo):
            # long layer or model names must not widen the panel past the dock
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(10)
        content = form(
            ("image", self.image_combo),
            (self.axis_label, self.axis_spin),
            ("model", self.model_combo),
            ("image size", self.size_combo),
            self.size_label,
            ("device", self.device_combo),
            ("region", row(self.region_check, self.region_button)),
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(content)

    def _connect(self) -> None:
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.axis_spin.valueChanged.connect(lambda *_: self.axis_changed.emit())
        self.size_combo.size_changed.connect(self._on_size_changed)
        self.region_check.toggled.connect(self._on_region_toggled)
        self.region_button.clicked.connect(lambda *_: self.draw_region())
        self.annotator.events.connect(self._on_annotator_event)
        self.life.on_shutdown(lambda: self.annotator.events.disconnect(self._on_annotator_event))
        self.slot.add_listener(self._on_slot)

    # -- public API --------------------------------------------------------------------------
    @property
    def image(self) -> Any:
        """The chosen image layer, or ``None``."""
        return self.image_combo.layer

    @property
    def stack_axis(self) -> int:
        """The axis of the chosen image that is the stack (0 below four dimensions)."""
        image = self.image_combo.layer
        return self.axis_spin.value() if image is not None and image.ndim >= 4 else 0

    @property
    def model(self) -> str:
        """The selected model: a variant name, ``untrained:<variant>`` or a checkpoint path."""
        return self.model_combo.model

    @property
    def device(self) -> str | None:
        """The selected device; ``None`` for auto."""
        text = self.device_combo.currentText()
        return None if text == "auto" else text

    @property
    def image_size(self) -> int | None:
        """SAM2's input size (``None``: the model's own, 1024)."""
        return self.size_combo.image_size

    @image_size.setter
    def image_size(self, size: int | None) -> None:
        self.size_combo.set_size(size)

    @property
    def only_region(self) -> bool:
        """Whether *only this region* is ticked."""
        return self.region_check.isChecked()

    def set_model(self, name: str) -> None:
        """Select a model by variant name, ``untrained:<variant>`` or checkpoint path."""
        self.model_combo.set_model(name)

    def frame_count(self) -> int:
        """The number of frames of the chosen stack (1 without an image, or for one the
        stack cannot read: Propagate says why)."""
        image = self.image_combo.layer
        if image is None:
            return 1
        try:
            axis = self.axis_spin.value() if image.ndim >= 4 else 0
            return stack_from_image_layer(image, axis).num_frames
        except Exception:  # unsupported image: Propagate will say why
            return 1

    def refresh_layers(self) -> None:
        """Re-read the viewer's image layers (layers added, removed, moved or renamed)."""
        self.image_combo.refresh()

    def draw_region(self) -> Any:
        """Add (or select) "<image> region" in rectangle mode; returns the layer."""
        image = self.image_combo.layer
        if image is None:
            self.error.emit("no image layer: open an image or a stack first")
            return None
        layer = make_region_layer(self.viewer, image)
        self.message.emit(f"draw one rectangle in '{layer.name}', then tick 'only this region'")
        return layer

    # -- internals ---------------------------------------------------------------------------
    def _show_axis(self) -> None:
        """The stack axis of the chosen image: 0, shown for four or more dimensions."""
        image = self.image_combo.layer
        ndim = 0 if image is None else image.ndim
        self.axis_spin.blockSignals(True)
        self.axis_spin.setRange(0, max(ndim - 1, 0))
        self.axis_spin.setValue(0)
        self.axis_spin.blockSignals(False)
        self.axis_label.setVisible(ndim >= 4)
        self.axis_spin.setVisible(ndim >= 4)

    def _on_image_changed(self, *_: Any) -> None:
        self._show_axis()
        self.image_changed.emit()

    def _show_size(self) -> None:
        self.size_label.setText(self.size_combo.describe())

    def _on_size_changed(self, size: int) -> None:
        """A new image size applies to the next session; refused (the box goes back) while
        the chosen stack's session holds an annotation: it would start over without it."""
        self._sync()
        sessions = self.annotator.sessions
        try:
            self.annotator.check_keeps_annotation(self.image_size, sessions.region)
        except Exception as exc:
            self.size_combo.set_size(sessions.image_size, emit=False)
            self._sync()
            self._show_size()
            self.error.emit(exc)
            return
        self._show_size()
        if self.annotator.session() is not None:
            self.message.emit(
                f"image size {size} px: the next Propagate starts a new session at this size"
            )
        else:
            self.message.emit(f"image size {size} px: used from the next Propagate")

    def _on_region_toggled(self, on: bool) -> None:
        """Ticking or unticking the region is refused while the session holds an
        annotation made on the other one (Propagate checks the rectangle again)."""
        self._sync()
        try:
            region = self.annotator.region() if on else None
            self.annotator.check_keeps_annotation(self.image_size, region)
        except Exception as exc:
            if on and self.annotator.session() is None:  # no rectangle yet: say so
                self.message.emit(f"{exc}")
                return
            self._tick_region(not on)
            self._sync()
            self.error.emit(exc)
            return
        if on:
            self.message.emit(f"region {region.describe()}: used from the next Propagate")
        else:
            self.message.emit("whole frames: used from the next Propagate")

    def _tick_region(self, on: bool) -> None:
        """Tick or untick *only this region* without reacting to it."""
        self.region_check.blockSignals(True)
        self.region_check.setChecked(on)
        self.region_check.blockSignals(False)

    def _on_annotator_event(self, event: Any) -> None:
        if self.life.alive and isinstance(event, RegionChosen):
            self._tick_region(event.region is not None)  # a restore on a region
            self._sync()

    def _on_slot(self, kind: str, running: bool) -> None:
        if not self.life.alive or kind == "preview":  # a preview gives way to any action
            return
        for widget in (
            self.image_combo,
            self.axis_spin,
            self.model_combo,
            self.size_combo,
            self.region_check,
            self.region_button,
            self.device_combo,
        ):
            widget.setEnabled(not running)
