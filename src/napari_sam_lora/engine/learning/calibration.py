"""Online calibration: a per-object monotone map from the model's score to an estimated IoU.

The raw score of a proposal (predicted IoU × object-score probability of the adapted
decoder) is a ranking at best: on untrained SAM2 it sits near 0.3 whatever the mask.
Each correction the user makes reveals the *true* IoU of what every adapter would have
proposed on that frame before training on it. :class:`OnlineCalibrator` keeps those
``(raw score, true IoU)`` pairs and fits an isotonic (monotone non-decreasing) regression
by pool-adjacent-violators; :meth:`OnlineCalibrator.estimate` interpolates it. With few
pairs the estimate is shrunk toward the raw score (``prior_weight`` pseudo-pairs on the
identity), so the first corrections move it only part of the way.

The module also holds the calibration *metrics* (numpy only), so that ``evaluate`` and the
fine-tuning diagnosis share them through the engine: :func:`spearman`,
:func:`expected_calibration_error` (10 equal-width bins, IoU as the "accuracy"),
:func:`precision_recall` of "confidence >= tau => IoU >= threshold", :func:`reliability_bins`
and :func:`calibration_summary`.

Numpy only, no torch. One calibrator per object (see
:class:`~napari_sam_lora.engine.learning.adapter_pool.AdapterPool`); ``to_dict``/``from_dict``
round-trip it through JSON.

Example
-------
>>> cal = OnlineCalibrator()
>>> cal.observe(0.31, 0.05)
>>> cal.observe(0.35, 0.92)
>>> round(cal.estimate(0.34), 2) <= round(cal.estimate(0.36), 2)
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "TAUS",
    "OnlineCalibrator",
    "calibration_summary",
    "candidate_scores",
    "expected_calibration_error",
    "isotonic_fit",
    "precision_recall",
    "reliability_bins",
    "spearman",
]


def isotonic_fit(
    x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted isotonic regression of ``y`` on ``x`` (pool-adjacent-violators).

    Returns
    -------
    knots_x, knots_y : np.ndarray
        The fitted blocks, ascending in ``x``: each block's weighted mean ``x`` and its
        (non-decreasing) fitted value. Equal ``x`` values always share a block.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=np.float64)
    if x.size == 0:
        return np.empty(0), np.empty(0)
    order = np.argsort(x, kind="mergesort")
    x, y, w = x[order], y[order], w[order]
    # Ties in x first become one block (a function cannot take two values at one point).
    _, start = np.unique(x, return_index=True)
    sw = np.add.reduceat(w, start)
    sy = np.add.reduceat(w * y, start)
    sx = np.add.reduceat(w * x, start)
    blocks: list[list[float]] = []  # [sum_w, sum_wy, sum_wx]
    for bw, by, bx in zip(sw, sy, sx, strict=True):
        blocks.append([bw, by, bx])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][0] > blocks[-1][1] / blocks[-1][0]:
            last = blocks.pop()
            for k in range(3):
                blocks[-1][k] += last[k]
    arr = np.asarray(blocks)
    return arr[:, 2] / arr[:, 0], arr[:, 1] / arr[:, 0]


class OnlineCalibrator:
    """Monotone map from a raw confidence to an estimated IoU, fitted as the user works.

    Parameters
    ----------
    prior_weight : float
        How many pseudo-observations the identity prior (estimate = raw score) counts for;
        the estimate is ``(n · isotonic + prior_weight · raw) / (n + prior_weight)``.
    max_points : int
        Keep at most this many (the newest) pairs.
    """

    def __init__(self, prior_weight: float = 2.0, max_points: int = 512) -> None:
        if prior_weight < 0:
            raise ValueError(f"prior_weight must be >= 0, got {prior_weight}")
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        self.prior_weight = float(prior_weight)
        self.max_points = int(max_points)
        self._raw: list[float] = []
        self._iou: list[float] = []
        self._fit: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._raw)

    def observe(self, raw: float, iou: float) -> None:
        """Record that a proposal scored ``raw`` had true IoU ``iou`` (both in ``[0, 1]``)."""
        raw, iou = float(raw), float(iou)
        if not (np.isfinite(raw) and np.isfinite(iou)):
            return
        self._raw.append(min(max(raw, 0.0), 1.0))
        self._iou.append(min(max(iou, 0.0), 1.0))
        if len(self._raw) > self.max_points:
            del self._raw[0], self._iou[0]
        self._fit = None

    def observe_many(self, pairs: Iterable[tuple[float, float]]) -> None:
        """:meth:`observe` each ``(raw, iou)`` pair."""
        for raw, iou in pairs:
            self.observe(raw, iou)

    def _knots(self) -> tuple[np.ndarray, np.ndarray]:
        if self._fit is None:
            self._fit = isotonic_fit(np.asarray(self._raw), np.asarray(self._iou))
        return self._fit

    def estimate_many(self, raw: Iterable[float] | np.ndarray) -> np.ndarray:
        """Estimated IoUs for an array of raw scores (same shape, float32, in ``[0, 1]``)."""
        r = np.clip(np.asarray(raw, dtype=np.float64), 0.0, 1.0)
        n = len(self._raw)
        if n == 0:
            return r.astype(np.float32)
        kx, ky = self._knots()
        fitted = np.interp(r, kx, ky)
        # beyond the observed scores there is no evidence: back toward the raw score,
        # staying monotone (never below the last fitted value above, never above the first
        # below)
        fitted = np.where(r > kx[-1], np.maximum(ky[-1], r), fitted)
        fitted = np.where(r < kx[0], np.minimum(ky[0], r), fitted)
        est = (n * fitted + self.prior_weight * r) / (n + self.prior_weight)
        return np.clip(est, 0.0, 1.0).astype(np.float32)

    def estimate(self, raw: float) -> float:
        """Estimated IoU of a proposal with raw score ``raw`` (the raw score itself before
        any observation)."""
        return float(self.estimate_many(np.asarray([raw]))[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (settings and the observed pairs)."""
        return {
            "prior_weight": self.prior_weight,
            "max_points": self.max_points,
            "raw": [round(v, 6) for v in self._raw],
            "iou": [round(v, 6) for v in self._iou],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OnlineCalibrator:
        """Rebuild a calibrator saved with :meth:`to_dict`.

        Raises
        ------
        ValueError
            When the record is malformed (missing keys, unequal lengths).
        """
        try:
            cal = cls(float(data["prior_weight"]), int(data["max_points"]))
            raw, iou = list(data["raw"]), list(data["iou"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a calibrator record: {exc!r}") from exc
        if len(raw) != len(iou):
            raise ValueError(f"calibrator record has {len(raw)} scores but {len(iou)} IoUs")
        cal.observe_many(zip(raw, iou, strict=True))
        return cal


# --------------------------------------------------------------------------- metrics

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
        and optionally ``.payload`` with per-frame ``raw_scores`` or ``confidences``: what
        the calibrator mapped to the value shown).
    ious : sequence of float
        Each candidate's true IoU, in the same order.
    """
    out = []
    for cand, value in zip(candidates, ious, strict=True):
        shown = float(cand.confidence)
        payload = getattr(cand, "payload", None)
        raw = getattr(payload, "raw_scores", getattr(payload, "confidences", None))
        out.append(
            {
                "confidence": shown,
                "raw": float(raw[0]) if raw is not None and len(raw) else shown,
                "iou": float(value),
            }
        )
    return out
