"""The top-level scripting API: shared models, learners that own their adapters, accepts."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_top_level_names_are_lazy_and_public():
    import subprocess
    import sys

    code = (
        "import sys; import napari_sam_lora as p; assert 'torch' not in sys.modules; "
        "from napari_sam_lora import Session, Learner, load_model; print(Learner.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Learner"


def _tracked(model, kind: str = "moving_disk", seed: int = 0):
    from napari_sam_lora import Session
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack(kind, n_frames=6, shape=(64, 64), seed=seed)
    session = Session(image, model=model)
    session.add_mask(0, 1, truth[0] == 1)
    session.propagate_all("forward")
    return session, truth == 1


def _fixed(session, frame: int, mask: np.ndarray) -> np.ndarray:
    user = session.labels[frame].copy()
    user[user == 1] = 0
    user[mask] = 1
    return user


def test_two_learners_sharing_one_model_both_learn_and_propose(tiny_model):
    from napari_sam_lora import Learner
    from napari_sam_lora.engine.learning.adapters import adapter_names

    decoder = tiny_model.predictor.sam_mask_decoder
    first_session, first_truth = _tracked(tiny_model, seed=0)
    second_session, second_truth = _tracked(tiny_model, seed=1)
    with Learner(first_session) as first, Learner(second_session) as second:
        first.learn(2, _fixed(first_session, 2, first_truth[2]))
        second.learn(2, _fixed(second_session, 2, second_truth[2]))
        assert first.adapter_names() != second.adapter_names()
        assert first.propose(frames=[3]) and second.propose(frames=[3])
        assert set(first.adapter_names()) | set(second.adapter_names()) == set(
            adapter_names(decoder)
        )
    assert adapter_names(decoder) == []  # each learner removed its own adapters


def test_accept_skips_confirmed_frames_unless_asked(tiny_model):
    from napari_sam_lora import Learner

    session, truth = _tracked(tiny_model)
    with Learner(session) as learner:
        user = _fixed(session, 2, truth[2])
        learner.learn(2, user)
        (candidate,) = learner.propose(frames=[2, 3])
        report = learner.accept(candidate)
        assert report.skipped == [2] and report.frames == [3]
        assert np.array_equal(session.labels[2], user)  # the correction is untouched
        assert session.annotations.source(3, 1) == "accepted"
        again = learner.accept(candidate, frames=[3])
        assert again.frames == []  # the same accept twice changes nothing
        forced = learner.accept(candidate, frames=[2], overwrite_confirmed=True)
        assert forced.frames == [2] and session.annotations.source(2, 1) == "accepted"
        with pytest.raises(Exception, match="does not propose"):
            learner.accept(candidate, frames=[5])


def test_loading_the_same_adapter_file_twice_does_not_duplicate(tiny_model, tmp_path):
    from napari_sam_lora import Learner

    session, truth = _tracked(tiny_model)
    with Learner(session) as learner:
        learner.learn(2, _fixed(session, 2, truth[2]))
        learner.save(tmp_path / "a")
    with Learner(session) as other:
        names = other.load(tmp_path / "a")
        assert other.load(tmp_path / "a") == names
        assert other.adapter_names() == names


def test_propose_refuses_unknown_objects_and_frames(tiny_model):
    from napari_sam_lora import Learner
    from napari_sam_lora.engine.core.errors import PromptError

    session, truth = _tracked(tiny_model)
    with Learner(session) as learner:
        learner.learn(2, _fixed(session, 2, truth[2]))
        with pytest.raises(PromptError, match="out of range"):
            learner.propose(frames=[-1, 99])
        with pytest.raises(PromptError, match="no adapter for object"):
            learner.propose(obj_ids=[7])


def test_assisted_propagation_marks_adapter_frames(tiny_model):
    from napari_sam_lora import Learner

    session, truth = _tracked(tiny_model)
    with Learner(session, "strong", assist_margin=0.0) as learner:
        learner.learn(2, _fixed(session, 2, truth[2]))
        session.propagate_all("forward", assist=learner.assist_hook())
        made = session.annotations.frames_with("adapter", 1)
        assert sorted(learner.adapter_frames) == made
        assert 2 not in made and 0 not in made  # confirmed frames are never adapter-made
        session.propagate_all("forward")
        assert session.annotations.frames_with("adapter", 1) == []
