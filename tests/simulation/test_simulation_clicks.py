"""Simulated clicks: IoU and the centre of the largest error region."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.simulation.clicks import iou, next_click


def box(shape=(40, 40), rows=(0, 0), cols=(0, 0)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def test_iou():
    a = box(rows=(0, 10), cols=(0, 10))
    b = box(rows=(0, 10), cols=(5, 15))
    assert iou(a, a) == 1.0
    assert iou(a, b) == pytest.approx(50 / 150)
    assert iou(a, ~a) == 0.0
    assert iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # both empty: nothing to fix
    with pytest.raises(ValueError, match="shapes differ"):
        iou(np.zeros((4, 4)), np.zeros((4, 5)))


def test_missed_region_gets_a_positive_click_at_its_centre():
    truth = box(rows=(10, 21), cols=(20, 31))
    click = next_click(np.zeros_like(truth), truth)
    assert click.positive and click.label == 1
    assert (click.row, click.col) == (15, 25) and click.region_size == 121


def test_extra_region_gets_a_negative_click():
    truth = box(rows=(0, 5), cols=(0, 5))
    prediction = truth | box(rows=(20, 31), cols=(20, 31))
    click = next_click(prediction, truth)
    assert not click.positive and click.label == 0
    assert (click.row, click.col) == (25, 25)


def test_largest_region_wins_and_regions_are_separate():
    truth = box(rows=(2, 6), cols=(2, 6)) | box(rows=(20, 36), cols=(2, 8))  # 16 and 96 px
    prediction = box(rows=(25, 30), cols=(30, 38))  # 40 extra pixels
    click = next_click(prediction, truth)
    assert click.positive and click.region_size == 96
    assert 20 <= click.row < 36 and 2 <= click.col < 8


def test_centre_is_farthest_from_the_boundary_even_at_the_image_border():
    truth = box(rows=(0, 9), cols=(0, 9))  # touches the top-left corner
    click = next_click(np.zeros_like(truth), truth)
    assert (click.row, click.col) == (4, 4)


def test_centre_of_a_non_convex_region_lies_inside_it():
    truth = box(rows=(0, 30), cols=(0, 6)) | box(rows=(24, 30), cols=(0, 30))  # an L
    click = next_click(np.zeros_like(truth), truth)
    assert truth[click.row, click.col]


def test_no_error_no_click():
    truth = box(rows=(3, 9), cols=(3, 9))
    assert next_click(truth, truth) is None
    assert next_click(np.zeros((8, 8)), np.zeros((8, 8))) is None


def test_tie_goes_to_the_missed_region():
    truth = box(rows=(0, 4), cols=(0, 4))
    prediction = box(rows=(30, 34), cols=(30, 34))
    assert next_click(prediction, truth).positive
