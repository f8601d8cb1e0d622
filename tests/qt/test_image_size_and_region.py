"""Issue 18, item 4: the image size box and the region of a session, in a real viewer
(``xvfb-run -a``), with the untrained model at 256 px on a 3-frame 64×64 stack."""

from __future__ import annotations

import numpy as np
import pytest

from napari_keys import undo
from napari_sam_lora.annotator import SessionCache
from untrained import TEST_IMAGE_SIZE

pytestmark = pytest.mark.viewer

WAIT_MS = 180_000


def idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.slot.busy, timeout=WAIT_MS)


def stack(viewer, widget, qtbot):
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=3, shape=(64, 64), seed=4)
    viewer.add_image(image, name="img")
    widget.add_prompt_layers()
    qtbot.waitUntil(lambda: "img masks" in [x.name for x in viewer.layers], timeout=WAIT_MS)
    return truth == 1


def test_image_size_reaches_the_session_and_is_kept_with_an_annotation(tiny_widget, qtbot, notes):
    viewer, widget = tiny_widget
    asked = []
    load = widget.sessions._load

    def recording(model, device, image_size):
        asked.append(image_size)
        return (yield from load(model, device, image_size))

    widget.sessions = SessionCache(load_model=recording)
    assert widget.size_label.text().startswith(f"{TEST_IMAGE_SIZE} px: ~1 MB features")
    widget.size_combo.set_size(1024)
    assert (
        widget.size_label.text() == "1024 px: ~16 MB features per frame, slowest, finest "
        "(the model's own)"
    )
    assert widget.image_size is None  # the model's own
    widget.size_combo.set_size(512)
    assert "~4 MB" in widget.size_label.text() and widget.image_size == 512
    widget.size_combo.set_size(TEST_IMAGE_SIZE)
    truth = stack(viewer, widget, qtbot)
    rows, cols = np.nonzero(truth[1])
    widget.points_combo.layer.add(np.array([1.0, rows.mean(), cols.mean()]))
    widget.propagate_button.click()
    idle(qtbot, widget)
    assert widget.job.state == "finished", widget.status.text()
    assert asked == [TEST_IMAGE_SIZE]
    assert widget.sessions.session.model.image_size == TEST_IMAGE_SIZE
    # an annotation made at 256 px: another size is refused, the box goes back
    widget.size_combo.set_size(512)
    assert widget.image_size == TEST_IMAGE_SIZE
    assert "image size stays 256 px" in widget.status.text()
    assert len(notes) == 1


def test_region_writes_inside_only_and_maps_prompts_and_paint(tiny_widget, qtbot, notes):
    viewer, widget = tiny_widget
    truth = stack(viewer, widget, qtbot)
    rows, cols = np.nonzero(truth[1])
    r, c = int(rows.mean()), int(cols.mean())
    r0, c0 = max(r - 20, 0), max(c - 20, 0)
    region_layer = widget.draw_region()
    assert region_layer.name == "img region"
    region_layer.add_rectangles(np.array([[r0, c0], [r0 + 31, c0 + 31]], float))
    widget.region_check.setChecked(True)
    assert "region rows" in widget.status.text()
    points = widget.points_combo.layer
    out = viewer.layers["img masks"]

    # a click outside the region is refused before anything changes
    points.add(np.array([1.0, r0 + 40.0, c0 + 40.0]))
    assert not widget.propagate()
    assert "outside the region" in widget.status.text() and len(notes) == 1
    assert widget.sessions.session is None and not out.data.any()
    points.selected_data = {0}
    points.remove_selected()

    points.add(np.array([1.0, float(r), float(c)]))
    widget.propagate_button.click()
    idle(qtbot, widget)
    assert widget.job.state == "finished", widget.status.text()
    session = widget.sessions.session
    assert session.labels.shape == (3, 32, 32)
    inside = np.zeros(out.data.shape, bool)
    inside[:, r0 : r0 + 32, c0 : c0 + 32] = True
    assert not out.data[~inside].any()
    np.testing.assert_array_equal(out.data[:, r0 : r0 + 32, c0 : c0 + 32], session.labels)
    assert session.labels[1].any()

    # paint inside (frame 0): a correction at the region's place; outside: put back
    viewer.dims.set_current_step(0, 0)
    before = out.data.copy()
    with out.block_history():  # as napari's brush does: one paint event per stroke
        out.data_setitem(
            (
                np.array([0, 0, 0]),
                np.array([r0 + 2, r0 + 2, r0 + 40]),
                np.array([c0 + 2, c0 + 3, 2]),
            ),
            np.array([2, 2, 2]),
        )
    assert session.labels[0, 2, 2] == 2 and session.labels[0, 2, 3] == 2
    assert session.annotations.source(0, 2) == "correction"
    assert out.data[0, r0 + 40, 2] == before[0, r0 + 40, 2]
    assert "outside the region" in widget.status.text()
    np.testing.assert_array_equal(out.data[:, r0 : r0 + 32, c0 : c0 + 32], session.labels)

    # Ctrl+Z in the masks layer undoes the stroke (the model's history)
    undo(viewer, out)
    np.testing.assert_array_equal(out.data, before)
    assert (0, 2) not in session.annotations.confirmed()

    # unticking the region while this annotation exists is refused
    widget.region_check.setChecked(False)
    assert widget.region_check.isChecked()
    assert "the region stays" in widget.status.text()
