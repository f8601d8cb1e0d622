"""The one CLI error boundary and the pre-flight checks (issue 11: FAIL 11, WEAK "late")."""

from __future__ import annotations

import errno
import pickle

import numpy as np
import pytest
import torch
import yaml

from napari_sam_lora.cli import describe, main
from napari_sam_lora.engine.core import atomic
from napari_sam_lora.synthetic import write_suite


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    folder = tmp_path_factory.mktemp("suite")
    write_suite(folder, kinds=["moving_disk", "drift"], n_frames=3, shape=(32, 32), seed=0)
    return folder


@pytest.fixture
def model_here(tiny_model, monkeypatch):
    """``load_model`` returns the shared tiny model; the long runs must not start."""
    import napari_sam_lora.engine.tracking.predictor as predictor
    import napari_sam_lora.evaluation.runner as runner

    monkeypatch.setattr(predictor, "load_model", lambda *a, **k: tiny_model)

    def no_run(*args, **kwargs):
        raise AssertionError("the baseline run must not start")

    monkeypatch.setattr(runner, "evaluate", no_run)
    return tiny_model


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("size", ["100", "1", "48", "100000"])
@pytest.mark.parametrize("command", ["evaluate", "demo"])
def test_bad_image_size_is_one_line(suite, capsys, command, size):  # FAIL 11
    argv = [command, "--image-size", size] + ([str(suite)] if command == "evaluate" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert "--image-size" in line and "multiple of 32" in line


def test_bad_device_index_is_one_line(suite, tmp_path, capsys):  # FAIL 11: --device cpu:abc
    out = tmp_path / "out"
    argv = ["evaluate", str(suite), "--device", "cpu:abc", "--output", str(out)]
    assert main([*argv, "--no-progress"]) == 1
    assert "device 'cpu:abc' is not valid" in one_error_line(capsys.readouterr().err)


def test_empty_sidecar_in_the_cache_is_one_line(suite, tmp_path, capsys):  # FAIL 11
    from napari_sam_lora.engine.tracking.models import cache_dir

    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "sam2.1_hiera_tiny.pt").write_bytes(b"\x00" * 64)
    (cache / "sam2.1_hiera_tiny.pt.sha256").write_text("")
    argv = ["evaluate", str(suite), "--model", "sam2.1_hiera_tiny", "--image-size", "256"]
    assert main([*argv, "--output", str(tmp_path / "o"), "--no-progress"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "damaged or not Meta's sam2.1_hiera_tiny.pt" in line and "download it again" in line


# --------------------------------------------------------------------------- train


def train_config(tmp_path, suite, **lora):
    doc = {
        "data": {"folder": str(suite)},
        "split": {"by": "stack", "val": ["drift"]},
        "model": {"name": "untrained:sam2.1_hiera_tiny", "image_size": 256, "device": "cpu"},
        "lora": {"preset": "default", **lora},
        "training": {"epochs": 1, "batch_size": 4},
        "output": str(tmp_path / "out"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("truncated", "truncated or not a checkpoint"),
        ("malicious", "never unpickles"),
        ("list", "holds a list, not a checkpoint"),
        ("folder", "is a folder, not a checkpoint"),
    ],
)
def test_bad_checkpoint_suggests_restart_before_the_model_loads(
    tmp_path, suite, capsys, monkeypatch, content, message
):  # FAIL 11: RuntimeError / UnpicklingError / AttributeError tracebacks
    import napari_sam_lora.engine.tracking.predictor as predictor

    monkeypatch.setattr(predictor, "iter_load_model", lambda *a, **k: pytest.fail("loaded"))
    path = train_config(tmp_path, suite)
    checkpoint = tmp_path / "out" / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    if content == "truncated":
        torch.save({"version": 1, "step": torch.zeros(1000)}, checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    elif content == "malicious":
        torch.save({"version": 1, "x": Evil()}, checkpoint)
    elif content == "list":
        torch.save([1, 2, 3], checkpoint)
    else:
        checkpoint.mkdir()
    assert main(["train", str(path), "--no-progress"]) == 1
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert message in line and "--restart" in line and "weights_only" not in line
    assert "must never run" not in captured.out


def test_huge_rank_is_one_line(tmp_path, suite, capsys):  # FAIL 11: 100 GB allocation
    path = train_config(tmp_path, suite, rank=100_000_000)
    assert main(["train", str(path)]) == 1
    assert "rank=100000000 is not allowed" in one_error_line(capsys.readouterr().err)


def test_train_on_a_full_disk_is_one_line_and_leaves_no_temp(tmp_path, suite, capsys, monkeypatch):
    def full(*args):  # FAIL 11: four chained tracebacks, .checkpoint.pt.tmp left behind
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    path = train_config(tmp_path, suite)
    assert main(["train", str(path), "--no-progress"]) == 1
    assert "disk holding" in one_error_line(capsys.readouterr().err)
    assert atomic.temp_paths(tmp_path / "out") == []


# --------------------------------------------------------------------------- evaluate pre-flight


def test_target_modules_matching_nothing_fail_before_the_baseline(
    tmp_path, suite, capsys, model_here
):  # WEAK: found only after the whole baseline run
    preset = tmp_path / "nothing.yaml"
    preset.write_text("target_modules: 'no_such_module'\n")
    argv = ["evaluate", str(suite), "--config", str(preset), "--output", str(tmp_path / "o")]
    assert main([*argv, "--no-progress"]) == 1
    assert "matches no module of the mask decoder" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def _adapter(tmp_path, decoder_change=None):
    import lora_fixtures
    from napari_sam_lora.engine.learning.adapter_files import save_adapters
    from napari_sam_lora.engine.learning.adapters import inject_adapter
    from napari_sam_lora.engine.learning.lora_settings import load_settings

    decoder = lora_fixtures.fresh_decoder()
    if decoder_change:
        decoder_change(decoder)
    inject_adapter(decoder, "obj1_a0", load_settings("lit"))
    save_adapters(tmp_path / "ad", decoder, ["obj1_a0"], object_ids={"obj1_a0": 1})
    return tmp_path / "ad"


def _other_model(decoder):
    with torch.no_grad():
        decoder.mask_tokens.weight.mul_(2)


@pytest.mark.parametrize("kind", ["wrong model", "truncated"])
def test_bad_adapter_fails_before_the_baseline(tmp_path, suite, capsys, model_here, kind):
    path = _adapter(tmp_path, _other_model if kind == "wrong model" else None)  # WEAK: late
    if kind == "truncated":
        st = path.with_suffix(".safetensors")
        st.write_bytes(st.read_bytes()[:100])
    argv = ["evaluate", str(suite), "--adapter", str(path), "--output", str(tmp_path / "o")]
    assert main([*argv, "--no-progress"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert ("another base model" if kind == "wrong model" else "damaged") in line


def test_unwritable_output_fails_before_the_model_loads(tmp_path, suite, capsys, monkeypatch):
    import pathlib

    real = pathlib.Path.write_bytes

    def read_only(self, data):
        if ".napari-sam-lora-probe" in self.name:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", read_only)
    import napari_sam_lora.engine.tracking.predictor as predictor

    monkeypatch.setattr(predictor, "load_model", lambda *a, **k: pytest.fail("loaded"))
    argv = ["evaluate", str(suite), "--output", str(tmp_path / "ro" / "out"), "--no-progress"]
    assert main(argv) == 1
    assert "is not writable: choose another output folder" in one_error_line(
        capsys.readouterr().err
    )


# --------------------------------------------------------------------------- the boundary


def test_unexpected_error_prints_traceback_and_says_it_is_a_bug(tmp_path, capsys, monkeypatch):
    import napari_sam_lora.synthetic as synthetic

    def broken(*args, **kwargs):
        return {}["stacks"]  # a bug: KeyError from our own code

    monkeypatch.setattr(synthetic, "write_suite", broken)
    assert main(["synthetic", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err
    assert "This is a bug in napari-sam-lora" in err and "please report it" in err


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 100 GB"), "memory"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "smaller --image-size"),
        (
            RuntimeError("The size of tensor a (25) must match the size of tensor b (24)"),
            "multiple of 32",
        ),
        (MemoryError(), "out of memory"),
        (pickle.UnpicklingError("Weights only load failed"), "never unpickled"),
        (PermissionError(errno.EACCES, "Permission denied", "/x/report.json"), "permission"),
        (OSError(errno.ENOSPC, "No space left on device", "/x/a.pt"), "disk is full"),
    ],
)
def test_expected_torch_and_os_errors_are_described(exc, expected):
    message = describe(exc)
    assert message is not None and expected in message and "\n" not in message


def test_parent_that_is_a_file_is_named(tmp_path):  # WEAK: "File exists: ..."
    (tmp_path / "f").write_text("")
    exc = FileExistsError(errno.EEXIST, "File exists", str(tmp_path / "f" / "out"))
    assert (
        describe(exc)
        == f"{tmp_path / 'f'} is a file, not a folder; remove it or choose another path"
    )
    assert describe(KeyError("x")) is None and describe(np.linalg.LinAlgError()) is None


BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "rank: [*b, *b]\n"
)


def test_yaml_bomb_is_one_line_for_evaluate_and_check_data(tmp_path, suite, capsys):  # FAIL 4
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    argv = ["evaluate", str(suite), "--config", str(bomb), "--output", str(tmp_path / "o")]
    assert main(argv) == 1
    assert "anchors and aliases" in one_error_line(capsys.readouterr().err)
    assert main(["check-data", str(bomb)]) == 1
    assert "anchors and aliases" in one_error_line(capsys.readouterr().err)
