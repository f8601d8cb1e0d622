"""Session: prompts → propagation → labels, cancel, feature cache, decoder-input capture."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.engine.annotation.prompts import BoxPrompt, MaskPrompt, PointPrompt
from napari_sam_lora.engine.core.errors import PromptError, SamLoraError
from napari_sam_lora.engine.tracking.session import Session


def test_labels_shape_dtype_and_ids(session):
    session.add_points(frame=0, obj_id=3, points=[[32, 20]], labels=[1])
    session.add_box(frame=1, obj_id=7, box=(5, 50, 25, 75))
    labels = session.propagate_all(direction="forward")
    assert labels.shape == (4, 64, 80) and labels.dtype == np.int32
    assert set(np.unique(labels)) <= {0, 3, 7}
    assert session.object_ids == [3, 7]


def test_prompted_frame_mask_comes_back(session):
    mask = np.zeros((64, 80), bool)
    mask[20:40, 10:30] = True
    frame_labels = session.add_mask(frame=2, obj_id=5, mask=mask)
    assert frame_labels.shape == (64, 80)
    assert (frame_labels[mask] == 5).mean() > 0.9 and (frame_labels[~mask] == 0).mean() > 0.9


def test_steps_report_progress_in_order(session):
    session.add_points(frame=2, obj_id=1, points=[[32, 30]])
    steps = list(session.propagate(direction="both"))
    assert [s.frame for s in steps] == [2, 3, 2, 1, 0]
    assert [s.done for s in steps] == [1, 2, 3, 4, 5] and {s.total for s in steps} == {5}
    assert all(s.labels.shape == (64, 80) for s in steps)


def test_frame_range(session):
    session.add_points(frame=0, obj_id=1, points=[[32, 20]])
    frames = [s.frame for s in session.propagate("forward", frame_range=(1, 2))]
    assert frames == [1, 2]


def test_cancel_keeps_written_frames_and_frees_session(session):
    session.add_points(frame=0, obj_id=1, points=[[32, 20]])
    steps = session.propagate("forward")
    first = next(steps)
    steps.close()
    assert first.frame == 0 and np.array_equal(session.labels[0], first.labels)
    assert not session.labels[2:].any()
    assert len(list(session.propagate("forward"))) == 4  # not stuck "busy"


def test_busy_session_refuses_a_second_job(session):
    session.add_points(frame=0, obj_id=1, points=[[32, 20]])
    running = session.propagate("forward")
    next(running)
    with pytest.raises(SamLoraError, match="busy"):
        next(session.propagate("forward"))
    running.close()


def test_repropagation_makes_no_encoder_calls(session):
    session.add_points(frame=0, obj_id=1, points=[[32, 20]])
    session.propagate_all("forward")
    before = session.encoder_calls
    session.add_points(frame=2, obj_id=1, points=[[32, 30], [5, 5]], labels=[1, 0])
    session.propagate_all("both")
    assert session.encoder_calls == before
    assert len(session.feature_cache) == 4


def test_feature_cache_budget_evicts(tiny_model, stack):
    one_frame_mb = (32 * 64 * 64 + 64 * 32 * 32 + 256 * 16 * 16) * 4 / 2**20  # at 256 px
    session = Session(stack, model=tiny_model, feature_cache_mb=one_frame_mb * 1.5)
    session.add_points(frame=0, obj_id=1, points=[[32, 20]])
    session.propagate_all("forward")
    assert len(session.feature_cache) == 1
    assert session.feature_cache.nbytes <= one_frame_mb * 1.5 * 2**20


def test_decoder_inputs_recorded_per_tracked_frame_and_object(session):
    session.add_points(frame=0, obj_id=1, points=[[32, 20]])
    session.add_points(frame=0, obj_id=2, points=[[5, 70]])
    session.propagate_all("forward")
    assert session.decoder_inputs(0, 1) is None  # prompted, not tracked
    for frame in (1, 2, 3):
        for obj_id in (1, 2):
            record = session.decoder_inputs(frame, obj_id)
            assert (record.frame, record.obj_id) == (frame, obj_id)
            assert record.image_embeddings.shape == (1, 256, 16, 16)
    a, b = session.decoder_inputs(1, 1), session.decoder_inputs(2, 1)
    assert not np.allclose(a.image_embeddings.numpy(), b.image_embeddings.numpy())


def test_replaying_recorded_inputs_reproduces_tracking(session, tiny_model):
    """Captured inputs are the tracker's own: the decoder run on them gives its mask."""
    import torch

    session.add_points(frame=0, obj_id=1, points=[[32, 20]])
    session.propagate_all("forward")
    record = session.decoder_inputs(2, 1)
    with torch.inference_mode():
        masks, ious, _, _ = tiny_model.predictor.sam_mask_decoder(**record.as_kwargs())
    best = masks[0, ious[0].argmax()]
    stored = session.state["output_dict_per_obj"][0]["non_cond_frame_outputs"][2]["pred_masks"]
    assert torch.allclose(best, stored[0, 0], atol=1e-4)


def test_segment_validates_before_touching_state(session):
    session.add_points(frame=0, obj_id=1, points=[[32, 20]])
    session.propagate_all("forward")
    before = session.labels.copy()
    with pytest.raises(PromptError, match="outside"):
        list(session.segment([PointPrompt(1, 1, [[500, 5]])]))
    with pytest.raises(PromptError, match="no prompts"):
        list(session.segment([]))
    assert np.array_equal(session.labels, before) and session.object_ids == [1]


def test_segment_replaces_previous_prompts(session):
    list(session.segment([PointPrompt(0, 1, [[32, 20]])]))
    steps = list(session.segment([BoxPrompt(3, 2, (20, 25, 45, 50))], direction="backward"))
    assert [s.frame for s in steps] == [3, 2, 1, 0]
    assert session.object_ids == [2] and 1 not in np.unique(session.labels)


def test_propagate_without_prompts(session):
    with pytest.raises(PromptError, match="no prompts"):
        next(session.propagate())


def test_two_objects_backward_on_cpu(session):
    """sam2 stores memories as bfloat16; on CPU a 2nd object + reverse used to crash."""
    mask = np.zeros((64, 80), bool)
    mask[:10, :10] = True
    session.add_prompts([PointPrompt(3, 1, [[32, 35]]), MaskPrompt(3, 2, mask)])
    labels = session.propagate_all(direction="backward")
    assert labels.shape == (4, 64, 80)


def test_single_image_and_rgb(tiny_model):
    rng = np.random.default_rng(3)
    single = Session(rng.random((48, 48)), model=tiny_model)
    assert single.num_frames == 1
    single.add_points(0, 1, [[24, 24]])
    assert single.propagate_all().shape == (1, 48, 48)
    rgb = Session((rng.random((2, 40, 50, 3)) * 255).astype(np.uint8), model=tiny_model)
    rgb.add_points(0, 1, [[20, 25]])
    assert rgb.propagate_all().shape == (2, 40, 50)


def test_lazy_dask_stack(tiny_model, stack):
    da = pytest.importorskip("dask.array")
    session = Session(da.from_array(stack, chunks=(1, 64, 80)), model=tiny_model)
    session.add_points(0, 1, [[32, 20]])
    assert session.propagate_all("forward").shape == stack.shape
