"""A tiny live plot of training loss and IoU per step (plain QPainter: cheap to redraw)."""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtCore import QPointF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = "#ff9f40"
IOU_COLOR = "#4bc0c0"


class LossPlot(QWidget):
    """Loss (orange, scaled to its own maximum) and IoU (teal, 0 to 1) against the step.

    Attributes
    ----------
    losses, ious : list of float
        The values plotted, one per training step.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.losses: list[float] = []
        self.ious: list[float] = []
        self.setMinimumHeight(48)
        # a real size hint: without one a Fixed policy gives the plot no height of its own
        # and the rows below are drawn over it
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setToolTip("training: loss (orange, relative) and IoU (teal, 0–1) per step")

    def sizeHint(self) -> QSize:
        """80 px high: room of its own in the panel."""
        return QSize(240, 80)

    def minimumSizeHint(self) -> QSize:
        """Never less than 48 px high."""
        return QSize(80, 48)

    def clear(self) -> None:
        """Forget every point."""
        self.losses.clear()
        self.ious.clear()
        self.update()

    def add(self, loss: float, iou: float) -> None:
        """Append one step and schedule a repaint."""
        self.losses.append(float(loss))
        self.ious.append(float(iou))
        self.update()

    def paintEvent(self, event: Any) -> None:
        """Draw both curves on a dark background."""
        painter = QPainter(self)
        try:
            painter.setRenderHint(QPainter.Antialiasing)
            painter.fillRect(self.rect(), QColor(0, 0, 0, 60))
            finite = [v for v in self.losses if math.isfinite(v)]
            top = max(finite) if finite else 1.0
            self._curve(painter, self.losses, top if top > 0 else 1.0, LOSS_COLOR)
            self._curve(painter, self.ious, 1.0, IOU_COLOR)
        finally:
            painter.end()

    def _curve(self, painter: QPainter, values: list[float], top: float, color: str) -> None:
        if not values:
            return
        w, h, pad = self.width(), self.height(), 3.0
        n = max(len(values) - 1, 1)
        points = QPolygonF()
        for i, v in enumerate(values):
            v = min(max(v if math.isfinite(v) else 0.0, 0.0), top) / top
            points.append(QPointF(pad + i * (w - 2 * pad) / n, h - pad - v * (h - 2 * pad)))
        painter.setPen(QPen(QColor(color), 1.5, Qt.SolidLine))
        painter.drawPolyline(points)
