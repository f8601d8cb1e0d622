"""Issue 12 through the dock in a real viewer (run under ``xvfb-run -a``): dock lifecycle,
negative clicks and objects, layout at 1366×768, shortcuts with every layer type active,
status line, frame counts. A fake session keeps these fast (see ``test_widget.py``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pytest
from napari.utils.key_bindings import KeyBinding
from test_widget import (
    WAIT_MS,
    add_image_and_point,
    image_stack,
    use_fake,
    wait_done,
)

from napari_keys import press
from napari_sam_lora._qt._shortcuts import SHORTCUTS, clashes, key_of
from napari_sam_lora._qt.widget import SamLoraWidget, live_widgets

pytestmark = pytest.mark.viewer


@dataclass
class MouseEvent:
    """A vispy mouse event as napari's own mouse-binding tests simulate it."""

    type: str
    position: tuple
    modifiers: list = field(default_factory=list)
    is_dragging: bool = False
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    view_direction: list | None = None
    up_direction: list | None = None
    dims_displayed: list = field(default_factory=lambda: [1, 2])


def click(layer, position, modifiers=()) -> None:
    """A mouse click on ``layer`` at data ``position`` through napari's mouse callbacks."""
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    world = tuple(layer.data_to_world(np.asarray(position, float)))
    for kind, callbacks in (
        ("mouse_press", mouse_press_callbacks),
        ("mouse_release", mouse_release_callbacks),
    ):
        event = MouseEvent(kind, world, list(modifiers))
        callbacks(layer, ReadOnlyWrapper(event, exceptions=("handled",)))


# -- 1. dock lifecycle --------------------------------------------------------------------------
def test_dock_close_button_cancels_unbinds_releases_and_reopens_once(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    gate = threading.Event()
    use_fake(widget, gate=gate, open_frames=1)
    add_image_and_point(viewer, widget)
    assert widget.propagate()
    qtbot.waitUntil(lambda: widget.progress.format() == "frame 1 of 4", timeout=WAIT_MS)
    job = widget.job
    ours = {KeyBinding.from_str(s.key) for s in SHORTCUTS}
    assert ours <= set(viewer.keymap)
    widget.parent().title.close_button.click()  # the dock's ✕
    gate.set()
    qtbot.waitUntil(lambda: not job.is_running, timeout=WAIT_MS)
    assert job.state == "cancelled" and notes == []
    assert not ours & set(viewer.keymap)  # no key bindings left
    assert widget.sessions.session is None and widget.sessions.model is None
    assert widget not in live_widgets()
    press(viewer, key_of("propagate"))  # nothing runs in the hidden widget
    assert widget.job is job and not viewer.layers["img masks"].data[1:].any()

    _, again = viewer.window.add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA")
    assert isinstance(again, SamLoraWidget) and again is not widget
    assert live_widgets() == [again]
    assert ours <= set(viewer.keymap)
    viewer.window.remove_dock_widget(again)  # the API napari plugins use
    assert live_widgets() == [] and not ours & set(viewer.keymap)


# -- 2. prompts and objects ---------------------------------------------------------------------
def test_negative_clicks_reach_the_engine_as_label_0_and_look_different(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    sessions = use_fake(widget)
    viewer.add_image(image_stack(), name="img")
    widget.add_prompt_layers()
    points = widget.points_combo.layer
    assert points.mode == "add"
    click(points, (0, 10, 10))
    click(points, (0, 20, 20), modifiers=["Shift"])  # Shift+click: negative
    widget.negative_check.setChecked(True)  # the toggle (Shift-N)
    click(points, (0, 5, 25))
    widget.negative_check.setChecked(False)
    click(points, (0, 25, 5))
    assert list(points.features["label"]) == [1, 0, 0, 1]
    symbols = [str(s) for s in points.symbol]
    assert symbols[0] == symbols[3] != symbols[1] == symbols[2]
    assert widget.propagate()
    wait_done(qtbot, widget)
    (prompt,) = sessions[0].prompts
    np.testing.assert_array_equal(prompt.labels, [1, 0, 0, 1])


def test_object_colours_match_the_masks_layer_and_the_object_list(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    use_fake(widget)
    add_image_and_point(viewer, widget, point=(0, 10, 10))
    assert widget.new_object() == 2
    widget.points_combo.layer.add(np.array([0.0, 20, 20]))
    assert list(widget.points_combo.layer.features["obj_id"]) == [1, 2]
    assert [r.obj_id for r in widget.objects.rows] == [1, 2]
    widget.propagate()
    wait_done(qtbot, widget)
    masks = viewer.layers["img masks"]
    points = widget.points_combo.layer
    for i, obj in enumerate((1, 2)):
        np.testing.assert_allclose(points.face_color[i], masks.get_color(obj), atol=1e-6)
        np.testing.assert_allclose(widget.objects.rows[i].color, masks.get_color(obj), atol=1e-6)
    names = [layer.name for layer in viewer.layers]
    assert names.index("img masks") < names.index("img prompts")  # below: no tint
    widget.objects.selectRow(0)
    assert widget.obj_spin.value() == 1
    assert widget.points_combo.layer.feature_defaults["obj_id"][0] == 1
    assert notes == []


def test_clear_prompts_and_reset_object_is_one_undo_step(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    use_fake(widget)
    add_image_and_point(viewer, widget, point=(0, 10, 10))
    widget.obj_spin.setValue(2)
    points = widget.points_combo.layer
    points.add(np.array([0.0, 20, 20]))
    points.add(np.array([1.0, 20, 20]))
    widget.propagate()
    wait_done(qtbot, widget)
    masks = viewer.layers["img masks"]
    before = masks.data.copy()
    assert set(np.unique(before)) == {0, 1, 2}
    assert widget.clear_prompts(2) == 1  # only frame 0's click of object 2
    assert list(points.features["obj_id"]) == [1, 2]
    widget.reset_object_button.click()  # object 2 (selected)
    assert list(points.features["obj_id"]) == [1]
    assert 2 not in masks.data and (masks.data == 1).sum() == (before == 1).sum()
    masks.undo()  # ONE undo restores every frame of the object
    np.testing.assert_array_equal(masks.data, before)
    widget.reset_all_button.click()
    assert len(points.data) == 0 and not masks.data.any()
    masks.undo()
    np.testing.assert_array_equal(masks.data, before)
    assert notes == []


# -- 3. layout ----------------------------------------------------------------------------------
def test_both_panels_fit_1366x768(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    viewer.window.add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA")
    viewer.window.add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA fine-tuning")
    window = viewer.window._qt_window
    hint = window.minimumSizeHint()
    assert hint.width() <= 1366 and hint.height() <= 740, (hint.width(), hint.height())
    window.resize(1366, 740)
    for _ in range(5):
        QApplication.processEvents()
    assert window.height() <= 768 and window.width() <= 1366, (window.width(), window.height())
    (widget,) = live_widgets()
    plot = widget.learning.plot
    assert plot.sizeHint().height() >= 60 and plot.minimumSizeHint().height() >= 48


# -- 4. status line -----------------------------------------------------------------------------
def test_errors_show_in_full_in_the_status_line(viewer_widget, notes):
    viewer, widget = viewer_widget
    viewer.add_image(image_stack(), name="img")
    widget.add_prompt_layers()
    assert not widget.propagate()
    assert len(notes) == 1
    assert widget.status.text() == f"error: {notes[0]}"
    assert widget.status.wordWrap() and "'Add prompt layers' makes the layers" in notes[0]


# -- 5. shortcuts -------------------------------------------------------------------------------
def test_no_shortcut_clashes_with_napari_keymaps():
    for shortcut in SHORTCUTS:
        assert clashes(shortcut.key) == [], shortcut


@pytest.mark.parametrize("active", ["points", "shapes", "labels", "image"])
def test_shortcuts_work_whatever_layer_is_active(viewer_widget, qtbot, notes, active):
    viewer, widget = viewer_widget
    use_fake(widget)
    add_image_and_point(viewer, widget)
    layer = {
        "points": widget.points_combo.layer,
        "shapes": widget.shapes_combo.layer,
        "labels": viewer.add_labels(np.zeros((4, 32, 32), np.int32), name="paint"),
        "image": viewer.layers["img"],
    }[active]
    viewer.layers.selection.active = layer
    mode = getattr(layer, "mode", None)
    press(viewer, key_of("propagate"))
    assert widget.job is not None
    wait_done(qtbot, widget)
    assert widget.job.state == "finished" and viewer.layers["img masks"].data.any()
    press(viewer, key_of("negative"))
    assert widget.negative_check.isChecked()
    press(viewer, key_of("new_object"))
    assert widget.obj_spin.value() == 2
    assert getattr(layer, "mode", None) == mode  # the layer's own keys did not fire
    assert notes == []


def test_shortcuts_are_in_tooltips_and_the_help_table(viewer_widget):
    _, widget = viewer_widget
    assert key_of("propagate") in widget.propagate_button.toolTip()
    assert key_of("learn") in widget.learning.learn_button.toolTip()
    assert key_of("accept_frame") in widget.learning.accept_frame_button.toolTip()
    help_ = widget.show_shortcuts()
    keys = {help_.table.item(i, 0).text() for i in range(help_.table.rowCount())}
    assert keys == {s.key for s in SHORTCUTS}
    help_.close()


# -- 8. small items -----------------------------------------------------------------------------
def test_both_directions_count_each_frame_once(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    use_fake(widget)
    add_image_and_point(viewer, widget, point=(2, 10, 10))
    widget.direction_combo.setCurrentText("both")
    widget.propagate()
    wait_done(qtbot, widget)
    assert widget.progress.format() == "frame 4 of 4"
    assert "4 frame(s) segmented" in widget.status.text() and notes == []


def test_a_range_without_prompts_warns(viewer_widget, qtbot, notes, monkeypatch):
    warnings = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    viewer, widget = viewer_widget
    use_fake(widget)
    add_image_and_point(viewer, widget, point=(0, 10, 10))
    widget.from_spin.setValue(2)
    assert widget.propagate()
    assert len(warnings) == 1 and "frames 2–3 hold no prompt" in warnings[0]
    assert "frames 2–3 hold no prompt" in widget.status.text()
    wait_done(qtbot, widget)
    assert notes == []


def test_only_the_running_panels_cancel_is_enabled(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    gate = threading.Event()
    use_fake(widget, gate=gate, open_frames=1)
    add_image_and_point(viewer, widget)
    widget.propagate()
    assert widget.cancel_button.isEnabled() and not widget.learning.cancel_button.isEnabled()
    gate.set()
    wait_done(qtbot, widget)
    assert not widget.cancel_button.isEnabled()


def test_the_assist_toggle_reaches_the_learners_propagation(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    sessions = use_fake(widget)
    add_image_and_point(viewer, widget)

    class FakeLearner:  # the dock asks it for its assist hook when assisting
        def assist_hook(self):
            return self.assist

        def assist(self, frame, obj_id, kwargs, output):
            return None

        def adapter_names(self, obj_id=None):
            return ["obj1_a0"]

    learner = FakeLearner()
    widget.learning.control.learner_of = lambda session: learner if sessions else None
    for checked in (True, False):
        widget.assist_check.setChecked(checked)
        assert widget.propagate()
        wait_done(qtbot, widget)
        assert widget.job.state == "finished"
    calls = [assist is not None for assist in sessions[0].assists]
    assert calls == [True, False] and notes == []


def test_panels_are_views_of_the_annotator_not_of_the_dock(make_napari_viewer, qtbot, notes):
    """Issue 17: a panel takes the dock's model (annotator), job slot and lifecycle, so it
    works without the dock widget."""
    from napari_sam_lora._qt._annotation_files import AnnotationFilesPanel
    from napari_sam_lora._qt._learning import LearningPanel
    from napari_sam_lora._qt._slot import JobSlot
    from napari_sam_lora.annotator import Annotator, Lifecycle

    viewer = make_napari_viewer()
    annotator, slot, life = Annotator(viewer), JobSlot(), Lifecycle()
    learning = LearningPanel(annotator, slot, life)
    files = AnnotationFilesPanel(annotator, slot, life)
    qtbot.addWidget(learning)
    qtbot.addWidget(files)
    assert not learning.learn() and "no image layer" in learning.status.text()
    assert not files.save_session("x") and "no image layer" in files.status.text()
    annotator.selection.image = viewer.add_image(np.zeros((5, 8, 8)), name="img")
    annotator.stack_changed()  # the panels follow the chosen stack
    assert learning.to_spin.maximum() == 4
    assert not learning.learn() and "propagate it first" in learning.status.text()
    life.shutdown()
    assert len(notes) == 3
