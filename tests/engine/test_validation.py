"""The one validation choke point (issue 11): ids, frames, points, boxes, masks, stacks, sizes.

Each test names the issue-11 case it covers; all of them failed (raw numpy/torch errors,
silent truncation or a wrong result) before ``engine/validation.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.engine.annotation.corrections import diff_corrections
from napari_sam_lora.engine.annotation.prompts import BoxPrompt, MaskPrompt, PointPrompt
from napari_sam_lora.engine.core.errors import ConfigError, PromptError, StackError
from napari_sam_lora.engine.core.validation import (
    MAX_OBJECT_ID,
    check_ids_fit,
    check_image_size,
    check_label_image,
    check_object_id,
    short_repr,
)
from napari_sam_lora.engine.tracking.frames import NormalisedFrames, check_stack
from napari_sam_lora.engine.tracking.plans import validate_prompts

SHAPE = (64, 80)


def check(prompts, frames=5):
    validate_prompts(prompts, frames, SHAPE)


# --------------------------------------------------------------------------- ids (FAIL 5, 6, 7)


@pytest.mark.parametrize("obj_id", [2**31, 2**40, 10**30])
def test_huge_object_id_in_a_prompt_is_refused(obj_id):  # FAIL 5
    with pytest.raises(PromptError, match="ids start at 1 and go up to 2147483647"):
        check([PointPrompt(0, obj_id, [[3, 3]])])


def test_largest_object_id_is_accepted():
    check([PointPrompt(0, MAX_OBJECT_ID, [[3, 3]])])


@pytest.mark.parametrize("obj_id", [1.5, "1", None, True, float("nan")])
def test_object_id_must_be_a_whole_number(obj_id):  # WEAK: id 1.5 truncated to 1
    with pytest.raises(PromptError, match="object id"):
        PointPrompt(0, obj_id, [[3, 3]])


def test_whole_number_float_id_is_an_int():
    prompt = PointPrompt(np.int64(2), 3.0, [[3, 3]])
    assert (prompt.frame, prompt.obj_id) == (2, 3)
    assert type(prompt.obj_id) is int


@pytest.mark.parametrize("frame", [1.7, "0", None])
def test_fractional_frame_is_refused_when_the_prompt_is_made(frame):  # WEAK: frame 1.7
    with pytest.raises(PromptError, match="frame"):
        PointPrompt(frame, 1, [[3, 3]])


def model_and_user(value):
    model = np.zeros(SHAPE, np.int64)
    model[10:20, 10:20] = 1
    user = model.astype(np.float64 if isinstance(value, float) else np.int64)
    user[30:40, 30:40] = value
    return model, user


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "negative value -1"),  # FAIL 6
        (1.5, "fractional value 1.5"),  # FAIL 7
        (2**31, "beyond the largest object id"),  # FAIL 5 (correction)
        (float("nan"), "NaN or infinite"),  # WEAK: NaN reported as "fractional"
    ],
)
def test_bad_correction_values_are_refused(value, message):
    model, user = model_and_user(value)
    with pytest.raises(PromptError, match=message):
        diff_corrections(2, model, user)


def test_integral_float_correction_is_accepted():
    model, user = model_and_user(2.0)
    (new,) = [c for c in diff_corrections(2, model, user) if c.kind == "new"]
    assert new.obj_id == 2 and new.changed_pixels == 100


def test_label_image_checks():
    assert check_label_image(np.array([[True, False]])).tolist() == [[1, 0]]
    with pytest.raises(PromptError, match="dtype <U1"):
        check_label_image(np.array([["a"]]))


def test_ids_must_fit_the_target_dtype():  # FAIL 10 (the layer side is in tests/reliability)
    check_ids_fit(255, np.uint8)
    with pytest.raises(PromptError, match="object id 300 does not fit the uint8 labels"):
        check_ids_fit(300, np.uint8)
    with pytest.raises(PromptError, match="does not fit the int16"):
        check_object_id(40000, dtype=np.int16)
    check_ids_fit(2**24, np.float32)
    with pytest.raises(PromptError, match="float32"):
        check_ids_fit(2**24 + 1, np.float32)


# --------------------------------------------------------------------------- points, boxes, masks


def test_empty_points_are_refused():  # FAIL 8
    with pytest.raises(PromptError, match="no points for object 1 on frame 0"):
        check([PointPrompt(0, 1, np.zeros((0, 2)))])


@pytest.mark.parametrize(
    ("points", "message"),
    [
        (np.zeros(3), r"shape \(N, 2\)"),  # WEAK: "cannot reshape"
        ([[1, 2, 3]], r"shape \(N, 2\)"),
        ([[1, np.nan]], "NaN or infinite"),
        ([["a", "b"]], "must be numbers"),
        ("hello", "must be numbers, got a string"),
        (None, "points are missing"),
        ([[1, 2], [3]], "array of numbers"),
        ([[1 + 2j, 3]], "not complex"),
    ],
)
def test_bad_points_are_refused_when_the_prompt_is_made(points, message):
    with pytest.raises(PromptError, match=message):
        PointPrompt(0, 1, points)


def test_single_point_pair_is_one_point():
    assert PointPrompt(0, 1, (3, 4)).points.tolist() == [[3.0, 4.0]]


def test_fractional_point_labels_are_refused():
    with pytest.raises(PromptError, match="not fractions"):
        PointPrompt(0, 1, [[3, 3]], [0.5])


def test_bad_boxes_are_refused():
    with pytest.raises(PromptError, match="four numbers"):
        BoxPrompt(0, 1, (1, 2, 3))
    with pytest.raises(PromptError, match="NaN"):
        BoxPrompt(0, 1, (1, 2, np.inf, 4))


def test_empty_mask_prompt_is_refused():  # WEAK: an all-False mask creates an object
    with pytest.raises(PromptError, match="is empty: paint at least one pixel"):
        check([MaskPrompt(0, 1, np.zeros(SHAPE, bool))])


def test_mask_must_be_2d_numbers():
    with pytest.raises(PromptError, match="2D"):
        MaskPrompt(0, 1, np.ones((2, 3, 4)))
    with pytest.raises(PromptError, match="must be numbers"):
        MaskPrompt(0, 1, np.array([["x"]]))


@pytest.mark.parametrize("prompts", [["hello"], "hello", None, [None]])
def test_non_prompts_are_refused(prompts):  # WEAK: segment(["hello"]) -> AttributeError
    with pytest.raises(PromptError, match="prompt"):
        check(prompts)


# --------------------------------------------------------------------------- stacks (FAIL 9)


@pytest.mark.parametrize(
    ("stack", "message"),
    [
        (np.ones((2, 16, 16), np.complex64), "complex-valued"),  # FAIL 9
        (np.full((2, 16, 16), "a"), "dtype <U1"),  # WEAK: non-numeric strings
        (np.empty((2, 16, 16), object), "dtype object"),
        (np.zeros((0, 64, 64)), "empty array of shape"),  # WEAK: "need at least one array"
        (np.zeros((3, 0, 64)), "empty array of shape"),
        ([[1, 2], [3, 4]], "cannot segment a list"),  # WEAK: "array of shape ()"
        (None, "cannot segment None"),
    ],
)
def test_bad_stacks_are_refused(stack, message):
    with pytest.raises(StackError, match=message):
        check_stack(stack)
    with pytest.raises(StackError, match=message):
        NormalisedFrames(stack, 256)


def test_complex_stack_is_refused_by_the_session_like_by_evaluate(tiny_model):  # FAIL 9
    from napari_sam_lora.engine.tracking.session import Session

    with pytest.raises(StackError, match="complex-valued"):
        Session(np.ones((2, 16, 16), np.complex128) * (1 + 1j), model=tiny_model)


# --------------------------------------------------------------------------- image size


@pytest.mark.parametrize("size", [0, -16, 1, 7, 16, 48, 100, 10**6])
def test_invalid_image_sizes_are_refused(size):  # FAIL 11 / WEAK image_size
    with pytest.raises(ConfigError, match="multiple of 32 between 32 and 4096"):
        check_image_size(size)


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_valid_image_sizes(size):
    assert check_image_size(size) == size


def test_frames_check_the_image_size():
    with pytest.raises(ConfigError, match="image size 100"):
        NormalisedFrames(np.random.default_rng(0).random((2, 16, 16)), 100)


# --------------------------------------------------------------------------- the session


def test_bad_prompts_leave_the_session_untouched(session):  # FAIL 5, FAIL 8
    session.add_points(0, 1, [[32, 20]])
    before = session.labels.copy()
    for bad in (
        lambda: session.add_points(0, 2**31, [[32, 20]]),
        lambda: session.add_points(0, 2, np.zeros((0, 2))),
        lambda: session.add_mask(0, 3, np.zeros(session.frame_shape, bool)),
    ):
        with pytest.raises(PromptError):
            bad()
    assert session.object_ids == [1]
    np.testing.assert_array_equal(session.labels, before)
    steps = list(session.propagate())  # later propagation still works
    assert [s.frame for s in steps] == [0, 1, 2, 3]


def test_short_repr_is_bounded():
    huge = ["x" * 10**6] * 10**3
    assert len(short_repr(huge)) <= 80
    assert short_repr(np.zeros((10**3, 10**3))) == "array of shape (1000, 1000) and dtype float64"


def test_segment_with_non_prompts_is_refused_before_any_reset(session):  # WEAK: AttributeError
    session.add_points(0, 1, [[32, 20]])
    with pytest.raises(PromptError, match="not a prompt: 'hello'"):
        list(session.segment(["hello"]))
    assert session.object_ids == [1]


def test_session_refuses_an_image_size_sam2_cannot_use(stack):  # WEAK: cryptic RuntimeError
    from napari_sam_lora.engine.tracking.session import Session

    with pytest.raises(ConfigError, match="image size 100 is not allowed"):
        Session(stack, model="untrained:sam2.1_hiera_tiny", device="cpu", image_size=100)
