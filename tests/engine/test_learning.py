"""Learning from corrections: fresh features, training, candidates, accept, adapter files."""

from __future__ import annotations

import numpy as np
import pytest

import lora_fixtures
from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.engine.tracking.session import Session

N_FRAMES = 6


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


_clean_decoder = lora_fixtures.clean_decoder  # autouse: no adapters left behind


@pytest.fixture
def disk(tiny_model):
    """Session on the easy moving-disk stack, tracked forward from a ground-truth mask."""
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=N_FRAMES, shape=(64, 64), seed=0)
    session = Session(image, model=tiny_model)
    session.add_mask(0, 1, truth[0] == 1)
    session.propagate_all("forward")
    return session, truth == 1


def corrected(session: Session, frame: int, mask: np.ndarray, obj_id: int = 1) -> np.ndarray:
    user = session.labels[frame].copy()
    user[user == obj_id] = 0
    user[mask] = obj_id
    return user


def test_correction_raises_iou_on_frame_and_following(disk):
    from napari_sam_lora.engine.learning.learner import Learner

    session, truth = disk
    base = [iou(session.labels[t] == 1, truth[t]) for t in range(2, N_FRAMES)]
    learner = Learner(session, "default")
    report = learner.learn(2, corrected(session, 2, truth[2]))
    assert len(report.trained) == 1 and report.trained[0].steps >= 1
    (candidate,) = learner.propose(frames=range(2, N_FRAMES))
    assert candidate.frames == list(range(2, N_FRAMES))
    adapted = [iou(m, truth[f]) for f, m in zip(candidate.frames, candidate.masks, strict=True)]
    assert adapted[0] > max(0.8, base[0] + 0.3)
    assert np.mean(adapted[1:]) > np.mean(base[1:]) + 0.3
    assert 0.0 <= candidate.confidence <= 1.0 and candidate.confidences.shape == (4,)


def test_training_uses_the_corrected_frames_own_inputs(disk, monkeypatch):
    """Correct frame A, then frame B: B's training runs on B's recorded inputs."""
    from napari_sam_lora.engine.learning import learner as learning

    session, truth = disk
    seen = []
    real = learning.train_adapter

    def spy(decoder, name, examples, settings, **kwargs):
        seen.append([inputs.frame for inputs, _ in examples])
        return real(decoder, name, examples, settings, **kwargs)

    monkeypatch.setattr(learning, "train_adapter", spy)
    learner = learning.Learner(session, "default")
    b_inputs = session.decoder_inputs(4, 1)
    learner.learn(2, corrected(session, 2, truth[2]))
    learner.learn(4, corrected(session, 4, truth[4]))
    assert seen[0][0] == 2 and seen[1][0] == 4  # newest example first
    assert session.decoder_inputs(4, 1).image_embeddings is b_inputs.image_embeddings


def test_untracked_frame_is_tracked_first(tiny_model):
    from napari_sam_lora.engine.learning.learner import Learner
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=4, shape=(64, 64))
    session = Session(image, model=tiny_model)
    session.add_mask(0, 1, truth[0] == 1)
    list(session.propagate("forward", frame_range=(0, 1)))
    assert session.decoder_inputs(3, 1) is None
    report = Learner(session, "default").learn(3, corrected(session, 3, truth[3] == 1))
    assert session.decoder_inputs(3, 1).frame == 3 and len(report.trained) == 1


def test_frame_that_cannot_be_tracked(tiny_model):
    from napari_sam_lora.engine.learning.learner import Learner
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=3, shape=(64, 64))
    session = Session(image, model=tiny_model)
    session.add_mask(1, 1, truth[1] == 1)
    fixed = corrected(session, 1, np.zeros((64, 64), bool))
    with pytest.raises(PromptError, match="never tracked for object 1 and cannot be"):
        Learner(session, "default").learn(1, fixed)


def test_bad_corrections(disk):
    from napari_sam_lora.engine.learning.learner import Learner

    session, _ = disk
    learner = Learner(session, "default")
    with pytest.raises(PromptError, match="nothing to learn on frame 2"):
        learner.learn(2, session.labels[2].copy())
    with pytest.raises(PromptError, match=r"has shape \(3, 3\)"):
        learner.learn(2, np.zeros((3, 3), np.int32))
    with pytest.raises(PromptError, match="out of range"):
        learner.learn(99, session.labels[0])
    assert learner.pools == {}


def test_erased_object_is_a_correction(disk):
    from napari_sam_lora.engine.learning.learner import Learner

    session, _ = disk
    assert (session.labels[3] == 1).any(), "precondition: the model output object 1 here"
    user = session.labels[3].copy()
    user[user == 1] = 0
    report = Learner(session, "default").learn(3, user)
    assert report.corrections[0].kind == "erased"
    assert not (session.labels[3] == 1).any()


def test_new_object_is_conditioned_not_trained(disk):
    from napari_sam_lora.engine.learning.learner import Learner

    session, _ = disk
    user = session.labels[2].copy()
    user[:8, :8] = 5
    report = Learner(session, "default").learn(2, user)
    assert 5 in report.skipped and 5 in session.object_ids
    assert (session.labels[2][:8, :8] == 5).mean() > 0.5


def test_cancel_keeps_previous_adapter(disk):
    from napari_sam_lora.engine.learning.adapters import adapter_state
    from napari_sam_lora.engine.learning.learner import Learner

    session, truth = disk
    learner = Learner(session, "default")
    learner.learn(2, corrected(session, 2, truth[2]))
    name = learner.pools[1].names[0]
    before = {k: v.clone() for k, v in adapter_state(learner.decoder, name).items()}
    steps = learner.learn_steps(4, corrected(session, 4, truth[4] | truth[3]))
    next(steps)
    steps.close()
    after = adapter_state(learner.decoder, name)
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    assert learner.pools[1].names == [name]
    learner.learn(5, corrected(session, 5, truth[5]))  # the session is usable again


def test_accept_conditions_sam2_and_feeds_replay(disk):
    from napari_sam_lora.engine.learning.learner import Learner

    session, truth = disk
    learner = Learner(session, "default")
    learner.learn(2, corrected(session, 2, truth[2]))
    (candidate,) = learner.propose(frames=[3, 4])
    replay_before = len(learner.pools[1].replay)
    labels = learner.accept(candidate, frames=[3]).labels
    assert labels.shape == (1, 64, 64)
    assert np.array_equal(session.labels[3] == 1, candidate.masks[0] | (session.labels[3] == 1))
    assert 3 in session.prompted_frames and len(learner.pools[1].replay) == replay_before + 1


def test_save_load_reproduces_candidates(disk, tiny_model, tmp_path):
    from napari_sam_lora.engine.learning.learner import Learner

    session, truth = disk
    learner = Learner(session, "default")
    learner.learn(2, corrected(session, 2, truth[2]))
    (original,) = learner.propose(frames=[3, 4, 5])
    learner.save(tmp_path / "disk")
    assert (tmp_path / "disk.safetensors").is_file() and (tmp_path / "disk.json").is_file()
    learner.close()  # free the names so the load keeps them
    other = Learner(session, "default")
    names = other.load(tmp_path / "disk")
    (reloaded,) = other.propose(frames=[3, 4, 5])
    assert names == [original.adapter_name]
    assert np.array_equal(original.masks, reloaded.masks)
    assert np.allclose(original.confidences, reloaded.confidences)


def test_damaged_adapter_file_keeps_current_adapters(disk, tmp_path):
    from napari_sam_lora.engine.learning.adapters import AdapterFileError, adapter_names
    from napari_sam_lora.engine.learning.learner import Learner

    session, truth = disk
    learner = Learner(session, "default")
    learner.learn(2, corrected(session, 2, truth[2]))
    learner.save(tmp_path / "a")
    (tmp_path / "a.safetensors").write_bytes(b"garbage")
    before = adapter_names(learner.decoder)
    with pytest.raises(AdapterFileError):
        learner.load(tmp_path / "a")
    assert adapter_names(learner.decoder) == before


def test_two_objects_have_their_own_adapters(tiny_model):
    from napari_sam_lora.engine.learning.learner import Learner
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("two_objects", n_frames=4, shape=(64, 64))
    session = Session(image, model=tiny_model)
    session.add_mask(0, 1, truth[0] == 1)
    session.add_mask(0, 2, truth[0] == 2)
    session.propagate_all("forward")
    user = session.labels[2].copy()
    user[:] = 0
    user[truth[2] == 1] = 1
    user[truth[2] == 2] = 2
    report = Learner(session, "default").learn(2, user)
    assert {r.adapter_name for r in report.trained} == {"obj1_a0", "obj2_a0"}


def _decoy_score(tiny_model, preset: str) -> float:
    """Mean IoU of the adapter's proposals on frames 1–3 after one correction on frame 2."""
    from napari_sam_lora.engine.learning.learner import Learner
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("decoy", n_frames=4, shape=(64, 64), seed=0)
    truth = truth == 1
    session = Session(image, model=tiny_model)
    session.add_mask(0, 1, truth[0])
    session.propagate_all("forward")
    learner = Learner(session, preset)
    learner.learn(2, corrected(session, 2, truth[2]))
    (candidate,) = learner.propose(frames=[1, 2, 3])
    scores = [iou(m, truth[f]) for f, m in zip(candidate.frames, candidate.masks, strict=True)]
    learner.close()
    return float(np.mean(scores))


def test_strong_preset_separates_object_from_decoy_better_than_lit(tiny_model):
    lit, strong = _decoy_score(tiny_model, "lit"), _decoy_score(tiny_model, "strong")
    assert strong > lit + 0.3, (lit, strong)


def test_adapter_assisted_propagation_uses_confident_adapter(disk):
    from napari_sam_lora.engine.learning.learner import Learner

    session, truth = disk
    learner = Learner(session, "strong", assist_margin=0.1)
    learner.learn(2, corrected(session, 2, truth[2]))
    base = [iou(session.labels[t] == 1, truth[t]) for t in (3, 4, 5)]
    steps = list(session.propagate_steps("forward", (3, 5), assist=learner.assist_hook()))
    assisted = [iou(session.labels[t] == 1, truth[t]) for t in (3, 4, 5)]
    assert [s.frame for s in steps] == [3, 4, 5]
    assert set(learner.adapter_frames) == {3, 4, 5}
    assert all(ids == {1} for ids in learner.adapter_frames.values())
    assert np.mean(assisted) > np.mean(base) + 0.3
    assert "assist" not in session.state  # plain propagation is the base model again


def test_auto_accept_takes_frames_above_the_bar_and_never_confirmed_ones(disk):
    from dataclasses import replace

    from napari_sam_lora.engine.learning.learner import Learner

    session, truth = disk
    learner = Learner(session, "default")
    learner.learn(2, corrected(session, 2, truth[2]))
    (candidate,) = learner.propose()
    assert 2 in candidate.frames  # the correction is proposed too
    estimates = {f: 0.95 for f in candidate.frames}
    estimates[4] = 0.5  # under the bar
    shown = replace(
        candidate, estimated_ious=np.array([estimates[f] for f in candidate.frames], np.float32)
    )
    confirmed_before = {f: session.labels[f].copy() for f in (0, 2)}
    assert session.annotations.source(3, 1) in ("sam2", "adapter")  # model-made before
    with pytest.raises(PromptError, match="bar"):
        learner.auto_accept([shown], 1.5)
    ((accepted, report),) = learner.auto_accept([shown], 0.8)
    assert accepted is shown
    assert sorted(report.frames) == [f for f in candidate.frames if f not in (0, 2, 4)]
    for f in (0, 2):
        assert np.array_equal(session.labels[f], confirmed_before[f])
        assert session.annotations.source(f, 1) in ("prompt", "correction")
    assert session.annotations.source(3, 1) == "auto_accepted"
    assert session.annotations.source(4, 1) != "auto_accepted"
