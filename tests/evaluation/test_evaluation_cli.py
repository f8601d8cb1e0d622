"""``napari-sam-lora evaluate``: readers, an end-to-end run, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_sam_lora.cli import main
from napari_sam_lora.evaluation.data import DataError, load_eval_data, natural_key

MODEL = ["--model", "untrained:sam2.1_hiera_tiny", "--image-size", "256", "--device", "cpu"]
RUN_KEYS = {
    "corrections",
    "clicks",
    "mask_corrections",
    "accepted_candidates",
    "mean_iou",
    "seconds",
    "peak_memory_mb",
    "per_object",
}


@pytest.fixture
def fast_preset(tmp_path):
    """A LoRA recipe that trains two steps: the protocol, not the learning, is tested."""
    path = tmp_path / "fast.yaml"
    path.write_text("name: fast\nmax_steps_new: 2\nmax_steps_finetune: 2\n")
    return str(path)


@pytest.fixture
def shared_model(tiny_model, monkeypatch):
    """The command gets the session's shared test model instead of building one."""
    import napari_sam_lora.engine.tracking.predictor as predictor

    monkeypatch.setattr(predictor, "load_model", lambda *args, **kwargs: tiny_model)
    return tiny_model


def write_stack(folder, image, labels, name="disk"):
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / f"{name}_image.tif", image, photometric="minisblack")
    tifffile.imwrite(folder / f"{name}_labels.tif", labels, photometric="minisblack")
    return str(folder / f"{name}_image.tif"), str(folder / f"{name}_labels.tif")


def check_report(report: dict, max_clicks: int = 3) -> None:
    assert {"baseline", "lora", "reduction", "accepted_candidates_oracle", "settings"} <= set(
        report
    )
    for name in ("baseline", "lora"):
        run = report[name]
        assert set(run) >= RUN_KEYS
        assert set(run["seconds"]) == {"encode", "track", "train", "propose", "total"}
        assert run["corrections"] <= run["scored_frames"]
        assert run["clicks"] <= max_clicks * run["corrections"]
        assert run["mask_corrections"] <= run["corrections"]
        assert run["corrections"] + run["accepted_candidates"] <= run["scored_frames"]
        assert run["corrections"] == sum(o["corrections"] for o in run["per_object"])
        assert run["peak_memory_mb"] > 0
    base, lora = report["baseline"], report["lora"]
    assert base["accepted_candidates"] == 0 and base["seconds"]["train"] == 0
    assert lora["accepted_candidates"] <= report["accepted_candidates_oracle"]
    if base["corrections"]:
        assert report["reduction"] == pytest.approx(1 - lora["corrections"] / base["corrections"])


def test_end_to_end_on_a_synthetic_suite(tmp_path, fast_preset, shared_model, capsys):
    from napari_sam_lora.synthetic import write_suite

    write_suite(tmp_path / "suite", kinds=["moving_disk"], n_frames=3, shape=(64, 64))
    out = tmp_path / "out"
    argv = ["evaluate", str(tmp_path / "suite"), *MODEL, "--preset", fast_preset]
    assert main([*argv, "--output", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    check_report(report)
    assert report["baseline"]["scored_frames"] == 2  # frames 1 and 2; frame 0 is the prompt
    assert report["settings"]["preset"] == fast_preset and report["settings"]["image_size"] == 256
    assert report["stacks"][0]["name"] == "moving_disk"
    lora = report["lora"]
    assert len(lora["trainings"]) == lora["corrections"]  # every correction trains
    assert report["seconds"]["encode_shared"] > 0 and lora["seconds"]["track"] > 0
    first, second = lora["per_object"][0]["frames"]
    if first["action"] in ("clicks", "mask") and second["iou_tracked"] < 0.5:
        assert second["candidates"] == 1  # the adapter trained on frame 1 proposes
    assert "| corrections |" in (out / "report.md").read_text()
    assert (out / "report.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "reduction" in printed and "report.json" in printed


def test_adapter_file_starts_the_learning_run(tmp_path, fast_preset, shared_model):
    from napari_sam_lora.engine.learning.adapters import adapter_names, delete_adapter
    from napari_sam_lora.engine.learning.learner import Learner
    from napari_sam_lora.engine.tracking.session import Session
    from napari_sam_lora.synthetic import make_stack, write_suite

    image, truth = make_stack("moving_disk", n_frames=3, shape=(64, 64))
    session = Session(image, model=shared_model)
    session.add_mask(0, 1, truth[0] == 1)
    session.propagate_all("forward")
    learner = Learner(session, fast_preset)
    fixed = np.where(truth[1] == 1, 1, 0).astype(np.int32)
    learner.learn(1, fixed)
    learner.save(tmp_path / "pretrained")
    for name in adapter_names(learner.decoder):
        delete_adapter(learner.decoder, name)
    write_suite(tmp_path / "suite", kinds=["moving_disk"], n_frames=3, shape=(64, 64))
    out = tmp_path / "out"
    argv = ["evaluate", str(tmp_path / "suite"), *MODEL, "--preset", fast_preset]
    argv += ["--adapter", str(tmp_path / "pretrained"), "--output", str(out), "--no-progress"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    check_report(report)
    assert report["settings"]["adapter"] == str(tmp_path / "pretrained")
    first = report["lora"]["per_object"][0]["frames"][0]
    assert first["candidates"] >= 1  # the loaded adapter proposes before any correction
    assert adapter_names(shared_model.predictor.sam_mask_decoder) == []


def test_end_to_end_sparse_png_folders_from_the_middle(tmp_path, fast_preset, shared_model):
    from napari_sam_lora.synthetic import make_stack

    image, labels = make_stack("two_objects", n_frames=5, shape=(64, 64))
    frames, masks = tmp_path / "frames", tmp_path / "masks"
    frames.mkdir()
    masks.mkdir()
    for t in range(5):
        Image.fromarray(image[t]).save(frames / f"img{t}.png")
        if t != 3:  # frame 3 is not annotated
            Image.fromarray(labels[t].astype(np.uint8), mode="L").save(masks / f"img{t}.png")
    out = tmp_path / "out"
    argv = ["evaluate", str(frames), str(masks), *MODEL, "--config", fast_preset]
    argv += ["--start", "middle", "--objects", "2", "--max-clicks", "1", "--output", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    check_report(report, max_clicks=1)
    (obj,) = report["baseline"]["per_object"]
    assert obj["obj_id"] == 2 and obj["start_frame"] == 2
    assert [f["frame"] for f in obj["frames"]] == [3, 4, 1, 0]
    assert obj["frames"][0]["action"] == "unscored" and obj["scored_frames"] == 3


# --------------------------------------------------------------------------- readers


def test_folder_frames_are_in_natural_order(tmp_path):
    frames, masks = tmp_path / "f", tmp_path / "m"
    frames.mkdir()
    masks.mkdir()
    for t in (10, 2, 1):
        Image.fromarray(np.full((8, 8), t, np.uint8)).save(frames / f"frame{t}.png")
    palette = Image.fromarray(np.full((8, 8), 3, np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    palette.save(masks / "frame10.png")  # DAVIS style: palette index = id
    data = load_eval_data(frames, masks)
    assert [int(f[0, 0]) for f in data.images] == [1, 2, 10]
    assert data.annotated.tolist() == [False, False, True]
    assert data.object_ids == [3] and (data.labels[2] == 3).all()
    assert sorted(["b10", "b9", "a"], key=natural_key) == ["a", "b9", "b10"]


def test_npy_and_frame_options(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (6, 16, 16)).astype(np.uint8)
    labels = np.zeros((6, 16, 16), np.int32)
    labels[:, 4:8, 4:8] = 1
    labels[4:, 10:12, 10:12] = 2
    np.save(tmp_path / "im.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    data = load_eval_data(tmp_path / "im.npy", tmp_path / "lab.npy", frames="1:4")
    assert data.num_frames == 3 and data.first_frame == 1 and data.object_ids == [1]
    data = load_eval_data(tmp_path / "im.npy", tmp_path / "lab.npy", annotated_frames="0,2:4")
    assert data.annotated.tolist() == [True, False, True, True, False, False]
    assert data.object_ids == [1]  # id 2 only on unannotated frames


# --------------------------------------------------------------------------- bad inputs


def _bad_inputs(tmp_path):
    """name -> (argv without the command, expected message)."""
    good_image = np.zeros((3, 16, 16), np.uint8)
    good_labels = np.zeros((3, 16, 16), np.int32)
    good_labels[:, 2:6, 2:6] = 1
    img, lab = write_stack(tmp_path / "ok", good_image, good_labels)
    _, short = write_stack(tmp_path / "short", good_image, good_labels[:2])
    _, narrow = write_stack(tmp_path / "narrow", good_image, good_labels[:, :, :8])
    _, empty = write_stack(tmp_path / "empty", good_image, np.zeros_like(good_labels))
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"this is not a tiff")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "no_frames").mkdir()
    colour = tmp_path / "colour"
    colour.mkdir()
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200
    for t in range(3):
        Image.fromarray(rgb).save(colour / f"{t:05d}.png")
    return {
        "frame count": ([img, short], "must match"),
        "frame shape": ([img, narrow], "must match"),
        "no objects": ([img, empty], "no objects"),
        "unreadable": ([str(garbage), lab], "cannot read"),
        "missing file": ([str(tmp_path / "nope.tif"), lab], "does not exist"),
        "empty id": ([img, lab, "--objects", "1,7"], "id 7 has no pixels"),
        "bad ids": ([img, lab, "--objects", "one"], "expected positive ids"),
        "no frames": ([str(tmp_path / "no_frames"), lab], "no PNG, JPEG or TIFF"),
        "colour masks": ([img, str(colour)], "colour image"),
        "too few frames": ([img, lab, "--frames", "0:1"], "at least 2"),
        "bad range": ([img, lab, "--frames", "x"], "expected A:B"),
        "annotated out of range": ([img, lab, "--annotated-frames", "9"], "out of range"),
        "no labels": ([img], "LABELS is missing"),
        "output is a file": ([img, lab, "--output", str(a_file)], "not a folder"),
        "bad preset": ([img, lab, "--preset", "nope"], "Unknown LoRA preset"),
        "bad model": ([img, lab, "--model", "sam9_giant"], "sam9_giant"),
        "bad device": ([img, lab, "--device", "tpu"], "unknown device"),
        "bad threshold": ([img, lab, "--threshold", "1.5"], "(0, 1]"),
        "bad clicks": ([img, lab, "--max-clicks", "-1"], ">= 0"),
        "bad start": ([img, lab, "--start", "last"], "invalid choice"),
        "missing adapter": ([img, lab, "--adapter", str(tmp_path / "nope")], "missing"),
    }


CASES = [
    "frame count",
    "frame shape",
    "no objects",
    "unreadable",
    "missing file",
    "empty id",
    "bad ids",
    "no frames",
    "colour masks",
    "too few frames",
    "bad range",
    "annotated out of range",
    "no labels",
    "output is a file",
    "bad preset",
    "bad model",
    "bad device",
    "bad threshold",
    "bad clicks",
    "bad start",
    "missing adapter",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_message_nothing_written(tmp_path, capsys, case, monkeypatch):
    import napari_sam_lora.engine.tracking.predictor as predictor

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load for a bad input")

    monkeypatch.setattr(predictor, "load_model", no_model)
    argv, message = _bad_inputs(tmp_path)[case]
    out = tmp_path / "report_out"
    if "--output" not in argv:
        argv = [*argv, "--output", str(out)]
    code = main(["evaluate", *argv, "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
    assert not out.exists()


def test_reader_errors_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_eval_data(tmp_path / "a.tif", tmp_path / "b.tif")
