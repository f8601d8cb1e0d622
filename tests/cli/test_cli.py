"""Command line: the synthetic suite, error handling, and the demo viewer."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from napari_sam_lora.cli import DEFAULT_DEMO_MODEL, main


def test_synthetic_writes_suite(tmp_path, capsys):
    out = tmp_path / "suite"
    argv = ["synthetic", str(out), "--kinds", "decoy", "noisy16", "--frames", "3"]
    assert main([*argv, "--size", "32", "40"]) == 0
    suite = json.loads((out / "suite.json").read_text())
    assert suite["n_frames"] == 3 and suite["shape"] == [32, 40]
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "decoy_image.tif",
        "decoy_labels.tif",
        "noisy16_image.tif",
        "noisy16_labels.tif",
        "suite.json",
    ]
    printed = capsys.readouterr().out
    assert "decoy_image.tif" in printed and "suite.json" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["synthetic", "OUT", "--kinds", "bogus"], "invalid choice"),
        (["synthetic", "OUT", "--frames", "0"], "positive integer"),
        (["synthetic", "OUT", "--size", "8", "8"], "at least 16"),
        (["synthetic"], "OUTDIR"),
        (["demo", "--sample", "bogus"], "invalid choice"),
        (["demo", "--image-size", "-3"], "positive integer"),
        (["no-such-command"], "invalid choice"),
        ([], "COMMAND"),
    ],
)
def test_bad_arguments_fail_with_a_message(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / a) if a == "OUT" else a for a in argv]
    code = main(argv)
    assert code != 0
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_output_path_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["synthetic", str(target)]) == 1
    err = capsys.readouterr().err
    assert "not a folder" in err and "Traceback" not in err


def test_demo_without_display_fails_cleanly(monkeypatch, capsys):
    if not sys.platform.startswith("linux"):
        pytest.skip("display detection only applies to Linux")
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    assert main(["demo", "--no-run"]) == 1
    assert "xvfb-run" in capsys.readouterr().err


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "synthetic" in out
    assert main(["--version"]) == 0
    assert "napari-sam-lora" in capsys.readouterr().out


def test_python_dash_m(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "napari_sam_lora", "synthetic", str(tmp_path), "--kinds", "drift"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "drift_image.tif").is_file()


def _widget_importable() -> bool:
    try:
        return importlib.util.find_spec("napari_sam_lora._qt.widget") is not None
    except (ImportError, ValueError):
        return False


@pytest.mark.viewer
def test_demo_builds_viewer(monkeypatch):
    if not _widget_importable():
        pytest.skip("napari_sam_lora._qt.widget is not available yet")
    pytest.importorskip("napari")
    from napari_sam_lora import cli
    from napari_sam_lora._qt import widget as widget_module

    models: list[str] = []
    if hasattr(widget_module.SamLoraWidget, "set_model"):
        monkeypatch.setattr(
            widget_module.SamLoraWidget, "set_model", lambda self, name: models.append(name)
        )
    viewers = []
    original = cli.build_demo_viewer

    def build(**kwargs):
        viewers.append(original(**{**kwargs, "show": False}))
        return viewers[-1]

    monkeypatch.setattr(cli, "build_demo_viewer", build)
    try:
        assert main(["demo", "--no-run", "--sample", "moving_disk", "--image-size", "256"]) == 0
        (viewer,) = viewers
        names = [layer.name for layer in viewer.layers]
        assert names[:2] == ["synthetic moving_disk", "synthetic moving_disk ground truth"]
        assert viewer.layers["synthetic moving_disk ground truth"].visible is False
        assert viewer.layers.selection.active.name == "synthetic moving_disk"
        assert any("SAM2 LoRA" in name for name in viewer.window.dock_widgets)
        if hasattr(widget_module.SamLoraWidget, "set_model"):
            assert models == [DEFAULT_DEMO_MODEL]
        widget = next(w for n, w in viewer.window.dock_widgets.items() if "SAM2 LoRA" in n)
        assert isinstance(widget, widget_module.SamLoraWidget)
        if hasattr(widget, "image_size"):
            assert widget.image_size == 256
    finally:
        for viewer in viewers:
            viewer.close()
