"""The command line and the batch job fail early, completely and quietly (issue 19).

Long errors are never cut, the output folder is checked before a cluster starts and is
never read as an input, adapter files are checked on the driver, Ctrl-C stops the batch in
one line, and a truncated TIFF says so.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from lora_fixtures import identity_adapter_file
from untrained import TEST_IMAGE_SIZE, TEST_MODEL

distributed = pytest.importorskip("distributed")
tifffile = pytest.importorskip("tifffile")
pytest.importorskip("zarr")

from napari_sam_lora.batch import cluster, job  # noqa: E402
from napari_sam_lora.cli import main  # noqa: E402
from napari_sam_lora.cli._boundary import PRINTED_LINES, run_command  # noqa: E402
from napari_sam_lora.data.readers import open_stack  # noqa: E402
from napari_sam_lora.engine.core.errors import ConfigError, PromptError, StackError  # noqa: E402

SHAPE = (32, 32)
MODEL_ARGS = ["--model", TEST_MODEL, "--image-size", str(TEST_IMAGE_SIZE), "--no-progress"]


@pytest.fixture
def no_cluster(monkeypatch):
    """Starting a cluster (or running any stack) fails the test: checks come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a cluster was started before the inputs were checked")

    monkeypatch.setattr(cluster, "client", refuse)


def _stacks(folder: Path, names=("s0",), n_frames=3) -> Path:
    """Tiny TIFF stacks in ``folder`` and 2D seed labels in ``folder/../seeds``."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = folder.parent / "seeds"
    seeds.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        image = np.full((n_frames, *SHAPE), 10 + i, np.uint8)
        tifffile.imwrite(folder / f"{name}.tif", image, photometric="minisblack")
        label = np.zeros(SHAPE, np.uint8)
        label[8:16, 8:16] = 1
        tifffile.imwrite(seeds / f"{name}.tif", label)
    return seeds


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()]


# --------------------------------------------------------------------------- 1: long errors


def test_points_table_with_12_bad_rows_lists_every_row(tmp_path, capsys, no_cluster):
    _stacks(tmp_path / "data")
    table = tmp_path / "clicks.csv"
    rows = ["stack,frame,object,row,col,positive"]
    rows += [f"s0,{50 + i},1,5,5,1" for i in range(12)]  # frames outside the 3-frame stack
    table.write_text("\n".join(rows) + "\n")
    argv = ["segment", str(tmp_path / "data" / "s0.tif"), "-o", str(tmp_path / "out")]
    assert main([*argv, "--points", str(table), *MODEL_ARGS]) == 1
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert lines[0].startswith("napari-sam-lora segment: error:")
    assert "problem(s); nothing was run" in lines[0]
    for line_number in range(2, 14):  # every bad row, by its line in the file
        assert any(f"line {line_number}" in line for line in lines), (line_number, err)
    full = Path(lines[-1].split("the full message is in ")[1].rstrip(")"))
    text = full.read_text()
    assert all(f"line {n}" in text for n in range(2, 14))
    full.unlink()
    assert not (tmp_path / "out").exists()


def test_a_very_long_error_prints_its_first_lines_and_where_the_rest_is(capsys):
    problems = [f"row {i}: frame {i} is outside the stack" for i in range(60)]

    def handler(args):
        raise PromptError("60 problem(s); nothing was run:\n  " + "\n  ".join(problems))

    assert run_command("segment", handler, None) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == PRINTED_LINES + 1
    assert lines[0] == "napari-sam-lora segment: error: 60 problem(s); nothing was run:"
    assert "41 more line(s)" in lines[-1] and "the full message is in" in lines[-1]
    full = Path(lines[-1].split("the full message is in ")[1].rstrip(")"))
    assert all(p in full.read_text() for p in problems)  # nothing is lost
    full.unlink()


def test_a_short_error_stays_one_line(capsys):
    def handler(args):
        raise PromptError("bad\n  row 1")

    assert run_command("segment", handler, None) == 1
    assert _error_lines(capsys.readouterr().err) == ["napari-sam-lora segment: error: bad row 1"]


def test_one_long_line_is_printed_whole_on_one_line(capsys):
    message = "target_modules matches nothing; names look like: " + ", ".join(
        f"layer{i}.proj" for i in range(80)
    )

    def handler(args):
        raise PromptError(message)

    assert run_command("evaluate", handler, None) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert line == f"napari-sam-lora evaluate: error: {message}"


# --------------------------------------------------------------------------- 2: output folder


def test_output_under_a_file_is_refused_before_the_cluster(tmp_path, capsys, no_cluster):
    seeds = _stacks(tmp_path / "data")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = ["segment", str(tmp_path / "data" / "s0.tif"), "-o", str(blocker / "out")]
    assert main([*argv, "--seeds", str(seeds), *MODEL_ARGS]) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert "output folder" in line and "a_file is a file, not a folder" in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_output_is_refused_before_the_cluster(tmp_path, no_cluster):
    seeds = _stacks(tmp_path / "data")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"output folder .*locked.* not writable"):
            job.segment(tmp_path / "data" / "s0.tif", locked, seeds=seeds, model=TEST_MODEL)
        with pytest.raises(ConfigError, match="cannot be created in"):
            job.segment(tmp_path / "data" / "s0.tif", locked / "out", seeds=seeds)
    finally:
        locked.chmod(0o700)


def test_unwritable_output_is_refused_before_the_cluster(tmp_path, monkeypatch, no_cluster):
    """A read-only file system (as root, permissions alone never refuse)."""
    import errno
    import tempfile

    seeds = _stacks(tmp_path / "data")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(ConfigError, match=r"(?s)output folder .*out.*Read-only file system"):
        job.segment(tmp_path / "data" / "s0.tif", tmp_path / "out", seeds=seeds)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 3: output inside


def _plan(inputs, out, seeds, output_format="ome-zarr"):
    plan, _, _ = job._plan(
        inputs,
        Path(out).resolve(),
        seeds=seeds,
        points=None,
        model=TEST_MODEL,
        image_size=TEST_IMAGE_SIZE,
        adapters=(),
        direction="both",
        start="middle",
        output_format=output_format,
        axis="t",
        resume=True,
    )
    return [task.name for task in plan.tasks]


def test_output_folder_inside_the_pattern_is_not_an_input(tmp_path):
    seeds = _stacks(tmp_path / "data", names=("s0", "s1"))
    out = tmp_path / "data" / "out"  # a rerun of: segment 'data/*' -o data/out
    (out / "s0_labels.ome.zarr" / "0").mkdir(parents=True)
    (out / "s0_labels.ome.zarr" / ".zgroup").write_text("{}")
    (out / "summary.csv").write_text("stack\n")
    assert _plan([str(tmp_path / "data" / "*")], out, seeds) == ["s0", "s1"]
    with pytest.raises(ConfigError, match="matched nothing"):  # only outputs match it
        _plan([str(tmp_path / "data" / "*" / "*")], out, seeds)
    with pytest.raises(ConfigError, match="output folder"):
        _plan([str(out)], out, seeds)
    with pytest.raises(ConfigError, match="output folder"):
        _plan([str(out / "s0_labels.ome.zarr")], out, seeds)


def test_outputs_written_beside_the_inputs_are_not_inputs(tmp_path):
    seeds = _stacks(tmp_path / "data", names=("s0",))
    data = tmp_path / "data"  # segment 'data/*.tif' -o data --format tiff, run twice
    tifffile.imwrite(data / "s0_labels.tif", np.zeros((3, *SHAPE), np.int32))
    assert _plan([str(data / "*.tif")], data, seeds, output_format="tiff") == ["s0"]
    assert _plan([str(data / "s0.tif")], data, seeds, output_format="tiff") == ["s0"]


# --------------------------------------------------------------------------- 4: adapters


def _misshaped_adapter(model, path: Path) -> Path:
    """An adapter file saved from ``model`` whose first LoRA tensor has a wrong shape."""
    import hashlib

    import safetensors.torch
    import torch

    identity_adapter_file(model, path)
    st_path = path.parent / f"{path.name}.safetensors"
    json_path = path.parent / f"{path.name}.json"
    tensors = safetensors.torch.load_file(st_path)
    key = sorted(k for k in tensors if "lora_A" in k)[0]
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    safetensors.torch.save_file(tensors, st_path)
    doc = json.loads(json_path.read_text())
    doc["safetensors_sha256"] = hashlib.sha256(st_path.read_bytes()).hexdigest()
    json_path.write_text(json.dumps(doc))
    return st_path


def test_misshaped_adapter_is_refused_on_the_driver_naming_the_file(
    tiny_model, tmp_path, monkeypatch, capsys, no_cluster
):
    import napari_sam_lora.engine.tracking.predictor as predictor

    loads = []
    monkeypatch.setattr(predictor, "load_model", lambda *a, **k: loads.append(a) or tiny_model)
    seeds = _stacks(tmp_path / "data")
    st_path = _misshaped_adapter(tiny_model, tmp_path / "cells")
    argv = ["segment", str(tmp_path / "data" / "s0.tif"), "-o", str(tmp_path / "out")]
    code = main([*argv, "--seeds", str(seeds), "--adapter", str(st_path), *MODEL_ARGS])
    assert code == 1
    err = capsys.readouterr().err
    (line,) = _error_lines(err)
    assert "Worker plugin" not in err
    assert str(st_path) in line and "mis-shaped" in line and "nothing was run" in line
    assert loads and loads[0][1] == "cpu"  # the engine's check ran here, on the driver
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 5: Ctrl-C


def test_ctrl_c_is_one_line_with_exit_code_130(capsys):
    def handler(args):
        raise KeyboardInterrupt

    assert run_command("segment", handler, None) == 130
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith("napari-sam-lora segment: interrupted")


def _ignores_sigint() -> bool:
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.slow
def test_workers_of_the_jobs_cluster_ignore_ctrl_c(monkeypatch):
    """Only the driver gets Ctrl-C (no worker tracebacks); the cluster then stops quietly."""
    real = distributed.LocalCluster

    def local(*args, **kwargs):  # the tests' rule: listen on 127.0.0.1 only
        return real(*args, **{**kwargs, "host": "127.0.0.1", "dashboard_address": None})

    monkeypatch.setattr(distributed, "LocalCluster", local)
    before = signal.getsignal(signal.SIGINT)
    start = cluster.client(None, None, 1, 1, None, "cpu", None)
    with pytest.raises(KeyboardInterrupt), start as (own, _):
        assert signal.getsignal(signal.SIGINT) is before  # the driver still gets Ctrl-C
        assert list(own.run(_ignores_sigint).values()) == [True]
        local_cluster = own.cluster
        raise KeyboardInterrupt  # as a Ctrl-C while the stacks run
    assert own.status == "closed" and local_cluster.status.name == "closed"
    assert signal.getsignal(signal.SIGINT) is before
    assert logging.getLogger("distributed").level != logging.CRITICAL + 1  # restored


# --------------------------------------------------------------------------- 6: truncated TIFF


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff_names_the_file_and_says_so(tmp_path, compression):
    image = np.random.default_rng(0).integers(0, 1000, (4, 64, 64)).astype(np.uint16)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, image, compression=compression)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) * 2 // 3])  # an interrupted copy
    with pytest.raises(StackError, match=r"cells\.tif: the TIFF file is truncated or damaged"):
        np.asarray(open_stack(path)[3])


def test_damaged_tiff_header_names_the_file(tmp_path):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, np.zeros((4, 16, 16), np.uint8))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StackError, match=r"cells\.tif: .*truncated or damaged"):
        open_stack(path)


def test_intact_tiffs_still_read(tmp_path):
    image = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    for compression in (None, "zlib"):
        path = tmp_path / f"{compression}.tif"
        tifffile.imwrite(path, image, compression=compression)
        assert np.array_equal(np.asarray(open_stack(path)[...]), image)
