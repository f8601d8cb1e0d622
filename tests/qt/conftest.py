"""Fixtures of the dock widget tests (run under ``xvfb-run -a``)."""

from __future__ import annotations

import time

import pytest

from napari_sam_lora._qt.widget import SamLoraWidget


@pytest.fixture
def viewer_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA")
    assert isinstance(widget, SamLoraWidget)
    yield viewer, widget
    if widget.job is not None:
        widget.job.cancel()
        deadline = time.monotonic() + 30
        while widget.job.is_running and time.monotonic() < deadline:
            from qtpy.QtWidgets import QApplication

            QApplication.processEvents()
            time.sleep(0.01)
