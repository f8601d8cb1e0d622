"""Issue 9 through the dock's own buttons in a real viewer (run under ``xvfb-run -a``), with
the untrained model at 256 px (random weights): a confirmed frame is never overwritten.

Click on frame 0, Propagate, correct frame 5 in the masks layer, Learn from this frame
(automatic re-propagation on, the default), Propagate again: frame 5 is byte-identical to
the correction and SAM2 holds it as a conditioning frame.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.layers import candidate_layers

pytestmark = [pytest.mark.viewer, pytest.mark.slow]

WAIT_MS = 300_000
N_FRAMES = 8


@pytest.fixture
def loop_widget(tiny_widget):
    """The real-engine dock with its defaults (re-propagation after Learn / Accept on)."""
    return tiny_widget


def idle(qtbot, widget):
    """Wait until no job runs (Learn chains a re-propagation on the same slot)."""
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.is_running, timeout=WAIT_MS)


def test_a_correction_survives_learn_and_propagate(loop_widget, qtbot, notes):
    from napari_sam_lora.synthetic import make_stack

    viewer, widget = loop_widget
    image, truth = make_stack("decoy", n_frames=N_FRAMES, shape=(64, 64))
    viewer.add_image(image, name="img")
    widget.add_prompt_layers()
    rows, cols = np.nonzero(truth[0] == 1)
    widget.points_combo.layer.add(np.array([0.0, rows.mean(), cols.mean()]))
    widget.propagate_button.click()
    idle(qtbot, widget)
    assert widget.job.state == "finished" and notes == []
    out = viewer.layers["img masks"]
    # the prompted frame shows SAM2's mask of the click (not the fresh layer's zeros)
    assert widget.sessions.session.annotations.source(0, 1) == "prompt"
    assert (out.data[0] == 1).any()
    np.testing.assert_array_equal(out.data[0], widget.sessions.session.labels[0])

    viewer.dims.set_current_step(0, 5)
    user = out.data[5].copy()
    user[user == 1] = 0
    user[truth[5] == 1] = 1
    changed = np.nonzero(out.data[5] != user)
    assert changed[0].size
    out.data_setitem((np.full(changed[0].size, 5), *changed), user[changed])
    correction = out.data[5].copy()

    panel = widget.learning
    assert panel.repropagate_check.isChecked()  # the default
    panel.learn_button.click()
    idle(qtbot, widget)
    assert panel.job.state == "finished" and notes == []
    np.testing.assert_array_equal(out.data[5], correction)

    widget.propagate_button.click()
    idle(qtbot, widget)
    assert widget.job.state == "finished" and notes == []
    np.testing.assert_array_equal(out.data[5], correction)  # byte-identical
    session = widget.sessions.session
    assert session.annotations.source(5, 1) == "correction"
    assert 5 in session.conditioning_frames(1)
    viewer.dims.set_current_step(0, 5)
    assert "object 1 correction" in widget.frame_info.text()
    (row,) = [r for r in widget.objects.rows if r.obj_id == 1]
    assert {0, 5} <= set(row.confirmed) and row.adapters == 1

    # accept per frame: the confirmed frame 5 is skipped, frame 6 is written alone
    panel.repropagate_check.setChecked(False)
    panel.propose(4, 7)
    idle(qtbot, widget)
    (layer,) = candidate_layers(viewer)
    viewer.layers.selection.active = layer
    viewer.dims.set_current_step(0, 5)
    assert "estimated IoU" in widget.frame_info.text()
    assert not panel.accept_frame()
    assert "confirmed by you" in notes[-1]
    notes.clear()
    viewer.dims.set_current_step(0, 6)
    before = out.data.copy()
    assert panel.accept_frame()
    idle(qtbot, widget)
    assert panel.job.state == "finished" and notes == []
    assert layer in viewer.layers and 6 not in layer.metadata["napari_sam_lora"]["frames"]
    changed_frames = {int(t) for t in np.nonzero((out.data != before).any(axis=(1, 2)))[0]}
    assert changed_frames <= {6}
    assert session.annotations.source(6, 1) == "accepted"
    np.testing.assert_array_equal(out.data[5], correction)
