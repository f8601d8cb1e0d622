"""The masks layer as a view of an annotation model (Qt-free; no viewer needed)."""

from __future__ import annotations

import numpy as np
from napari.components import ViewerModel

from napari_sam_lora.engine.annotation.model import AnnotationModel
from napari_sam_lora.layers import MasksView, output_labels_layer, stack_from_image_layer


def _scene(shape=(4, 8, 10), dims_point=None):
    viewer = ViewerModel()
    image = viewer.add_image(np.random.default_rng(0).random(shape), name="img")
    source = stack_from_image_layer(image, 0, dims_point=dims_point)
    out = output_labels_layer(viewer, image, source)
    model = AnnotationModel(source.num_frames, source.frame_shape)
    calls: list = []

    def on_stroke(strokes):
        calls.append(strokes)
        for frame, rows, cols, values in strokes:
            with model.action("paint"):
                model.paint(frame, (rows, cols), values)

    view = MasksView(model, out, source, on_stroke, model.undo, model.redo)
    return model, out, view, calls


def test_model_changes_reach_the_layer_and_strokes_reach_the_model():
    model, out, view, calls = _scene()
    with model.action("propagate"):
        model.model_made(1, 1, "sam2")
        model.write_frame(1, np.pad(np.ones((2, 2), np.int32), ((0, 6), (0, 8))))
    assert view.flush() == [1] and view.equal()
    # a brush stroke on frame 2: napari's paint event carries its pixels and values
    out.data_setitem((np.array([2, 2]), np.array([3, 4]), np.array([5, 5])), 7)
    assert [s[0] for s in calls[-1]] == [2] and model.entries.source(2, 7) == "correction"
    assert view.equal() and not out._undo_history  # napari's own history stays empty
    out.undo()  # what napari's Ctrl+Z calls: the model's undo
    assert model.entries.source(2, 7) is None
    view.flush()
    assert view.equal() and not out.data[2].any()
    out.redo()
    view.flush()
    assert out.data[2, 3, 5] == 7 and view.equal()


def test_writing_the_model_into_the_layer_is_no_stroke():
    model, out, view, calls = _scene()
    with model.action("paint"):
        model.paint(0, np.array([0, 1]), 3)
    view.flush()
    assert calls == [] and out.data[0, 0, 0] == 3


def test_strokes_on_other_planes_of_a_4d_layer_are_left_out():
    _, _, view, _ = _scene(shape=(3, 2, 6, 6), dims_point=(0, 1, 0, 0))
    atoms = [
        ((np.array([1, 1]), np.array([1, 0]), np.array([2, 2]), np.array([3, 3])), 0, 4),
    ]
    (stroke,) = view.strokes(atoms)
    frame, rows, cols, values = stroke
    assert frame == 1 and rows.tolist() == [2] and cols.tolist() == [3] and values.tolist() == [4]


def test_close_gives_the_layer_its_own_undo_back():
    _, out, view, calls = _scene()
    view.close()
    assert view.closed
    out.data_setitem((np.array([0]), np.array([0]), np.array([0])), 5)
    assert calls == [] and len(out._undo_history) == 1
    out.undo()  # napari's own again
    assert out.data[0, 0, 0] == 0
