"""After training: how the adapter (and the base model) do on the validation examples.

For every validation example the decoder runs in eval mode as SAM2 runs it: the mask with
the highest predicted IoU, gated by the object score, upsampled to the frame size and
thresholded at the config's ``threshold`` (SAM2 itself uses 0.5). Reported: the IoU
distribution, predicted-IoU and object-score statistics, the share of empty predictions,
and a mean IoU per threshold. When most predictions are empty although the object is there,
a warning suggests the threshold with the best mean IoU, or says that the object score (not
the threshold) is what empties them. ``calibration`` holds the same confidence metrics as
``evaluate``'s report (:mod:`napari_sam_lora.engine.learning.calibration`): the confidence shown
with proposals (predicted IoU × object-score probability) against the true IoU — Spearman,
expected calibration error (10 bins), precision/recall of "confidence >= tau => IoU >= 0.5"
and reliability bins. Written to ``diagnosis.json`` and ``diagnosis.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_sam_lora.engine.learning.adapters import decoder_device, use_adapter
from napari_sam_lora.engine.learning.calibration import calibration_summary
from napari_sam_lora.finetune.events import Progress
from napari_sam_lora.finetune.store import ExampleSet

__all__ = ["SWEEP", "Diagnosis", "diagnose", "write_diagnosis"]

#: Mask probability thresholds tried for the suggestion.
SWEEP = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
EMPTY_WARNING = 0.5
#: IoU a proposal must reach to count as good in the calibration table (LIT's threshold).
GOOD_IOU = 0.5


@dataclass
class Diagnosis:
    """Validation statistics of the adapter and of the base model.

    ``models`` maps ``"adapter"`` and ``"base"`` to their statistics; ``suggested_threshold``
    is set when most of the adapter's predictions are empty at ``threshold``.
    """

    threshold: float
    n_examples: int
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    suggested_threshold: float | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def summary(self) -> str:
        """A few lines for the CLI and the widget."""
        a, b = self.models.get("adapter", {}), self.models.get("base", {})
        lines = [
            f"validation ({self.n_examples} examples, threshold {self.threshold:g}): mean IoU "
            f"{_f(a.get('iou', {}).get('mean'))} with the adapter, "
            f"{_f(b.get('iou', {}).get('mean'))} base; empty predictions "
            f"{_pct(a.get('empty_fraction'))} (base {_pct(b.get('empty_fraction'))})"
        ]
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def _f(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


@torch.no_grad()
def _outputs(
    decoder: nn.Module, name: str | None, examples: ExampleSet, i: int
) -> tuple[torch.Tensor, float, float, np.ndarray]:
    """Upsampled logits of SAM2's pick, its predicted IoU, object-score probability, target."""
    inputs, target = examples.get(i)
    with use_adapter(decoder, name):
        masks, ious, _, obj = decoder(**inputs.to(decoder_device(decoder)).as_kwargs())
    k = int(ious[0].argmax())
    logits = F.interpolate(
        masks[:, k : k + 1].float(), size=target.shape, mode="bilinear", align_corners=False
    )[0, 0].cpu()
    return logits, float(ious[0, k]), float(torch.sigmoid(obj.reshape(-1)[0])), target


def _iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    union = int((pred | target).sum())
    return 1.0 if union == 0 else int((pred & target).sum()) / union


def _model_stats(
    decoder: nn.Module, name: str | None, examples: ExampleSet, threshold: float
) -> Generator[int, None, dict[str, Any]]:
    thresholds = sorted({*SWEEP, threshold})
    cuts = [math.log(t / (1 - t)) for t in thresholds]
    ious, preds, scores, empty, gated, sweep, shown = [], [], [], [], [], [], []
    kinds: dict[str, list[float]] = {}
    cut = math.log(threshold / (1 - threshold))
    for i in range(len(examples)):
        logits, iou_pred, score, target = _outputs(decoder, name, examples, i)
        truth = torch.from_numpy(target)
        present = score > 0.5
        pred = (logits > cut) & present
        value = _iou(pred, truth)
        ious.append(value)
        kinds.setdefault(examples.infos[i].kind, []).append(value)
        preds.append(iou_pred)
        scores.append(score)
        shown.append(iou_pred * score)
        if target.any():
            empty.append(not bool(pred.any()))
            gated.append(not present)
        sweep.append([_iou((logits > c) & present, truth) for c in cuts])
        yield i
    ious_a = np.array(ious)
    hist, _ = np.histogram(ious_a, bins=10, range=(0, 1))
    corr = float(np.corrcoef(preds, ious)[0, 1]) if len(ious) > 2 and np.std(preds) > 0 else None
    return {
        "iou": {
            "mean": float(ious_a.mean()),
            **{f"p{q}": float(np.percentile(ious_a, q)) for q in (10, 25, 50, 75, 90)},
            "fraction_ge_0.5": float((ious_a >= 0.5).mean()),
            "histogram": hist.tolist(),
            "by_kind": {k: float(np.mean(v)) for k, v in sorted(kinds.items())},
        },
        "predicted_iou": {
            "mean": float(np.mean(preds)),
            "std": float(np.std(preds)),
            "min": float(np.min(preds)),
            "max": float(np.max(preds)),
            "correlation_with_iou": corr if corr is None or math.isfinite(corr) else None,
        },
        "object_score": {
            "mean": float(np.mean(scores)),
            **{f"p{q}": float(np.percentile(scores, q)) for q in (10, 50, 90)},
            "fraction_present": float((np.array(scores) > 0.5).mean()),
        },
        "empty_fraction": float(np.mean(empty)) if empty else 0.0,
        "object_absent_fraction": float(np.mean(gated)) if gated else 0.0,
        "mean_iou_by_threshold": {
            f"{t:g}": float(v) for t, v in zip(thresholds, np.mean(sweep, axis=0), strict=True)
        },
        "calibration": calibration_summary(
            shown,
            ious,
            GOOD_IOU,
            source="validation examples; confidence = predicted IoU x object-score probability",
        ),
    }


def diagnose(
    decoder: nn.Module, adapter_name: str, examples: ExampleSet, threshold: float = 0.5
) -> Generator[Progress, None, Diagnosis]:
    """Diagnose ``adapter_name`` (and the base model) on ``examples``; yields per example.

    Returns
    -------
    Diagnosis
        As ``StopIteration.value``.
    """
    if len(examples) == 0:
        raise ValueError("no validation examples to diagnose")
    was_training = decoder.training
    decoder.eval()
    diag = Diagnosis(threshold=threshold, n_examples=len(examples))
    total = 2 * len(examples)
    try:
        for offset, (label, name) in enumerate((("adapter", adapter_name), ("base", None))):
            stats = _model_stats(decoder, name, examples, threshold)
            while True:
                try:
                    i = next(stats)
                except StopIteration as stop:
                    diag.models[label] = stop.value
                    break
                done = offset * len(examples) + i + 1
                yield Progress("diagnose", done, total, f"{label} on validation example {i + 1}")
    finally:
        decoder.train(was_training)
    _warn(diag)
    return diag


def _warn(diag: Diagnosis) -> None:
    a, b = diag.models["adapter"], diag.models["base"]
    if a["empty_fraction"] > EMPTY_WARNING:
        by_t = a["mean_iou_by_threshold"]
        best = max(by_t, key=lambda t: by_t[t])
        here = by_t[f"{diag.threshold:g}"]
        text = (
            f"{_pct(a['empty_fraction'])} of the validation predictions are empty at threshold "
            f"{diag.threshold:g} although the object is there."
        )
        if a["object_absent_fraction"] > EMPTY_WARNING:
            text += (
                f" The object score says 'absent' on {_pct(a['object_absent_fraction'])} of "
                "them, which no mask threshold fixes: train longer, add examples, or raise "
                "lora.object_score_weight."
            )
        if by_t[best] > here:
            diag.suggested_threshold = float(best)
            text += f" Suggested threshold: {best} (mean IoU {here:.3f} -> {by_t[best]:.3f})."
        diag.warnings.append(text)
    if a["iou"]["mean"] <= b["iou"]["mean"]:
        diag.warnings.append(
            f"the adapter does not beat the base model on validation (mean IoU "
            f"{a['iou']['mean']:.3f} vs {b['iou']['mean']:.3f})"
        )
    corr = a["predicted_iou"]["correlation_with_iou"]
    if corr is not None and corr < 0.3:
        diag.warnings.append(
            f"the predicted IoU hardly follows the real IoU (correlation {corr:.2f}): the "
            "confidence shown with proposals will be unreliable"
        )
    cal = a.get("calibration") or {}
    ece = cal.get("ece")
    if ece is not None and ece > 0.1:
        diag.warnings.append(
            f"the confidence is miscalibrated (expected calibration error {ece:.2f}, mean "
            f"confidence {_f(cal.get('mean_confidence'))} vs mean IoU "
            f"{_f(cal.get('mean_iou'))}): the live learner's per-object calibrator "
            "corrects this from the user's own corrections"
        )


def _calibration_md(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Calibration of the shown confidence (predicted IoU × object score), adapter and base."""
    lines = [
        "## Calibration of the confidence (predicted IoU x object score)",
        "",
        "| | adapter | base |",
        "|---|---|---|",
        f"| Spearman rank correlation with IoU | {_f(a['spearman'])} | {_f(b['spearman'])} |",
        f"| expected calibration error (10 bins) | {_f(a['ece'])} | {_f(b['ece'])} |",
    ]
    for ra, rb in zip(a["precision_recall"], b["precision_recall"], strict=True):
        lines.append(
            f"| precision / recall of conf >= {ra['tau']:g} => IoU >= {a['threshold']:g} | "
            f"{_f(ra['precision'])} / {_f(ra['recall'])} | "
            f"{_f(rb['precision'])} / {_f(rb['recall'])} |"
        )
    lines += ["", "| confidence bin | examples | mean confidence | mean IoU (adapter) |"]
    lines += ["|---|---|---|---|"]
    lines += [
        f"| {r['lo']:.1f}-{r['hi']:.1f} | {r['count']} | {_f(r['mean_confidence'])} | "
        f"{_f(r['mean_iou'])} |"
        for r in a["reliability"]
        if r["count"]
    ]
    return [*lines, ""]


def write_diagnosis(diag: Diagnosis, folder: str | Path) -> tuple[Path, Path]:
    """Write ``diagnosis.json`` and ``diagnosis.md`` into ``folder``; returns both paths."""
    folder = Path(folder)
    json_path, md_path = folder / "diagnosis.json", folder / "diagnosis.md"
    json_path.write_text(json.dumps(diag.to_dict(), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(_markdown(diag), encoding="utf-8")
    return json_path, md_path


def _markdown(diag: Diagnosis) -> str:
    a, b = diag.models["adapter"], diag.models["base"]
    lines = ["# Fine-tuning diagnosis", "", diag.summary().splitlines()[0], ""]
    if diag.warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in diag.warnings], ""]
    rows = [
        ("mean IoU", a["iou"]["mean"], b["iou"]["mean"]),
        ("median IoU", a["iou"]["p50"], b["iou"]["p50"]),
        ("10th percentile IoU", a["iou"]["p10"], b["iou"]["p10"]),
        ("IoU >= 0.5", a["iou"]["fraction_ge_0.5"], b["iou"]["fraction_ge_0.5"]),
        ("empty predictions", a["empty_fraction"], b["empty_fraction"]),
        ("object score says absent", a["object_absent_fraction"], b["object_absent_fraction"]),
        ("mean predicted IoU", a["predicted_iou"]["mean"], b["predicted_iou"]["mean"]),
        ("mean object score", a["object_score"]["mean"], b["object_score"]["mean"]),
    ]
    lines += ["## Statistics", "", "| | adapter | base |", "|---|---|---|"]
    lines += [f"| {label} | {_f(x)} | {_f(y)} |" for label, x, y in rows]
    corr = a["predicted_iou"]["correlation_with_iou"]
    lines += ["", f"Correlation of predicted and real IoU (adapter): {_f(corr)}", ""]
    if a.get("calibration") and b.get("calibration"):
        lines += _calibration_md(a["calibration"], b["calibration"])
    lines += ["## IoU histogram (adapter)", "", "| IoU | examples |", "|---|---|"]
    lines += [
        f"| {k / 10:.1f}-{(k + 1) / 10:.1f} | {n} |" for k, n in enumerate(a["iou"]["histogram"])
    ]
    lines += [
        "",
        "## Mean IoU by kind of example",
        "",
        "| kind | adapter | base |",
        "|---|---|---|",
    ]
    lines += [
        f"| {k} | {_f(v)} | {_f(b['iou']['by_kind'].get(k))} |"
        for k, v in a["iou"]["by_kind"].items()
    ]
    lines += ["", "## Mean IoU by mask threshold", "", "| threshold | adapter | base |"]
    lines += ["|---|---|---|"]
    lines += [
        f"| {t} | {_f(v)} | {_f(b['mean_iou_by_threshold'][t])} |"
        for t, v in a["mean_iou_by_threshold"].items()
    ]
    return "\n".join(lines) + "\n"
