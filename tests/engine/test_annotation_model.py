"""The annotation model: one source of truth with its own undo/redo history (no Qt)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.engine.annotation.model import AnnotationModel
from napari_sam_lora.engine.annotation.prompts import MaskPrompt
from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.engine.tracking.session import Session


def square(shape=(8, 8), at=(2, 2), size=3) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[at[0] : at[0] + size, at[1] : at[1] + size] = True
    return mask


def test_an_action_is_one_undo_step_and_redo_brings_it_back():
    model = AnnotationModel(3, (8, 8))
    seen = []
    model.events.connect(seen.append)
    with model.action("prompt"):
        model.set_prompts([MaskPrompt(0, 1, square())])
        model.confirm(0, 1, "prompt", square())
        model.model_made(1, 1, "sam2")
        model.write_frame(1, square(at=(3, 3)).astype(np.int32))
    after = model.labels.copy()
    assert model.undo_names == ["prompt"] and seen[-1].frames == (0, 1)
    change = model.undo()
    assert change.kind == "undo" and change.frames == (0, 1)
    assert not model.labels.any() and len(model.entries) == 0 and model.prompts == []
    model.redo()
    assert np.array_equal(model.labels, after)
    assert model.entries.source(0, 1) == "prompt" and model.entries.source(1, 1) == "sam2"
    assert len(model.prompts) == 1 and not model.can_redo


def test_a_failed_or_cancelled_action_leaves_no_trace():
    model = AnnotationModel(2, (8, 8))

    def job():
        with model.action("propagate"):
            model.model_made(1, 1, "sam2")
            model.write_frame(1, square().astype(np.int32))
            yield 1
            model.write_frame(0, square().astype(np.int32))
            yield 0

    steps = job()
    next(steps)
    assert model.labels[1].any()
    steps.close()  # a cancel: GeneratorExit at the yield
    assert not model.labels.any() and len(model.entries) == 0
    assert not model.can_undo and not model.busy


def test_a_stroke_confirms_exactly_the_objects_it_changed():
    model = AnnotationModel(2, (8, 8))
    with model.action("model"):
        model.model_made(0, 1, "sam2")
        model.model_made(0, 2, "sam2")
        labels = np.zeros((8, 8), np.int32)
        labels[:, :4], labels[:, 4:] = 1, 2
        model.write_frame(0, labels)
    with model.action("paint"):
        changed = model.paint(0, (np.array([0, 0]), np.array([0, 1])), np.array([3, 3]))
    assert changed == [1, 3]
    assert model.entries.source(0, 1) == "correction" and model.entries.source(0, 2) == "sam2"
    assert model.unlearned(0) == [(0, 1), (0, 3)]
    model.undo()
    assert model.entries.source(0, 1) == "sam2" and model.unlearned() == []
    with pytest.raises(PromptError, match="no object id"), model.action("paint"):
        model.paint(0, np.array([1]), np.array([-4]))


def test_changes_outside_an_action_and_from_another_thread_are_refused():
    import threading

    model = AnnotationModel(1, (4, 4))
    with pytest.raises(RuntimeError, match="inside"):
        model.write_frame(0, np.ones((4, 4)))
    errors = []
    with model.action("job"):
        worker = threading.Thread(target=lambda: errors.append(_try_undo(model)))
        worker.start()
        worker.join()
    assert "running" in errors[0]


def _try_undo(model):
    try:
        model.undo()
    except PromptError as exc:
        return str(exc)
    return ""


def test_history_is_bounded():
    model = AnnotationModel(1, (4, 4), history_limit=3)
    for value in range(1, 6):
        with model.action(f"paint {value}"):
            model.write_frame(0, np.full((4, 4), value))
    assert model.undo_names == ["paint 5", "paint 4", "paint 3"]


# -- Session: SAM2 follows the model --------------------------------------------------------
@pytest.fixture
def disk(tiny_model):
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=8, shape=(64, 64), seed=0)
    session = Session(image, model=tiny_model)
    session.add_mask(0, 1, truth[0] == 1)
    return session, truth == 1


def _confirmed(session):
    return {(f, o): session.annotations.source(f, o) for f, o in session.annotations.confirmed()}


def test_undo_of_a_propagation_then_propagate_confirms_nothing_new(disk):
    session, _ = disk
    session.propagate_all("both")
    first = session.labels.copy()
    session.undo()  # the propagation
    assert _confirmed(session) == {(0, 1): "prompt"}
    assert not session.labels[1:].any()
    session.propagate_all("both")
    assert _confirmed(session) == {(0, 1): "prompt"}
    assert np.array_equal(session.labels, first)  # the same annotation, the same masks


def test_propagating_with_nothing_changed_changes_nothing(disk):
    session, _ = disk
    session.propagate_all("both")
    first, undo = session.labels.copy(), session.annotation.undo_names
    session.propagate_all("both")
    assert np.array_equal(session.labels, first)
    assert session.annotation.undo_names == undo  # no new history entry either


def test_a_cancelled_propagation_leaves_the_annotation_as_it_was(disk):
    session, _ = disk
    before, names = session.labels.copy(), session.annotation.undo_names
    steps = session.propagate_steps("forward")
    next(steps), next(steps)
    steps.close()
    assert np.array_equal(session.labels, before) and session.annotation.undo_names == names
    assert _confirmed(session) == {(0, 1): "prompt"}


def test_undo_of_a_correction_takes_it_out_of_sam2_too(disk):
    session, truth = disk
    session.propagate_all("forward")
    user = session.labels[5].copy()
    user[user == 1] = 0
    user[truth[5]] = 1
    session.add_correction(5, user)
    assert session.conditioning_frames(1) == [0, 5]
    session.undo()
    assert session.conditioning_frames(1) == [0]
    assert _confirmed(session) == {(0, 1): "prompt"}
    session.redo()
    assert session.conditioning_frames(1) == [0, 5]


def test_reset_object_undo_then_propagate_keeps_only_what_the_user_made(disk):
    session, _ = disk
    session.propagate_all("forward")
    session.reset_object(1)
    assert session.object_ids == [] and not session.labels.any()
    session.undo()
    assert _confirmed(session) == {(0, 1): "prompt"} and session.prompts
    session.propagate_all("forward")
    assert _confirmed(session) == {(0, 1): "prompt"}


def test_save_restore_then_propagate_gives_the_next_propagation(disk, tiny_model, tmp_path):
    session, truth = disk
    session.propagate_all("forward")
    session.paint(4, (np.nonzero(truth[4])), 1)  # a stroke: a correction
    session.save_state(tmp_path / "day1")
    restored = Session(session.frames.stack, model=tiny_model)
    restored.restore_state(tmp_path / "day1")
    assert _confirmed(restored) == _confirmed(session)
    session.propagate_all("forward")
    restored.propagate_all("forward")
    assert np.array_equal(restored.labels, session.labels)


def test_repropagation_keeps_to_the_frame_range(disk):
    session, truth = disk
    session.propagate_all("forward")
    session.paint(3, np.nonzero(truth[3]), 1)
    report = session.repropagate(3, frame_range=(2, 5), agree_frames=99)
    assert set(report.tracked) <= {2, 3, 4, 5} and 5 in report.tracked


def test_learn_cancel_leaves_the_edit_pending_and_accept_with_repropagation_is_one_step(disk):
    from napari_sam_lora.engine.learning.adapters import adapter_names, delete_adapter
    from napari_sam_lora.engine.learning.learner import Learner

    session, truth = disk
    session.propagate_all("forward")
    session.paint(2, np.nonzero(truth[2] & ~(session.labels[2] == 1)), 1)
    learner = Learner(session, "default")
    try:
        steps = learner.learn_steps(2)
        next(steps)
        steps.close()  # Cancel
        assert session.annotation.unlearned(2) == [(2, 1)]
        report = learner.learn(2, repropagate=True)
        assert report.trained and session.annotation.unlearned(2) == []
        assert session.annotation.undo_names[0] == "learn from frame 2"
        with pytest.raises(PromptError, match="learned already"):
            learner.learn(2)
        (candidate,) = learner.propose(frames=[5, 6])
        names = session.annotation.undo_names
        before = session.labels.copy()
        accepted = learner.accept_steps(candidate, repropagate=True)
        while True:
            try:
                next(accepted)
            except StopIteration as stop:
                assert stop.value.frames == [5, 6]
                break
        assert session.annotation.undo_names[1:] == names  # accept + re-propagation: 1 step
        assert _confirmed(session)[(5, 1)] == "accepted"
        session.undo()
        assert np.array_equal(session.labels, before)
        assert (5, 1) not in _confirmed(session)
    finally:
        learner.close()
        for name in adapter_names(session.model.predictor.sam_mask_decoder):
            delete_adapter(session.model.predictor.sam_mask_decoder, name)


def test_changing_a_prompt_keeps_a_correction_on_the_same_frame(disk):
    from napari_sam_lora.engine.annotation.prompts import PointPrompt

    session, truth = disk
    click = PointPrompt(3, 1, np.argwhere(truth[3])[:1])
    session.add_prompts([click])
    session.propagate_all("forward")
    session.paint(3, np.nonzero(truth[3]), 1)  # the user's correction of that frame
    mask = session.annotations.confirmed_mask(3, 1).copy()
    session.set_prompts([session.prompts[0]])  # the click is removed again
    assert session.annotations.source(3, 1) == "correction"
    np.testing.assert_array_equal(session.annotations.confirmed_mask(3, 1), mask)
    assert session.annotation.unlearned(3) == [(3, 1)]
    session.undo()
    assert len(session.prompts) == 2


# -- issue 19 (validator): a damaged session file changes nothing --------------------------------
def _damaged(tmp_path, base, edit_doc=None, edit_arrays=None, name="bad"):
    import json

    doc = json.loads((tmp_path / f"{base}.session.json").read_text())
    with np.load(tmp_path / f"{base}.session.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    if edit_doc:
        edit_doc(doc)
    if edit_arrays:
        edit_arrays(arrays)
    (tmp_path / f"{name}.session.json").write_text(json.dumps(doc))
    np.savez_compressed(tmp_path / f"{name}.session.npz", **arrays)
    return tmp_path / name


def test_a_damaged_session_file_is_refused_before_the_open_work_changes(disk, tmp_path):
    from napari_sam_lora.engine.tracking.session_files import SessionFileError

    session, truth = disk
    session.propagate_all("forward")
    session.paint(3, np.nonzero(truth[3]), 1)
    session.save_state(tmp_path / "good")
    session.paint(5, np.nonzero(truth[5]), 1)  # the open work, not saved
    before, names = session.labels.copy(), session.annotation.undo_names

    def record(**changes):
        def edit(doc):
            doc["annotations"]["entries"][-1].update(changes)

        return edit

    def labels(value):
        def edit(arrays):
            arrays["labels"] = arrays["labels"].astype(np.float64)
            arrays["labels"][1, 0, 0] = value

        return edit

    def short_mask(arrays):
        key = next(k for k in arrays if k.startswith("mask_"))
        arrays[key] = arrays[key][:-3]

    def prompt_mask(arrays):  # a mask prompt whose bits are cut short
        arrays["prompt_0_mask"] = np.packbits(truth[0])[:-5]

    def as_mask_prompt(doc):
        doc["prompts"][0]["kind"] = "mask"

    cases = {
        "out of range": {"edit_doc": record(frame=99)},
        "invalid": {"edit_doc": record(obj_id=2**40)},
        "object id 0 is invalid": {"edit_doc": record(obj_id=0)},
        "object id -5 is invalid": {"edit_doc": record(obj_id=-5)},
        "beyond the largest object id": {"edit_arrays": labels(2**32 + 2)},
        "mask of prompt 0": {"edit_doc": as_mask_prompt, "edit_arrays": prompt_mask},
        "unknown source": {"edit_doc": record(source="magic")},
        "fractional": {"edit_arrays": labels(1.5)},
        "negative": {"edit_arrays": labels(-7)},
        "no record names": {"edit_arrays": labels(9)},
        "packed bytes": {"edit_arrays": short_mask},
    }
    for n, (match, edits) in enumerate(cases.items()):
        path = _damaged(tmp_path, "good", name=f"bad{n}", **edits)
        with pytest.raises(SessionFileError, match=match):
            session.restore_state(path)
        np.testing.assert_array_equal(session.labels, before)
        assert session.annotation.undo_names == names
    deep = tmp_path / "deep.session.json"  # JSON nested too deep for the parser
    deep.write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "deep.session.npz").write_bytes((tmp_path / "good.session.npz").read_bytes())
    (tmp_path / "zip.session.json").write_text((tmp_path / "good.session.json").read_text())
    (tmp_path / "zip.session.npz").write_bytes(b"PK\x03\x04 not a zip archive")
    for path in (tmp_path / "deep", tmp_path / "zip"):
        with pytest.raises(SessionFileError):
            session.restore_state(path)
        np.testing.assert_array_equal(session.labels, before)
    session.restore_state(tmp_path / "good")  # the intact file still restores
    assert session.annotations.source(5, 1) != "correction"


def test_reset_object_validates_its_id_and_a_closed_learner_refuses(disk):
    from napari_sam_lora.engine.core.errors import SamLoraError
    from napari_sam_lora.engine.learning.learner import Learner

    session, _ = disk
    for bad in (1.5, -2, 0):
        with pytest.raises(PromptError, match=r"object id|whole number"):
            session.reset_object(bad)
    assert session.object_ids == [1]
    learner = Learner(session)
    learner.close()
    for call in (
        lambda: learner.learn(0),
        lambda: learner.propose(),
        lambda: learner.save("x"),
        lambda: learner.load("x"),
        learner.assist_hook,
    ):
        with pytest.raises(SamLoraError, match="learner was closed"):
            call()
