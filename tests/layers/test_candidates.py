"""Candidate layers: shown beside the user's labels, read back, dropped (no GL needed)."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.engine.learning.learner import Candidate
from napari_sam_lora.layers import (
    add_candidate_layer,
    candidate_layers,
    candidate_of,
    frame_labels,
    is_candidate_layer,
    output_labels_layer,
    reject_candidate,
    stack_from_image_layer,
)
from napari_sam_lora.layers.candidates import CANDIDATE_OPACITY

T, H, W = 5, 16, 20


@pytest.fixture
def scene():
    """A viewer with an image, the user's output layer (objects 1 and 2 on every frame)."""
    viewer = ViewerModel()
    image = viewer.add_image(
        np.random.default_rng(0).random((T, H, W)).astype(np.float32),
        name="img",
        scale=(1, 0.5, 0.5),
        translate=(0, 3, 4),
    )
    source = stack_from_image_layer(image)
    out = output_labels_layer(viewer, image, source)
    user = np.zeros((T, H, W), np.int32)
    user[:, 2:8, 2:8] = 1  # object 1
    user[:, 10:14, 10:18] = 2  # object 2
    out.data = user
    return viewer, image, source, out


def candidate(frames=(2, 3, 4), obj_id=1) -> Candidate:
    masks = np.zeros((len(frames), H, W), bool)
    masks[:, 4:12, 5:15] = True  # overlaps object 2 at rows 10-11
    conf = np.linspace(0.9, 0.5, len(frames)).astype(np.float32)
    return Candidate(obj_id, f"obj{obj_id}_a0", list(frames), masks, conf)


def test_frame_labels_reads_one_frame_of_the_users_layer(scene):
    _, _, source, out = scene
    got = frame_labels(out, source, 3)
    np.testing.assert_array_equal(got, out.data[3])
    got[:] = 9  # a copy
    assert not (out.data[3] == 9).any()


def test_candidate_layer_name_metadata_shape_and_transform(scene):
    viewer, image, source, out = scene
    cand = candidate()
    layer = add_candidate_layer(viewer, image, source, cand)
    # behaviour change (issue 9): a short name keeps the adapter id visible in the layer list
    assert layer.name == f"cand {cand.short_name}"
    assert "obj1_a0" in layer.name and "2-4" in layer.name
    assert f"≈{cand.estimated_iou:.2f}" in layer.name
    assert layer.contour > 0  # an outline, apart from the filled masks layer
    np.testing.assert_allclose(layer.get_color(1), [1, 1, 0, 1])  # in its own colour
    info = layer.metadata["napari_sam_lora"]
    assert info["candidate"] is True and info["obj_id"] == 1 and info["adapter"] == "obj1_a0"
    assert info["frames"] == [2, 3, 4]
    assert info["confidences"] == pytest.approx([0.9, 0.7, 0.5])
    assert layer.data.shape == out.data.shape
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    assert layer.opacity == pytest.approx(CANDIDATE_OPACITY)  # outlines: nearly opaque
    assert not layer.data[:2].any()
    np.testing.assert_array_equal(layer.data[2:] == 1, cand.masks)
    assert is_candidate_layer(layer) and not is_candidate_layer(out)
    assert candidate_layers(viewer) == [layer]
    assert viewer.layers.selection.active is layer
    back = candidate_of(layer, source)
    assert back.obj_id == 1 and back.adapter_name == "obj1_a0" and back.frames == [2, 3, 4]
    np.testing.assert_array_equal(back.masks, cand.masks)
    np.testing.assert_allclose(back.confidences, cand.confidences)


def test_reject_leaves_the_users_layer_untouched(scene):
    viewer, image, source, out = scene
    before = out.data.copy()
    undo_before = len(out._undo_history)
    layer = add_candidate_layer(viewer, image, source, candidate())
    reject_candidate(viewer, layer)
    assert layer not in viewer.layers and candidate_layers(viewer) == []
    np.testing.assert_array_equal(out.data, before)
    assert len(out._undo_history) == undo_before


def test_bad_layers_are_refused(scene):
    viewer, image, source, out = scene
    with pytest.raises(PromptError, match="'img masks' is not a candidate layer"):
        reject_candidate(viewer, out)
    wrong = Candidate(1, "obj1_a0", [1], np.zeros((1, 4, 4), bool), np.ones(1))
    with pytest.raises(PromptError, match="masks of shape"):
        add_candidate_layer(viewer, image, source, wrong)
    far = Candidate(1, "obj1_a0", [9], np.zeros((1, H, W), bool), np.ones(1))
    with pytest.raises(PromptError, match="5 frame"):
        add_candidate_layer(viewer, image, source, far)


def test_4d_candidate_lies_on_the_current_plane():
    viewer = ViewerModel()
    image = viewer.add_image(np.random.default_rng(0).random((3, 2, H, W)), name="img4")
    source = stack_from_image_layer(image, 0, dims_point=(0, 1, 0, 0))
    out = output_labels_layer(viewer, image, source)
    layer = add_candidate_layer(viewer, image, source, candidate(frames=(1, 2)))
    assert layer.data.shape == (3, 2, H, W)
    assert layer.data[1:, 1].any() and not layer.data[:, 0].any()
    back = candidate_of(layer, source)  # what an accept reads
    assert back.frames == [1, 2] and back.masks.any()
    assert out.data.shape == (3, 2, H, W)
