"""Reliability of the dock and its workers (issue 19): refusals before any job starts, no
worker emitting into a deleted dock, no library warning on the user's console.

The viewer tests need a GL context: run under ``xvfb-run -a``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from napari.layers import Image, Labels, Points

# -- 1. an object id the user's masks layer cannot hold --------------------------------------


def _load_never(model, device, image_size):  # pragma: no cover - must not run
    raise AssertionError("no model may load for a refused Propagate")
    yield


@pytest.mark.viewer
def test_id_300_with_uint8_masks_layer_is_refused_at_the_click(make_napari_viewer, notes):
    from napari_sam_lora._qt.widget import SamLoraWidget
    from napari_sam_lora.annotator import SessionCache

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA")
    assert isinstance(widget, SamLoraWidget)
    made = []
    widget.sessions = SessionCache(load_model=_load_never, make_session=lambda *a: made.append(a))
    data = (np.random.default_rng(0).random((4, 32, 32)) * 100).astype(np.float32)
    viewer.add_image(data, name="img")
    masks = viewer.add_labels(np.zeros((4, 32, 32), np.uint8), name="img masks")
    masks.data[1, :2, :2] = 7  # the user's own labels: must stay as they are
    before = masks.data.copy()
    widget.obj_spin.setValue(300)
    widget.add_prompt_layers()
    points = widget.points_combo.layer
    points.add(np.array([0.0, 10, 10]))
    assert list(points.features["obj_id"]) == [300]
    layers_before = [layer.name for layer in viewer.layers]

    try:
        assert widget.propagate() is False  # refused at the click: no job
        assert widget.job is None and not widget.busy and made == []
        text = widget.status.text()
        assert text.startswith("error:") and "300" in text and "uint8" in text
        assert "img masks" in text
        assert len(notes) == 1 and "300" in notes[0] and "uint8" in notes[0]
        assert masks.data.dtype == np.uint8 and np.array_equal(masks.data, before)
        assert [layer.name for layer in viewer.layers] == layers_before
        assert widget.propagate_button.isEnabled()
        assert list(points.features["obj_id"]) == [300]  # the prompts are unchanged
    finally:
        widget.shutdown()


def test_build_request_refuses_ids_the_masks_layer_cannot_hold():
    from napari_sam_lora.annotator.sessions import build_request
    from napari_sam_lora.engine.core.errors import PromptError

    image = Image(np.zeros((3, 16, 16), np.float32), name="img")
    masks = Labels(np.zeros((3, 16, 16), np.uint8), name="img masks")
    points = Points(np.array([[0.0, 5, 5]]), features={"obj_id": [300]}, name="img prompts")
    kwargs = dict(
        stack_axis=0,
        dims_point=None,
        points_layer=points,
        shapes_layer=None,
        labels_layer=None,
        default_obj_id=300,
        model="m",
        device=None,
        image_size=None,
        direction="forward",
        frame_range=None,
    )
    with pytest.raises(PromptError, match=r"object id 300 .*uint8.*'img masks'"):
        build_request(image, masks_layer=masks, **kwargs)
    assert build_request(image, **kwargs).prompts[0].obj_id == 300  # no layer: no limit
    wide = Labels(np.zeros((3, 16, 16), np.int32), name="img masks")
    assert build_request(image, masks_layer=wide, **kwargs).prompts[0].obj_id == 300


def test_masks_view_never_raises_for_ids_its_layer_cannot_hold(monkeypatch, caplog):
    import napari.utils.notifications as notifications

    from napari_sam_lora.engine.annotation.model import AnnotationModel
    from napari_sam_lora.layers import MasksView, stack_from_image_layer

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda message: shown.append(str(message)))
    image = Image(np.zeros((3, 8, 8), np.float32), name="img")
    source = stack_from_image_layer(image, 0, None)
    layer = Labels(np.zeros((3, 8, 8), np.uint8), name="img masks")
    model = AnnotationModel(3, (8, 8))
    view = MasksView(model, layer, source, lambda strokes: None, lambda: None, lambda: None)
    labels = np.zeros((8, 8), np.int32)
    labels[2:5, 2:5] = 300
    with model.action("propagate"):
        for frame in (0, 1):
            model.model_made(frame, 300, "sam2")
            model.write_frame(frame, labels)

    with caplog.at_level(logging.WARNING, logger="napari_sam_lora.layers.masks_view"):
        assert view.show(0, labels) is False  # refused, not raised (a Qt callback)
        assert view.flush() == []  # every frame refused: still no exception
        assert view.show(1) is False
    assert not layer.data.any() and layer.data.dtype == np.uint8  # nothing written
    refusals = [r for r in caplog.records if "300" in r.getMessage()]
    assert len(refusals) == 1 and len(shown) == 1  # reported once, not per frame
    assert "uint8" in shown[0] and "img masks" in shown[0]
    view.close()


# -- 2. no worker emits after the viewer is gone ----------------------------------------------

_OPEN_AND_CLOSE = """
import napari
viewer = napari.Viewer(show=False)
viewer.window.add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA")
viewer.close()
"""


@pytest.mark.viewer
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (xvfb-run -a)")
def test_closing_the_viewer_right_after_docking_exits_cleanly():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("QT_QPA_PLATFORM", None)
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_AND_CLOSE],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert "RuntimeError" not in done.stderr, done.stderr[-3000:]
    assert "has been deleted" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.viewer
def test_wait_for_jobs_cancels_and_waits_for_the_workers(qtbot):
    from napari_sam_lora._qt import threading as qt_threading

    release = threading.Event()
    steps = []

    def slow():
        for k in range(1000):
            release.wait(0.01)
            steps.append(k)
            yield k

    job = qt_threading.start_job(slow)
    assert job in qt_threading.running_jobs()
    qtbot.waitUntil(lambda: len(steps) > 0, timeout=30_000)
    assert qt_threading.wait_for_jobs(30)  # cancelled at its next yield, then waited for
    assert job.cancel_requested and len(steps) < 1000
    qtbot.waitUntil(lambda: not job.is_running, timeout=30_000)
    assert job.state == qt_threading.CANCELLED and job not in qt_threading.running_jobs()


@pytest.mark.viewer
def test_a_failing_callback_is_reported_once_not_raised_into_qt(qtbot, notes):
    from napari_sam_lora._qt import threading as qt_threading

    def three():
        yield from range(3)

    def gone(_value):
        raise RuntimeError("wrapped C/C++ object of type QLabel has been deleted")

    states = []
    job = qt_threading.start_job(three, on_yield=gone, on_done=states.append)
    qtbot.waitUntil(lambda: not job.is_running, timeout=30_000)
    assert states == ["finished"] and len(notes) == 1 and "QLabel" in notes[0]


def test_a_worker_with_deleted_signals_emits_nothing(qapp):
    from napari_sam_lora._qt import threading as qt_threading

    sip = pytest.importorskip("PyQt6.sip")

    def nothing():
        yield from ()

    worker = qt_threading._Worker(nothing)
    sip.delete(worker.signals)  # what Qt does to it when the process exits under the worker
    with pytest.raises(RuntimeError, match="has been deleted"):
        worker.signals.objectName()
    worker.finished.emit()  # raised in the worker thread before: the process aborted
    worker.yielded.emit(1)
    worker.run()  # superqt's whole run: every emit falls silent


# -- 3. peft's warnings go to logging, not to the console -------------------------------------


def test_deleting_an_active_adapter_logs_peft_warning(recwarn, caplog):
    import torch

    import lora_fixtures
    from napari_sam_lora.engine.learning import adapters as A
    from napari_sam_lora.engine.learning.lora_settings import load_settings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decoder = lora_fixtures.fresh_decoder()
        settings = load_settings("default")
        with caplog.at_level(logging.DEBUG, logger="napari_sam_lora.engine.learning.adapters"):
            A.inject_adapter(decoder, "obj1_a0", settings)
            A.inject_adapter(decoder, "obj2_a0", settings)
            A.activate(decoder, "obj2_a0")
            A.delete_adapter(decoder, "obj2_a0")  # peft: "was active which is now deleted"
            A.activate(decoder, "obj1_a0")
            A.delete_adapter(decoder, "obj1_a0")
    finally:
        torch.set_num_threads(threads)
    assert A.adapter_names(decoder) == [] and A.active_adapter(decoder) is None
    escaped = [str(w.message) for w in recwarn.list]
    assert not escaped, escaped
    logged = [r.getMessage() for r in caplog.records]
    assert any("obj2_a0 was active which is now deleted" in m for m in logged), logged
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing reaches the console (warnings) either
        decoder = lora_fixtures.fresh_decoder()
        A.inject_adapter(decoder, "obj1_a0", settings)
        A.inject_adapter(decoder, "obj2_a0", settings)
        A.activate(decoder, "obj2_a0")
        A.delete_adapter(decoder, "obj2_a0")
