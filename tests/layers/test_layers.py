"""napari layers <-> engine adapter; no GL context needed (layers and ViewerModel only)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from napari.components import ViewerModel
from napari.layers import Image, Labels, Points, Shapes

from napari_sam_lora.engine.annotation.prompts import BoxPrompt, MaskPrompt, PointPrompt
from napari_sam_lora.engine.core.errors import PromptError, StackError
from napari_sam_lora.layers import (
    StackView,
    box_prompts,
    make_prompt_layers,
    mask_prompts,
    output_labels_layer,
    point_prompts,
    stack_from_image_layer,
    write_frame,
)

RNG = np.random.default_rng(0)


def stack(*shape: int) -> np.ndarray:
    return RNG.random(shape).astype(np.float32)


def points(coords, ndim=3, **features) -> Points:
    feats = pd.DataFrame(features) if features else None
    return Points(np.asarray(coords, dtype=float), ndim=ndim, features=feats, name="pts")


def rect(frame: float, r0: float, c0: float, r1: float, c1: float) -> np.ndarray:
    return np.array([[frame, r0, c0], [frame, r0, c1], [frame, r1, c1], [frame, r1, c0]], float)


# -- stacks -------------------------------------------------------------------------------------
def test_3d_default_axis_uses_the_layer_data_itself():
    data = stack(4, 8, 10)
    src = stack_from_image_layer(Image(data, name="s"))
    assert src.frames is data
    assert src.num_frames == 4 and src.frame_shape == (8, 10)
    assert src.stack_axis == 0 and src.spatial_axes == (1, 2) and src.fixed_indices == {}


def test_2d_image_is_one_frame():
    data = stack(8, 10)
    src = stack_from_image_layer(Image(data))
    assert src.frames.shape == (1, 8, 10) and len(src.frames) == 1
    np.testing.assert_array_equal(src.frames[0], data)
    np.testing.assert_array_equal(np.asarray(src.frames), data[None])
    assert src.frame_index(0) == (slice(None), slice(None))
    with pytest.raises(IndexError):
        src.frames[1]


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_3d_any_stack_axis(axis):
    data = stack(4, 6, 5)
    src = stack_from_image_layer(Image(data), stack_axis=axis)
    expected = np.moveaxis(data, axis, 0)
    assert src.frames.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(src.frames), expected)
    np.testing.assert_array_equal(src.frames[2], expected[2])
    np.testing.assert_array_equal(src.frames[1:3, ::2, -1], expected[1:3, ::2, -1])
    np.testing.assert_array_equal(src.frames[[0, 2]], expected[[0, 2]])


def test_rgb_stack_and_single_rgb_image():
    data = (RNG.random((3, 8, 10, 3)) * 255).astype(np.uint8)
    src = stack_from_image_layer(Image(data, rgb=True))
    assert src.frames.shape == (3, 8, 10, 3) and src.layer_shape == (3, 8, 10)
    one = stack_from_image_layer(Image(data[0], rgb=True))
    assert one.frames.shape == (1, 8, 10, 3) and one.layer_shape == (8, 10)
    np.testing.assert_array_equal(one.frames[0], data[0])


def test_4d_fixes_the_other_axis_at_the_dims_point():
    data = stack(3, 5, 8, 10)  # (T, Z, H, W)
    layer = Image(data, scale=(1, 2, 1, 1))
    src = stack_from_image_layer(layer, stack_axis=0, dims_point=(2, 6.0, 0, 0))  # z = 3
    assert src.fixed_indices == {1: 3} and src.current_frame == 2
    assert src.frames.shape == (3, 8, 10)
    np.testing.assert_array_equal(np.asarray(src.frames), data[:, 3])
    assert src.frame_index(1) == (1, 3, slice(None), slice(None))
    z_stack = stack_from_image_layer(layer, stack_axis=1, dims_point=(1, 0, 0, 0))
    assert z_stack.fixed_indices == {0: 1} and z_stack.num_frames == 5
    np.testing.assert_array_equal(z_stack.frames[4], data[1, 4])


def test_lazy_data_stays_lazy():
    data = da.from_array(stack(4, 6, 8, 10), chunks=(1, 1, 6, 10))
    src = stack_from_image_layer(Image(data), stack_axis=0, dims_point=(0, 2, 0, 0))
    frame = src.frames[1]
    assert isinstance(frame, da.Array)  # indexing did not compute
    np.testing.assert_array_equal(np.asarray(frame), np.asarray(data[1, 2]))


def test_multiscale_uses_full_resolution():
    data = stack(2, 16, 16)
    layer = Image([data, data[:, ::2, ::2]], multiscale=True)
    assert stack_from_image_layer(layer).frames.shape == (2, 16, 16)


def test_unsupported_dimensionality_and_axis():
    class OneD:
        name, rgb, multiscale, data = "line", False, False, np.zeros(5)

    with pytest.raises(StackError, match=r"image 'line' has 1 dimension; .*2D, 3D"):
        stack_from_image_layer(OneD())
    with pytest.raises(StackError, match="stack axis 3 does not exist"):
        stack_from_image_layer(Image(stack(2, 4, 4)), stack_axis=3)


def test_coordinate_round_trip():
    src = stack_from_image_layer(Image(stack(3, 5, 8, 10)), stack_axis=1, dims_point=(2, 0, 0, 0))
    coords = src.to_data_coords(4, 1.5, 7.0)
    np.testing.assert_array_equal(coords, [2, 4, 1.5, 7.0])
    assert src.to_frame_coords(coords) == (4, 1.5, 7.0)
    assert src.off_plane_axes(coords) == {}
    assert src.off_plane_axes([0, 4, 1, 1]) == {0: 0}


def test_stack_view_repr_and_dtype():
    view = StackView(np.zeros((2, 3, 4), np.uint16), 2, (0, 1), {})
    assert view.shape == (4, 2, 3) and view.dtype == np.uint16 and view.ndim == 3
    assert "StackView" in repr(view)


# -- prompts ------------------------------------------------------------------------------------
def test_points_grouped_by_frame_and_object():
    image = Image(stack(4, 20, 20), name="img")
    src = stack_from_image_layer(image)
    layer = points(
        [[0, 1, 2], [0, 3, 4], [2, 5, 6], [0, 7, 8]], label=[1, 0, 1, 1], obj_id=[1, 1, 1, 2]
    )
    prompts = point_prompts(layer, src, image, default_obj_id=9)
    assert [(p.frame, p.obj_id) for p in prompts] == [(0, 1), (0, 2), (2, 1)]
    assert all(isinstance(p, PointPrompt) for p in prompts)
    np.testing.assert_array_equal(prompts[0].points, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(prompts[0].labels, [1, 0])


def test_points_defaults_without_feature_columns():
    image = Image(stack(2, 20, 20))
    prompts = point_prompts(points([[1, 5, 5]]), stack_from_image_layer(image), image, 3)
    assert prompts[0].frame == 1 and prompts[0].obj_id == 3
    np.testing.assert_array_equal(prompts[0].labels, [1])


def test_points_go_through_world_coordinates():
    image = Image(stack(3, 20, 20), scale=(1, 2, 2), translate=(0, 10, 10), name="img")
    layer = Points(np.array([[1, 30, 20]], float), ndim=3, scale=(1, 1, 1))
    prompts = point_prompts(layer, stack_from_image_layer(image), image)
    assert prompts[0].frame == 1
    np.testing.assert_allclose(prompts[0].points, [[10, 5]])


def test_2d_points_over_a_stack_use_the_current_frame():
    image = Image(stack(5, 20, 20))
    src = stack_from_image_layer(image, dims_point=(3, 0, 0))
    prompts = point_prompts(Points(np.array([[4.0, 6.0]]), ndim=2), src, image)
    assert prompts[0].frame == 3
    np.testing.assert_allclose(prompts[0].points, [[4, 6]])


def test_point_errors_name_the_point():
    image = Image(stack(3, 20, 20), name="img")
    src = stack_from_image_layer(image)
    with pytest.raises(PromptError, match=r"point 1 of 'pts' .* outside image 'img' \(20×20"):
        point_prompts(points([[0, 1, 1], [0, 25, 3]]), src, image)
    with pytest.raises(PromptError, match=r"point 0 of 'pts' is on frame 7.*3 frame"):
        point_prompts(points([[7, 1, 1]]), src, image)
    with pytest.raises(PromptError, match="point 0 of 'pts' has label 3"):
        point_prompts(points([[0, 1, 1]], label=[3]), src, image)
    with pytest.raises(PromptError, match="point 0 of 'pts' has obj_id 0"):
        point_prompts(points([[0, 1, 1]], obj_id=[0]), src, image)


def test_point_on_another_plane_of_a_4d_image():
    image = Image(stack(3, 4, 20, 20), name="img")
    src = stack_from_image_layer(image, dims_point=(0, 2, 0, 0))
    ok = point_prompts(points([[1, 2, 5, 5]], ndim=4), src, image)
    assert ok[0].frame == 1
    with pytest.raises(PromptError, match=r"index 1 of axis 1.*index 2"):
        point_prompts(points([[1, 1, 5, 5]], ndim=4), src, image)


def test_edge_points_are_clipped_into_the_image():
    image = Image(stack(1, 10, 10))
    prompts = point_prompts(points([[0, -0.4, 9.4]]), stack_from_image_layer(image), image)
    np.testing.assert_allclose(prompts[0].points, [[0, 9]])


def test_boxes_from_rectangles():
    image = Image(stack(3, 20, 20), name="img")
    src = stack_from_image_layer(image)
    layer = Shapes([rect(0, 2, 3, 8, 9), rect(2, 15, 15, 30, 30)], shape_type="rectangle")
    layer.features = pd.DataFrame({"obj_id": [1, 4]})
    prompts = box_prompts(layer, src, image)
    assert all(isinstance(p, BoxPrompt) for p in prompts)
    assert [(p.frame, p.obj_id) for p in prompts] == [(0, 1), (2, 4)]
    np.testing.assert_allclose(prompts[0].box, [2, 3, 8, 9])
    np.testing.assert_allclose(prompts[1].box, [15, 15, 19, 19])  # clipped


def test_box_errors_name_the_shape():
    image = Image(stack(3, 20, 20), name="img")
    src = stack_from_image_layer(image)
    layer = Shapes(name="boxes")
    layer.add_rectangles(rect(0, 1, 1, 5, 5))
    layer.add_ellipses(rect(0, 1, 1, 5, 5))
    with pytest.raises(PromptError, match="shape 1 of 'boxes' is a ellipse; only rectangles"):
        box_prompts(layer, src, image)
    twice = Shapes([rect(0, 1, 1, 5, 5), rect(0, 2, 2, 6, 6)], name="b2")
    with pytest.raises(PromptError, match="boxes 0 and 1 of 'b2' both give object 1"):
        box_prompts(twice, src, image)
    outside = Shapes([rect(0, 30, 30, 40, 40)], name="b3")
    with pytest.raises(PromptError, match="box 0 of 'b3' is outside image 'img'"):
        box_prompts(outside, src, image)
    assert box_prompts(Shapes(ndim=3), src, image) == []


def test_masks_one_prompt_per_frame_and_id():
    image = Image(stack(4, 10, 10), name="img")
    src = stack_from_image_layer(image)
    data = np.zeros((4, 10, 10), np.int32)
    data[1, :3, :3] = 1
    data[1, 5:, 5:] = 2
    data[3, 4:6, 4:6] = 1
    prompts = mask_prompts(Labels(data, name="paint"), src, image)
    assert all(isinstance(p, MaskPrompt) for p in prompts)
    assert [(p.frame, p.obj_id, int(p.mask.sum())) for p in prompts] == [
        (1, 1, 9),
        (1, 2, 25),
        (3, 1, 4),
    ]


def test_single_frame_mask_applies_to_the_current_frame():
    image = Image(stack(4, 10, 10))
    src = stack_from_image_layer(image, dims_point=(2, 0, 0))
    plane = np.zeros((10, 10), np.uint8)
    plane[2:4, 2:4] = 5
    (prompt,) = mask_prompts(Labels(plane), src, image)
    assert (prompt.frame, prompt.obj_id) == (2, 5)


def test_mask_shape_mismatch():
    image = Image(stack(4, 10, 10), name="img")
    src = stack_from_image_layer(image)
    with pytest.raises(
        PromptError, match=r"prompt labels 'paint' has shape \(4, 10, 12\) but image 'img' has"
    ):
        mask_prompts(Labels(np.zeros((4, 10, 12), np.int32), name="paint"), src, image)


def test_readers_leave_prompt_layers_untouched():
    image = Image(stack(2, 10, 10))
    src = stack_from_image_layer(image)
    layer = points([[0, 1, 1]], label=[1])
    before = layer.data.copy()
    point_prompts(layer, src, image)
    np.testing.assert_array_equal(layer.data, before)


# -- layers in a viewer -------------------------------------------------------------------------
def test_make_prompt_layers():
    viewer = ViewerModel()
    image = viewer.add_image(stack(3, 20, 20), name="img", scale=(1, 2, 2))
    pts, boxes = make_prompt_layers(viewer, image, obj_id=2)
    assert (pts.name, boxes.name) == ("img prompts", "img boxes")
    assert pts.ndim == boxes.ndim == 3
    np.testing.assert_array_equal(pts.scale, image.scale)
    assert list(pts.feature_defaults.iloc[0]) == [1, 2]
    pts.add([0, 4, 4])
    assert list(pts.features.iloc[0]) == [1, 2]
    assert make_prompt_layers(viewer, image) == (pts, boxes)  # found, not duplicated
    assert len(viewer.layers) == 3


def test_output_layer_shape_transform_and_reuse():
    viewer = ViewerModel()
    image = viewer.add_image(
        stack(3, 4, 8, 10), name="img", scale=(1, 1, 2, 2), translate=(0, 0, 5, 5)
    )
    src = stack_from_image_layer(image, dims_point=viewer.dims.point)
    out = output_labels_layer(viewer, image, src)
    assert isinstance(out, Labels) and out.name == "img masks"
    assert out.data.shape == (3, 4, 8, 10) and out.data.dtype == np.int32
    np.testing.assert_array_equal(out.scale, image.scale)
    np.testing.assert_array_equal(out.translate, image.translate)
    assert output_labels_layer(viewer, image, src) is out
    rgb = viewer.add_image(np.zeros((2, 8, 10, 3), np.uint8), rgb=True, name="rgb")
    assert output_labels_layer(viewer, rgb, stack_from_image_layer(rgb)).data.shape == (2, 8, 10)


def test_write_frame_is_undoable():
    viewer = ViewerModel()
    image = viewer.add_image(stack(3, 8, 8), name="img")
    src = stack_from_image_layer(image)
    out = output_labels_layer(viewer, image, src)
    first = np.zeros((8, 8), np.int32)
    first[2:5, 2:5] = 1
    assert write_frame(out, src, 0, first, viewer=viewer)
    np.testing.assert_array_equal(out.data[0], first)
    out.undo()
    assert out.data.sum() == 0
    out.redo()
    assert out.data[0].max() == 1


def test_write_frame_4d_plane_and_errors():
    viewer = ViewerModel()
    image = viewer.add_image(stack(2, 3, 6, 6), name="img")
    src = stack_from_image_layer(image, dims_point=(0, 2, 0, 0))
    out = output_labels_layer(viewer, image, src)
    write_frame(out, src, 1, np.full((6, 6), 7, np.int32))
    assert out.data[1, 2].min() == 7 and out.data.sum() == 7 * 36
    with pytest.raises(ValueError, match="label image has shape"):
        write_frame(out, src, 0, np.zeros((5, 5), np.int32))
    viewer.layers.remove(out)
    assert not write_frame(out, src, 0, np.full((6, 6), 3, np.int32), viewer=viewer)
    assert out.data[0].sum() == 0
