"""Auto-accept in the learning panel (issue 10 item 4), in a real viewer (``xvfb-run -a``).

The real engine runs with the untrained model at 256 px (random weights), so the
candidates' estimated IoUs mean nothing here: each test sets them (and the masks) on the
proposal, as the engine tests do, to decide which frames are above the bar.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_keys import redo, undo
from napari_sam_lora.layers import candidate_layers

pytestmark = pytest.mark.viewer

WAIT_MS = 180_000
N_FRAMES = 4


def idle(qtbot, widget):
    """Wait until no job runs (a proposal chains auto-accept, which may chain a
    re-propagation on the same slot)."""
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.is_running, timeout=WAIT_MS)


def learned(viewer, widget, qtbot):
    """Mask prompt on frame 0, Propagate, correct frame 2, Learn; return (masks, truth)."""
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=N_FRAMES, shape=(64, 64))
    truth = truth == 1
    viewer.add_image(image, name="img")
    prompt = np.zeros(truth.shape, np.int32)
    prompt[0] = truth[0]
    widget.mask_combo.set_layer(viewer.add_labels(prompt, name="prompt"))
    assert widget.propagate()
    idle(qtbot, widget)
    out = viewer.layers["img masks"]
    viewer.dims.set_current_step(0, 2)
    user = out.data[2].copy()
    user[user == 1] = 0
    user[truth[2]] = 1
    rows, cols = np.nonzero(out.data[2] != user)
    assert rows.size
    out.data_setitem((np.full(rows.size, 2), rows, cols), user[rows, cols])
    assert widget.learning.learn()
    idle(qtbot, widget)
    assert widget.learning.job.state == "finished"
    return out, truth


def chosen_proposals(monkeypatch, learner, masks, estimates):
    """Make ``learner.propose`` hand out its candidates with these masks and estimates."""
    real = learner.propose

    def propose(frames=None, obj_ids=None):
        return [
            replace(
                c,
                masks=np.stack([masks[f] for f in c.frames]),
                estimated_ious=np.array([estimates[f] for f in c.frames], np.float32),
            )
            for c in real(frames=frames, obj_ids=obj_ids)
        ]

    monkeypatch.setattr(learner, "propose", propose)


def shifted(mask, by=3):
    return np.roll(mask, by, axis=1)


def test_auto_accept_is_off_by_default_never_touches_confirmed_frames_and_is_one_undo_step(
    tiny_widget, qtbot, notes, monkeypatch
):
    viewer, widget = tiny_widget
    panel = widget.learning
    panel.repropagate_check.setChecked(False)
    out, truth = learned(viewer, widget, qtbot)
    session = widget.sessions.session
    assert not panel.auto_accept_check.isChecked()  # off by default
    assert panel.auto_accept_spin.value() == pytest.approx(0.90)
    assert "calibrated online" in panel.auto_accept_check.toolTip()
    assert "unreliable" in panel.auto_accept_check.toolTip()
    # every frame's proposal differs from the masks layer; all but frame 3 above the bar
    masks = {f: shifted(truth[f]) for f in range(N_FRAMES)}
    estimates = {0: 0.99, 1: 0.95, 2: 0.97, 3: 0.5}
    chosen_proposals(monkeypatch, panel.learner, masks, estimates)
    for f in range(N_FRAMES):
        assert not np.array_equal(out.data[f] == 1, masks[f]), f

    before = out.data.copy()
    history = session.annotation.undo_names
    assert panel.propose(0, 3)
    idle(qtbot, widget)
    assert panel.job.state == "finished" and notes == []
    (layer,) = candidate_layers(viewer)  # off: nothing accepted by itself
    np.testing.assert_array_equal(out.data, before)
    assert session.annotations.source(1, 1) in ("sam2", "adapter")
    viewer.layers.remove(layer)

    panel.auto_accept_check.setChecked(True)
    assert panel.propose(0, 3)
    idle(qtbot, widget)
    assert panel.job.state == "finished" and notes == []
    assert panel.status.text().startswith("auto-accepted 1 frame(s) (≈IoU ≥ 0.90)")
    # frames 0 (prompt) and 2 (correction) are the user's: untouched although above the bar
    for f in (0, 2):
        np.testing.assert_array_equal(out.data[f], before[f])
    assert session.annotations.source(0, 1) == "prompt"
    assert session.annotations.source(2, 1) == "correction"
    assert session.annotations.source(1, 1) == "auto_accepted"
    assert session.annotations.source(3, 1) != "auto_accepted"  # under the bar
    np.testing.assert_array_equal(out.data[1] == 1, masks[1])
    np.testing.assert_array_equal(out.data[3], before[3])
    (layer,) = candidate_layers(viewer)  # the accepted frame left the candidate layer
    assert 1 not in layer.metadata["napari_sam_lora"]["frames"]
    assert not (layer.data[1] != 0).any()
    viewer.dims.set_current_step(0, 1)
    assert "object 1 auto_accepted" in widget.frame_info.text()
    (row,) = [r for r in widget.objects.rows if r.obj_id == 1]
    assert 1 in row.confirmed

    assert session.annotation.undo_names[1:] == history  # ONE undo step
    undo(viewer, out)  # Ctrl+Z in the masks layer
    np.testing.assert_array_equal(out.data, before)
    assert session.annotations.source(1, 1) != "auto_accepted"
    redo(viewer, out)
    np.testing.assert_array_equal(out.data[1] == 1, masks[1])


def test_auto_accept_re_propagates_like_a_manual_accept(tiny_widget, qtbot, notes, monkeypatch):
    viewer, widget = tiny_widget
    panel = widget.learning
    panel.repropagate_check.setChecked(False)
    out, truth = learned(viewer, widget, qtbot)
    session = widget.sessions.session
    panel.repropagate_check.setChecked(True)
    panel.auto_accept_check.setChecked(True)
    panel.auto_accept_spin.setValue(0.8)
    masks = {f: shifted(truth[f]) for f in range(N_FRAMES)}
    chosen_proposals(monkeypatch, panel.learner, masks, dict.fromkeys(range(N_FRAMES), 0.85))
    kinds: list[str] = []
    widget.slot.add_listener(lambda kind, running: running and kinds.append(kind))
    before = out.data.copy()
    history = session.annotation.undo_names
    assert panel.propose(1, 3)
    qtbot.waitUntil(lambda: kinds[-1:] == ["auto_accept"], timeout=WAIT_MS)
    idle(qtbot, widget)
    # behaviour change (issue 17): the re-propagation runs in the auto-accept's own job and
    # undo step
    assert kinds == ["propose", "auto_accept"] and notes == []
    assert widget.job.state == "finished"
    assert session.annotation.undo_names[1:] == history
    np.testing.assert_array_equal(out.data[2], before[2])  # the correction stays
    for f in (1, 3):
        assert session.annotations.source(f, 1) == "auto_accepted"
        np.testing.assert_array_equal(out.data[f] == 1, masks[f])  # kept by re-propagation
