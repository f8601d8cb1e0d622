"""Prompt validation, propagation plans and label composition (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.engine.annotation.prompts import BoxPrompt, MaskPrompt, PointPrompt
from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.engine.tracking.plans import compose_labels, plan_passes, validate_prompts

SHAPE = (64, 80)


def check(prompts, frames=5):
    validate_prompts(prompts, frames, SHAPE)


def test_no_prompts():
    with pytest.raises(PromptError, match="no prompts"):
        check([])


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (PointPrompt(7, 1, [[3, 3]]), "frame 7 is out of range: the stack has 5"),
        (PointPrompt(-1, 1, [[3, 3]]), "frame -1 is out of range"),
        (PointPrompt(0, 1, [[70, 3]]), r"point \(row 70.0, col 3.0\) on frame 0 lies outside"),
        (PointPrompt(0, 1, [[3, -4]]), "outside the 64×80 image"),
        (PointPrompt(0, 0, [[3, 3]]), "object id 0 is invalid"),
        (PointPrompt(0, 1, [[3, 3]], [2]), "must be 1 .positive. or 0"),
        (BoxPrompt(0, 1, (0, 0, 90, 10)), "box corner"),
        (BoxPrompt(0, 1, (5, 5, 5, 20)), "is empty"),
        (MaskPrompt(0, 1, np.ones((10, 10))), r"has shape \(10, 10\), but frames are \(64, 80\)"),
    ],
)
def test_bad_prompts(prompt, message):
    with pytest.raises(PromptError, match=message):
        check([prompt])


def test_two_boxes_for_one_object():
    with pytest.raises(PromptError, match="2 boxes on frame 1"):
        check([BoxPrompt(1, 1, (0, 0, 9, 9)), BoxPrompt(1, 1, (2, 2, 9, 9))])


def test_good_prompts_pass():
    check(
        [
            PointPrompt(0, 1, [[0, 0], [63.4, 79.4]], [1, 0]),
            BoxPrompt(2, 2, (10, 10, 0, 0)),  # corners in any order
            MaskPrompt(4, 3, np.arange(np.prod(SHAPE)).reshape(SHAPE) % 7 == 0),
        ]
    )


def frames_of(passes):
    return [list(p.frames) for p in passes]


def test_plans():
    assert frames_of(plan_passes("forward", None, [2], 5)) == [[2, 3, 4]]
    assert frames_of(plan_passes("backward", None, [2], 5)) == [[2, 1, 0]]
    assert frames_of(plan_passes("both", None, [1, 3], 5)) == [[1, 2, 3, 4], [3, 2, 1, 0]]
    assert frames_of(plan_passes("both", None, [0], 5)) == [[0, 1, 2, 3, 4]]
    assert frames_of(plan_passes("forward", (1, 3), [0], 5)) == [[1, 2, 3]]
    assert frames_of(plan_passes("backward", (1, 3), [2, 4], 5)) == [[2, 1]]


def test_bad_plans():
    with pytest.raises(PromptError, match="unknown direction"):
        plan_passes("sideways", None, [0], 5)
    with pytest.raises(PromptError, match="start is after the end"):
        plan_passes("forward", (3, 1), [0], 5)
    with pytest.raises(PromptError, match="frame 9 is out of range"):
        plan_passes("forward", (0, 9), [0], 5)


def test_compose_labels_highest_positive_logit_wins():
    logits = np.full((2, 1, 2, 3), -1.0)
    logits[0, 0, 0, :2] = 2.0
    logits[1, 0, 0, 1:] = 3.0
    labels = compose_labels([4, 9], logits)
    assert labels.dtype == np.int32
    assert labels.tolist() == [[4, 9, 9], [0, 0, 0]]
