"""report.json / report.md / report.png from constructed results: presence split, headline,
calibration section and the reliability diagram."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from napari_sam_lora.evaluation.data import EvalData
from napari_sam_lora.evaluation.report import build_report, markdown, plot
from napari_sam_lora.evaluation.runner import EvalResult, RunResult
from napari_sam_lora.simulation import FrameRecord, ObjectResult

T, H, W = 6, 8, 8


def _data() -> EvalData:
    labels = np.zeros((T, H, W), np.int32)
    labels[:4, 2:5, 2:5] = 1  # present on frames 0-3, absent on 4-5
    return EvalData("toy", np.zeros((T, H, W), np.uint8), labels, np.ones(T, bool), [1])


@dataclass
class _Record(FrameRecord):
    """A frame record with the protocol's ``candidate_scores`` (every candidate examined)."""

    candidate_scores: list = field(default_factory=list)


def _rec(frame, action, final=1.0, conf=None, iou=None, scores=None):
    rec = (_Record if scores is not None else FrameRecord)(frame, action, 0.2, 0.2, final)
    rec.candidate_confidence, rec.candidate_iou = conf, iou
    if scores is not None:
        rec.candidate_scores = scores
    return rec


def _result(with_scores: bool) -> EvalResult:
    base = ObjectResult(1, 0, [_rec(f, "mask") for f in range(1, T)])
    scores = [
        {"confidence": 0.9, "raw": 0.31, "iou": 0.92},
        {"confidence": 0.2, "raw": 0.3, "iou": 0.1},
    ]
    lora = ObjectResult(
        1,
        0,
        [
            _rec(1, "mask", conf=0.4, iou=0.3, scores=scores if with_scores else None),
            _rec(2, "accepted", 0.9, conf=0.9, iou=0.9, scores=scores if with_scores else None),
            _rec(3, "clicks", 0.7),
            _rec(4, "accepted", 1.0, conf=0.95, iou=1.0),
            _rec(5, "none", 1.0),
        ],
    )
    runs = {
        "baseline": RunResult("baseline", [("toy", base)]),
        "lora": RunResult("lora", [("toy", lora)]),
    }
    return EvalResult(runs, "untrained:sam2.1_hiera_tiny", 256, {"name": "default"})


def test_corrections_and_accepts_are_split_by_presence_and_headlined():
    report = build_report(_result(True), [_data()], {"threshold": 0.5, "preset": "default"})
    base, lora = report["baseline"]["by_presence"], report["lora"]["by_presence"]
    assert base["present"] == {"scored_frames": 3, "corrections": 3, "accepted_candidates": 0,
                               "mean_iou_final": 1.0}  # fmt: skip
    assert base["absent"]["corrections"] == 2 and lora["absent"]["corrections"] == 0
    assert lora["present"]["corrections"] == 2 and lora["present"]["accepted_candidates"] == 1
    assert lora["absent"]["accepted_candidates"] == 1
    assert lora["present"]["mean_iou_final"] == pytest.approx((1.0 + 0.9 + 0.7) / 3)
    assert report["reduction_present"] == pytest.approx(1 - 2 / 3)
    assert report["reduction_absent"] == pytest.approx(1.0)
    head = report["headline"]
    assert head["corrections"] == {"baseline": 5, "lora": 2} and head["reduction"] == 0.6
    assert head["reduction_present"] == report["reduction_present"]
    assert head["mean_iou_final"]["lora"] == pytest.approx(report["lora"]["mean_iou_final"])


def test_calibration_uses_every_candidate_examined_when_recorded():
    report = build_report(_result(True), [_data()], {"threshold": 0.5})
    cal = report["calibration"]
    assert cal["n"] == 4 and cal["source"].startswith("every candidate")
    # shown 0.9/0.2 against IoU 0.92/0.1 (twice): |0.9-0.92| and |0.2-0.1|, equal weights
    assert cal["ece"] == pytest.approx((0.02 + 0.1) / 2)
    assert cal["spearman"] == pytest.approx(1.0)
    # raw 0.31 and 0.3 share the 0.3-0.4 bin: |0.305 - mean(0.92, 0.1)|
    assert cal["raw"]["ece"] == pytest.approx(abs(0.305 - 0.51))
    row = next(r for r in cal["precision_recall"] if r["tau"] == 0.8)
    assert row["precision"] == 1.0 and row["recall"] == 1.0


def test_without_the_hook_the_most_confident_candidates_are_used():
    report = build_report(_result(False), [_data()], {"threshold": 0.5})
    cal = report["calibration"]
    assert cal["n"] == 3 and cal["source"].startswith("most confident")


def test_markdown_and_png_show_the_new_sections(tmp_path):
    report = build_report(_result(True), [_data()], {"threshold": 0.8, "preset": "default"})
    text = markdown(report)
    assert "final mean IoU" in text and "object is present" in text
    assert "## Calibration" in text and "Spearman rank correlation 1.00" in text
    assert "| 0.8 |" in text and "random weights" in text
    pytest.importorskip("matplotlib")
    assert plot(report, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 5000
