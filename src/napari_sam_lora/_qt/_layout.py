"""Layout helpers of the dock: collapsible sections, form rows, the shortcut table."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import (
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_sam_lora._qt._shortcuts import shortcut_rows

__all__ = ["ShortcutHelp", "form", "row", "section"]


def section(title: str, content: QWidget, expanded: bool = True) -> QCollapsible:
    """A collapsible section holding ``content``."""
    box = QCollapsible(title)
    box.setDuration(0)
    box.addWidget(content)
    if expanded:
        box.expand(animate=False)
    else:
        box.collapse(animate=False)
    return box


def form(*rows: Any) -> QWidget:
    """A form: ``(label, field)`` tuples and single widgets, one per row."""
    widget = QWidget()
    layout = QFormLayout(widget)
    layout.setContentsMargins(4, 2, 4, 2)
    layout.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
    for item in rows:
        if isinstance(item, tuple):
            layout.addRow(*item)
        else:
            layout.addRow(item)
    return widget


def row(*widgets: Any) -> QHBoxLayout:
    """Widgets side by side."""
    line = QHBoxLayout()
    line.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        line.addWidget(w)
    return line


class ShortcutHelp(QDialog):
    """The dock's shortcuts in a table (the help button opens it)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("SAM2 LoRA shortcuts")
        rows = shortcut_rows()
        self.table = QTableWidget(len(rows), 2, self)
        self.table.setHorizontalHeaderLabels(("key", "action"))
        self.table.verticalHeader().setVisible(False)
        for i, (key, text) in enumerate(rows):
            self.table.setItem(i, 0, QTableWidgetItem(key))
            self.table.setItem(i, 1, QTableWidgetItem(text))
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.Stretch)
        note = QLabel(
            "The keys work whatever layer is active (none of them is a napari layer key). "
            "Shift+click in a prompts layer adds a negative click.",
            self,
        )
        note.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(note)
        self.resize(520, 320)
