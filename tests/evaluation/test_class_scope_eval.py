"""``evaluate --scope class``: one learner per stack, shared by its objects, and the count
of frames accepted on objects before their first own correction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_sam_lora.cli import main
from napari_sam_lora.evaluation.data import EvalData
from napari_sam_lora.evaluation.report import build_report, markdown
from napari_sam_lora.evaluation.runner import EvalConfig, EvalResult, RunResult, evaluate
from napari_sam_lora.simulation import FrameRecord, ObjectResult

MODEL = ["--model", "untrained:sam2.1_hiera_tiny", "--image-size", "256", "--device", "cpu"]
T, H, W = 4, 64, 64


def _records(*actions: str) -> list[FrameRecord]:
    return [FrameRecord(k + 1, a, 0.2, 0.2, 1.0) for k, a in enumerate(actions)]


def test_accepts_before_the_first_own_correction_are_counted():
    assert (
        ObjectResult(1, 0, _records("accepted", "none", "accepted", "mask")).to_dict()[
            "accepted_uncorrected"
        ]
        == 2
    )
    assert ObjectResult(1, 0, _records("clicks", "accepted")).accepted_uncorrected == 0
    assert ObjectResult(1, 0, _records("unscored", "accepted")).accepted_uncorrected == 1
    assert ObjectResult(1, 0, _records("none", "none")).accepted_uncorrected == 0


def _data() -> EvalData:
    labels = np.zeros((T, 8, 8), np.int32)
    labels[:, 1:3, 1:3], labels[:, 5:7, 5:7] = 1, 2
    return EvalData("toy", np.zeros((T, 8, 8), np.uint8), labels, np.ones(T, bool), [1, 2])


def _result(scope: str) -> EvalResult:
    base = [("toy", ObjectResult(i, 0, _records("mask", "mask", "mask"))) for i in (1, 2)]
    lora = [
        ("toy", ObjectResult(1, 0, _records("mask", "accepted", "none"))),
        ("toy", ObjectResult(2, 0, _records("accepted", "accepted", "mask"))),
    ]
    runs = {"baseline": RunResult("baseline", base), "lora": RunResult("lora", lora)}
    return EvalResult(runs, "untrained:sam2.1_hiera_tiny", 256, {"name": "default"}, scope=scope)


def test_report_names_the_scope_and_the_accepts_on_uncorrected_objects():
    report = build_report(_result("class"), [_data()], {"threshold": 0.5})
    assert report["scope"] == "class" and report["settings"]["scope"] == "class"
    head = report["headline"]
    assert head["scope"] == "class"
    assert head["accepted_uncorrected"] == 2 and head["objects_helped_uncorrected"] == 1
    assert report["lora"]["accepted_uncorrected"] == 2
    assert report["baseline"]["accepted_uncorrected"] == 0
    assert [o["accepted_uncorrected"] for o in report["lora"]["per_object"]] == [0, 2]
    text = markdown(report)
    assert "learning scope class" in text and "accepted before own correction" in text
    assert "2 frame(s) on 1 object(s) were fixed" in text
    assert "| accepted_uncorrected | 0 | 2 |" in text

    plain = markdown(build_report(_result("object"), [_data()], {"threshold": 0.5}))
    assert "learning scope object" in plain and "Class scope" not in plain


@pytest.fixture
def fast_preset(tmp_path):
    path = tmp_path / "fast.yaml"
    path.write_text("name: fast\nmax_steps_new: 2\nmax_steps_finetune: 2\n")
    return str(path)


@pytest.fixture
def learners(monkeypatch):
    """Every Learner made, with its scope."""
    from napari_sam_lora.engine.learning.learner import Learner

    made: list[Learner] = []
    real = Learner.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Learner, "__init__", spy)
    return made


def _two_objects() -> EvalData:
    from napari_sam_lora.synthetic import make_stack

    image, labels = make_stack("two_objects", n_frames=T, shape=(H, W), seed=0)
    return EvalData("two_objects", image, labels, np.ones(T, bool), [1, 2])


def _first_help(obj: ObjectResult) -> FrameRecord | None:
    """The object's first scored frame the user had to look at (IoU below threshold)."""
    return next((f for f in obj.frames if f.action not in ("none", "unscored")), None)


@pytest.mark.parametrize("scope", ["object", "class"])
def test_class_scope_shares_one_learner_across_the_stacks_objects(
    tiny_model, fast_preset, learners, scope
):
    config = EvalConfig(preset=fast_preset, scope=scope)
    result = evaluate([_two_objects()], config, model=tiny_model, progress=False)
    assert result.scope == scope
    assert len(learners) == (1 if scope == "class" else 2)
    assert all(learner.scope == scope and learner._closed for learner in learners)
    (_, first), (_, second) = result.runs["lora"].objects
    help_needed = _first_help(second)
    # Untrained SAM2 tracks poorly: the first object is corrected, the second needs help.
    assert first.corrections > 0 and help_needed is not None
    # The second object's first look: class scope offers the shared adapters' candidates,
    # object scope has none before the object's own correction.
    assert (help_needed.candidates > 0) == (scope == "class")
    if scope == "object":
        assert second.accepted_uncorrected == 0


def test_cli_scope_option(tmp_path, fast_preset, tiny_model, monkeypatch, capsys):
    import napari_sam_lora.engine.tracking.predictor as predictor

    monkeypatch.setattr(predictor, "load_model", lambda *args, **kwargs: tiny_model)
    data = _two_objects()
    tifffile.imwrite(tmp_path / "image.tif", data.images, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", data.labels, photometric="minisblack")
    out = tmp_path / "out"
    argv = ["evaluate", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"), *MODEL]
    argv += ["--preset", fast_preset, "--output", str(out), "--no-progress"]
    assert main([*argv, "--scope", "class"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["scope"] == "class" and report["settings"]["scope"] == "class"
    assert "accepted_uncorrected" in report["headline"]
    assert "accepted before own correction" in (out / "report.md").read_text()
    capsys.readouterr()

    assert main([*argv, "--scope", "nuclei"]) != 0
    assert "--scope" in capsys.readouterr().err
