"""Model selector: SAM2 variants, the untrained test model, and local checkpoints; SAM2's
input size and what it costs."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QSize, Qt, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QStyle, QStyleOptionComboBox, QWidget

from napari_sam_lora.annotator.sessions import feature_megabytes

MODELS = (
    "sam2.1_hiera_tiny",
    "sam2.1_hiera_small",
    "sam2.1_hiera_base_plus",
    "sam2.1_hiera_large",
    "sam2_hiera_tiny",
    "sam2_hiera_small",
    "sam2_hiera_base_plus",
    "sam2_hiera_large",
    "untrained:sam2.1_hiera_tiny",
)
BROWSE = "Browse…"
UNTRAINED_PREFIX = "untrained:"
#: Short, so that ``<variant> (UNTRAINED)`` fits the box at the dock's default width.
UNTRAINED_NOTE = " (UNTRAINED)"


def _is_path(name: str) -> bool:
    return "/" in name or "\\" in name


def model_label(name: str) -> str:
    """How a model string is shown in the box: the file name for paths,
    ``<variant> (UNTRAINED)`` for random weights."""
    if name.startswith(UNTRAINED_PREFIX):
        return name[len(UNTRAINED_PREFIX) :] + UNTRAINED_NOTE
    return Path(name).name if _is_path(name) else name


def model_description(name: str) -> str:
    """How a model string is described (status line, tooltips): says what UNTRAINED means."""
    if name.startswith(UNTRAINED_PREFIX):
        return f"{name[len(UNTRAINED_PREFIX) :]} (UNTRAINED: random weights)"
    return model_label(name)


def model_tooltip(name: str) -> str:
    """The tooltip of a model's item: the full path, or what random weights are for."""
    if name.startswith(UNTRAINED_PREFIX):
        return (
            f"{name}: random weights, for tests and the offline demo; its masks are not meaningful"
        )
    return name


class ModelCombo(QComboBox):
    """Variant names, ``untrained:<variant>`` and checkpoint paths; "Browse…" picks a file.

    Each item's data is the model string the engine takes; paths show their file name, with
    the full path as tooltip. ``model_changed`` is emitted with the new model string.

    The box is never narrower than the longest listed model's label (fonts differ between
    systems), whatever minimum contents length the panel sets, so a listed model is never
    cut off; a long checkpoint file name is elided and its tooltip has the full path.
    """

    model_changed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        for name in MODELS:
            self._add(self.count(), name)
        self.addItem(BROWSE, None)
        self.setItemData(self.count() - 1, "Choose a SAM2 checkpoint file (.pt)", Qt.ToolTipRole)
        self._index = 0
        self.activated.connect(self._on_activated)
        self.currentIndexChanged.connect(self._update_tooltip)
        self._update_tooltip()

    def _add(self, index: int, name: str) -> None:
        self.insertItem(index, model_label(name), name)
        self.setItemData(index, model_tooltip(name), Qt.ToolTipRole)

    def _update_tooltip(self, *_: object) -> None:
        name = self.model
        self.setToolTip(f"Model: {model_tooltip(name)}" if name else "")

    def minimumSizeHint(self) -> QSize:
        """At least as wide as the longest listed model's label (see the class docstring)."""
        hint = super().minimumSizeHint()
        text = max(self.fontMetrics().horizontalAdvance(model_label(name)) for name in MODELS)
        option = QStyleOptionComboBox()
        self.initStyleOption(option)
        needed = self.style().sizeFromContents(
            QStyle.CT_ComboBox, option, QSize(text, hint.height()), self
        )
        return QSize(max(hint.width(), needed.width()), hint.height())

    def sizeHint(self) -> QSize:
        return super().sizeHint().expandedTo(self.minimumSizeHint())

    @property
    def model(self) -> str:
        """The selected model string."""
        data = self.currentData()
        return data if data is not None else self.itemData(self._index)

    @property
    def label(self) -> str:
        """The selected model as described to users (says UNTRAINED: random weights)."""
        return model_description(self.model)

    def set_model(self, name: str) -> None:
        """Select ``name``, adding it (before "Browse…") if it is not listed yet."""
        name = str(name)
        index = self.findData(name)
        if index < 0:
            index = self.count() - 1
            self._add(index, name)
        self._index = index
        self.setCurrentIndex(index)
        self.model_changed.emit(name)

    def _on_activated(self, index: int) -> None:
        if self.itemData(index) is not None:
            self._index = index
            self.model_changed.emit(self.model)
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "SAM2 checkpoint", "", "PyTorch checkpoints (*.pt *.pth);;All files (*)"
        )
        if path:
            self.set_model(path)
        else:
            self.setCurrentIndex(self._index)


#: SAM2 input sizes offered; 1024 is the models' own.
IMAGE_SIZES = (256, 512, 768, 1024)
MODEL_SIZE = 1024


def size_description(size: int) -> str:
    """What an input size costs, e.g. ``"1024 px: ~16 MB features per frame, slowest"``.

    Backbone features (≈16 MB per frame at 1024 px) and encoding time scale with the
    square of the size.
    """
    mb = feature_megabytes(size)
    amount = f"~{mb:.0f} MB" if mb >= 1 else f"~{mb:.2g} MB"
    if size >= MODEL_SIZE:
        speed = "slowest, finest (the model's own)" if size == MODEL_SIZE else "slower still"
    else:
        speed = f"≈{(MODEL_SIZE / size) ** 2:.0f}× faster, coarser"
    return f"{size} px: {amount} features per frame, {speed}"


class ImageSizeCombo(QComboBox):
    """SAM2's input size: 256, 512, 768 or 1024 px (the model's own, the default).

    ``size_changed`` is emitted with the new size when the user picks one (or
    :meth:`set_size` is called with ``emit=True``).
    """

    size_changed = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        for size in IMAGE_SIZES:
            self._add(size)
        self.setCurrentIndex(self.findData(MODEL_SIZE))
        self.setToolTip(
            "SAM2's input size: every frame (or region) is resized to it. 1024 is the model's "
            "own; smaller is faster and needs less memory (both scale with the square of the "
            "size) but sees less detail"
        )
        self.activated.connect(lambda _index: self.size_changed.emit(self.size))

    def _add(self, size: int) -> int:
        index = next((i for i in range(self.count()) if self.itemData(i) > size), self.count())
        self.insertItem(index, f"{size} px", size)
        self.setItemData(index, size_description(size), Qt.ToolTipRole)
        return index

    @property
    def size(self) -> int:
        """The selected size in pixels."""
        return int(self.currentData())

    @property
    def image_size(self) -> int | None:
        """The size the engine takes: ``None`` for the model's own (1024)."""
        return None if self.size == MODEL_SIZE else self.size

    def describe(self) -> str:
        """What the selected size costs (:func:`size_description`)."""
        return size_description(self.size)

    def set_size(self, size: int | None, emit: bool = True) -> None:
        """Select ``size`` (``None``: 1024), adding it if it is not listed."""
        size = MODEL_SIZE if size is None else int(size)
        if size < 16:
            raise ValueError(f"image size {size} px is too small; SAM2 takes 256 to 1024")
        index = self.findData(size)
        if index < 0:
            index = self._add(size)
        changed = index != self.currentIndex()
        self.setCurrentIndex(index)
        if emit and changed:
            self.size_changed.emit(size)
