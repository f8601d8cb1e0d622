"""The dock widget, docked through npe2 in a real viewer (run under ``xvfb-run -a``).

Most tests use a fake session (fast, and gated to test cancel/close mid-job); one test runs
the real engine with the untrained model at a small image size.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from napari.utils.key_bindings import KeyBinding

from napari_sam_lora._qt import threading as qt_threading
from napari_sam_lora._qt._shortcuts import SHORTCUTS
from napari_sam_lora.annotator import SessionCache
from napari_sam_lora.engine.annotation.model import AnnotationModel
from napari_sam_lora.engine.tracking.plans import PropagationStep, validate_prompts

pytestmark = pytest.mark.viewer

WAIT_MS = 60_000


class FakeSession:
    """Session stand-in on a real annotation model: paints a square per prompted object on
    every frame it "tracks" (one undo step per propagation; a cancel rolls it back)."""

    created = 0

    def __init__(self, stack, loaded, gate: threading.Event | None = None, open_frames=99):
        FakeSession.created += 1
        self.stack = stack
        self.num_frames = int(stack.shape[0])
        self.frame_shape = (int(stack.shape[1]), int(stack.shape[2]))
        self.model_label = f"{loaded} (UNTRAINED: random weights)"
        self.gate, self.open_frames = gate, open_frames
        self.closed = False
        self.annotation = AnnotationModel(self.num_frames, self.frame_shape)
        self.assists = []

    @property
    def labels(self):
        return self.annotation.labels

    @property
    def annotations(self):
        return self.annotation.entries

    @property
    def prompts(self):
        return self.annotation.prompts

    @property
    def object_ids(self):
        return self.annotation.object_ids

    def validate_prompts(self, prompts):
        validate_prompts(prompts, self.num_frames, self.frame_shape)

    def set_prompts(self, prompts):
        self.validate_prompts(prompts)
        with self.annotation.action("prompts"):
            self.annotation.set_prompts(prompts)
        return True

    def undo(self):
        return self.annotation.undo()

    def redo(self):
        return self.annotation.redo()

    def paint(self, frame, index, values):
        with self.annotation.action(f"paint on frame {frame}"):
            return self.annotation.paint(frame, index, values)

    def reset(self):
        with self.annotation.action("reset all"):
            self.annotation.erase_all()

    def reset_object(self, obj_id):
        with self.annotation.action(f"reset object {obj_id}"):
            self.annotation.erase_object(obj_id)

    def propagate_steps(self, direction="forward", frame_range=None, assist=None):
        self.assists.append(assist)
        first, last = frame_range or (0, self.num_frames - 1)
        frames = list(range(first, last + 1))
        if direction == "backward":
            frames.reverse()
        if direction == "both":  # like the engine: the prompted frame is tracked twice
            frames = frames + frames[::-1][1:2]
        try:
            with self.annotation.action("propagate"):
                for done, frame in enumerate(frames, 1):
                    if done > self.open_frames and self.gate is not None:
                        assert self.gate.wait(30)
                    labels = np.zeros(self.frame_shape, np.int32)
                    for k, obj in enumerate(sorted({p.obj_id for p in self.prompts})):
                        if not self.annotations.is_confirmed(frame, obj):
                            self.annotation.model_made(frame, obj, "sam2")
                            labels[2 * k : 2 * k + 4, 2:6] = obj
                    for f, obj in self.annotations.confirmed(frame=frame):
                        labels[self.annotations.confirmed_mask(f, obj)] = obj
                    self.annotation.write_frame(frame, labels)
                    yield PropagationStep(frame, done, len(frames), labels)
        finally:
            self.closed = True


def fake_load(model, device, image_size):
    yield ("build", 0, 1)
    yield ("build", 1, 1)
    return f"fake-{model}"


def use_fake(widget, **session_kwargs):
    FakeSession.created = 0
    sessions = []

    def make(stack, loaded):
        sessions.append(FakeSession(stack, loaded, **session_kwargs))
        return sessions[-1]

    widget.sessions = SessionCache(load_model=fake_load, make_session=make)
    return sessions


def image_stack(t=4, h=32, w=32, dtype=np.float32):
    rng = np.random.default_rng(1)
    return (rng.random((t, h, w)) * 100).astype(dtype)


def add_image_and_point(viewer, widget, point=(0, 10, 10), data=None):
    image = viewer.add_image(image_stack() if data is None else data, name="img")
    widget.add_prompt_layers()
    widget.points_combo.layer.add(np.asarray(point, dtype=float))
    return image


def wait_done(qtbot, widget, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.is_running, timeout=timeout)


def names(viewer):
    return [layer.name for layer in viewer.layers]


# -- happy paths ------------------------------------------------------------------------------
def test_propagate_writes_labels_and_one_undo_restores(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    use_fake(widget)
    add_image_and_point(viewer, widget)
    assert widget.propagate()
    assert not widget.propagate_button.isEnabled() and widget.cancel_button.isEnabled()
    wait_done(qtbot, widget)
    assert notes == [] and widget.job.state == "finished"
    out = viewer.layers["img masks"]
    assert out.data.shape == (4, 32, 32) and out.data.dtype == np.int32
    assert set(np.unique(out.data)) == {0, 1}
    assert all(out.data[t].any() for t in range(4))
    assert widget.progress.format() == "frame 4 of 4"
    assert "UNTRAINED" in widget.status.text()
    assert widget.propagate_button.isEnabled() and not widget.cancel_button.isEnabled()
    out.undo()
    assert out.data.sum() == 0


def test_session_reused_until_model_changes(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    sessions = use_fake(widget)
    add_image_and_point(viewer, widget)
    for _ in range(2):
        widget.propagate()
        wait_done(qtbot, widget)
    assert len(sessions) == 1
    widget.set_model("untrained:sam2.1_hiera_tiny")
    widget.propagate()
    wait_done(qtbot, widget)
    assert len(sessions) == 2 and "fake-untrained:sam2.1_hiera_tiny" in widget.status.text()
    assert notes == []


def test_direction_frame_range_and_two_objects(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    use_fake(widget)
    add_image_and_point(viewer, widget, point=(2, 10, 10))
    widget.obj_spin.setValue(2)
    widget.points_combo.layer.add(np.array([2.0, 20, 20]))
    assert list(widget.points_combo.layer.features["obj_id"]) == [1, 2]
    widget.direction_combo.setCurrentText("backward")
    widget.from_spin.setValue(1)
    widget.to_spin.setValue(2)
    widget.propagate()
    wait_done(qtbot, widget)
    out = viewer.layers["img masks"].data
    assert notes == []
    assert not out[0].any() and not out[3].any()
    assert set(np.unique(out[1])) == {0, 1, 2}


def test_4d_image_writes_the_plane_at_the_dims_point(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    use_fake(widget)
    viewer.add_image(np.random.default_rng(0).random((3, 4, 16, 16)), name="img")
    assert widget.axis_spin.isVisibleTo(widget)
    viewer.dims.set_point(1, 2)  # z = 2
    widget.add_prompt_layers()
    widget.points_combo.layer.add(np.array([0, 2, 5, 5.0]))
    widget.propagate()
    wait_done(qtbot, widget)
    out = viewer.layers["img masks"].data
    assert notes == [] and out.shape == (3, 4, 16, 16)
    assert out[:, 2].any() and not np.delete(out, 2, axis=1).any()


def test_shortcut_propagates_and_the_dock_close_button_shuts_down(viewer_widget, qtbot, notes):
    """Behaviour change (issue 12): Propagate is Shift-T (Shift-P is the Shapes lasso), and
    the dock's own close button (not only ``widget.close()``) unbinds it."""
    from napari.utils.key_bindings import KeyBinding

    viewer, widget = viewer_widget
    use_fake(widget)
    add_image_and_point(viewer, widget)
    key = KeyBinding.from_str("Shift-T")
    viewer.keymap[key](viewer)
    wait_done(qtbot, widget)
    assert viewer.layers["img masks"].data.any()
    widget.parent().title.close_button.click()
    assert key not in viewer.keymap and not widget.life.alive


def test_set_model_and_device(viewer_widget):
    _, widget = viewer_widget
    assert widget.model == "sam2.1_hiera_tiny" and widget.device is None
    widget.set_model("untrained:sam2.1_hiera_tiny")
    assert widget.model == "untrained:sam2.1_hiera_tiny"
    widget.set_model("/tmp/checkpoints/my.pt")
    assert widget.model == "/tmp/checkpoints/my.pt"
    assert widget.model_combo.currentText() == "my.pt"
    widget.set_model("untrained:sam2.1_hiera_tiny")
    assert "UNTRAINED" in widget.model_combo.currentText()  # in the box, before any run
    assert "UNTRAINED" in widget.status.text()
    widget.set_model("/tmp/checkpoints/my.pt")
    assert "my.pt" in widget.status.text()
    widget.device_combo.setCurrentText("cpu")
    assert widget.device == "cpu"


def test_object_id_updates_prompt_defaults(viewer_widget):
    viewer, widget = viewer_widget
    viewer.add_image(image_stack(), name="img")
    widget.add_prompt_layers()
    widget.obj_spin.setValue(5)
    assert widget.points_combo.layer.feature_defaults["obj_id"][0] == 5
    assert widget.shapes_combo.layer.feature_defaults["obj_id"][0] == 5
    assert widget.points_combo.layer.feature_defaults["label"][0] == 1


def test_layer_selectors_follow_the_viewer(viewer_widget):
    viewer, widget = viewer_widget
    assert widget.image_combo.layer is None and widget.points_combo.layer is None
    first = viewer.add_image(image_stack(t=3), name="a")
    assert widget.image_combo.layer is first and widget.to_spin.value() == 2
    first.name = "renamed"
    assert widget.image_combo.currentText() == "renamed"
    viewer.layers.remove(first)
    assert widget.image_combo.layer is None and widget.image_combo.count() == 0


# -- cancel, removal, close -------------------------------------------------------------------
def test_cancel_stops_early_and_leaves_no_trace(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    gate = threading.Event()
    use_fake(widget, gate=gate, open_frames=2)
    add_image_and_point(viewer, widget)
    widget.propagate()
    qtbot.waitUntil(lambda: widget.progress.format() == "frame 2 of 4", timeout=WAIT_MS)
    widget.cancel_button.click()
    gate.set()
    wait_done(qtbot, widget)
    assert widget.job.state == "cancelled" and notes == []
    # behaviour change (issue 17): a cancel leaves no trace; the first run's masks layer
    # goes with it
    assert "img masks" not in names(viewer) and not widget.sessions.session.labels.any()
    assert "after 2 of 4 frame(s); the masks are as before" in widget.status.text()
    assert widget.sessions.session.closed  # the engine generator was closed
    assert not widget.sessions.session.annotation.can_undo  # nothing to undo either


def test_deleting_the_image_while_running_cancels(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    gate = threading.Event()
    use_fake(widget, gate=gate, open_frames=1)
    image = add_image_and_point(viewer, widget)
    widget.propagate()
    qtbot.waitUntil(lambda: widget.progress.format() == "frame 1 of 4", timeout=WAIT_MS)
    out = viewer.layers["img masks"]
    viewer.layers.remove(image)
    gate.set()
    wait_done(qtbot, widget)
    assert widget.job.state == "cancelled" and notes == []
    assert out.data[0].any() and not out.data[1:].any()
    assert "image 'img' was removed" in widget.status.text()
    assert widget.sessions.session is None  # its memory is released


def test_deleting_the_output_while_running_cancels(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    gate = threading.Event()
    use_fake(widget, gate=gate, open_frames=1)
    add_image_and_point(viewer, widget)
    widget.propagate()
    qtbot.waitUntil(lambda: widget.progress.format() == "frame 1 of 4", timeout=WAIT_MS)
    out = viewer.layers["img masks"]
    viewer.layers.remove(out)
    gate.set()
    wait_done(qtbot, widget)
    assert widget.job.state == "cancelled" and notes == []
    assert "img masks" not in names(viewer) and not out.data[1:].any()


def test_closing_the_viewer_while_running(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA")
    gate = threading.Event()
    use_fake(widget, gate=gate, open_frames=1)
    add_image_and_point(viewer, widget)
    widget.propagate()
    qtbot.waitUntil(lambda: widget.job.is_running and widget._run.written == 1, timeout=WAIT_MS)
    job, out, sessions = widget.job, viewer.layers["img masks"], widget.sessions
    viewer.close()
    gate.set()
    qtbot.waitUntil(lambda: not job.is_running, timeout=WAIT_MS)
    assert job.state == "cancelled" and notes == []
    qtbot.waitUntil(lambda: not widget.life.alive, timeout=WAIT_MS)
    assert sessions.session is None and sessions.model is None  # released
    assert not {KeyBinding.from_str(s.key) for s in SHORTCUTS} & set(viewer.keymap)
    assert not out.data[1:].any()


# -- bad inputs: a specific notification, layers unchanged ------------------------------------
def _expect_error(viewer, widget, notes, match):
    before = names(viewer)
    data_before = [np.array(layer.data, copy=True) for layer in viewer.layers]
    assert not widget.propagate()
    assert len(notes) == 1 and match in notes[0], notes
    assert names(viewer) == before
    for layer, data in zip(viewer.layers, data_before, strict=True):
        np.testing.assert_array_equal(layer.data, data)
    assert widget.propagate_button.isEnabled()


def test_no_image_layer(viewer_widget, notes):
    viewer, widget = viewer_widget
    _expect_error(viewer, widget, notes, "no image layer")


def test_point_outside_the_image(viewer_widget, notes):
    viewer, widget = viewer_widget
    use_fake(widget)
    add_image_and_point(viewer, widget, point=(0, 40, 5))
    _expect_error(
        viewer, widget, notes, "point 0 of 'img prompts' at (row 40.0, col 5.0) is outside"
    )


def test_point_on_a_frame_out_of_range(viewer_widget, notes):
    viewer, widget = viewer_widget
    use_fake(widget)
    viewer.add_image(image_stack(), name="img")
    widget.add_prompt_layers()
    widget.points_combo.layer.data = np.array([[9.0, 5, 5]])
    _expect_error(viewer, widget, notes, "is on frame 9, but image 'img' has 4 frame(s)")


def test_no_prompts(viewer_widget, notes):
    viewer, widget = viewer_widget
    viewer.add_image(image_stack(), name="img")
    widget.add_prompt_layers()
    _expect_error(viewer, widget, notes, "no prompts in 'img prompts' or 'img boxes'")


def test_prompt_labels_shape_mismatch(viewer_widget, notes):
    viewer, widget = viewer_widget
    viewer.add_image(image_stack(), name="img")
    paint = viewer.add_labels(np.ones((4, 32, 30), np.int32), name="paint")
    widget.mask_combo.set_layer(paint)
    _expect_error(
        viewer, widget, notes, "prompt labels 'paint' has shape (4, 32, 30) but image 'img'"
    )


def test_non_rectangle_shape(viewer_widget, notes):
    viewer, widget = viewer_widget
    viewer.add_image(image_stack(), name="img")
    widget.add_prompt_layers()
    widget.shapes_combo.layer.add_ellipses(np.array([[0, 1, 1], [0, 1, 5], [0, 5, 5], [0, 5, 1.0]]))
    _expect_error(viewer, widget, notes, "shape 0 of 'img boxes' is a ellipse")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.full((3, 32, 32), 7.0, np.float32), "constant"),
        (np.where(np.eye(32, dtype=bool)[None], np.nan, 1.0).repeat(3, 0), "NaN"),
    ],
    ids=["constant", "nan"],
)
def test_unusable_image_real_engine(viewer_widget, qtbot, notes, data, match):
    viewer, widget = viewer_widget
    widget.set_model("untrained:sam2.1_hiera_tiny")
    widget.image_size = 256
    add_image_and_point(viewer, widget, data=data)
    before = names(viewer)
    assert widget.propagate()  # the stack is checked on the worker, with the model
    wait_done(qtbot, widget)
    assert widget.job.state == "failed"
    assert len(notes) == 1 and match in notes[0], notes
    assert names(viewer) == before  # no output layer created
    assert widget.status.text().startswith("failed:")


# -- the real engine ----------------------------------------------------------------------------
def test_real_engine_untrained_small(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    widget.set_model("untrained:sam2.1_hiera_tiny")
    widget.image_size = 256
    yy, xx = np.mgrid[:64, :64]
    frames = np.stack([((yy - 30) ** 2 + (xx - 20 - 4 * t) ** 2 < 100) * 200.0 for t in range(3)])
    frames += np.random.default_rng(0).random(frames.shape) * 20
    add_image_and_point(viewer, widget, point=(0, 30, 20), data=frames.astype(np.float32))
    widget.propagate()
    wait_done(qtbot, widget, timeout=300_000)
    assert notes == [] and widget.job.state == "finished"
    out = viewer.layers["img masks"]
    assert out.data.shape == (3, 64, 64) and out.data.dtype == np.int32
    assert set(np.unique(out.data)) <= {0, 1}
    assert "UNTRAINED" in widget.status.text()
    out.undo()
    assert not out.data.any()


def test_single_rgb_image_and_prompt_layer_stays_active(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    use_fake(widget)
    rgb = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    viewer.add_image(rgb, rgb=True, name="img")
    widget.add_prompt_layers()
    points = widget.points_combo.layer
    points.add(np.array([10.0, 10.0]))
    assert widget.to_spin.maximum() == 0
    widget.propagate()
    wait_done(qtbot, widget)
    out = viewer.layers["img masks"].data
    assert notes == [] and out.shape == (40, 40) and out.any()
    assert viewer.layers.selection.active.name == "img prompts"


def test_mask_prompt_from_a_labels_layer(viewer_widget, qtbot, notes):
    viewer, widget = viewer_widget
    use_fake(widget)
    viewer.add_image(image_stack(), name="img")
    paint = np.zeros((4, 32, 32), np.int32)
    paint[1, 5:10, 5:10] = 3
    layer = viewer.add_labels(paint, name="paint")
    widget.mask_combo.set_layer(layer)
    widget.propagate()
    wait_done(qtbot, widget)
    assert notes == []
    assert set(np.unique(viewer.layers["img masks"].data)) == {0, 3}
    np.testing.assert_array_equal(layer.data, paint)  # the prompt layer is untouched


# -- the threading module -----------------------------------------------------------------------
def test_job_errors_are_notifications(qtbot, notes, caplog):
    from napari_sam_lora.engine.core.errors import PromptError

    def failing(exc):
        yield 1
        raise exc

    seen, states = [], []
    job = qt_threading.start_job(
        failing, PromptError("frame 9 is out of range"), on_yield=seen.append, on_done=states.append
    )
    qtbot.waitUntil(lambda: not job.is_running, timeout=WAIT_MS)
    assert notes == ["frame 9 is out of range"] and seen == [1] and states == ["failed"]
    assert "Traceback" not in caplog.text
    job = qt_threading.start_job(failing, RuntimeError("boom"), on_done=states.append)
    qtbot.waitUntil(lambda: not job.is_running, timeout=WAIT_MS)
    assert notes[-1] == "RuntimeError: boom" and states[-1] == "failed"
    assert "Traceback" in caplog.text and "boom" in caplog.text


def test_job_cancel_takes_effect_at_the_next_yield(qtbot, notes):
    gate, closed = threading.Event(), []

    def counting():
        try:
            for i in range(100):
                yield i
                gate.wait(5)
        finally:
            closed.append(True)

    seen, states = [], []
    job = qt_threading.start_job(counting, on_yield=seen.append, on_done=states.append)
    qtbot.waitUntil(lambda: len(seen) >= 1, timeout=WAIT_MS)
    job.cancel()
    gate.set()
    qtbot.waitUntil(lambda: not job.is_running, timeout=WAIT_MS)
    assert states == ["cancelled"] and closed == [True] and notes == []
    assert len(seen) <= 2  # nothing delivered after the cancel
