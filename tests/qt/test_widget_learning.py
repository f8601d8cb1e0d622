"""The learning panel in a real viewer (run under ``xvfb-run -a``): learn, propose, accept.

The real engine runs with the untrained model at 256 px, loaded once (``tiny_model``) and
handed to the widget's session cache; each test leaves the decoder without adapters.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_keys import undo
from napari_sam_lora.engine.annotation.corrections import merge_object
from napari_sam_lora.layers import candidate_layers

pytestmark = pytest.mark.viewer

WAIT_MS = 120_000
N_FRAMES = 4


@pytest.fixture
def viewer_widget(tiny_widget):
    """The real-engine dock; these tests check one job at a time, so automatic
    re-propagation after Learn / Accept (on by default) is off here: it is tested in
    test_correction_loop.py."""
    viewer, widget = tiny_widget
    widget.learning.repropagate_check.setChecked(False)
    return viewer, widget


def wait_done(qtbot, widget, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.is_running, timeout=timeout)


def propagated(viewer, widget, qtbot):
    """Segment the moving-disk stack from its ground truth on frame 0; return (masks, truth)."""
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=N_FRAMES, shape=(64, 64))
    viewer.add_image(image, name="img")
    prompt = np.zeros_like(truth)
    prompt[0] = truth[0] == 1
    widget.mask_combo.set_layer(viewer.add_labels(prompt, name="prompt"))
    assert widget.propagate()
    wait_done(qtbot, widget)
    assert widget.job.state == "finished"
    return viewer.layers["img masks"], truth == 1


def correct(viewer, out, frame: int, mask: np.ndarray) -> None:
    """Paint object 1 as ``mask`` on ``frame`` (shown first) of the masks layer (one undo step)."""
    viewer.dims.set_current_step(0, frame)
    user = out.data[frame].copy()
    user[user == 1] = 0
    user[mask] = 1
    rows, cols = np.nonzero(out.data[frame] != user)
    assert rows.size, "the correction must change the frame"
    out.data_setitem((np.full(rows.size, frame), rows, cols), user[rows, cols])


def learned(viewer, widget, qtbot, frame: int = 2):
    out, truth = propagated(viewer, widget, qtbot)
    correct(viewer, out, frame, truth[frame])
    panel = widget.learning
    panel.learn_button.click()
    wait_done(qtbot, widget)
    assert panel.job.state == "finished"
    return panel, out, truth


# -- the loop ---------------------------------------------------------------------------------
def test_learn_propose_accept_undo_reject(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    out, truth = propagated(viewer, widget, qtbot)
    panel = widget.learning
    correct(viewer, out, 2, truth[2])
    assert panel.learn()
    assert not widget.propagate_button.isEnabled() and not panel.learn_button.isEnabled()
    assert not widget.propagate()  # one job at a time
    wait_done(qtbot, widget)
    assert notes == [] and panel.job.state == "finished"
    (trained,) = panel.report.trained
    assert trained.steps >= 1 and len(panel.plot.losses) == trained.steps
    text = panel.status.text()
    assert "learned from frame 2" in text and f"{trained.steps} steps" in text
    assert "final IoU" in text and trained.stop_reason in text
    assert widget.propagate_button.isEnabled() and panel.propose_button.isEnabled()

    # behaviour change (issue 17): propose frames follow the user's choice, not the slider
    chosen = (panel.from_spin.value(), panel.to_spin.value())  # set with the image
    assert chosen[1] == 3
    viewer.dims.set_current_step(0, 3)
    assert (panel.from_spin.value(), panel.to_spin.value()) == chosen
    panel.from_spin.setValue(1)
    panel.propose_button.click()
    wait_done(qtbot, widget)
    (layer,) = candidate_layers(viewer)
    info = layer.metadata["napari_sam_lora"]
    assert info["frames"] == [1, 2, 3] and info["obj_id"] == 1
    # short name keeping the adapter id visible; drawn as an outline (issue 9)
    assert layer.name.startswith(f"cand {info['adapter']} 1-3 ≈") and layer.contour > 0
    assert viewer.layers.selection.active is layer
    masks = layer.data != 0
    before = out.data.copy()
    from napari.utils.key_bindings import KeyBinding

    viewer.keymap[KeyBinding.from_str("Shift-C")](viewer)  # Accept (Shift-A is Points')
    wait_done(qtbot, widget)  # the accept (and its re-propagation) is a job
    # behaviour change (issue 9): frame 2, corrected by the user, is kept
    assert layer in viewer.layers and layer.metadata["napari_sam_lora"]["frames"] == [2]
    np.testing.assert_array_equal(out.data[0], before[0])
    np.testing.assert_array_equal(out.data[2], before[2])
    for t in (1, 3):
        np.testing.assert_array_equal(out.data[t], merge_object(before[t], 1, masks[t]))
    assert (out.data != before).any() and "kept your frame(s) [2]" in panel.status.text()
    assert panel.job.state == "finished" and notes == []
    assert {1, 3} <= set(widget.sessions.session.annotations.confirmed_frames(1))
    after_first = out.data.copy()
    panel.overwrite_check.setChecked(True)  # now frame 2 too, explicitly
    viewer.keymap[KeyBinding.from_str("Shift-C")](viewer)
    wait_done(qtbot, widget)
    assert layer not in viewer.layers
    np.testing.assert_array_equal(out.data[2], merge_object(before[2], 1, masks[2]))
    assert viewer.layers.selection.active is out  # the next key has a sensible target
    assert panel.job.state == "finished" and notes == []
    undo(viewer, out)  # ONE Ctrl+Z per accept
    np.testing.assert_array_equal(out.data, after_first)
    undo(viewer, out)
    np.testing.assert_array_equal(out.data, before)
    panel.overwrite_check.setChecked(False)

    panel.propose(3, 3)
    wait_done(qtbot, widget)
    (layer,) = candidate_layers(viewer)
    history = widget.sessions.session.annotation.undo_names
    panel.reject_button.click()
    assert candidate_layers(viewer) == [] and "rejected" in panel.status.text()
    np.testing.assert_array_equal(out.data, before)
    assert widget.sessions.session.annotation.undo_names == history and notes == []


def test_training_keeps_the_viewer_responsive_and_cancel_keeps_the_adapter(
    viewer_widget, qtbot, notes
):
    from qtpy.QtCore import QTimer

    from napari_sam_lora.engine.learning.adapters import adapter_state

    viewer, widget = viewer_widget
    panel, out, truth = learned(viewer, widget, qtbot)
    learner = panel.learner
    (name,) = learner.pools[1].names
    before = {k: v.clone() for k, v in adapter_state(learner.decoder, name).items()}
    panel.preset_combo.setCurrentText("lit")  # slow: long enough to measure and cancel
    assert learner.settings.name == "lit"
    correct(viewer, out, 3, truth[3] | truth[1])
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    try:
        assert panel.learn()
        qtbot.waitUntil(lambda: len(panel.plot.losses) >= 5, timeout=WAIT_MS)
        assert panel.job.is_running
        panel.cancel_button.click()
        wait_done(qtbot, widget)
    finally:
        timer.stop()
    assert panel.job.state == "cancelled" and notes == []
    assert "previous weights" in panel.status.text()
    gaps = np.diff(ticks)
    assert len(ticks) > 20 and gaps.max() < 0.25, f"max gap {gaps.max():.3f} s"
    assert learner.pools[1].names == [name]
    after = adapter_state(learner.decoder, name)
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    assert widget.propagate_button.isEnabled() and panel.learn_button.isEnabled()


def test_shift_l_and_automatic_learning(viewer_widget, qtbot, notes):
    from napari.utils.key_bindings import KeyBinding

    viewer, widget = viewer_widget
    out, truth = propagated(viewer, widget, qtbot)
    panel = widget.learning
    correct(viewer, out, 1, truth[1])
    viewer.keymap[KeyBinding.from_str("Shift-E")](viewer)  # Learn (Shift-L is Shapes')
    assert panel.job is not None
    wait_done(qtbot, widget)
    assert panel.job.state == "finished" and panel.report.frame == 1
    first = panel.job
    panel.auto_check.setChecked(True)
    correct(viewer, out, 2, truth[2])  # a stroke ends: learning starts by itself
    qtbot.waitUntil(lambda: panel.job is not first, timeout=WAIT_MS)
    wait_done(qtbot, widget)
    assert panel.job.state == "finished" and panel.report.frame == 2 and notes == []


def test_save_and_load_adapters_and_a_damaged_file(viewer_widget, qtbot, notes, tmp_path):
    from napari_sam_lora.engine.learning.adapters import adapter_names, delete_adapter

    viewer, widget = viewer_widget
    panel, _, _ = learned(viewer, widget, qtbot)
    assert panel.save_adapters(str(tmp_path / "disk"))
    assert (tmp_path / "disk.safetensors").is_file() and "saved" in panel.status.text()
    learner = panel.learner
    (name,) = learner.pools[1].names
    delete_adapter(learner.decoder, name)
    learner.pools.clear()
    assert panel.load_adapters(str(tmp_path / "disk.safetensors"))  # on the worker
    wait_done(qtbot, widget)
    assert panel.job.state == "finished" and notes == []
    assert learner.pools[1].names == [name] and name in panel.status.text()
    assert panel.load_adapters(str(tmp_path / "disk.safetensors"))  # the same file again
    wait_done(qtbot, widget)
    assert panel.job.state == "finished" and notes == []
    assert learner.pools[1].names == [name]  # not duplicated
    assert panel.status.text().startswith("already loaded: ") and name in panel.status.text()
    (tmp_path / "disk.safetensors").write_bytes(b"garbage")
    before = adapter_names(learner.decoder)
    assert panel.load_adapters(str(tmp_path / "disk"))
    wait_done(qtbot, widget)
    assert panel.job.state == "failed" and "load failed" in panel.status.text()
    assert len(notes) == 1 and "disk.safetensors" in notes[0], notes
    assert adapter_names(learner.decoder) == before and learner.pools[1].names == [name]


# -- bad inputs: a specific notification, nothing changed -------------------------------------
def test_bad_inputs_have_specific_notifications(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    panel = widget.learning
    assert not panel.learn()
    assert "no image layer" in notes[-1]
    from napari_sam_lora.synthetic import make_stack

    viewer.add_image(make_stack("moving_disk", n_frames=N_FRAMES, shape=(64, 64))[0], name="x")
    assert not panel.learn()
    assert "no segmentation of 'x' here yet: propagate it first" in notes[-1]
    viewer.layers.clear()
    notes.clear()

    out, _ = propagated(viewer, widget, qtbot)
    before = out.data.copy()
    viewer.dims.set_current_step(0, 2)
    assert not panel.learn()
    assert len(notes) == 1 and "nothing to learn on frame 2" in notes[0], notes
    assert not panel.propose(0, 3)
    assert "no adapters yet" in notes[-1]
    viewer.layers.selection.active = out
    assert not panel.accept()
    assert "no candidate layer selected" in notes[-1]
    assert not panel.reject()
    assert "no candidate layer selected" in notes[-1]
    assert not panel.save_adapters("unused")
    assert "no adapters to save yet" in notes[-1]
    np.testing.assert_array_equal(out.data, before)
    assert panel.job is None and widget.propagate_button.isEnabled()
