"""evaluate's reports are written all-or-nothing (issue 11, FAIL 3)."""

from __future__ import annotations

import errno
import json

import pytest

from napari_sam_lora.engine.core import atomic
from napari_sam_lora.engine.core.atomic import temp_paths
from napari_sam_lora.engine.core.errors import WriteError
from napari_sam_lora.evaluation import report as R


@pytest.fixture
def fake_report(monkeypatch):
    content = {"run": 1}
    monkeypatch.setattr(R, "build_report", lambda *a: dict(content))
    monkeypatch.setattr(R, "markdown", lambda rep: f"# run {rep['run']}\n")

    def plot(rep, path):
        path.write_bytes(b"png %d" % rep["run"])
        return True

    monkeypatch.setattr(R, "plot", plot)
    return content


def test_full_disk_keeps_the_previous_report_complete(tmp_path, monkeypatch, fake_report):
    R.write_report(None, [], tmp_path / "out", {})
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == {"run": 1}
    fake_report["run"] = 2

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(WriteError, match=r"report\.json: the disk .* is full: free some space"):
        R.write_report(None, [], tmp_path / "out", {})
    out = tmp_path / "out"
    assert json.loads((out / "report.json").read_text()) == {"run": 1}  # valid, old
    assert (out / "report.md").read_text() == "# run 1\n"
    assert (out / "report.png").read_bytes() == b"png 1"
    assert temp_paths(out) == []


def test_reports_are_replaced_together(tmp_path, fake_report):
    R.write_report(None, [], tmp_path, {})
    fake_report["run"] = 2
    R.write_report(None, [], tmp_path, {})
    assert (tmp_path / "report.md").read_text() == "# run 2\n"
    assert (tmp_path / "report.png").read_bytes() == b"png 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md", "report.png"]
