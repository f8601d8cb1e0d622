"""The one atomic file-set writer (issue 11: adapters, reports, checkpoints, manifests)."""

from __future__ import annotations

import errno
import os

import pytest

from napari_sam_lora.engine.core import atomic
from napari_sam_lora.engine.core.atomic import FileSet, previous_path, temp_paths, write_files
from napari_sam_lora.engine.core.errors import WriteError


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_writes_bytes_text_and_callables(tmp_path):
    out = tmp_path / "new" / "sub"
    written = write_files(
        {
            out / "a.json": "{}",
            out / "b.bin": b"\x00\x01",
            out / "c.png": lambda p: p.write_text("x"),
        }
    )
    assert [p.name for p in written] == ["a.json", "b.bin", "c.png"]
    assert (out / "a.json").read_text() == "{}" and (out / "b.bin").read_bytes() == b"\x00\x01"
    assert (out / "c.png").read_text() == "x"
    assert temp_paths(out) == []


def test_callables_get_a_temp_path_with_the_same_suffix(tmp_path):
    seen = []
    write_files({tmp_path / "report.png": lambda p: (seen.append(p), p.write_bytes(b"png"))})
    assert seen[0].suffix == ".png" and seen[0].parent == tmp_path and not seen[0].exists()


def test_disk_full_keeps_the_old_set_names_the_file_and_leaves_no_temp(tmp_path, monkeypatch):
    old = {tmp_path / "report.json": '{"old": 1}', tmp_path / "report.md": "old"}
    write_files(old)
    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(WriteError) as info:
        write_files({tmp_path / "report.json": '{"new": 2}', tmp_path / "report.md": "new"})
    message = str(info.value)
    assert "report.json" in message and "is full: free some space" in message
    assert "previous version is unchanged" in message and "\n" not in message
    assert (tmp_path / "report.json").read_text() == '{"old": 1}'
    assert (tmp_path / "report.md").read_text() == "old"
    assert temp_paths(tmp_path) == []


def test_failing_writer_discards_every_temp(tmp_path):
    def broken(path):
        path.write_text("half")
        raise RuntimeError("plot failed")

    with pytest.raises(RuntimeError):
        write_files({tmp_path / "a.json": "{}", tmp_path / "b.png": broken})
    assert list(tmp_path.iterdir()) == []


def test_parent_is_a_file(tmp_path):
    (tmp_path / "blocker").write_text("")
    with pytest.raises(WriteError, match=r"blocker is a file, not a folder"):
        write_files({tmp_path / "blocker" / "out" / "report.json": "{}"})


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(WriteError, match=r"ro is not writable: choose another output"):
            write_files({folder / "x.json": "{}"})
    finally:
        folder.chmod(0o700)


def test_context_manager_commits_on_success_and_discards_on_error(tmp_path):
    with FileSet() as files:
        files.path(tmp_path / "ck.pt").write_bytes(b"1")
        files.add(tmp_path / "m.json", "{}")
    assert (tmp_path / "ck.pt").read_bytes() == b"1"
    with pytest.raises(KeyError), FileSet() as files:
        files.path(tmp_path / "ck.pt").write_bytes(b"2")
        raise KeyError("boom")
    assert (tmp_path / "ck.pt").read_bytes() == b"1" and temp_paths(tmp_path) == []


def test_keep_previous_survives_a_kill_between_renames(tmp_path, monkeypatch):
    a, b = tmp_path / "x.safetensors", tmp_path / "x.json"
    write_files({a: b"old-a", b: b"old-b"}, keep_previous=True)
    real_replace = os.replace
    calls = []

    def killed_after_first(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies between the renames
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        write_files({a: b"new-a", b: b"new-b"}, keep_previous=True)
    assert a.read_bytes() == b"new-a" and b.read_bytes() == b"old-b"
    assert previous_path(a).read_bytes() == b"old-a"  # the old pair is still complete
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    write_files({a: b"new-a", b: b"new-b"}, keep_previous=True)
    assert not previous_path(a).exists() and not previous_path(b).exists()
