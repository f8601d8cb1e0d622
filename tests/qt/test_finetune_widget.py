"""The fine-tuning widget (run under ``xvfb-run -a``): check data, train, cancel, resume.

The worker loads no model: ``iter_load_model`` is replaced by one that hands over the shared
untrained model (``tiny_model``), whose decoder is cleaned afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from napari_sam_lora._qt._finetune import FineTuneWidget
from napari_sam_lora.synthetic import write_suite

pytestmark = pytest.mark.viewer

WAIT_MS = 180_000


@pytest.fixture
def widget(qtbot, monkeypatch, tiny_model):
    def load(model, device, image_size):
        yield ("build", 1, 1)
        return tiny_model

    monkeypatch.setattr("napari_sam_lora.engine.tracking.predictor.iter_load_model", load)
    w = FineTuneWidget(None)
    qtbot.addWidget(w)
    yield w
    if w.job is not None and w.job.is_running:
        w.cancel()
        qtbot.waitUntil(lambda: not w.job.is_running, timeout=WAIT_MS)
    from napari_sam_lora.engine.learning.adapters import activate, adapter_names, delete_adapter

    decoder = tiny_model.predictor.sam_mask_decoder
    activate(decoder, None)
    for name in adapter_names(decoder):
        delete_adapter(decoder, name)


def config(tmp_path: Path, **changes) -> Path:
    write_suite(tmp_path / "suite", kinds=["moving_disk", "drift"], n_frames=2, shape=(64, 64))
    doc = {
        "data": {"folder": "suite"},
        "split": {"by": "stack", "val": ["drift"]},
        "model": {"name": "untrained:sam2.1_hiera_tiny", "image_size": 256, "device": "cpu"},
        "training": {"epochs": 3, "batch_size": 1, "lr": 1.0e-2},
        "examples": {"clicks": False, "prompts": []},
        "output": "out",
        **changes,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def wait(qtbot, w: FineTuneWidget) -> str:
    qtbot.waitUntil(lambda: w.job is not None and not w.job.is_running, timeout=WAIT_MS)
    return w.job.state


def test_check_data_shows_the_report(qtbot, widget, tmp_path, notes):
    widget.set_config(config(tmp_path, split={"by": "stack", "val": ["nope"]}))
    assert widget.check()
    assert wait(qtbot, widget) == "finished"
    assert "split.val names 'nope'" in widget.text.toPlainText()
    assert widget.status.text() == "1 data problem(s)"
    assert widget.check_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_bad_config_is_a_notification(qtbot, widget, tmp_path, notes):
    widget.set_config(config(tmp_path, trainig={}))
    widget.train()
    assert wait(qtbot, widget) == "failed"
    assert "unknown key(s) 'trainig'" in notes[0]
    assert widget.status.text().startswith("failed: ")


def test_train_cancel_then_resume(qtbot, widget, tmp_path, notes):
    widget.set_config(config(tmp_path))
    assert widget.train()
    qtbot.waitUntil(lambda: widget.table.rowCount() >= 2, timeout=WAIT_MS)  # epochs 0 and 1
    widget.cancel()
    assert wait(qtbot, widget) == "cancelled"
    assert widget.status.text().startswith("cancelled")
    out = tmp_path / "out"
    assert (out / "checkpoint.pt").is_file() and (out / "adapter.safetensors").is_file()
    widget.train()  # resumes
    assert wait(qtbot, widget) == "finished", notes
    assert widget.result.steps == 3 and widget.result.history[-1].epoch == 3
    text = widget.text.toPlainText()
    assert "adapter (best epoch" in text and "validation (1 examples" in text
    assert widget.table.item(widget.table.rowCount() - 1, 0).text().startswith("3")
    assert not notes


def test_the_example_config_passes_check_data_out_of_the_box(qtbot, widget, tmp_path, notes):
    assert widget.use_example(str(tmp_path / "example"))
    assert wait(qtbot, widget) == "finished", notes
    assert widget.path_edit.text() == str(tmp_path / "example" / "example.yaml")
    assert widget.check()
    assert wait(qtbot, widget) == "finished", notes
    assert widget.status.text() == "data OK: ready to train", widget.text.toPlainText()
    assert notes == []
