"""Model selector: SAM2 variants, the untrained test model, and local checkpoints."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QWidget

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
UNTRAINED_NOTE = " (UNTRAINED: random weights)"


def model_label(name: str) -> str:
    """How a model string is shown: file name for paths, UNTRAINED for random weights."""
    label = Path(name).name if ("/" in name or "\\" in name) else name
    return label + UNTRAINED_NOTE if name.startswith("untrained:") else label


class ModelCombo(QComboBox):
    """Variant names, ``untrained:<variant>`` and checkpoint paths; "Browse…" picks a file.

    Each item's data is the model string the engine takes; paths show their file name, with
    the full path as tooltip. ``model_changed`` is emitted with the new model string.
    """

    model_changed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        for name in MODELS:
            self.addItem(model_label(name), name)
        self.addItem(BROWSE, None)
        self._index = 0
        self.activated.connect(self._on_activated)

    @property
    def model(self) -> str:
        """The selected model string."""
        data = self.currentData()
        return data if data is not None else self.itemData(self._index)

    @property
    def label(self) -> str:
        """The selected model as shown to users (says UNTRAINED for random weights)."""
        return model_label(self.model)

    def set_model(self, name: str) -> None:
        """Select ``name``, adding it (before "Browse…") if it is not listed yet."""
        name = str(name)
        index = self.findData(name)
        if index < 0:
            index = self.count() - 1
            self.insertItem(index, model_label(name), name)
            self.setItemData(index, name, Qt.ToolTipRole)
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
