"""How much a shown confidence says about the true IoU: rank correlation, ECE, precision.

Every candidate the simulated user examines gives one pair (confidence shown, true IoU).
From those pairs this module computes

- the **Spearman rank correlation** (does a higher confidence mean a better mask?),
- the **expected calibration error** over 10 equal-width confidence bins: the mean
  ``|mean confidence - mean IoU|`` of the bins weighted by their share of the pairs (a
  confidence of 0.8 should mean an IoU of 0.8 on average),
- the **precision and recall of "confidence >= tau => IoU >= threshold"** for a few ``tau``
  (precision: of the candidates one would accept on confidence alone, the share that truly
  reach the threshold; recall: of those that reach it, the share one would accept),
- the **reliability diagram** data (per bin: count, mean confidence, mean IoU).

Numpy only; used by ``evaluate``'s report and by the fine-tuning diagnosis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "TAUS",
    "calibration_summary",
    "candidate_scores",
    "expected_calibration_error",
    "pairs_from_frames",
    "precision_recall",
    "reliability_bins",
    "spearman",
]

#: Confidence cut-offs for the precision/recall table.
TAUS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
N_BINS = 10


def _pairs(confidence: Sequence[float], iou: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    y = np.asarray(iou, dtype=np.float64).reshape(-1)
    if c.shape != y.shape:
        raise ValueError(f"{c.size} confidences but {y.size} IoUs: they must pair up")
    keep = np.isfinite(c) & np.isfinite(y)
    return c[keep], y[keep]


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    uniq, inverse = np.unique(values, return_inverse=True)
    if len(uniq) < len(values):
        sums = np.bincount(inverse, weights=ranks)
        counts = np.bincount(inverse)
        ranks = (sums / counts)[inverse]
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation of ``x`` and ``y`` (ties get average ranks).

    Returns ``None`` with fewer than 3 pairs or when either side is constant (undefined).
    """
    a, b = _pairs(x, y)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    ra, rb = _ranks(a), _ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def reliability_bins(
    confidence: Sequence[float], iou: Sequence[float], bins: int = N_BINS
) -> list[dict[str, Any]]:
    """Per equal-width confidence bin over ``[0, 1]``: ``lo``, ``hi``, ``count``, means.

    Confidences are clipped to ``[0, 1]``; a confidence of exactly 1 falls in the last bin.
    Empty bins have ``None`` means.
    """
    c, y = _pairs(confidence, iou)
    c = np.clip(c, 0.0, 1.0)
    index = np.minimum((c * bins).astype(int), bins - 1)
    out = []
    for k in range(bins):
        sel = index == k
        n = int(sel.sum())
        out.append(
            {
                "lo": k / bins,
                "hi": (k + 1) / bins,
                "count": n,
                "mean_confidence": float(c[sel].mean()) if n else None,
                "mean_iou": float(y[sel].mean()) if n else None,
            }
        )
    return out


def expected_calibration_error(
    confidence: Sequence[float], iou: Sequence[float], bins: int = N_BINS
) -> float | None:
    """Expected calibration error: ``sum_b n_b / N * |mean conf_b - mean IoU_b|``.

    ``None`` without pairs.
    """
    table = reliability_bins(confidence, iou, bins)
    total = sum(b["count"] for b in table)
    if total == 0:
        return None
    return float(
        sum(
            b["count"] / total * abs(b["mean_confidence"] - b["mean_iou"])
            for b in table
            if b["count"]
        )
    )


def precision_recall(
    confidence: Sequence[float],
    iou: Sequence[float],
    threshold: float,
    taus: Sequence[float] = TAUS,
) -> list[dict[str, Any]]:
    """For each ``tau``: precision and recall of "confidence >= tau ⇒ IoU >= threshold".

    Each row has ``tau``, ``selected`` (pairs with confidence >= tau), ``good`` (pairs with
    IoU >= threshold), ``precision`` (``None`` when nothing is selected) and ``recall``
    (``None`` when nothing is good).
    """
    c, y = _pairs(confidence, iou)
    good = y >= threshold
    rows = []
    for tau in taus:
        chosen = c >= tau
        hits = int((chosen & good).sum())
        rows.append(
            {
                "tau": float(tau),
                "selected": int(chosen.sum()),
                "good": int(good.sum()),
                "precision": hits / int(chosen.sum()) if chosen.any() else None,
                "recall": hits / int(good.sum()) if good.any() else None,
            }
        )
    return rows


def calibration_summary(
    confidence: Sequence[float],
    iou: Sequence[float],
    threshold: float,
    *,
    raw_confidence: Sequence[float] | None = None,
    source: str = "",
    taus: Sequence[float] = TAUS,
    bins: int = N_BINS,
) -> dict[str, Any]:
    """Everything above in one JSON-ready dict (the ``calibration`` report section).

    Parameters
    ----------
    confidence, iou : sequence of float
        The confidence shown for each candidate examined and its true IoU.
    threshold : float
        The IoU a candidate must reach to be accepted.
    raw_confidence : sequence of float, optional
        The model's own score (predicted IoU × object score) of the same candidates, when
        what is shown is a calibrated estimate; reported as ``raw`` for comparison.
    source : str
        What the pairs are (e.g. ``"every candidate examined"``).
    """
    c, y = _pairs(confidence, iou)
    out: dict[str, Any] = {
        "source": source,
        "n": len(c),
        "threshold": float(threshold),
        "spearman": spearman(c, y),
        "ece": expected_calibration_error(c, y, bins),
        "mean_confidence": float(c.mean()) if len(c) else None,
        "mean_iou": float(y.mean()) if len(y) else None,
        "precision_recall": precision_recall(c, y, threshold, taus),
        "reliability": reliability_bins(c, y, bins),
    }
    if raw_confidence is not None:
        r, ry = _pairs(raw_confidence, iou)
        out["raw"] = {
            "spearman": spearman(r, ry),
            "ece": expected_calibration_error(r, ry, bins),
            "reliability": reliability_bins(r, ry, bins),
        }
    return out


def candidate_scores(candidates: Sequence[Any], ious: Sequence[float]) -> list[dict[str, float]]:
    """The hook for the simulated user: one ``{confidence, raw, iou}`` per candidate examined.

    Parameters
    ----------
    candidates : sequence
        What the user looked at (``CandidateMask``-like: ``.confidence``, the value shown,
        and optionally ``.payload`` with per-frame ``confidences``, the raw model score).
    ious : sequence of float
        Each candidate's true IoU, in the same order.
    """
    out = []
    for cand, value in zip(candidates, ious, strict=True):
        shown = float(cand.confidence)
        raw = getattr(getattr(cand, "payload", None), "confidences", None)
        out.append(
            {
                "confidence": shown,
                "raw": float(raw[0]) if raw is not None and len(raw) else shown,
                "iou": float(value),
            }
        )
    return out


def pairs_from_frames(frames: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, float]], str]:
    """Collect ``{confidence, raw, iou}`` from per-frame records of the protocol.

    Uses ``candidate_scores`` (every candidate examined) where the records carry it, else
    the most confident candidate only (``candidate_confidence`` / ``candidate_iou``).
    Returns the pairs and a description of their source.
    """
    full = [s for f in frames for s in (f.get("candidate_scores") or [])]
    if full or any("candidate_scores" in f for f in frames):
        return full, "every candidate examined (every adapter, every frame reviewed)"
    pairs = [
        {
            "confidence": f["candidate_confidence"],
            "raw": f["candidate_confidence"],
            "iou": f["candidate_iou"],
        }
        for f in frames
        if f.get("candidate_confidence") is not None and f.get("candidate_iou") is not None
    ]
    return pairs, "most confident candidate of each frame reviewed"
