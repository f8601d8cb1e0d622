"""A session's memory does not grow with the stack (issue 18): compressed label images,
decoder-input records counted at their real size and kept within their budget, SAM2's
per-frame outputs kept only where its memory can still read them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.engine.annotation.label_frames import LabelFrames
from napari_sam_lora.engine.tracking import sam2_bridge as bridge
from napari_sam_lora.engine.tracking.session import Session


def _disks(frames: int, size: int = 64) -> tuple[np.ndarray, list[list[int]]]:
    """A uint8 stack of two bright disks drifting right, and a click on each (frame 0)."""
    rows, cols = np.mgrid[:size, :size]
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 40, (frames, size, size)).astype(np.uint8)
    for t in range(frames):
        for r, c in ((20, 14 + t // 2), (44, 40 - t // 3)):
            stack[t][(rows - r) ** 2 + (cols - c) ** 2 < 49] = 220
    return stack, [[20, 14], [44, 40]]


# ------------------------------------------------------------------ label images
def test_label_frames_read_like_the_array_they_replace():
    labels = LabelFrames(5, (8, 10))
    plane = np.zeros((8, 10), np.int32)
    plane[2:4, 3:6] = 7
    plane[5, 5] = 300
    labels.write(2, plane)
    full = np.zeros((5, 8, 10), np.int32)
    full[2] = plane
    assert labels.shape == (5, 8, 10) and labels.dtype == np.int32 and len(labels) == 5
    assert np.array_equal(labels[2], plane) and np.array_equal(np.asarray(labels), full)
    assert np.array_equal(labels[1:4], full[1:4]) and np.array_equal(labels[[2, 0]], full[[2, 0]])
    assert labels[2, 5, 5] == 300 and np.array_equal(labels[2, 2:4], full[2, 2:4])
    assert np.array_equal(labels[-3], plane) and (labels == 7).sum() == 6
    assert labels.ids(2) == {7, 300} and labels.frames_with(300) == [2]
    assert labels.nonempty_frames() == [2] and labels.max() == 300 and labels.any()
    with pytest.raises(ValueError):
        labels[2][0, 0] = 1  # read-only: frames change through the annotation model
    with pytest.raises(IndexError):
        labels.frame(5)
    labels.write(2, np.zeros((8, 10), np.int32))
    assert not labels.any() and labels.nonempty_frames() == []


def test_label_frames_hold_far_less_than_the_raw_array():
    frames, side = 40, 512
    labels = LabelFrames(frames, (side, side))
    rows, cols = np.mgrid[:side, :side]
    for t in range(frames):
        plane = np.zeros((side, side), np.int32)
        for k in range(20):
            r, c = 40 + (k // 5) * 100, 40 + (k % 5) * 100 + t
            plane[(rows - r) ** 2 + (cols - c) ** 2 < 400] = k + 1
        labels.write(t, plane)
    raw = frames * side * side * 4
    decoded = 4 * side * side * 4  # the few decoded frames kept
    assert labels.nbytes - decoded < raw / 50
    assert np.array_equal(labels[7], np.asarray(labels)[7])


# ------------------------------------------------------------------ decoder-input records
def test_records_are_counted_at_their_real_size_and_hold_no_features(tiny_model):
    stack, (first, _) = _disks(4)
    session = Session(stack, model=tiny_model)
    session.add_points(0, 1, [first])
    session.propagate_all("forward")
    store = session.state["decoder_store"]
    assert len(store) == 3  # frames 1-3 tracked
    embeddings = session.decoder_inputs(1, 1).image_embeddings
    own = embeddings.element_size() * embeddings.nelement()
    assert own * 3 <= store.nbytes <= own * 3 * 1.1  # image_pe shared, features not held
    record = store.get((1, 1))
    assert not hasattr(record, "high_res_features")
    inputs = session.decoder_inputs(1, 1)
    cached = session.feature_cache.get(1)
    assert inputs.high_res_features[0] is cached[0] and inputs.high_res_features[1] is cached[1]
    assert inputs.image_pe is session.decoder_inputs(2, 1).image_pe


def test_the_record_budget_is_kept(tiny_model):
    stack, (first, _) = _disks(6)
    one = 256 * 16 * 16 * 4  # a record's embeddings at image size 256
    session = Session(stack, model=tiny_model, decoder_cache_mb=2.5 * one / 2**20)
    session.add_points(0, 1, [first])
    session.propagate_all("forward")
    store = session.state["decoder_store"]
    assert len(store) == 2 and store.nbytes <= store.budget_bytes
    assert session.decoder_inputs(5, 1) is not None and session.decoder_inputs(1, 1) is None


def test_a_session_that_will_not_learn_records_nothing(tiny_model):
    stack, (first, _) = _disks(4)
    session = Session(stack, model=tiny_model, record_decoder_inputs=False)
    session.add_points(0, 1, [first])
    labels = session.propagate_all("forward")
    assert len(session.state["decoder_store"]) == 0 and labels.any()


# ------------------------------------------------------------------ SAM2's per-frame outputs
def test_sam2_keeps_outputs_only_within_its_memory_reach_and_tracks_the_same(
    tiny_model, monkeypatch
):
    reach = bridge.memory_reach(tiny_model.predictor)
    frames = reach + 8
    stack, clicks = _disks(frames)

    def run() -> tuple[Session, np.ndarray]:
        session = Session(stack, model=tiny_model)
        for obj_id, click in enumerate(clicks, start=1):
            session.add_points(0, obj_id, [click])
        return session, np.asarray(session.propagate_all("forward"))

    pruned, labels = run()
    for outputs in pruned.state["output_dict_per_obj"].values():
        kept = sorted(outputs["non_cond_frame_outputs"])
        assert kept == list(range(frames - 1 - reach, frames))  # the last `reach` + 1
    monkeypatch.setattr(bridge, "prune_tracking", lambda *args: None)
    unpruned, everything = run()
    assert len(unpruned.state["output_dict_per_obj"][0]["non_cond_frame_outputs"]) == frames - 1
    assert np.array_equal(labels, everything)  # dropping them changed no mask


def _pruned_session(tiny_model) -> Session:
    """Two disks clicked on frame 0 and tracked past SAM2's memory reach: SAM2 no longer
    holds its outputs on frame 2."""
    reach = bridge.memory_reach(tiny_model.predictor)
    stack, (first, second) = _disks(reach + 6)
    session = Session(stack, model=tiny_model)
    session.add_points(0, 1, [first])
    session.add_points(0, 2, [second])
    session.propagate_all("forward")
    assert bridge.frame_output(session.state, 1, 2) is None  # pruned
    return session


def test_a_prompt_on_a_frame_sam2_no_longer_holds_keeps_the_other_objects(tiny_model):
    session = _pruned_session(tiny_model)
    before = session.labels[2].copy()
    assert (before == 1).any()
    session.add_points(2, 2, [[44, 39]])
    after = session.labels[2]
    assert np.array_equal(after == 1, (before == 1) & (after != 2))


def test_a_click_on_a_frame_sam2_no_longer_holds_refines_the_mask_shown(tiny_model, monkeypatch):
    """SAM2 refines a click from its previous mask on the frame; where that was dropped,
    the mask the user sees stands in for it (for that call only)."""
    session = _pruned_session(tiny_model)
    shown = session.labels[2] == 1
    assert shown.any()
    seen: list = []
    real = bridge._svp.SAM2VideoPredictor._run_single_frame_inference

    def spy(self, inference_state, output_dict, **kwargs):
        seen.append(kwargs.get("prev_sam_mask_logits"))
        return real(self, inference_state=inference_state, output_dict=output_dict, **kwargs)

    monkeypatch.setattr(bridge._svp.SAM2VideoPredictor, "_run_single_frame_inference", spy)
    session.add_points(2, 1, [[20, 15]])
    (prior,) = seen
    assert prior is not None  # without the stand-in SAM2 would get None here
    side = tiny_model.predictor.image_size // 4
    assert tuple(prior.shape[-2:]) == (side, side)
    low = np.asarray(
        bridge.video_masks(tiny_model.predictor, session.state, prior.float().cpu()) > 0
    )[0, 0]
    assert (low & shown).sum() / (low | shown).sum() > 0.8  # it is the mask shown
    tracked = session.state["output_dict_per_obj"][0]["non_cond_frame_outputs"]
    assert all("obj_ptr" in out for out in tracked.values())  # the stand-in is gone
    # where SAM2 still holds its mask, that mask is used, not the one shown
    seen.clear()
    session.add_points(2, 1, [[20, 16]])
    (own,) = seen
    assert own is not None and not np.allclose(own.float().cpu().numpy(), prior.float().numpy())


def test_sam2_keeps_no_copy_of_mask_prompts_and_tracks_the_same(tiny_model, monkeypatch):
    stack, (_, second) = _disks(8)
    rows, cols = np.mgrid[:64, :64]
    disk = (rows - 20) ** 2 + (cols - 14) ** 2 < 49

    def run() -> tuple[Session, np.ndarray]:
        session = Session(stack, model=tiny_model)
        session.add_mask(0, 1, disk)
        session.add_points(0, 2, [second])
        session.add_mask(4, 1, np.roll(disk, 2, axis=1))
        session.add_points(4, 2, [[44, 38]])
        labels = np.asarray(session.propagate_all("forward")).copy()
        return session, labels

    compact, labels = run()
    stored = compact.state["mask_inputs_per_obj"][0]
    assert sorted(stored) == [0, 4]  # SAM2 still sees which frames have a mask prompt
    assert all(t.numel() == 0 for t in stored.values())  # and holds no copy of them
    bridge.remove_object(compact.model.predictor, compact.state, 1)  # reads those frames
    monkeypatch.setattr(
        bridge.StackPredictor, "add_new_mask", bridge._svp.SAM2VideoPredictor.add_new_mask
    )
    full, everything = run()
    assert all(t.numel() > 0 for t in full.state["mask_inputs_per_obj"][0].values())
    assert np.array_equal(labels, everything)  # dropping the copies changed no mask
    assert np.array_equal(np.asarray(compact.labels), np.asarray(full.labels))


def test_the_ids_of_a_frame_follow_strokes_and_undo():
    from napari_sam_lora.engine.annotation.model import AnnotationModel

    model = AnnotationModel(2, (40, 40))
    rng = np.random.default_rng(1)
    for step in range(30):
        rows, cols = rng.integers(0, 40, 50), rng.integers(0, 40, 50)
        with model.action(f"stroke {step}"):
            model.paint(1, (rows, cols), rng.integers(0, 5, 50))
        truth = set(np.unique(model.labels[1]).tolist()) - {0}
        assert model.labels.ids(1) == truth
    for _ in range(30):
        model.undo()
        assert model.labels.ids(1) == set(np.unique(model.labels[1]).tolist()) - {0}
    assert not model.labels.any()


def test_a_long_action_keeps_compressed_frames_not_pixels():
    """A 50-frame 'propagation' that fills half of every 512² frame: its undo data is the
    compressed frames (kilobytes each), not 6 bytes per changed pixel (~800 kB each)."""
    from napari_sam_lora.engine.annotation.model import AnnotationModel

    model = AnnotationModel(50, (512, 512))
    with model.action("propagate"):
        for t in range(50):
            plane = np.zeros((512, 512), np.int32)
            plane[:, : 256 + t] = 1 + t % 3
            model.write_frame(t, plane)
    changed = sum(512 * (256 + t) for t in range(50))
    assert model._undo[-1].nbytes < changed * 6 / 100
    model.undo()
    assert not model.labels.any()
    model.redo()
    assert model.labels[49][0, 300] == 2 and model.labels.ids(10) == {2}


def test_the_heap_is_kept_from_growing_once_and_never_against_the_users_setting(monkeypatch):
    from napari_sam_lora.engine.core import memory

    calls = []

    class Libc:
        def mallopt(self, option, value):
            calls.append((option, value))
            return 1

    monkeypatch.setattr(memory, "_heap_limited", False)
    monkeypatch.setattr("ctypes.CDLL", lambda name: Libc())
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert not memory.limit_heap_growth() and calls == []  # the user's choice stands
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert memory.limit_heap_growth() and calls == [(-3, memory.MMAP_THRESHOLD)]
    assert not memory.limit_heap_growth() and len(calls) == 1  # once per process
