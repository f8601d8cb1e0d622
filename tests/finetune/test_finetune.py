"""Config-driven fine-tuning (``napari_sam_lora.finetune``) on tiny synthetic stacks.

The untrained hiera-tiny at 256 px (``tiny_model``) is shared; the examples are recorded
once per module into a shared cache that every training run reuses. Each run removes its
adapter from the shared decoder at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from napari_sam_lora.cli.check_data import add_parser as add_check_data
from napari_sam_lora.cli.train import add_parser as add_train
from napari_sam_lora.engine.learning.adapters import (
    AdapterError,
    activate,
    adapter_names,
    delete_adapter,
    propose,
)
from napari_sam_lora.engine.learning.lora_settings import load_settings
from napari_sam_lora.finetune.config import ConfigError, load_config
from napari_sam_lora.finetune.data_check import check_data
from napari_sam_lora.finetune.pairs import DataError
from napari_sam_lora.finetune.trainer import train
from napari_sam_lora.simulation.clicks import iou
from napari_sam_lora.synthetic import make_stack, write_suite

KINDS = ["moving_disk", "deforming", "drift"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with a 3-stack suite (3 frames, 64×64) and a shared example cache."""
    folder = tmp_path_factory.mktemp("finetune")
    write_suite(folder / "suite", kinds=KINDS, n_frames=3, shape=(64, 64), seed=0)
    return folder


def base_config(workdir: Path, output: str = "out", **changes) -> dict:
    doc = {
        "data": {"folder": "suite"},
        "split": {"by": "stack", "val": ["drift"]},
        "model": {"name": "untrained:sam2.1_hiera_tiny", "image_size": 256, "device": "cpu"},
        "lora": {"preset": "default"},
        "training": {"epochs": 3, "batch_size": 4, "lr": 1.0e-2, "lr_schedule": "constant"},
        "early_stopping": {"patience": None},
        "examples": {"max_clicks": 1, "prompts": ["box"], "prompt_frames": 1, "cache": "cache"},
        "output": output,
    }
    for key, value in changes.items():
        doc[key] = {**doc[key], **value} if isinstance(doc.get(key), dict) else value
    return doc


def write_config(workdir: Path, doc: dict, name: str = "config.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def run(gen):
    """Drive a training generator; return (progress list, result)."""
    seen = []
    while True:
        try:
            seen.append(next(gen))
        except StopIteration as stop:
            return seen, stop.value


def clear(model) -> None:
    decoder = model.predictor.sam_mask_decoder
    activate(decoder, None)  # engine.delete_adapter fails on the last adapter while active
    for name in adapter_names(decoder):
        delete_adapter(decoder, name)


@pytest.fixture(scope="module")
def trained(workdir, tiny_model):
    """One full training run (records the shared example cache)."""
    config = load_config(write_config(workdir, base_config(workdir)))
    progress, result = run(train(config, model=tiny_model))
    assert adapter_names(tiny_model.predictor.sam_mask_decoder) == []
    return config, progress, result


# --------------------------------------------------------------------------- training


def test_training_lowers_validation_loss_and_beats_the_base(trained):
    config, progress, result = trained
    base, rows = result.history[0], result.history[1:]
    assert base.epoch == 0 and len(rows) == 3
    best = next(r for r in rows if r.epoch == result.best_epoch)
    assert best.val_loss < base.val_loss
    assert best.val_iou > base.val_iou + 0.2
    assert rows[-1].val_loss < base.val_loss
    # Modules and parameter count are reported before the first step.
    stages = [p.stage for p in progress]
    inject = progress[stages.index("inject")]
    assert stages.index("inject") < stages.index("train")
    assert "21 decoder modules" in inject.message and "35,328" in inject.message
    assert "transformer.layers.0.self_attn.q_proj" in inject.message
    # Files: best adapter (live format), metrics, diagnosis, checkpoint.
    out = config.output
    for name in ("adapter.safetensors", "adapter.json", "metrics.png", "checkpoint.pt"):
        assert (out / name).is_file(), name
    with (out / "metrics.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in lines] == [0, 1, 2, 3]
    assert lines[0]["train_loss"] == "" and float(lines[1]["val_loss"]) > 0
    doc = json.loads((out / "adapter.json").read_text())
    assert doc["format"] == "napari-sam-lora-adapters"
    assert [(a["name"], a["object_id"]) for a in doc["adapters"]] == [("obj1_ft", 1)]
    assert doc["metadata"]["finetune"]["epoch"] == result.best_epoch
    diag = json.loads((out / "diagnosis.json").read_text())
    assert diag["models"]["adapter"]["iou"]["mean"] > diag["models"]["base"]["iou"]["mean"]
    assert {"predicted_iou", "object_score", "empty_fraction"} <= set(diag["models"]["adapter"])
    assert "Fine-tuning diagnosis" in (out / "diagnosis.md").read_text()
    assert result.examples["train"]["tracking"] == 4 and result.examples["val"]["box"] == 1


def test_adapter_loads_in_a_learner_and_changes_predictions(trained, tiny_model):
    from napari_sam_lora.engine.learning.learner import Learner
    from napari_sam_lora.engine.tracking.session import Session
    from napari_sam_lora.finetune.adapter_file import activate_finetuned

    _, _, result = trained
    image, labels = make_stack("moving_disk", n_frames=3, shape=(64, 64), seed=7)
    truth = labels == 1
    session = Session(image, model=tiny_model)
    try:
        session.add_mask(0, 1, truth[0])
        base = session.propagate_all("forward").copy()
        learner = Learner(session, load_settings("default").replace(max_steps_finetune=3))
        assert learner.load(result.adapter_path) == ["obj1_ft"]
        assert learner.pools[1].names == ["obj1_ft"]
        (candidate,) = learner.propose(frames=[1, 2])
        for frame, mask in zip(candidate.frames, candidate.masks, strict=True):
            assert iou(mask, truth[frame]) > iou(base[frame] == 1, truth[frame]) + 0.2
        record = session.decoder_inputs(2, 1)
        ours, plain = (
            propose(learner.decoder, "obj1_ft", record),
            propose(learner.decoder, None, record),
        )
        assert not np.allclose(ours.logits, plain.logits)
        # Live learning continues on top of it (the adapter is fine-tuned, not replaced).
        report = learner.learn(1, np.where(truth[1], 1, 0).astype(np.int32))
        assert [(t.adapter_name, t.fine_tune) for t in report.trained] == [("obj1_ft", True)]
        clear(tiny_model)
        # Or as part of the model: plain tracking uses it.
        assert activate_finetuned(session, result.adapter_path) == "obj1_ft"
        session.reset()
        session.add_mask(0, 1, truth[0])
        tracked = session.propagate_all("forward")
        assert iou(tracked[2] == 1, truth[2]) > iou(base[2] == 1, truth[2]) + 0.2
    finally:
        clear(tiny_model)


def test_resume_continues_from_the_saved_step(trained, workdir, tiny_model):
    config = load_config(write_config(workdir, base_config(workdir, "resumed"), "resume.yaml"))
    gen = train(config, model=tiny_model)
    for p in gen:
        if p.stage == "train" and p.done == 2 and p.epoch is None:
            break
    gen.close()  # cancel: the checkpoint keeps step 2
    assert adapter_names(tiny_model.predictor.sam_mask_decoder) == []
    import torch

    assert torch.load(config.output / "checkpoint.pt", weights_only=True)["step"] == 2
    progress, result = run(train(config, model=tiny_model))
    steps = [p.done for p in progress if p.stage == "train" and p.epoch is None]
    assert progress[[p.stage for p in progress].index("train")].message == "resumed at step 2"
    assert steps[1:3] == [3, 4]
    assert result.steps == trained[2].steps
    first = [r.val_loss for r in trained[2].history]
    assert [r.epoch for r in result.history] == [0, 1, 2, 3]
    np.testing.assert_allclose([r.val_loss for r in result.history], first, rtol=1e-4)


def test_a_pattern_matching_nothing_stops_before_any_work(workdir, tiny_model):
    doc = base_config(workdir, "nomatch", lora={"target_modules": r"transformer\.nothing"})
    config = load_config(write_config(workdir, doc, "nomatch.yaml"))
    seen = []
    with pytest.raises(AdapterError, match="matches no module of the mask decoder"):
        for p in train(config, model=tiny_model):
            seen.append(p.stage)
    assert "record" not in seen and "train" not in seen


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trainig": {}}, r"unknown key\(s\) 'trainig' in top level; valid keys: data, split"),
        ({"training": {"epoch": 3}}, r"'epoch' in training; valid keys: lr, lr_schedule, epochs"),
        ({"training": {"lr": -1}}, r"training.lr=-1 is not allowed: expected a learning rate > 0"),
        ({"training": {"epochs": "many"}}, r"training.epochs='many' .* expected an integer"),
        ({"split": {"by": "object"}}, r"split.by='object' .* expected 'stack' or 'frame'"),
        ({"lora": {"rnak": 4}}, r"'rnak' in lora; valid keys: preset, description, target_modules"),
        ({"lora": {"preset": "huge"}}, r"Unknown LoRA preset 'huge'. Available presets: .*default"),
        ({"lora": {"rank": 0}}, r"rank=0 is not allowed: expected an integer >= 1"),
        ({"lora": {"target_modules": "("}}, r"target_modules='\(' is not a valid regex"),
        ({"threshold": 2}, r"threshold=2.0 is not allowed"),
        ({"data": {"pairs": [{"images": "a.tif"}]}}, r"data.pairs\[0\] needs labels"),
    ],
)
def test_bad_config_gives_a_specific_error(workdir, changes, message):
    path = write_config(workdir, base_config(workdir, **changes), "bad.yaml")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_config_resolves_paths_against_its_folder(workdir):
    config = load_config(write_config(workdir, base_config(workdir)))
    assert config.output == workdir / "out"
    assert config.cache_dir == workdir / "cache"
    assert config.lora.name == "default" and config.training.lr == pytest.approx(1e-2)


# --------------------------------------------------------------------------- data


def save(path: Path, array: np.ndarray) -> None:
    tifffile.imwrite(path, array, photometric="minisblack")


def broken_suite(folder: Path) -> Path:
    image, labels = make_stack("moving_disk", n_frames=3, shape=(32, 32), seed=0)
    folder.mkdir()
    save(folder / "short_image.tif", image)
    save(folder / "short_labels.tif", labels[:2])  # a frame missing
    save(folder / "blank_image.tif", image)
    save(folder / "blank_labels.tif", np.zeros_like(labels))  # no object
    holes = labels.copy()
    holes[1] = 0
    save(folder / "holes_image.tif", image)
    save(folder / "holes_labels.tif", holes)  # a frame with no labels: warning
    return folder


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_check_data(sub)
    add_train(sub)
    return parser.parse_args(argv)


def test_broken_data_is_reported_and_stops_training(tmp_path, tiny_model, capsys):
    broken_suite(tmp_path / "broken")
    doc = base_config(tmp_path, split={"val": [], "by": "stack", "val_fraction": 0.5})
    doc["data"] = {"folder": "broken"}
    path = write_config(tmp_path, doc)
    report = check_data(load_config(path))
    problems = report.all_problems()
    assert any(p.startswith("short: labels:") and "(2 frame(s) of 32x32)" in p for p in problems)
    assert "blank: no object: every annotated frame is all background (0)" in problems
    holes = next(s for s in report.stacks if s.name == "holes")
    assert holes.empty_frames == [1] and not holes.problems
    assert holes.id_stats[1]["frames"] == 2 and holes.labels_dtype == "int32"
    args = parse(["check-data", str(path)])
    assert args.handler(args) == 1
    out = capsys.readouterr().out
    assert "PROBLEM" in out and "2 problem(s): fix them before training" in out
    with pytest.raises(DataError, match="the data has problems: blank: no object"):
        next(s for s in train(load_config(path), model=tiny_model) if s.stage != "check")


def test_folder_without_labels_and_empty_split(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    image, labels = make_stack("moving_disk", n_frames=3, shape=(32, 32))
    save(folder / "a_image.tif", image)
    save(folder / "a_labels.tif", labels)
    save(folder / "b_image.tif", image)
    doc = base_config(tmp_path, split={"val": [], "by": "stack"})
    doc["data"] = {"folder": "data"}
    report = check_data(load_config(write_config(tmp_path, doc)))
    assert report.all_problems() == [f"{folder}: stack 'b' has no labels (b_image.tif)"]
    (folder / "b_image.tif").unlink()
    report = check_data(load_config(write_config(tmp_path, doc)))
    assert report.all_problems() == [
        "the validation split is empty (add stacks or use split.by: frame)"
    ]


def test_check_data_cli_passes_on_good_data(workdir, capsys):
    args = parse(["check-data", str(write_config(workdir, base_config(workdir), "ok.yaml"))])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "OK: ready to train" in out and "train/val frames 0/3" in out


def test_the_documented_example_config_is_valid():
    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "configs" / "finetune" / "example.yaml")
    assert [p.name for p in config.data.pairs] == ["moving_disk", "decoy", "occlusion", "noisy16"]
    assert config.lora.name == "strong" and config.lora.rank == 16
    assert config.output == root / "runs" / "finetune_example"
    assert config.early_stopping.monitor == "val_iou"
    assert config.examples.prompts == ("point", "box")


def _stats(mean: float, empty: float, absent: float, by_threshold: dict[str, float]) -> dict:
    return {
        "iou": {"mean": mean},
        "predicted_iou": {"correlation_with_iou": 0.9},
        "empty_fraction": empty,
        "object_absent_fraction": absent,
        "mean_iou_by_threshold": by_threshold,
    }


def test_diagnosis_warns_and_suggests_a_threshold_when_predictions_are_empty():
    from napari_sam_lora.finetune.diagnose import Diagnosis, _warn

    sweep = {"0.1": 0.2, "0.2": 0.6, "0.5": 0.05}
    diag = Diagnosis(threshold=0.5, n_examples=10)
    diag.models = {"adapter": _stats(0.05, 0.8, 0.0, sweep), "base": _stats(0.1, 0.0, 0.0, sweep)}
    _warn(diag)
    assert diag.suggested_threshold == 0.2
    assert diag.warnings[0] == (
        "80% of the validation predictions are empty at threshold 0.5 although the object is "
        "there. Suggested threshold: 0.2 (mean IoU 0.050 -> 0.600)."
    )
    assert "does not beat the base model" in diag.warnings[1]
    diag = Diagnosis(threshold=0.5, n_examples=10)
    diag.models = {"adapter": _stats(0.3, 0.9, 0.9, sweep), "base": _stats(0.1, 0.0, 0.0, sweep)}
    _warn(diag)
    assert "object score says 'absent' on 90%" in diag.warnings[0]
    assert "no mask threshold fixes" in diag.warnings[0]
