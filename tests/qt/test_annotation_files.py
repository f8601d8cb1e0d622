"""Save and restore the annotation state from the dock (issue 9 item 6), in a real viewer
(``xvfb-run -a``), with the untrained model at 256 px (random weights).

Stop today, continue tomorrow: a session saved in one dock and restored in a fresh one on
the same stack gives the same next propagation, with the same confirmed frames, prompt
layers and adapters, and without encoding the stack again (features come from disk).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

from napari_keys import redo, undo
from napari_sam_lora.layers import candidate_layers

pytestmark = pytest.mark.viewer

WAIT_MS = 180_000
N_FRAMES = 4


def idle(qtbot, widget):
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.is_running, timeout=WAIT_MS)


def dock(make_napari_viewer, tiny_model, image):
    """A fresh viewer showing ``image`` as "img", with a fresh real-engine dock."""
    from napari_sam_lora.annotator import SessionCache

    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA")
    widget.image_size = 256
    widget.set_model("untrained:sam2.1_hiera_tiny")

    def load(model, device, image_size):
        yield ("build", 1, 1)
        return tiny_model

    widget.sessions = SessionCache(load_model=load)
    widget.learning.repropagate_check.setChecked(False)  # one job at a time here
    return viewer, widget


def files_of(widget):
    """The dock's *Save and restore* section."""

    panel = widget.annotation_files
    assert panel is not None
    return panel


def click_and_box(widget, truth):
    """Object 1: a positive click on it and a negative one in a corner; object 2: a box."""
    widget.add_prompt_layers()
    points, shapes = widget.points_combo.layer, widget.shapes_combo.layer
    rows, cols = np.nonzero(truth[0])
    points.add(np.array([0.0, rows.mean(), cols.mean()]))
    points.feature_defaults = {"label": 0, "obj_id": 1}
    points.add(np.array([0.0, 4.0, 4.0]))
    shapes.feature_defaults = {"obj_id": 2}
    shapes.add_rectangles(np.array([[0, 40, 4], [0, 40, 20], [0, 60, 20], [0, 60, 4]], float))


def correct(viewer, out, frame, mask):
    viewer.dims.set_current_step(0, frame)
    user = out.data[frame].copy()
    user[user == 1] = 0
    user[mask] = 1
    rows, cols = np.nonzero(out.data[frame] != user)
    assert rows.size
    out.data_setitem((np.full(rows.size, frame), rows, cols), user[rows, cols])


def test_save_then_restore_in_a_fresh_dock_continues_the_same_work(
    make_napari_viewer, tiny_model, qtbot, notes, tmp_path, monkeypatch
):
    from types import SimpleNamespace

    from napari_sam_lora._qt import _annotation_files
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=N_FRAMES, shape=(64, 64))
    truth = truth == 1
    # day 1
    viewer, widget = dock(make_napari_viewer, tiny_model, image)
    click_and_box(widget, truth)
    assert widget.propagate()
    idle(qtbot, widget)
    out = viewer.layers["img masks"]
    correct(viewer, out, 2, truth[2])
    assert widget.learning.learn()
    idle(qtbot, widget)
    assert widget.learning.job.state == "finished" and notes == []
    files = files_of(widget)
    assert files.default_path().endswith("img.session.json")  # no file: the cwd
    correct(viewer, out, 3, np.roll(truth[3], 2, axis=0))  # an edit not learned from yet
    asked = []

    def dialog(parent, title, start, filters):
        asked.append(start)
        return str(tmp_path / "day1.session.json"), filters

    monkeypatch.setattr(_annotation_files, "QFileDialog", SimpleNamespace(getSaveFileName=dialog))
    files.save_button.click()  # the button only asks for the path
    assert asked == [files.default_path()]
    idle(qtbot, widget)
    assert files.job.state == "finished" and notes == [], files.status.text()
    for name in ("day1.session.json", "day1.session.npz", "day1.safetensors", "day1.json"):
        assert (tmp_path / name).is_file(), name
    assert "saved day1.session.json" in files.status.text()
    session = widget.sessions.session
    assert session.annotations.source(3, 1) == "correction"  # the stroke made it one
    assert (3, 1) in session.annotation.unlearned(3)  # …not learned from yet
    saved_labels = out.data.copy()
    saved_sources = {t: session.annotations.frame_sources(t) for t in range(N_FRAMES)}
    saved_confirmed = sorted(session.annotations.confirmed())
    (adapter,) = widget.learning.learner.adapter_names(1)
    adapters = sorted(widget.learning.learner.adapter_names())
    assert widget.propagate()  # what day 1 would do next
    idle(qtbot, widget)
    expected = out.data.copy()
    widget.shutdown()  # its learner's adapters leave the shared decoder

    # day 2: a fresh viewer and dock on the same stack
    viewer, widget = dock(make_napari_viewer, tiny_model, image.copy())
    files = files_of(widget)
    calls = tiny_model.predictor.encoder_calls
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    try:
        assert files.restore_session(tmp_path / "day1.session.json")  # the click makes
        idle(qtbot, widget)  # the missing layers; the worker's work is measured from here
    finally:
        timer.stop()
    gaps = np.diff(ticks)
    assert len(ticks) > 5 and gaps.max() < 0.25, f"max gap {gaps.max():.3f} s"
    assert files.job.state == "finished" and notes == [], files.status.text()
    assert files.status.text().startswith("restored day1")
    out = viewer.layers["img masks"]
    np.testing.assert_array_equal(out.data, saved_labels)
    session = widget.sessions.session
    assert session.annotation.undo_names == ["restore session"]  # ONE undo step
    undo(viewer, out)
    assert not out.data.any() and not session.annotations.confirmed()
    redo(viewer, out)
    np.testing.assert_array_equal(out.data, saved_labels)
    assert sorted(session.annotations.confirmed()) == saved_confirmed
    assert {t: session.annotations.frame_sources(t) for t in range(N_FRAMES)} == saved_sources
    assert session.annotations.source(2, 1) == "correction"
    assert session.annotations.source(3, 1) == "correction"  # the unlearned edit too
    # prompt layers rebuilt: the negative click stays negative, the box keeps its object
    points, shapes = widget.points_combo.layer, widget.shapes_combo.layer
    assert points.name == "img prompts" and shapes.name == "img boxes"
    assert list(points.features["label"]) == [1, 0]
    assert list(points.features["obj_id"]) == [1, 1]
    assert list(points.symbol) and str(points.symbol[1]).lower().endswith("x")
    assert list(shapes.features["obj_id"]) == [2] and list(shapes.shape_type) == ["rectangle"]
    np.testing.assert_allclose(points.data[1], [0, 4, 4])
    # adapters back
    learner = widget.learning.learner
    assert learner.adapter_names(1) == [adapter]
    assert sorted(learner.adapter_names()) == adapters
    row = {r.obj_id: r for r in widget.objects.rows}
    assert row[1].adapters == 1 and 2 in set(row[1].confirmed) and {1, 2} <= set(row)
    viewer.dims.set_current_step(0, 2)
    assert "object 1 correction" in widget.frame_info.text()

    assert widget.propagate()  # the same next propagation as day 1's
    idle(qtbot, widget)
    assert widget.job.state == "finished" and notes == []
    np.testing.assert_array_equal(out.data, expected)
    assert tiny_model.predictor.encoder_calls == calls  # every feature came from disk

    widget.learning.propose(1, 3)  # the adapters propose again
    idle(qtbot, widget)
    assert widget.learning.job.state == "finished" and notes == []
    proposed = sorted(x.metadata["napari_sam_lora"]["adapter"] for x in candidate_layers(viewer))
    assert proposed == adapters
    for layer in candidate_layers(viewer):
        viewer.layers.remove(layer)

    # restoring over work in progress: one undo step brings the work back
    assert files.restore_session(tmp_path / "day1")
    idle(qtbot, widget)
    assert files.job.state == "finished" and notes == []
    np.testing.assert_array_equal(out.data, saved_labels)
    undo(viewer, out)
    np.testing.assert_array_equal(out.data, expected)
    widget.shutdown()


def test_files_of_another_stack_are_refused_and_nothing_changes(
    tiny_widget, tiny_model, qtbot, notes, tmp_path
):
    from napari_sam_lora.engine.tracking.session import Session
    from napari_sam_lora.synthetic import make_stack

    viewer, widget = tiny_widget
    image, truth = make_stack("moving_disk", n_frames=N_FRAMES, shape=(64, 64))
    viewer.add_image(image, name="img")
    files = files_of(widget)
    same_shape = np.random.default_rng(1).integers(0, 255, image.shape).astype(image.dtype)
    Session(same_shape, model=tiny_model).save_state(tmp_path / "pixels")
    Session(image[:3], model=tiny_model).save_state(tmp_path / "frames")
    # cancelled while the model loads: nothing changes, the layers it made go again
    import threading

    from napari_sam_lora.annotator import SessionCache

    loading = threading.Event()

    def slow_load(model, device, image_size):
        loading.wait(30)
        yield ("build", 1, 1)
        return tiny_model

    widget.sessions = SessionCache(load_model=slow_load)
    Session(image, model=tiny_model).save_state(tmp_path / "mine")
    assert files.restore_session(tmp_path / "mine")
    assert files.cancel_button.isEnabled()
    assert len(viewer.layers) == 4  # the prompt and masks layers are made at the click
    files.cancel_button.click()
    loading.set()
    idle(qtbot, widget)
    assert files.job.state == "cancelled" and "cancelled" in files.status.text()
    assert [x.name for x in viewer.layers] == ["img"] and notes == []
    assert files.restore_session(tmp_path / "pixels")  # nothing yet: no layer is left over
    idle(qtbot, widget)
    assert files.job.state == "failed" and [x.name for x in viewer.layers] == ["img"]
    assert widget.sessions.session is None
    notes.clear()
    click_and_box(widget, truth == 1)
    assert widget.propagate()
    idle(qtbot, widget)
    assert widget.job.state == "finished"
    out = viewer.layers["img masks"]
    session = widget.sessions.session
    before = (out.data.copy(), len(out._undo_history), widget.points_combo.layer.data.copy())
    sources = session.annotations.frame_sources(0)
    job = files.job
    for path, message in (
        ("frames", "saved for another stack: 3 frames of 64×64, this image has 4"),
        ("missing", "no saved session at"),
    ):  # refused at once, on the main thread
        notes.clear()
        assert not files.restore_session(tmp_path / path)
        assert len(notes) == 1 and message in notes[0], notes
        assert files.status.text().startswith("error: ") and message in files.status.text()
    assert files.job is job  # no job was started
    # same geometry, other pixels: the worker reads the frames, refuses before any change
    notes.clear()
    assert files.restore_session(tmp_path / "pixels.session.json")
    idle(qtbot, widget)
    message = "saved for another stack of 4 frames of 64×64 (its pixels differ)"
    assert files.job.state == "failed" and len(notes) == 1 and message in notes[0], notes
    assert files.status.text().startswith("restore failed: ") and message in files.status.text()
    np.testing.assert_array_equal(out.data, before[0])
    assert len(out._undo_history) == before[1]
    np.testing.assert_array_equal(widget.points_combo.layer.data, before[2])
    assert widget.sessions.session is session and session.annotations.frame_sources(0) == sources


def test_adapters_left_by_an_earlier_save_are_not_the_sessions(tmp_path):
    import hashlib
    import json

    from napari_sam_lora.annotator.jobs import saved_adapters, session_base

    assert session_base(tmp_path / "a.session.json") == tmp_path / "a"
    assert session_base(tmp_path / "a.session.npz") == tmp_path / "a"
    assert session_base(tmp_path / "a.safetensors") == tmp_path / "a"
    assert session_base(tmp_path / "a") == tmp_path / "a"
    (tmp_path / "a.session.json").write_text('{"format": "napari-sam-lora-session"}')
    assert saved_adapters(tmp_path / "a") == (None, "")  # none saved
    (tmp_path / "a.safetensors").write_bytes(b"weights")
    (tmp_path / "a.json").write_text(json.dumps({"metadata": {"session_sha256": "0" * 64}}))
    path, why = saved_adapters(tmp_path / "a")
    assert path is None and "a.safetensors belongs to an earlier save" in why
    digest = hashlib.sha256((tmp_path / "a.session.json").read_bytes()).hexdigest()
    (tmp_path / "a.json").write_text(json.dumps({"metadata": {"session_sha256": digest}}))
    assert saved_adapters(tmp_path / "a") == (tmp_path / "a.safetensors", "")
    (tmp_path / "a.json").write_text(json.dumps({"metadata": {}}))  # from 'Save adapters…'
    assert saved_adapters(tmp_path / "a") == (tmp_path / "a.safetensors", "")
