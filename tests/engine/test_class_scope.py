"""Class-level learning: one shared adapter pool learns from any object's corrections and
proposes for (and assists) every object, also objects never corrected."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lora_fixtures
from napari_sam_lora.engine.core.errors import PromptError, SamLoraError
from napari_sam_lora.engine.learning.adapters import AdapterFileError
from napari_sam_lora.engine.learning.learner import Learner
from napari_sam_lora.engine.learning.lora_settings import SettingsError
from napari_sam_lora.engine.tracking.session import Session

N_FRAMES, SHAPE = 4, (64, 64)


_clean_decoder = lora_fixtures.clean_decoder  # autouse: no adapters left behind


@pytest.fixture
def fast(tmp_path):
    """A recipe that trains two steps: scopes are tested, not learning quality."""
    path = tmp_path / "fast.yaml"
    path.write_text("name: fast\nmax_steps_new: 2\nmax_steps_finetune: 2\n")
    return str(path)


@pytest.fixture
def two(tiny_model):
    """Both objects of the ``two_objects`` stack prompted on frame 0 and tracked forward."""
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("two_objects", n_frames=N_FRAMES, shape=SHAPE, seed=0)
    session = Session(image, model=tiny_model)
    session.add_mask(0, 1, truth[0] == 1)
    session.add_mask(0, 2, truth[0] == 2)
    session.propagate_all("forward")
    return session, truth


def _correct_object_1(session: Session, truth: np.ndarray, learner: Learner, frame: int = 2):
    user = session.labels[frame].copy()
    user[user == 1] = 0
    user[(truth[frame] == 1) & (user == 0)] = 1  # object 2's pixels stay: only 1 changes
    return learner.learn(frame, user)


def test_class_scope_proposes_for_an_object_never_corrected(two, fast):
    session, truth = two
    learner = Learner(session, fast, scope="class")
    report = _correct_object_1(session, truth, learner)
    assert report.scope == "class" and "class scope" in report.scope_note
    assert len(report.trained) == 1
    shared = learner.adapter_names()
    assert shared == [n for n in shared if "class_a" in n] and len(shared) == 1
    assert learner.adapter_names(2) == learner.adapter_names(1) == shared
    assert learner.pool_for(1) is learner.pool_for(2)
    assert session.annotations.confirmed_frames(2) == [0]  # object 2 was never corrected

    candidates = learner.propose(obj_ids=[2])
    assert candidates and all(c.obj_id == 2 and c.adapter_name in shared for c in candidates)
    for c in candidates:
        recorded = [f for f in range(N_FRAMES) if session.decoder_inputs(f, 2) is not None]
        assert c.frames and set(c.frames) <= set(recorded)
        assert c.masks.shape == (len(c.frames), *SHAPE) and c.masks.dtype == bool
        assert c.estimated_ious.shape == (len(c.frames),)
    # Without obj_ids every object of the session is proposed for.
    assert {c.obj_id for c in learner.propose()} == {1, 2}
    learner.close()


def test_object_scope_is_unchanged_no_candidate_for_object_2(two, fast):
    session, truth = two
    learner = Learner(session, fast)  # default scope: "object"
    assert learner.scope == "object"
    report = _correct_object_1(session, truth, learner)
    assert report.scope == "object" and len(report.trained) == 1
    assert learner.adapter_names(2) == [] and learner.pool_for(2) is None
    assert all("obj1_a" in n for n in learner.adapter_names(1))
    assert {c.obj_id for c in learner.propose()} == {1}
    with pytest.raises(PromptError, match="no adapter for object"):
        learner.propose(obj_ids=[2])
    learner.close()


def test_accept_feeds_the_shared_pool_and_its_calibrator(two, fast):
    session, truth = two
    learner = Learner(session, fast, scope="class")
    _correct_object_1(session, truth, learner)
    pool = learner.pool_for(2)
    replayed, observed = len(pool.replay), []
    real = pool.observe
    pool.observe = lambda decoder, inputs, *a, **k: (
        observed.append(inputs.obj_id) or real(decoder, inputs, *a, **k)
    )
    (candidate, *_) = learner.propose(frames=[1], obj_ids=[2])
    report = learner.accept(candidate)
    assert report.frames == [1]
    assert session.annotations.confirmed_frames(2) == [0, 1]
    # Object 2's accept is evidence for the shared calibrator and a shared replay example.
    assert observed == [2]
    assert len(pool.replay) == replayed + 1 and pool.replay[-1].inputs.obj_id == 2
    learner.close()


def test_save_load_round_trips_the_scope(two, fast, tmp_path):
    session, truth = two
    learner = Learner(session, fast, scope="class")
    _correct_object_1(session, truth, learner)
    _, json_path = learner.save(tmp_path / "shared")
    doc = json.loads(json_path.read_text())
    assert doc["scope"] == "class" and all(e["object_id"] is None for e in doc["adapters"])
    learner.close()

    again = Learner(session, fast, scope="class")
    names = again.load(tmp_path / "shared")
    assert names and again.adapter_names(2) == names and again.pool_for(7) is again.pool_for(1)
    assert again.propose(obj_ids=[2])
    again.close()

    # An object-scope learner refuses shared adapters (they belong to no object), unchanged.
    per_object = Learner(session, fast)
    with pytest.raises(AdapterFileError, match="class-scope"):
        per_object.load(tmp_path / "shared")
    assert per_object.adapter_names() == [] and per_object.pools == {}
    per_object.close()


def test_files_without_a_scope_load_as_object_scope(two, fast, tmp_path):
    session, truth = two
    learner = Learner(session, fast)
    _correct_object_1(session, truth, learner)
    _, json_path = learner.save(tmp_path / "old")
    learner.close()
    doc = json.loads(json_path.read_text())
    assert doc.pop("scope") == "object"
    json_path.write_text(json.dumps(doc))  # as written before scopes existed

    again = Learner(session, fast)
    assert again.load(tmp_path / "old") == again.adapter_names(1) != []
    again.close()
    # A class-scope learner takes per-object adapters into its shared pool.
    shared = Learner(session, fast, scope="class")
    names = shared.load(tmp_path / "old")
    assert shared.adapter_names(2) == names
    shared.close()


@pytest.mark.parametrize("scope", ["objects", "Class", "", None, 1, ["class"]])
def test_an_invalid_scope_is_refused_before_anything_changes(two, scope, monkeypatch):
    from napari_sam_lora.engine.learning import learner as learning

    session, _ = two
    touched = []
    monkeypatch.setattr(learning, "load_settings", lambda *a: touched.append("settings"))
    monkeypatch.setattr(learning, "claim_namespace", lambda *a: touched.append("namespace"))
    with pytest.raises(SettingsError, match=r"scope=.*expected one of 'object', 'class'"):
        Learner(session, "default", scope=scope)
    assert touched == []
    assert issubclass(SettingsError, SamLoraError)


def test_assist_uses_the_shared_pool_for_an_uncorrected_object(two, fast, monkeypatch):
    session, truth = two
    learner = Learner(session, fast, scope="class")
    _correct_object_1(session, truth, learner)
    assert learner.assist_hook() is not None
    learner.assist_margin = -10.0  # any adapter beats SAM2: the shared one must serve object 2
    used = []
    real = learner.pool_for

    def spy(obj_id):
        pool = real(obj_id)
        used.append((obj_id, pool))
        return pool

    monkeypatch.setattr(learner, "pool_for", spy)
    session.propagate_all("forward", assist=learner.assist_hook())
    shared = real(1)
    assert any(obj == 2 and pool is shared for obj, pool in used)
    assisted = {f for f, ids in learner.adapter_frames.items() if 2 in ids}
    assert assisted, "the shared adapter replaced SAM2's mask on some frame of object 2"
    learner.close()
