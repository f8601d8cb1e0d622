"""A combo box listing the viewer's layers of one type, kept in sync with the layer list."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QComboBox, QWidget

from napari_sam_lora.layers import same_layer

NONE_TEXT = "none"


class LayerCombo(QComboBox):
    """Layers of ``layer_type`` in the viewer, by name; optionally with a "none" entry.

    Call :meth:`refresh` when layers are added, removed, reordered or renamed (the widget
    owning it connects the viewer's events). The selection is kept by identity; when it
    disappears, the newest matching layer is selected (or "none").

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    layer_type : type
        A napari layer class, e.g. ``napari.layers.Image``.
    nullable : bool
        Whether "none" is a choice (and the default).
    parent : QWidget, optional
    """

    def __init__(
        self, viewer: Any, layer_type: type, nullable: bool = False, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self._nullable = nullable
        self._layers: list[Any] = []
        self.refresh()

    @property
    def layer(self) -> Any:
        """The selected layer, or ``None``."""
        index = self.currentIndex() - (1 if self._nullable else 0)
        return self._layers[index] if 0 <= index < len(self._layers) else None

    def set_layer(self, layer: Any) -> None:
        """Select ``layer`` (``None`` selects "none" when nullable)."""
        self.refresh()
        offset = 1 if self._nullable else 0
        for i, candidate in enumerate(self._layers):
            if same_layer(candidate, layer):
                self.setCurrentIndex(i + offset)
                return
        if layer is None and self._nullable:
            self.setCurrentIndex(0)

    def refresh(self) -> None:
        """Re-read the layer list, keeping the selection when it still exists."""
        current = self.layer
        layers = [layer for layer in self._viewer.layers if isinstance(layer, self._type)]
        names = [layer.name for layer in layers]
        offset = 1 if self._nullable else 0
        same = all(map(same_layer, layers, self._layers)) and names == [
            self.itemText(i + offset) for i in range(len(layers))
        ]
        if same and self.count() == len(layers) + offset:
            return
        self.blockSignals(True)
        try:
            self.clear()
            self._layers = layers
            if self._nullable:
                self.addItem(NONE_TEXT)
            self.addItems(names)
            found = [i for i, x in enumerate(layers) if same_layer(x, current)]
            if current is not None and found:
                self.setCurrentIndex(found[0] + offset)
            elif self._nullable:
                self.setCurrentIndex(0)
            elif layers:
                self.setCurrentIndex(len(layers) - 1)
        finally:
            self.blockSignals(False)
        if not same_layer(self.layer, current):
            self.currentIndexChanged.emit(self.currentIndex())
