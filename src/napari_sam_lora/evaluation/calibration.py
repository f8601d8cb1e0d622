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

The metrics live in :mod:`napari_sam_lora.engine.learning.calibration` (shared with the fine-tuning
diagnosis) and are re-exported here; so is the simulated user's hook (:func:`candidate_scores`,
for ``simulation.protocol``); this module adds the collection of pairs from protocol
records (:func:`pairs_from_frames`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from napari_sam_lora.engine.learning.calibration import (
    TAUS,
    calibration_summary,
    candidate_scores,
    expected_calibration_error,
    precision_recall,
    reliability_bins,
    spearman,
)

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


def pairs_from_frames(frames: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, float]], str]:
    """Collect ``{confidence, raw, iou}`` from per-frame records of the protocol.

    Uses ``candidate_scores`` (every candidate examined) where the records hold any, else
    the most confident candidate only (``candidate_confidence`` / ``candidate_iou``).
    Returns the pairs and a description of their source.
    """
    full = [s for f in frames for s in (f.get("candidate_scores") or [])]
    if full:
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
