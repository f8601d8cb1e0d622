"""Folder targets (zarr / OME-Zarr stores) in the one atomic writer, engine/atomic.py."""

from __future__ import annotations

import errno
import os

import pytest

from napari_sam_lora.engine.core import atomic
from napari_sam_lora.engine.core.atomic import previous_path, remove_temps, temp_paths, write_files
from napari_sam_lora.engine.core.errors import WriteError


def _store(files):
    """A writer that makes a folder holding ``files`` ({relative path: bytes})."""

    def write(path):
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)

    return write


def _tree(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_folder_written_then_replaced_with_nothing_left_beside(tmp_path):
    target = tmp_path / "out" / "s0_labels.ome.zarr"
    assert write_files({target: _store({".zattrs": b"{}", "0/0.0.0": b"old"})}) == [target]
    assert _tree(target) == {".zattrs": b"{}", "0/0.0.0": b"old"}
    write_files({target: _store({".zattrs": b"{1}", "0/1.0.0": b"new"})})
    assert _tree(target) == {".zattrs": b"{1}", "0/1.0.0": b"new"}  # no file of the old one
    assert sorted(p.name for p in target.parent.iterdir()) == ["s0_labels.ome.zarr"]


def test_writer_failing_halfway_leaves_the_old_folder_and_no_temp(tmp_path):
    target = tmp_path / "s0.zarr"
    write_files({target: _store({"a": b"old"})})

    def half_then_fail(path):
        _store({"a": b"half"})(path)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_files({target: half_then_fail})
    assert _tree(target) == {"a": b"old"}
    assert temp_paths(tmp_path) == []


def test_failed_rename_puts_the_old_set_back(tmp_path, monkeypatch):
    store, table = tmp_path / "s0.zarr", tmp_path / "s0.csv"
    write_files({store: _store({"a": b"old"}), table: b"old"})
    real_replace = os.replace

    def full_on_the_table(src, dst):
        if os.fspath(dst) == os.fspath(table):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full_on_the_table)
    with pytest.raises(WriteError, match="full"):
        write_files({store: _store({"a": b"new"}), table: b"new"})
    assert _tree(store) == {"a": b"old"} and table.read_bytes() == b"old"
    assert temp_paths(tmp_path) == []


@pytest.mark.parametrize("keep_previous", [False, True])
def test_killed_between_renames_keeps_the_old_folder_aside(tmp_path, monkeypatch, keep_previous):
    target = tmp_path / "s0.zarr"
    write_files({target: _store({"a": b"old"})})
    real_replace = os.replace

    def killed_after_moving_aside(src, dst):
        real_replace(src, dst)
        if os.fspath(src) == os.fspath(target):
            raise KeyboardInterrupt  # the process dies before the new folder is renamed

    monkeypatch.setattr(atomic.os, "replace", killed_after_moving_aside)
    with pytest.raises(KeyboardInterrupt):
        write_files({target: _store({"a": b"new"})}, keep_previous=keep_previous)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert not target.exists()
    if keep_previous:
        assert _tree(previous_path(target)) == {"a": b"old"}
    else:  # both the new temp folder and the old one are temporary entries, cleaned up later
        assert len(temp_paths(tmp_path)) == 2
        assert {"a": b"old"} in [_tree(p) for p in temp_paths(tmp_path)]
        assert len(remove_temps(tmp_path)) == 2 and list(tmp_path.iterdir()) == []


def test_a_file_never_replaces_a_folder_nor_a_folder_a_file(tmp_path):
    folder, file = tmp_path / "data.zarr", tmp_path / "notes.txt"
    write_files({folder: _store({"a": b"keep"})})
    file.write_bytes(b"keep")
    with pytest.raises(WriteError, match="is a folder"):
        write_files({folder: b"a file"})
    with pytest.raises(WriteError, match="is a file"):
        write_files({file: _store({"a": b"x"})})
    assert _tree(folder) == {"a": b"keep"} and file.read_bytes() == b"keep"
    assert temp_paths(tmp_path) == []


def test_a_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(WriteError, match="wrote nothing"):
        write_files({tmp_path / "s0.zarr": lambda path: None})
    assert list(tmp_path.iterdir()) == []
