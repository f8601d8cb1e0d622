"""The panel's *Save and restore* section: annotation state and adapters next to the labels.

Filled in by issue 9's GUI work (save / restore buttons); the dock builds it as one section.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QVBoxLayout, QWidget

__all__ = ["AnnotationFilesPanel"]


class AnnotationFilesPanel(QWidget):
    """Save the annotation state and adapters; restore them on the same stack."""

    def __init__(self, host: Any) -> None:
        super().__init__(host)
        self.host = host
        QVBoxLayout(self).setContentsMargins(0, 0, 0, 0)
