"""The *Whole fields* panel in a real viewer (``xvfb-run -a``): seeding many objects from a
Labels layer, Segment all, the instant preview, a division shown as tracks, and a restore
on a region ticking *only this region*.

The real engine runs with the untrained model (random weights) at 256 px on 3 frames of
64×64.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_keys import redo, undo
from napari_sam_lora.layers.masks_view import Region

pytestmark = pytest.mark.viewer

WAIT_MS = 240_000
N_FRAMES = 3


def idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.slot.busy, timeout=WAIT_MS)


def disk_image():
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=N_FRAMES, shape=(64, 64), seed=4)
    return image, truth == 1


def many_labels(count: int = 200) -> tuple[np.ndarray, list[int]]:
    """One 64×64 frame with ``count`` 4×4 squares, ids 5, 8, 11, … (not consecutive)."""
    plane = np.zeros((64, 64), np.int32)
    ids = [5 + 3 * k for k in range(count)]
    for k, obj in enumerate(ids):
        r, c = divmod(k, 16)
        plane[4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = obj
    return plane, ids


def test_seeding_200_objects_keeps_their_ids_and_one_ctrl_z_removes_them(tiny_widget, qtbot, notes):
    viewer, widget = tiny_widget
    image, _ = disk_image()
    viewer.add_image(image, name="img")
    plane, ids = many_labels()
    seeds = viewer.add_labels(plane, name="nuclei")
    fields = widget.fields
    assert fields.seed_layer is seeds
    viewer.dims.set_current_step(0, 1)
    fields.seed_button.click()
    idle(qtbot, widget)
    assert fields.job.state == "finished" and notes == [], fields.status.text()
    session = widget.sessions.session
    assert sorted(int(i) for i in session.object_ids) == ids
    out = viewer.layers["img masks"]
    np.testing.assert_array_equal(out.data[1], plane)  # the ids are kept
    assert not out.data[0].any() and not out.data[2].any()
    assert session.annotation.undo_names == ["seed 200 object(s) on frame 1"]
    assert "seeded 200 object(s) on frame 1" in fields.status.text()
    # the masks and own layers are not offered as seeds
    names = [fields.seed_combo.itemText(i) for i in range(fields.seed_combo.count())]
    assert names == ["nuclei"]
    # the object list stays usable: one refresh of 200 rows is quick
    start = time.perf_counter()
    widget.refresh_objects()
    assert time.perf_counter() - start < 2.0
    assert widget.objects.rowCount() == 201  # the 200 and the id box's 1
    assert "200 objects (200 prompt)" in widget.frame_info.text()
    undo(viewer, out)  # ONE Ctrl+Z
    assert not out.data.any()
    assert session.object_ids == []
    redo(viewer, out)
    np.testing.assert_array_equal(out.data[1], plane)


def test_segment_all_makes_objects_in_one_undo_step(tiny_widget, qtbot, notes):
    viewer, widget = tiny_widget
    image, _ = disk_image()
    viewer.add_image(image, name="img")
    viewer.dims.set_current_step(0, 0)
    fields = widget.fields
    loose = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    assert fields.segment_all({**loose, "min_area": 1, "max_overlap": 1.0})
    idle(qtbot, widget)
    assert fields.job.state == "finished" and notes == [], fields.status.text()
    found = fields.last.ids
    session = widget.sessions.session
    assert sorted(int(i) for i in session.object_ids) == sorted(found)
    text = fields.status.text()
    out = viewer.layers["img masks"]
    if not found:
        assert "found no object on frame 0" in text
        assert session.annotation.undo_names == []
        return
    assert f"found {len(found)} object(s) on frame 0" in text
    assert set(np.unique(out.data[0])) - {0} <= set(found)
    assert session.annotation.undo_names == ["segment all on frame 0"]
    undo(viewer, out)
    assert not out.data.any() and session.object_ids == []


def test_preview_shows_a_mask_after_a_click_and_changes_nothing(tiny_widget, qtbot, notes):
    viewer, widget = tiny_widget
    image, truth = disk_image()
    viewer.add_image(image, name="img")
    widget.add_prompt_layers()
    qtbot.waitUntil(lambda: "img masks" in [x.name for x in viewer.layers], timeout=WAIT_MS)
    viewer.dims.set_current_step(0, 1)
    rows, cols = np.nonzero(truth[1])
    fields = widget.fields
    widget.points_combo.layer.add(np.array([1.0, rows.mean(), cols.mean()]))
    qtbot.waitUntil(lambda: fields.preview_layer() is not None, timeout=WAIT_MS)
    idle(qtbot, widget)
    layer = fields.preview_layer()
    assert layer.name == "img preview" and layer.visible and not layer.editable
    assert layer.data.shape == (64, 64)
    assert fields.status.text().startswith("preview of object 1 on frame 1"), notes
    session = widget.sessions.session  # made by the preview, as Propagate would
    assert session is not None and session.annotation.undo_names == []
    assert session.annotations.confirmed() == [] and session.object_ids == []
    assert not viewer.layers["img masks"].data.any()
    assert viewer.layers.selection.active is widget.points_combo.layer  # still clicking
    viewer.dims.set_current_step(0, 2)  # another frame: hidden
    assert not layer.visible and not layer.data.any()
    viewer.dims.set_current_step(0, 1)
    widget.points_combo.layer.add(np.array([1.0, rows.mean() + 2, cols.mean()]))
    qtbot.waitUntil(lambda: layer.visible, timeout=WAIT_MS)
    idle(qtbot, widget)
    widget.propagate_button.click()  # hidden when Propagate runs
    idle(qtbot, widget)
    assert widget.job.state == "finished", widget.status.text()
    assert not layer.visible
    assert session.annotation.undo_names == ["propagate"] and notes == []


def test_split_records_the_lineage_and_the_tracks_show_it(tiny_widget, qtbot, notes, tmp_path):
    viewer, widget = tiny_widget
    image, truth = disk_image()
    viewer.add_image(image, name="img")
    widget.add_prompt_layers()
    qtbot.waitUntil(lambda: "img masks" in [x.name for x in viewer.layers], timeout=WAIT_MS)
    fields = widget.fields
    fields.preview_check.setChecked(False)
    rows, cols = np.nonzero(truth[0])
    widget.points_combo.layer.add(np.array([0.0, rows.mean(), cols.mean()]))
    widget.propagate_button.click()
    idle(qtbot, widget)
    assert widget.job.state == "finished", widget.status.text()
    session, out = widget.sessions.session, viewer.layers["img masks"]
    # refused before anything changes: no daughters painted yet
    viewer.dims.set_current_step(0, 1)
    notes.clear()
    assert not fields.split()
    assert len(notes) == 1 and "no daughters layer" in notes[0]
    out.data[1] = np.where(truth[1], 1, 0)  # the parent's mask, as if painted
    session.paint(1, np.nonzero(truth[1]), np.ones(int(truth[1].sum()), np.int32))
    widget.annotator.flush()
    daughters = fields.start_split()
    assert daughters.name == "img daughters" and daughters.selected_label == 2
    notes.clear()
    assert not fields.split()  # only label 1: not two daughters
    assert "exactly two painted daughters" in notes[0] and "holds 1 label" in notes[0]
    mid = int(np.nonzero(truth[1])[1].mean())
    plane = np.array(daughters.data)
    plane[:, mid:][plane[:, mid:] == 1] = 2
    daughters.data = plane
    names = list(session.annotation.undo_names)
    notes.clear()
    assert fields.split()
    idle(qtbot, widget)
    assert fields.job.state == "finished" and notes == [], fields.status.text()
    a, b = fields.last.daughters
    assert session.annotation.parents() == {a: 1, b: 1}
    assert "img daughters" not in [x.name for x in viewer.layers]
    assert session.annotation.undo_names[0] == "split object 1 on frame 1"
    assert len(session.annotation.undo_names) == len(names) + 1
    assert set(np.unique(out.data[1])) == {0, a, b}
    fields.tracks_check.setChecked(True)
    tracks = viewer.layers["img tracks"]
    assert tracks.graph == {a: [1], b: [1]}
    assert set(np.unique(tracks.data[:, 0])) == {1, a, b}
    # Propagate goes on with the daughters (their masks are kept, in no prompt layer)
    widget.propagate_button.click()
    idle(qtbot, widget)
    assert widget.job.state == "finished" and notes == [], widget.status.text()
    assert 1 not in out.data[2] and session.annotation.parents() == {a: 1, b: 1}
    qtbot.waitUntil(lambda: 2 in set(viewer.layers["img tracks"].data[:, 1]), timeout=5000)
    # the masks layer carries the lineage: saving it as CTC (the napari writer) keeps it
    assert out.metadata["lineage"] == {a: 1, b: 1}
    ctc = tmp_path / "img.ctc"
    out.save(str(ctc))
    lines = {int(r.split()[0]): r.split() for r in (ctc / "man_track.txt").read_text().splitlines()}
    assert lines[a][3] == "1" and lines[b][3] == "1"
    # Ctrl+Z of the propagation, then of the split: no lineage, no daughters
    undo(viewer, out)
    undo(viewer, out)
    assert session.annotation.parents() == {}
    assert set(np.unique(out.data[1])) == {0, 1}
    qtbot.waitUntil(lambda: viewer.layers["img tracks"].graph == {}, timeout=5000)


def test_restore_on_a_region_ticks_only_this_region(tiny_widget, qtbot, notes, tmp_path):
    viewer, widget = tiny_widget
    image, truth = disk_image()
    viewer.add_image(image, name="img")
    widget.add_prompt_layers()
    qtbot.waitUntil(lambda: "img masks" in [x.name for x in viewer.layers], timeout=WAIT_MS)
    widget.fields.preview_check.setChecked(False)
    rows, cols = np.nonzero(truth[1])
    r, c = int(rows.mean()), int(cols.mean())
    r0, c0 = int(np.clip(r - 16, 1, 31)), int(np.clip(c - 16, 1, 31))
    layer = widget.draw_region()
    layer.add_rectangles(np.array([[r0, c0], [r0 + 31, c0 + 31]], float))
    widget.region_check.setChecked(True)
    region = Region(r0, r0 + 32, c0, c0 + 32)
    widget.points_combo.layer.add(np.array([1.0, float(r), float(c)]))
    widget.propagate_button.click()
    idle(qtbot, widget)
    assert widget.job.state == "finished", widget.status.text()
    files = widget.annotation_files
    assert files.save_session(tmp_path / "r1.session.json")
    idle(qtbot, widget)
    assert files.job.state == "finished", files.status.text()
    assert widget.reset_all()  # nothing of the user's left: the box may be unticked
    widget.region_check.setChecked(False)
    assert not widget.region_check.isChecked() and notes == [], widget.status.text()
    assert files.restore_session(tmp_path / "r1.session.json")
    idle(qtbot, widget)
    assert files.job.state == "finished" and notes == [], files.status.text()
    assert widget.sessions.region == region
    assert widget.region_check.isChecked()  # ticked by the restore
    assert widget.annotator.selection.only_region
    assert "'only this region' is now ticked" in files.status.text()
    widget.propagate_button.click()  # goes on in the region, no refusal
    idle(qtbot, widget)
    assert widget.job.state == "finished" and notes == [], widget.status.text()


def test_seeds_of_a_stack_layer_are_kept_by_propagate_without_prompt_layers(
    tiny_widget, qtbot, notes
):
    viewer, widget = tiny_widget
    image, _ = disk_image()
    viewer.add_image(image, name="img")
    plane, ids = many_labels(3)
    stack = np.zeros((N_FRAMES, 64, 64), np.int32)
    stack[1] = plane
    stack[2, :4, :4] = 99  # another frame's label: not seeded
    seeds = viewer.add_labels(stack, name="nuclei")
    viewer.dims.set_current_step(0, 1)
    fields = widget.fields
    assert fields.seed(seeds)
    idle(qtbot, widget)
    assert fields.job.state == "finished" and notes == [], fields.status.text()
    session = widget.sessions.session
    assert sorted(session.object_ids) == ids
    widget.propagate_button.click()  # no prompt layer: the seeds are the prompts
    idle(qtbot, widget)
    assert widget.job.state == "finished" and notes == [], widget.status.text()
    assert sorted(session.annotations.confirmed()) == [(1, i) for i in ids]
    assert session.annotation.undo_names[0] == "propagate"
    undo(viewer, viewer.layers["img masks"])
    undo(viewer, viewer.layers["img masks"])
    assert session.object_ids == [] and session.prompts == []
