"""Nothing lost on a damaged or interrupted write: file sets and checkpoints (issue 19)."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
import torch

import lora_fixtures
from lora_fixtures import fresh_decoder
from napari_sam_lora.engine.core import atomic
from napari_sam_lora.engine.core.atomic import previous_path, temp_paths, write_files
from napari_sam_lora.engine.core.errors import WriteError
from napari_sam_lora.engine.learning.adapter_files import load_adapters, save_adapters
from napari_sam_lora.engine.learning.adapters import inject_adapter
from napari_sam_lora.engine.learning.lora_settings import load_settings

decoder = lora_fixtures.decoder
_REAL_REPLACE = os.replace


def _kill_rename(monkeypatch, at: int = 2) -> None:
    """``os.replace`` in the atomic writer: the process dies at rename number ``at``."""
    calls = []

    def killed(src, dst):
        calls.append(dst)
        if len(calls) == at:
            raise KeyboardInterrupt  # the process dies between the renames
        _REAL_REPLACE(src, dst)

    monkeypatch.setattr(atomic.os, "replace", killed)


def _disk(shape: tuple[int, int], center: tuple[int, int], radius: int) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


# -- 1. multi-file sets: the previous complete set stays until the new one is complete ---------


def test_a_multi_file_set_killed_between_renames_keeps_the_previous_set(tmp_path, monkeypatch):
    a, b = tmp_path / "x.json", tmp_path / "x.npz"
    write_files({a: b"old-a", b: b"old-b"})  # no keep_previous: every multi-file set keeps it
    _kill_rename(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        write_files({a: b"new-a", b: b"new-b"})
    assert a.read_bytes() == b"new-a" and b.read_bytes() == b"old-b"
    assert previous_path(a).read_bytes() == b"old-a"  # the old pair is still complete
    assert previous_path(b).read_bytes() == b"old-b"
    assert temp_paths(tmp_path) == []  # the interrupted save left no temporary file


def test_a_second_interrupted_save_keeps_the_last_complete_set(tmp_path, monkeypatch):
    a, b = tmp_path / "x.json", tmp_path / "x.npz"
    write_files({a: b"v0-a", b: b"v0-b"})
    for version in ("v1", "v2"):
        _kill_rename(monkeypatch)
        with pytest.raises(KeyboardInterrupt):
            write_files({a: f"{version}-a".encode(), b: f"{version}-b".encode()})
        monkeypatch.setattr(atomic.os, "replace", _REAL_REPLACE)
    assert previous_path(a).read_bytes() == b"v0-a"  # not the half-saved v1
    assert previous_path(b).read_bytes() == b"v0-b"
    write_files({a: b"v3-a", b: b"v3-b"})
    assert (a.read_bytes(), b.read_bytes()) == (b"v3-a", b"v3-b")
    assert not previous_path(a).exists() and not previous_path(b).exists()


def test_a_completed_save_removes_the_temps_a_killed_save_left(tmp_path):
    a, b = tmp_path / "x.json", tmp_path / "x.npz"
    stale = [tmp_path / ".x.tmp-0123abcd.json", tmp_path / ".x.tmp-89abcdef.npz"]
    for path in stale:
        path.write_bytes(b"half")  # what a killed process leaves
    other = tmp_path / ".y.tmp-0123abcd.json"  # another target's: not ours to remove
    other.write_bytes(b"other")
    write_files({a: b"a", b: b"b"})
    assert temp_paths(tmp_path) == [other]


@pytest.fixture
def saved_twice(tiny_model, stack, tmp_path, monkeypatch):
    """A session saved with one prompt, then killed re-saving with three (points last)."""
    from napari_sam_lora.engine.tracking.session import Session

    shape = np.shape(stack)[1:3]
    session = Session(stack, model=tiny_model)
    session.add_mask(0, 1, _disk(shape, (32, 40), 10))
    session.save_state(tmp_path / "day1")
    first_labels = session.labels.copy()
    session.add_mask(1, 1, _disk(shape, (30, 42), 10))
    session.add_points(2, 1, [[32, 44]])
    _kill_rename(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        session.save_state(tmp_path / "day1")
    monkeypatch.setattr(atomic.os, "replace", _REAL_REPLACE)
    return session, first_labels


def test_a_session_save_killed_between_renames_restores_the_previous_session(
    saved_twice, tiny_model, stack, tmp_path
):
    from napari_sam_lora.engine.tracking.session import Session
    from napari_sam_lora.engine.tracking.session_files import check_state

    session, first_labels = saved_twice
    doc = json.loads((tmp_path / "day1.session.json").read_text())
    assert len(doc["prompts"]) == 3  # the new JSON beside the old NPZ
    assert temp_paths(tmp_path) == []
    assert len(check_state(tmp_path / "day1", stack)["prompts"]) == 1  # the previous set
    restored = Session(stack, model=tiny_model)
    restored.restore_state(tmp_path / "day1")  # before: KeyError('prompt_2_points')
    assert len(restored.prompts) == 1 and np.array_equal(restored.labels, first_labels)
    session.save_state(tmp_path / "day1")  # the next save completes and cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day1.session.json", "day1.session.npz"]
    again = Session(stack, model=tiny_model)
    again.restore_state(tmp_path / "day1")
    assert len(again.prompts) == 3 and np.array_equal(again.labels, session.labels)


def test_a_mismatched_session_pair_without_a_previous_set_is_refused(
    saved_twice, tiny_model, stack, tmp_path
):
    from napari_sam_lora.engine.tracking.session import Session
    from napari_sam_lora.engine.tracking.session_files import SessionFileError

    for name in ("day1.session.json", "day1.session.npz"):
        previous_path(tmp_path / name).unlink()
    fresh = Session(stack, model=tiny_model)
    with pytest.raises(SessionFileError, match="invalid records"):
        fresh.restore_state(tmp_path / "day1")
    assert fresh.prompts == []


# -- 2. checkpoints and adapters on a full disk / interrupted -------------------------------


def _full_disk(monkeypatch):
    """``torch.save`` fails halfway as on a full disk (a RuntimeError, not an OSError)."""
    real_save = torch.save

    def full(obj, f, *args, **kwargs):
        real_save({"half": 1}, f)
        raise RuntimeError(
            "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
            "file data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(
        atomic.os, "statvfs", lambda _: types.SimpleNamespace(f_bavail=0, f_frsize=4096)
    )


@pytest.mark.parametrize("module", ["trainer", "loop"])
def test_a_checkpoint_on_a_full_disk_is_a_write_error_naming_the_file(
    tmp_path, monkeypatch, module
):
    from napari_sam_lora.finetune import loop, trainer

    save = {"trainer": trainer.save_checkpoint, "loop": loop.save_checkpoint}[module]
    path = tmp_path / "checkpoint.pt"
    save(path, step=1)
    before = path.read_bytes()
    _full_disk(monkeypatch)
    with pytest.raises(WriteError, match=r"could not write .*checkpoint\.pt: the disk .* full"):
        save(path, step=2)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no temporary file


def test_train_on_a_full_disk_prints_one_line_not_an_internal_error(tmp_path, monkeypatch, capsys):
    from napari_sam_lora.cli._boundary import run_command
    from napari_sam_lora.finetune import trainer

    _full_disk(monkeypatch)
    code = run_command("train", lambda _: trainer.save_checkpoint(tmp_path / "c.pt", step=1), None)
    err = capsys.readouterr().err
    assert code == 1
    assert "internal error" not in err and "Traceback" not in err
    assert "c.pt" in err and "full" in err


def test_an_interrupted_adapter_save_leaves_no_temp(decoder, tmp_path, monkeypatch):
    settings = load_settings("lit")
    for name in ("obj1_a0", "obj2_a0"):
        inject_adapter(decoder, name, settings)
    save_adapters(tmp_path / "run", decoder, ["obj1_a0"])
    _kill_rename(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_adapters(tmp_path / "run", decoder, ["obj1_a0", "obj2_a0"])
    monkeypatch.setattr(atomic.os, "replace", _REAL_REPLACE)
    assert temp_paths(tmp_path) == []  # before: a stale .run.tmp-*.json
    assert load_adapters(tmp_path / "run", fresh_decoder()).names == ["obj1_a0"]
    (tmp_path / ".run.tmp-0123abcd.json").write_text("{")  # as a killed process leaves it
    save_adapters(tmp_path / "run", decoder, ["obj1_a0", "obj2_a0"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "run.safetensors"]
    assert load_adapters(tmp_path / "run", fresh_decoder()).names == ["obj1_a0", "obj2_a0"]
