"""The object list: one row per object (id, colour, confirmed frames, adapters)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

__all__ = ["ObjectList", "ObjectRow", "frame_ranges"]

COLUMNS = ("id", "colour", "confirmed frames", "adapters")


@dataclass(frozen=True)
class ObjectRow:
    """What the list shows for one object."""

    obj_id: int
    color: tuple[float, ...]  # RGBA in 0..1
    confirmed: tuple[int, ...] = ()
    adapters: int = 0


def frame_ranges(frames: Iterable[int]) -> str:
    """``"0, 3–5, 9"`` for frames 0, 3, 4, 5, 9 (``"–"`` for none)."""
    values = sorted({int(f) for f in frames})
    if not values:
        return "–"
    parts, start, prev = [], values[0], values[0]
    for f in [*values[1:], None]:
        if f is not None and f == prev + 1:
            prev = f
            continue
        parts.append(str(start) if start == prev else f"{start}–{prev}")
        if f is not None:
            start = prev = f
    return ", ".join(parts)


class ObjectList(QTableWidget):
    """Objects of the current image; selecting a row emits :attr:`selected` with its id."""

    selected = Signal(int)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(COLUMNS)
        self.verticalHeader().setVisible(False)
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.Stretch)
        self.setMinimumHeight(60)
        self.setMaximumHeight(110)
        self.setToolTip("objects: select one to give new clicks and boxes its id")
        self.rows: list[ObjectRow] = []
        self.itemSelectionChanged.connect(self._on_selection)

    def set_rows(self, rows: Sequence[ObjectRow], current: int) -> None:
        """Show ``rows`` (sorted by id) and select ``current``."""
        rows = sorted(rows, key=lambda r: r.obj_id)
        self.blockSignals(True)
        try:
            if rows != self.rows:
                self.rows = list(rows)
                self.setRowCount(len(rows))
                for i, row in enumerate(rows):
                    rgba = np.clip(np.asarray(row.color, float) * 255, 0, 255).astype(int)
                    swatch = QTableWidgetItem("")
                    # a decoration, not a background: napari's stylesheet paints item
                    # backgrounds over
                    swatch.setData(Qt.DecorationRole, QColor(*rgba[:3]))
                    swatch.setToolTip(QColor(*rgba[:3]).name())
                    texts = (str(row.obj_id), None, frame_ranges(row.confirmed), str(row.adapters))
                    for col, text in enumerate(texts):
                        item = swatch if text is None else QTableWidgetItem(text)
                        item.setData(Qt.UserRole, row.obj_id)
                        self.setItem(i, col, item)
            self.select(current)
        finally:
            self.blockSignals(False)

    def select(self, obj_id: int) -> None:
        """Select the row of ``obj_id`` (no signal)."""
        blocked = self.blockSignals(True)
        try:
            for i, row in enumerate(self.rows):
                if row.obj_id == obj_id:
                    if self.currentRow() != i or not self.selectedItems():
                        self.selectRow(i)
                    return
            self.clearSelection()
        finally:
            self.blockSignals(blocked)

    def _on_selection(self) -> None:
        items = self.selectedItems()
        if items:
            self.selected.emit(int(items[0].data(Qt.UserRole)))
