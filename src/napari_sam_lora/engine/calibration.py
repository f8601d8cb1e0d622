"""Online calibration: a per-object monotone map from the model's score to an estimated IoU.

The raw score of a proposal (predicted IoU × object-score probability of the adapted
decoder) is a ranking at best: on untrained SAM2 it sits near 0.3 whatever the mask.
Each correction the user makes reveals the *true* IoU of what every adapter would have
proposed on that frame before training on it. :class:`OnlineCalibrator` keeps those
``(raw score, true IoU)`` pairs and fits an isotonic (monotone non-decreasing) regression
by pool-adjacent-violators; :meth:`OnlineCalibrator.estimate` interpolates it. With few
pairs the estimate is shrunk toward the raw score (``prior_weight`` pseudo-pairs on the
identity), so the first corrections move it only part of the way.

Numpy only, no torch. One calibrator per object (see
:class:`~napari_sam_lora.engine.adapter_pool.AdapterPool`); ``to_dict``/``from_dict``
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

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["OnlineCalibrator", "isotonic_fit"]


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
        fitted = np.interp(r, kx, ky)  # flat beyond the first/last block
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
