"""Whole frames of cells (issue 20): seed every object from a label image, segment all with
sam2's generator, preview a click at once, divisions with a lineage. Untrained SAM2: the
mechanics are tested, not the masks' quality."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.engine.annotation.prompts import BoxPrompt, PointPrompt
from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.engine.tracking import sam2_bridge as bridge
from napari_sam_lora.engine.tracking.automatic import AutomaticOptions
from napari_sam_lora.engine.tracking.session import Session


def _grid_labels(side: int, count: int, first_id: int = 1) -> np.ndarray:
    """``count`` 5×5 squares on a grid, ids ``first_id`` … (gaps between them)."""
    labels = np.zeros((side, side), np.int32)
    per_row = side // 8
    for k in range(count):
        r, c = (k // per_row) * 8 + 1, (k % per_row) * 8 + 1
        labels[r : r + 5, c : c + 5] = first_id + k
    return labels


def _stack(frames: int = 3, side: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 40, (frames, side, side)).astype(np.uint8)
    stack[:, 10:24, 10:24] = 220
    stack[:, 36:52, 30:50] = 180
    return stack


# ------------------------------------------------------------------ seeding from labels
def test_seeding_200_objects_from_a_label_image_is_one_undo_step(tiny_model):
    seeds = _grid_labels(128, 200, first_id=7)
    image = np.where(seeds > 0, 200, 30).astype(np.uint8)
    session = Session(np.stack([image, image]), model=tiny_model)
    ids = session.add_label_image(0, seeds)
    assert ids == list(range(7, 207)) and session.object_ids == ids  # ids kept
    assert np.array_equal(session.labels[0], seeds)
    assert all(session.annotations.entry(0, i).source == "prompt" for i in (7, 100, 206))
    assert session.annotation.undo_names[-1].startswith("seed 200 object(s)")
    session.undo()
    assert session.object_ids == [] and not session.labels.any()


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((64, 64)), "hold no object"),
        (np.ones((32, 32)), "have shape"),
        (np.full((64, 64), 1.5), "fractional"),
        (np.full((64, 64), -3), "negative"),
    ],
)
def test_bad_seed_labels_are_refused_before_anything_changes(tiny_model, labels, message):
    session = Session(_stack(), model=tiny_model)
    with pytest.raises(PromptError, match=message):
        session.add_label_image(0, labels)
    assert session.object_ids == [] and not session.annotation.can_undo


# ------------------------------------------------------------------ segment all
def test_segment_all_makes_the_generators_masks_objects(tiny_model):
    session = Session(_stack(), model=tiny_model)
    session.add_points(0, 3, [[16, 16]])
    before = session.labels[0].copy()
    options = AutomaticOptions(
        min_area=4,
        max_overlap=1.0,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    ids = session.segment_all(0, options)
    assert ids and min(ids) > 3  # new ids above those in use
    after = session.labels[0]
    assert np.array_equal(after == 3, before == 3)  # the user's object keeps its pixels
    for obj_id in ids:
        assert (after == obj_id).sum() >= 4
    session.undo()
    assert session.object_ids == [3]


def test_segment_all_options_are_checked():
    with pytest.raises(PromptError, match="max_overlap"):
        AutomaticOptions(max_overlap=2)
    with pytest.raises(PromptError, match="min_area"):
        AutomaticOptions(min_area=0)


# ------------------------------------------------------------------ instant preview
def test_a_preview_shows_the_mask_at_once_and_changes_nothing(tiny_model):
    session = Session(_stack(), model=tiny_model)
    click = [PointPrompt(1, 5, [[16, 16]], [1])]
    mask = session.preview(1, 5, click)
    assert mask.shape == (64, 64) and mask.dtype == bool
    assert session.object_ids == [] and not session.annotation.can_undo
    assert bridge.object_ids(session.state) == []  # SAM2's tracking state untouched
    calls = session.encoder_calls
    again = session.preview(1, 5, [*click, BoxPrompt(1, 5, (8, 8, 26, 26))])
    assert again.shape == (64, 64) and session.encoder_calls == calls  # decoder only
    # the preview is what SAM2 answers to the same first prompt
    session.add_prompts(click)
    assert np.array_equal(session.labels[1] == 5, mask)


def test_a_preview_refuses_prompts_of_another_frame_or_object(tiny_model):
    session = Session(_stack(), model=tiny_model)
    with pytest.raises(PromptError, match="one object on one frame"):
        session.preview(1, 5, [PointPrompt(2, 5, [[16, 16]], [1])])
    with pytest.raises(PromptError, match="nothing to preview"):
        session.preview(1, 5, [])


# ------------------------------------------------------------------ divisions
def _divided(tiny_model) -> tuple[Session, list[int]]:
    session = Session(_stack(frames=5), model=tiny_model)
    mother = np.zeros((64, 64), bool)
    mother[10:24, 10:24] = True
    session.add_mask(0, 1, mother)
    session.propagate_all("forward")
    left, right = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    left[10:24, 10:16], right[10:24, 18:24] = True, True
    return session, session.split_object(3, 1, [left, right])


def test_a_division_makes_two_daughters_with_a_lineage_in_one_undo_step(tiny_model):
    session, daughters = _divided(tiny_model)
    assert daughters == [2, 3]
    assert session.annotation.lineage == {2: (1, 3), 3: (1, 3)}
    assert session.annotation.parents() == {2: 1, 3: 1}
    assert not any((session.labels[t] == 1).any() for t in (3, 4))  # the mother ends
    assert (session.labels[2] == 1).any()
    session.propagate_all("both")
    for t in range(5):
        ids = set(np.unique(session.labels[t])) - {0}
        assert ids <= ({1} if t < 3 else {2, 3})  # each lives only on its side of frame 3
    session.undo()  # the propagation
    session.undo()  # the division
    assert session.annotation.lineage == {} and session.object_ids == [1]
    assert (session.labels[4] == 1).any()
    session.redo()
    assert session.annotation.lineage == {2: (1, 3), 3: (1, 3)}


def test_a_division_is_refused_on_bad_masks(tiny_model):
    session = Session(_stack(), model=tiny_model)
    session.add_points(0, 1, [[16, 16]])
    one = np.zeros((64, 64), bool)
    one[10:14, 10:14] = True
    with pytest.raises(PromptError, match="two daughters"):
        session.split_object(1, 1, [one])
    with pytest.raises(PromptError, match="overlap"):
        session.split_object(1, 1, [one, one])
    with pytest.raises(PromptError, match="does not exist"):
        session.split_object(1, 9, [one, ~one])
    assert session.annotation.lineage == {}


def test_the_lineage_is_saved_and_restored(tiny_model, tmp_path):
    session, _ = _divided(tiny_model)
    session.save_state(tmp_path / "cells")
    fresh = Session(session.frames.stack, model=tiny_model)
    fresh.restore_state(tmp_path / "cells")
    assert fresh.annotation.lineage == {2: (1, 3), 3: (1, 3)}
    assert np.array_equal(np.asarray(fresh.labels), np.asarray(session.labels))
