"""Learning does not depend on the machine's load (issue 18): the same correction, the same
seed, the same adapter — on a quiet machine, beside a CPU-bound process, or with a clock
that says every step took a minute."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import lora_fixtures
from napari_sam_lora.engine.core.jobs import drain
from napari_sam_lora.engine.learning import training
from napari_sam_lora.engine.learning.adapters import adapter_state, inject_adapter
from napari_sam_lora.engine.learning.lora_settings import load_settings
from napari_sam_lora.engine.learning.training import train_adapter

decoder = lora_fixtures.decoder
disk_example = lora_fixtures.disk_example
SETTINGS = load_settings("default").replace(max_steps_new=12)


def _learn(decoder, example, name: str) -> tuple[object, dict]:
    torch.manual_seed(0)
    inject_adapter(decoder, name, SETTINGS)
    report = drain(train_adapter(decoder, name, [example], SETTINGS))
    return report, {k: v.clone() for k, v in adapter_state(decoder, name).items()}


def _same(first, second) -> None:
    (report_a, weights_a), (report_b, weights_b) = first, second
    assert report_b.steps == report_a.steps and report_b.stop_reason == report_a.stop_reason
    assert report_b.final_iou == pytest.approx(report_a.final_iou, abs=1e-6)
    assert len(weights_a) == len(weights_b) > 0  # same modules, the adapter's own names
    assert all(
        torch.equal(a, b) for a, b in zip(weights_a.values(), weights_b.values(), strict=True)
    )


def test_the_default_recipe_has_no_time_cap():
    assert load_settings("default").max_seconds is None
    assert load_settings("strong").max_seconds is None


def test_a_slow_clock_changes_nothing_learned(decoder, disk_example, monkeypatch):
    quiet = _learn(decoder, disk_example, "quiet")
    ticks = iter(range(0, 10**6, 60))  # every step "takes" a minute: a very busy machine
    monkeypatch.setattr(training, "_clock", lambda: float(next(ticks)))
    busy = _learn(decoder, disk_example, "busy")
    _same(quiet, busy)
    assert busy[0].seconds >= 60 * busy[0].steps  # the report still tells the time


def test_a_time_cap_is_reported_when_asked_for(decoder, disk_example, monkeypatch):
    ticks = iter(range(0, 10**6, 60))
    monkeypatch.setattr(training, "_clock", lambda: float(next(ticks)))
    capped = SETTINGS.replace(max_seconds=30.0)
    inject_adapter(decoder, "a", capped)
    report = drain(train_adapter(decoder, "a", [disk_example], capped))
    assert report.stop_reason == "max_seconds" and report.steps == 1


def test_the_same_result_beside_a_cpu_bound_process(decoder, disk_example):
    quiet = _learn(decoder, disk_example, "quiet")
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = _learn(decoder, disk_example, "busy")
    finally:
        burner.kill()
        burner.wait()
    _same(quiet, busy)
