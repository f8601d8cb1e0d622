"""Fixtures of the dock widget tests (run under ``xvfb-run -a``)."""

from __future__ import annotations

import time

import pytest

from napari_sam_lora._qt.widget import SamLoraWidget


def _dock(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA")
    assert isinstance(widget, SamLoraWidget)
    return viewer, widget


def _stop(widget: SamLoraWidget, seconds: float = 60) -> None:
    """Cancel a running job and wait (processing events) until it has stopped."""
    if widget.job is None or not widget.job.is_running:
        return
    from qtpy.QtWidgets import QApplication

    widget.job.cancel()
    deadline = time.monotonic() + seconds
    while widget.job.is_running and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.01)


@pytest.fixture
def viewer_widget(make_napari_viewer):
    """A viewer with the dock, as napari's Plugins menu opens it."""
    viewer, widget = _dock(make_napari_viewer)
    yield viewer, widget
    _stop(widget)


@pytest.fixture
def tiny_widget(make_napari_viewer, tiny_model):
    """The dock running the real engine on the shared untrained model at 256 px.

    The widget's session cache hands out ``tiny_model`` (already built); closing the dock
    closes its learner, so each test leaves the shared decoder without adapters.
    """
    from napari_sam_lora.annotator import SessionCache

    viewer, widget = _dock(make_napari_viewer)
    widget.image_size = 256
    widget.set_model("untrained:sam2.1_hiera_tiny")

    def load(model, device, image_size):  # the shared untrained model, already built
        yield ("build", 1, 1)
        return tiny_model

    widget.sessions = SessionCache(load_model=load)
    yield viewer, widget
    _stop(widget)
    widget.shutdown()
