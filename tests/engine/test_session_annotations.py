"""Confirmed frames are kept: continued propagation, incremental re-propagation, resets."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.engine.annotation.prompts import MaskPrompt, PointPrompt
from napari_sam_lora.engine.annotation.state import AnnotationState
from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.engine.tracking.session import Session


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


@pytest.fixture
def tracked(tiny_model):
    """A 12-frame moving disk, prompted with its true mask on frame 0, tracked forward."""
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=12, shape=(64, 64), seed=3)

    def make() -> Session:
        session = Session(image, model=tiny_model)
        session.add_mask(0, 1, truth[0] == 1)
        session.propagate_all("forward")
        return session

    return make, truth == 1


def correction(session: Session, frame: int, mask: np.ndarray) -> np.ndarray:
    user = session.labels[frame].copy()
    user[user == 1] = 0
    user[mask] = 1
    return user


def test_annotation_state_never_lets_a_model_overwrite_a_confirmed_mask():
    state = AnnotationState()
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    state.confirm(2, 1, "correction", mask)
    assert not state.model_made(2, 1, "sam2")
    assert state.model_made(3, 1, "adapter", adapter="obj1_a0")
    assert state.source(2, 1) == "correction" and state.source(3, 1) == "adapter"
    assert state.confirmed_frames() == [2] and state.is_confirmed(2, 1)
    doc, masks = state.to_arrays()
    restored = AnnotationState.from_arrays(doc, masks, (4, 4))
    assert restored.frame_sources(2) == {1: "correction"}
    assert restored.entry(3, 1).adapter == "obj1_a0"
    assert np.array_equal(restored.confirmed_mask(2, 1), mask)
    with pytest.raises(ValueError, match="confirmed source"):
        state.confirm(1, 1, "sam2", mask)


def test_propagate_continues_from_a_correction_and_keeps_it_exactly(tracked):
    make, truth = tracked
    session = make()
    user = correction(session, 5, truth[5])
    session.add_correction(5, user)
    session.propagate_all("forward")
    assert np.array_equal(session.labels[5], user)  # byte-identical after propagating
    assert 5 in session.conditioning_frames(1) and 0 in session.conditioning_frames(1)
    assert session.annotations.source(5, 1) == "correction"
    assert session.annotations.source(0, 1) == "prompt"
    assert session.annotations.source(6, 1) == "sam2"
    assert session.confirmed_frames == [0, 5]


def test_set_prompts_keeps_corrections_when_prompts_change(tracked):
    make, truth = tracked
    session = make()
    first = session.prompts[0]
    assert session.set_prompts([first]) is False  # same prompts: nothing to do
    user = correction(session, 4, truth[4])
    session.add_correction(4, user)
    click = PointPrompt(2, 1, [[32, 20]], [1])
    assert session.set_prompts([click])  # the mask prompt on frame 0 was removed
    assert 4 in session.conditioning_frames(1) and 0 not in session.conditioning_frames(1)
    assert np.array_equal(session.labels[4], user)
    assert session.annotations.source(0, 1) is None or not session.annotations.is_confirmed(0, 1)
    session.propagate_all("both")
    assert np.array_equal(session.labels[4], user)


def test_reset_object_forgets_one_object_only(tiny_model):
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("two_objects", n_frames=4, shape=(64, 64))
    session = Session(image, model=tiny_model)
    session.add_prompts([MaskPrompt(0, 1, truth[0] == 1), MaskPrompt(0, 2, truth[0] == 2)])
    session.propagate_all("forward")
    session.reset_object(2)
    assert session.object_ids == [1]
    assert not (session.labels == 2).any()
    assert session.annotations.objects() == [1]
    assert session.decoder_inputs(1, 2) is None and session.decoder_inputs(1, 1) is not None
    session.propagate_all("forward")  # the other object still tracks
    assert (session.labels[3] == 1).any() or session.annotations.source(3, 1) == "sam2"


def test_incremental_repropagation_matches_full_with_fewer_frames(tracked):
    make, truth = tracked
    full, incremental = make(), make()
    for session in (full, incremental):
        session.add_correction(6, correction(session, 6, truth[6]))
    full_report = full.repropagate(6, direction="forward", full=True)
    report = incremental.repropagate(6, direction="forward", agree_frames=3)
    assert len(report.tracked) < len(full_report.tracked)
    assert "forward" in report.stopped and report.tracked[0] == 6
    for frame in range(len(truth)):
        assert iou(full.labels[frame] == 1, incremental.labels[frame] == 1) >= 0.98, frame


def test_repropagation_options_are_checked_before_anything_runs(tracked):
    make, _ = tracked
    session = make()
    before = session.labels.copy()
    for bad in ({"agree_iou": 0.0}, {"agree_frames": 0}, {"direction": "sideways"}):
        with pytest.raises(PromptError):
            session.repropagate(3, **bad)
    with pytest.raises(PromptError, match="out of range"):
        session.repropagate(99)
    assert np.array_equal(session.labels, before)


def test_encode_fills_the_cache_so_tracking_makes_no_encoder_call(tiny_model, stack):
    session = Session(stack, model=tiny_model)
    assert session.encode() == session.num_frames
    calls = session.encoder_calls
    session.add_points(0, 1, [[32, 20]])
    session.propagate_all("forward")
    assert session.encoder_calls == calls
    assert session.encoder_seconds > 0


def test_save_restore_reproduces_the_next_propagation(tracked, tmp_path):
    make, truth = tracked
    saved = make()
    saved.add_correction(6, correction(saved, 6, truth[6]))
    saved.save_state(tmp_path / "day1")
    restored = make()
    restored.reset()
    restored.restore_state(tmp_path / "day1")
    assert restored.annotations.frame_sources(6) == {1: "correction"}
    assert restored.conditioning_frames(1) == saved.conditioning_frames(1)
    assert np.array_equal(restored.labels, saved.labels)
    saved.propagate_all("forward")
    restored.propagate_all("forward")
    assert np.array_equal(restored.labels, saved.labels)


def test_a_session_file_of_another_stack_is_refused_untouched(tracked, tiny_model, tmp_path):
    from napari_sam_lora.engine.tracking.session_files import SessionFileError

    make, _ = tracked
    make().save_state(tmp_path / "a")
    noise = np.random.default_rng(1).integers(0, 255, (12, 64, 64)).astype(np.uint8)
    other = Session(noise, model=tiny_model)
    with pytest.raises(SessionFileError, match="another stack"):
        other.restore_state(tmp_path / "a")
    with pytest.raises(SessionFileError, match="no saved session"):
        other.restore_state(tmp_path / "missing")
    assert other.annotations.confirmed_frames() == []


def test_features_on_disk_make_a_reopened_stack_cost_no_encoder_call(tiny_model, stack, tmp_path):
    first = Session(stack, model=tiny_model, disk_cache=tmp_path / "features")
    first.encode()
    first.add_points(0, 1, [[32, 20]])
    first.propagate_all("forward")
    assert len(list((tmp_path / "features").glob("*.safetensors"))) == len(stack)
    calls = tiny_model.predictor.encoder_calls
    reopened = Session(stack.copy(), model=tiny_model, disk_cache=tmp_path / "features")
    reopened.add_points(0, 1, [[32, 20]])
    reopened.propagate_all("forward")
    assert tiny_model.predictor.encoder_calls == calls  # every frame came from disk
    assert np.array_equal(reopened.labels, first.labels)
    from napari_sam_lora.engine.tracking.feature_disk import clear_feature_cache

    assert clear_feature_cache(tmp_path / "features") > 0
    assert not list((tmp_path / "features").glob("*.safetensors"))


def test_an_empty_mask_says_a_known_object_is_absent_but_creates_no_object(tracked):
    make, _ = tracked
    session = make()
    session.add_mask(3, 1, np.zeros(session.frame_shape, bool))  # "not on this frame"
    assert session.annotations.source(3, 1) == "prompt"
    assert not (session.labels[3] == 1).any()
    with pytest.raises(PromptError, match="new object 2"):
        session.add_mask(3, 2, np.zeros(session.frame_shape, bool))
    assert session.object_ids == [1]
