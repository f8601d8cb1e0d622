"""The estimated IoU's reference: the nearest confirmed mask, moved by the object's motion."""

from __future__ import annotations

import numpy as np

from napari_sam_lora.engine.annotation.state import AnnotationState
from napari_sam_lora.engine.learning.reference import reference_mask, shifted


def square(row: int, col: int, size: int = 4, shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[row : row + size, col : col + size] = True
    return mask


def test_shifted_moves_by_whole_pixels_and_drops_what_leaves():
    mask = square(0, 0)
    assert np.array_equal(shifted(mask, 3, 5), square(3, 5))
    assert np.array_equal(shifted(square(3, 5), -3, -5), mask)
    assert shifted(mask, -2, 0).sum() == 8  # half left the top edge
    assert not shifted(mask, 40, 0).any()


def test_reference_is_the_nearest_confirmed_frame_moved_by_its_velocity():
    state = AnnotationState()
    assert reference_mask(state, 3, 1) is None
    state.confirm(0, 1, "prompt", square(2, 2))
    assert np.array_equal(reference_mask(state, 3, 1), square(2, 2))  # one frame: no motion
    assert reference_mask(state, 0, 1) is None  # the frame itself is never its reference
    state.confirm(2, 1, "correction", square(6, 2))  # 2 px per frame downwards
    assert np.array_equal(reference_mask(state, 3, 1), square(8, 2))
    assert np.array_equal(reference_mask(state, 5, 1), square(12, 2))
    # before frame 0 nothing lies beyond it: the mask of frame 0 as it is
    state.confirm(6, 1, "accepted", square(20, 2))
    assert np.array_equal(reference_mask(state, 7, 1), square(24, 2))  # from frames 6 and 2
    # a tie between frames 0 and 2: the more recently confirmed (2), moved back by the
    # velocity of frames 2 and 6 (3.5 px per frame, rounded to 4)
    assert np.array_equal(reference_mask(state, 1, 1), square(2, 2))
    assert reference_mask(state, 1, 2) is None  # another object


def test_an_absent_object_is_its_own_reference():
    state = AnnotationState()
    state.confirm(0, 1, "prompt", square(2, 2))
    state.confirm(1, 1, "correction", np.zeros((32, 32), bool))
    assert not reference_mask(state, 2, 1).any()
