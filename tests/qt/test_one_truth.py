"""Issue 17's scenarios in a real viewer (``xvfb-run -a``), through the dock's buttons and
napari's own Ctrl+Z: after each, no frame is confirmed that the user did not make, the masks
layer equals the annotation model, and one Ctrl+Z undoes one action.

The real engine runs with the untrained model (random weights) at 256 px on a small
moving-disk stack.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_keys import undo
from napari_sam_lora.layers import candidate_layers

pytestmark = pytest.mark.viewer

WAIT_MS = 180_000
N_FRAMES = 6


def idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.slot.busy, timeout=WAIT_MS)


def clicked(viewer, widget, qtbot):
    """A click on the disk on frame 2 and a Propagate (both ways); returns truth masks."""
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=N_FRAMES, shape=(64, 64), seed=4)
    viewer.add_image(image, name="img")
    widget.add_prompt_layers()
    qtbot.waitUntil(lambda: "img masks" in [x.name for x in viewer.layers], timeout=WAIT_MS)
    rows, cols = np.nonzero(truth[2] == 1)
    widget.points_combo.layer.add(np.array([2.0, rows.mean(), cols.mean()]))
    widget.direction_combo.setCurrentText("both")
    widget.propagate_button.click()
    idle(qtbot, widget)
    assert widget.job.state == "finished", widget.status.text()
    return truth == 1


def confirmed(widget) -> dict:
    session = widget.sessions.session
    return {k: session.annotations.source(*k) for k in session.annotations.confirmed()}


def check(viewer, widget, user_made: dict) -> None:
    """Only what the user made is confirmed, and the layer shows the model."""
    assert confirmed(widget) == user_made
    session = widget.sessions.session
    np.testing.assert_array_equal(viewer.layers["img masks"].data, session.labels)


def paint(viewer, out, frame, mask, obj_id=1):
    """A stroke: object ``obj_id`` becomes ``mask`` on ``frame`` (napari's paint event)."""
    viewer.dims.set_current_step(0, frame)
    user = out.data[frame].copy()
    user[user == obj_id] = 0
    user[mask] = obj_id
    rows, cols = np.nonzero(out.data[frame] != user)
    out.data_setitem((np.full(rows.size, frame), rows, cols), user[rows, cols])


def test_undo_of_a_propagation_then_propagate_invents_no_correction(tiny_widget, qtbot, notes):
    viewer, widget = tiny_widget
    clicked(viewer, widget, qtbot)
    first = viewer.layers["img masks"].data.copy()
    check(viewer, widget, {(2, 1): "prompt"})
    undo(viewer, viewer.layers["img masks"])  # ONE Ctrl+Z: the whole Propagate
    assert not viewer.layers["img masks"].data.any()
    check(viewer, widget, {})
    widget.propagate_button.click()
    idle(qtbot, widget)
    check(viewer, widget, {(2, 1): "prompt"})
    np.testing.assert_array_equal(viewer.layers["img masks"].data, first)
    widget.propagate_button.click()  # nothing changed: nothing changes
    idle(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["img masks"].data, first)
    assert notes == []


def test_cancel_then_propagate_locks_nothing(tiny_widget, qtbot, notes, monkeypatch):
    viewer, widget = tiny_widget
    clicked(viewer, widget, qtbot)
    before = viewer.layers["img masks"].data.copy()
    session = widget.sessions.session
    gate, original = threading.Event(), session._run_pass

    def slow(sam_pass, compare=False):  # hold the job after its second frame
        for n, item in enumerate(original(sam_pass, compare), 1):
            yield item
            if n == 2:
                gate.wait(30)

    monkeypatch.setattr(session, "_run_pass", slow)
    widget.points_combo.layer.add(np.array([4.0, 30.0, 30.0]))  # a change: it re-tracks
    widget.propagate_button.click()
    qtbot.waitUntil(lambda: widget.progress.format().startswith("frame 2 of"), timeout=WAIT_MS)
    widget.cancel_button.click()
    gate.set()
    idle(qtbot, widget)
    assert widget.job.state == "cancelled"
    np.testing.assert_array_equal(viewer.layers["img masks"].data, before)  # no trace
    check(viewer, widget, {(2, 1): "prompt"})
    monkeypatch.undo()
    widget.propagate_button.click()
    idle(qtbot, widget)
    assert set(confirmed(widget)) == {(2, 1), (4, 1)}  # the two clicks, nothing else
    assert set(confirmed(widget).values()) == {"prompt"} and notes == []


def test_reset_object_undo_then_propagate_confirms_nothing_new(tiny_widget, qtbot, notes):
    viewer, widget = tiny_widget
    clicked(viewer, widget, qtbot)
    out = viewer.layers["img masks"]
    before = out.data.copy()
    widget.reset_object_button.click()
    assert not out.data.any()
    check(viewer, widget, {})
    assert len(widget.points_combo.layer.data) == 0
    undo(viewer, out)  # ONE Ctrl+Z: the masks, the annotation and the click come back
    np.testing.assert_array_equal(out.data, before)
    check(viewer, widget, {(2, 1): "prompt"})
    assert len(widget.points_combo.layer.data) == 1
    widget.propagate_button.click()  # nothing changed: nothing changes
    idle(qtbot, widget)
    check(viewer, widget, {(2, 1): "prompt"})
    np.testing.assert_array_equal(out.data, before)
    assert notes == []


def test_learn_cancel_accept_and_their_undo(tiny_widget, qtbot, notes, monkeypatch):
    viewer, widget = tiny_widget
    truth = clicked(viewer, widget, qtbot)
    out = viewer.layers["img masks"]
    panel = widget.learning
    panel.repropagate_check.setChecked(True)

    # a stroke is a correction: one action of its own
    paint(viewer, out, 4, truth[4])
    check(viewer, widget, {(2, 1): "prompt", (4, 1): "correction"})
    painted = out.data[4].copy()

    # Cancel a Learn: the edit waits to be learned, the adapter keeps its weights
    from napari_sam_lora.engine.learning import training

    gate, original = threading.Event(), training.train_adapter

    def held(*args, **kwargs):  # stop after the first step until the test cancels
        steps = original(*args, **kwargs)
        first = next(steps)
        yield first
        gate.wait(30)
        return (yield from steps)

    monkeypatch.setattr("napari_sam_lora.engine.learning.learner.train_adapter", held)
    viewer.dims.set_current_step(0, 4)
    panel.learn_button.click()
    qtbot.waitUntil(lambda: panel.progress.value() >= 1, timeout=WAIT_MS)
    panel.cancel_button.click()
    gate.set()
    idle(qtbot, widget)
    assert panel.job.state == "cancelled" and "waits to be learned" in panel.status.text()
    assert widget.sessions.session.annotation.unlearned(4) == [(4, 1)]
    monkeypatch.undo()
    panel.learn_button.click()  # the same frame again: it learns
    idle(qtbot, widget)
    assert panel.job.state == "finished", panel.status.text()
    assert "learned from frame 4" in panel.status.text()
    check(viewer, widget, {(2, 1): "prompt", (4, 1): "correction"})
    np.testing.assert_array_equal(out.data[4], painted)  # re-propagation kept the stroke

    # Accept: one job, one Ctrl+Z; the painted frame is never touched
    panel.propose(0, N_FRAMES - 1)
    idle(qtbot, widget)
    (layer,) = candidate_layers(viewer)
    viewer.layers.selection.active = layer
    before = out.data.copy()
    panel.accept_button.click()
    idle(qtbot, widget)
    accepted = {k for k, v in confirmed(widget).items() if v == "accepted"}
    assert accepted and (4, 1) not in accepted and (2, 1) not in accepted
    np.testing.assert_array_equal(out.data[4], painted)
    np.testing.assert_array_equal(out.data, widget.sessions.session.labels)
    undo(viewer, out)  # ONE Ctrl+Z undoes the accept and its re-propagation
    np.testing.assert_array_equal(out.data, before)
    check(viewer, widget, {(2, 1): "prompt", (4, 1): "correction"})
    undo(viewer, out)  # the next one: the Learn's re-propagation
    undo(viewer, out)  # …and then the stroke
    check(viewer, widget, {(2, 1): "prompt"})
    widget.propagate_button.click()
    idle(qtbot, widget)
    check(viewer, widget, {(2, 1): "prompt"})
    row = {r.obj_id: r for r in widget.objects.rows}[1]
    assert row.confirmed == (2,)
    assert notes == []


def test_repropagation_keeps_to_the_frame_range(tiny_widget, qtbot, notes):
    viewer, widget = tiny_widget
    truth = clicked(viewer, widget, qtbot)
    out = viewer.layers["img masks"]
    widget.from_spin.setValue(1)
    widget.to_spin.setValue(3)
    tracked = []
    session = widget.sessions.session
    original = session.repropagate_steps

    def record(*args, **kwargs):
        report = yield from original(*args, **kwargs)
        tracked.extend(report.tracked)
        return report

    session.repropagate_steps = record
    paint(viewer, out, 2, truth[2])
    viewer.dims.set_current_step(0, 2)
    widget.learning.learn_button.click()
    idle(qtbot, widget)
    assert widget.learning.job.state == "finished", widget.learning.status.text()
    assert tracked and set(tracked) <= {1, 2, 3}
    assert "of 6" not in widget.learning.progress.format()
    assert notes == []


def test_closing_the_dock_during_learn_leaves_no_error(tiny_widget, qtbot, notes):
    viewer, widget = tiny_widget
    truth = clicked(viewer, widget, qtbot)
    paint(viewer, viewer.layers["img masks"], 4, truth[4])
    viewer.dims.set_current_step(0, 4)
    widget.learning.learn_button.click()
    qtbot.waitUntil(lambda: widget.learning.progress.value() >= 1, timeout=WAIT_MS)
    widget.parent().title.close_button.click()
    qtbot.waitUntil(lambda: not widget.slot.busy, timeout=WAIT_MS)
    qtbot.wait(200)
    assert not any("No adapter named" in n for n in notes), notes
