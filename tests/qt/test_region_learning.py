"""Propose / Accept / Auto-accept and Save / Restore session with a region, in a real viewer
(``xvfb-run -a``), with the untrained model at 256 px on a 4-frame 64×64 stack.

A session made on a region has frames of the region's shape; its candidate layers have the
image's shape (masks at the region's place, nothing outside), accepting reads them back
cropped, and a saved session comes back on the same region.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_keys import undo
from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.layers import (
    add_candidate_layer,
    candidate_layers,
    candidate_of,
    stack_from_image_layer,
)
from napari_sam_lora.layers.masks_view import Region
from napari_sam_lora.layers.prompts import region_from_shapes
from untrained import TEST_IMAGE_SIZE, TEST_MODEL

pytestmark = pytest.mark.viewer

WAIT_MS = 240_000
N_FRAMES = 4
SIZE = 32  # the region's side


def idle(qtbot, widget):
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.is_running, timeout=WAIT_MS)


def region_session(viewer, widget, qtbot, image, truth):
    """Draw a 32×32 region around the object, tick it, click on frame 1, Propagate."""
    viewer.add_image(image, name="img")
    widget.add_prompt_layers()
    qtbot.waitUntil(lambda: "img masks" in [x.name for x in viewer.layers], timeout=WAIT_MS)
    rows, cols = np.nonzero(truth[1])
    r, c = int(rows.mean()), int(cols.mean())
    r0 = int(np.clip(r - SIZE // 2, 1, image.shape[1] - SIZE))
    c0 = int(np.clip(c - SIZE // 2, 1, image.shape[2] - SIZE))
    layer = widget.draw_region()
    layer.add_rectangles(np.array([[r0, c0], [r0 + SIZE - 1, c0 + SIZE - 1]], float))
    widget.region_check.setChecked(True)
    region = Region(r0, r0 + SIZE, c0, c0 + SIZE)
    assert widget.annotator.region() == region
    widget.points_combo.layer.add(np.array([1.0, float(r), float(c)]))
    widget.propagate_button.click()
    idle(qtbot, widget)
    assert widget.job.state == "finished", widget.status.text()
    assert widget.sessions.session.labels.shape == (N_FRAMES, SIZE, SIZE)
    return region


def correct(viewer, out, region, frame, truth):
    """Paint the truth of object 1 inside the region on ``frame`` (one stroke)."""
    viewer.dims.set_current_step(0, frame)
    rows, cols = region.slices
    plane = np.array(out.data[frame, rows, cols])
    user = plane.copy()
    user[user == 1] = 0
    user[truth[frame, rows, cols]] = 1
    user[2:6, 2:6] = 1  # a change SAM2's random weights cannot have made
    changed = np.nonzero(user != plane)
    assert changed[0].size
    with out.block_history():  # as napari's brush does: one paint event per stroke
        out.data_setitem(
            (
                np.full(changed[0].size, frame),
                changed[0] + region.r0,
                changed[1] + region.c0,
            ),
            user[changed],
        )


def agree(out, session, region):
    """The masks layer shows the session inside the region and nothing outside."""
    inside = np.zeros(out.data.shape, bool)
    inside[(slice(None), *region.slices)] = True
    assert not np.asarray(out.data)[~inside].any()
    np.testing.assert_array_equal(
        np.asarray(out.data)[(slice(None), *region.slices)], session.labels
    )


def test_candidate_layers_place_and_crop_the_region():
    """Qt-free: a region candidate is drawn at the region's offset and read back cropped;
    read on another region it is refused."""
    viewer = ViewerModel()
    image = viewer.add_image(np.zeros((3, 20, 24), np.float32), name="img")
    source = stack_from_image_layer(image)
    region = Region(4, 12, 6, 16)
    from napari_sam_lora.engine.learning.learner import Candidate

    masks = np.zeros((2, 8, 10), bool)
    masks[:, 1:5, 2:7] = True
    candidate = Candidate(3, "obj3_a0", [0, 2], masks, np.array([0.9, 0.8], np.float32))
    layer = add_candidate_layer(viewer, image, source, candidate, region)
    assert layer.data.shape == (3, 20, 24)
    assert layer.metadata["napari_sam_lora"]["region"] == [4, 12, 6, 16]
    expected = np.zeros((3, 20, 24), bool)
    expected[[0, 2], 5:9, 8:13] = True
    np.testing.assert_array_equal(layer.data != 0, expected)
    layer.data[2, 0, 0] = 3  # touched up outside the region: not the session's
    back = candidate_of(layer, source, region)
    np.testing.assert_array_equal(back.masks, masks)
    with pytest.raises(PromptError, match=r"was proposed on the region rows 4–11.*whole frames"):
        candidate_of(layer, source, None)
    with pytest.raises(PromptError, match="expected"):
        add_candidate_layer(viewer, image, source, candidate, None)  # region-shaped masks


def test_propose_accept_and_auto_accept_on_a_region(tiny_widget, qtbot, notes):
    from napari_sam_lora.synthetic import make_stack

    viewer, widget = tiny_widget
    image, truth = make_stack("moving_disk", n_frames=N_FRAMES, shape=(64, 64), seed=4)
    truth = truth == 1
    region = region_session(viewer, widget, qtbot, image, truth)
    out = viewer.layers["img masks"]
    session = widget.sessions.session
    correct(viewer, out, region, 0, truth)
    assert session.annotations.source(0, 1) == "correction"
    agree(out, session, region)

    panel = widget.learning
    panel.repropagate_check.setChecked(False)  # one job at a time here
    assert panel.learn(0)
    idle(qtbot, widget)
    assert panel.job.state == "finished" and notes == [], panel.status.text()

    assert panel.propose(0, N_FRAMES - 1)
    idle(qtbot, widget)
    assert panel.job.state == "finished" and notes == [], panel.status.text()
    layers = candidate_layers(viewer)
    assert layers and "candidate layer(s)" in panel.status.text()
    outside = np.ones(image.shape, bool)
    outside[(slice(None), *region.slices)] = False
    for layer in layers:
        assert layer.data.shape == image.shape
        assert not np.asarray(layer.data)[outside].any()
        assert layer.metadata["napari_sam_lora"]["region"] == [
            region.r0,
            region.r1,
            region.c0,
            region.c1,
        ]

    # Accept frame 2 (not confirmed), touched up: inside the region only
    (layer,) = [x for x in layers if 2 in x.metadata["napari_sam_lora"]["frames"]][:1]
    cand = np.array(layer.data)
    cand[2] = 0
    cand[2, region.r0 + 3 : region.r0 + 11, region.c0 + 4 : region.c0 + 12] = 1
    cand[2, 0, 0] = 1  # outside the region: never reaches the session
    layer.data = cand.copy()
    expected = (cand[2] != 0) & ~outside[2]  # the accept clears the layer's frame 2
    viewer.layers.selection.active = layer
    viewer.dims.set_current_step(0, 2)
    before = np.array(out.data)
    assert panel.accept_frame()
    idle(qtbot, widget)
    assert panel.job.state == "finished" and notes == [], panel.status.text()
    assert session.annotations.source(2, 1) == "accepted"
    agree(out, session, region)
    np.testing.assert_array_equal(out.data[2] == 1, expected)
    changed = {int(t) for t in np.nonzero((np.asarray(out.data) != before).any(axis=(1, 2)))[0]}
    assert changed == {2}

    # one Ctrl+Z undoes it
    undo(viewer, out)
    np.testing.assert_array_equal(out.data, before)
    assert session.annotations.source(2, 1) != "accepted"
    agree(out, session, region)

    # auto-accept the proposal (a tiny bar: every frame you did not confirm)
    confirmed = {f for f, obj in session.annotations.confirmed() if obj == 1}
    assert panel.auto_accept(bar=1e-6)
    idle(qtbot, widget)
    assert panel.job.state == "finished" and notes == [], panel.status.text()
    assert "auto-accepted" in panel.status.text()
    accepted = [t for t in range(N_FRAMES) if session.annotations.source(t, 1) == "auto_accepted"]
    assert accepted and not set(accepted) & confirmed
    agree(out, session, region)
    for layer in candidate_layers(viewer):
        assert not set(accepted) & set(layer.metadata["napari_sam_lora"]["frames"])


def fresh_dock(make_napari_viewer, tiny_model):
    from napari_sam_lora.annotator import SessionCache

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA")
    widget.image_size = TEST_IMAGE_SIZE
    widget.set_model(TEST_MODEL)

    def load(model, device, image_size):
        yield ("build", 1, 1)
        return tiny_model

    widget.sessions = SessionCache(load_model=load)
    return viewer, widget


def test_save_then_restore_comes_back_on_the_same_region(
    make_napari_viewer, tiny_model, qtbot, notes, tmp_path
):
    import shutil

    from napari_sam_lora.engine.tracking.session import Session
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=N_FRAMES, shape=(64, 64), seed=4)
    truth = truth == 1
    # day 1: a region session, a correction, saved
    viewer, widget = fresh_dock(make_napari_viewer, tiny_model)
    region = region_session(viewer, widget, qtbot, image, truth)
    out = viewer.layers["img masks"]
    correct(viewer, out, region, 0, truth)
    files = widget.annotation_files
    assert files.save_session(tmp_path / "r1.session.json")
    idle(qtbot, widget)
    assert files.job.state == "finished" and notes == [], files.status.text()
    dock = json.loads((tmp_path / "r1.dock.json").read_text())
    assert dock["region"] == {"rows": [region.r0, region.r1], "cols": [region.c0, region.c1]}
    assert "r1.dock.json" in files.status.text()
    saved = np.array(out.data)
    session = widget.sessions.session
    confirmed = sorted(session.annotations.confirmed())
    clicks = np.array(widget.points_combo.layer.data)
    widget.shutdown()

    # day 2: a fresh dock, no region drawn or ticked
    viewer, widget = fresh_dock(make_napari_viewer, tiny_model)
    viewer.add_image(image.copy(), name="img")
    files = widget.annotation_files
    assert files.restore_session(tmp_path / "r1.session.json")
    idle(qtbot, widget)
    assert files.job.state == "finished" and notes == [], files.status.text()
    text = files.status.text()
    assert text.startswith(f"restored r1 on the region {region.describe()}"), text
    assert "tick 'only this region'" in text
    assert widget.sessions.region == region
    session = widget.sessions.session
    assert session.labels.shape == (N_FRAMES, SIZE, SIZE)
    assert sorted(session.annotations.confirmed()) == confirmed
    out = viewer.layers["img masks"]
    np.testing.assert_array_equal(out.data, saved)
    agree(out, session, region)
    np.testing.assert_allclose(widget.points_combo.layer.data, clicks)  # at their place
    region_layer = viewer.layers["img region"]
    source = stack_from_image_layer(viewer.layers["img"])
    assert region_from_shapes(region_layer, source, viewer.layers["img"]) == region
    # one undo step brings back what was there before
    assert session.annotation.undo_names == ["restore session"]

    # tick the region: the next Propagate goes on in it
    widget.region_check.setChecked(True)
    assert widget.region_check.isChecked() and notes == [], widget.status.text()
    assert widget.propagate()
    idle(qtbot, widget)
    assert widget.job.state == "finished" and notes == [], widget.status.text()
    assert widget.sessions.session is session
    agree(out, session, region)

    # refused before anything changes: the region's place is not recorded …
    for suffix in (".session.json", ".session.npz"):
        shutil.copy(tmp_path / f"r1{suffix}", tmp_path / f"nodock{suffix}")
    # … or a file of whole frames while this annotation was made on the region
    Session(image, model=tiny_model).save_state(tmp_path / "whole")
    job, before = files.job, np.array(out.data)
    for path, message in (
        ("nodock", "where that region lies is not recorded (nodock.dock.json is missing)"),
        ("whole", "cannot restore whole.session.json (saved on whole frames): the region stays"),
    ):
        notes.clear()
        assert not files.restore_session(tmp_path / path)
        assert len(notes) == 1 and message in notes[0], notes
        assert files.status.text().startswith("error: ")
    assert files.job is job  # no job was started
    np.testing.assert_array_equal(out.data, before)
    assert widget.sessions.session is session
    widget.shutdown()
