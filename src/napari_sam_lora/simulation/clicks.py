"""The simulated user's clicks: IoU and a click at the centre of the largest error region.

The rule is the one of LIT-LoRA's evaluation (and of interactive-segmentation benchmarks
before it): the error is split into missed pixels (in the truth, not in the prediction) and
extra pixels (in the prediction, not in the truth); the largest connected region of either
kind gets the click, at its pixel farthest from the region's boundary (the image border
counts as boundary). A click in a missed region is positive, in an extra region negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Click", "iou", "next_click"]


@dataclass(frozen=True)
class Click:
    """One simulated click.

    Attributes
    ----------
    row, col : int
        Pixel position.
    positive : bool
        ``True`` for a missed region (add), ``False`` for an extra one (remove).
    region_size : int
        Pixels in the error region that was clicked.
    """

    row: int
    col: int
    positive: bool
    region_size: int

    @property
    def label(self) -> int:
        """SAM2's point label: 1 positive, 0 negative."""
        return int(self.positive)


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks; ``1.0`` when both are empty.

    Parameters
    ----------
    prediction, truth : np.ndarray
        Masks of the same shape (anything non-zero counts as inside).

    Returns
    -------
    float
    """
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {prediction.shape} and {truth.shape}")
    union = np.count_nonzero(prediction | truth)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(prediction & truth) / union)


def _largest_region(error: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 8-connected region of ``error`` (bool mask) and its size."""
    regions, count = ndimage.label(error, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros_like(error), 0
    sizes = np.bincount(regions.ravel())[1:]
    best = int(np.argmax(sizes)) + 1  # the lowest label wins a tie: deterministic
    return regions == best, int(sizes[best - 1])


def _centre(region: np.ndarray) -> tuple[int, int]:
    """The pixel of ``region`` farthest from its boundary (image border included)."""
    padded = np.pad(region, 1, constant_values=False)
    distance = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(row), int(col)


def next_click(prediction: np.ndarray, truth: np.ndarray) -> Click | None:
    """Where the simulated user clicks next, or ``None`` when there is no error.

    Parameters
    ----------
    prediction, truth : np.ndarray
        ``(H, W)`` boolean masks: the model's current mask and the ground truth.

    Returns
    -------
    Click or None
        At the centre of the largest error region: positive when that region holds
        missed pixels, negative when it holds extra ones (missed wins a tie in size).
    """
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {prediction.shape} and {truth.shape}")
    missed, missed_size = _largest_region(truth & ~prediction)
    extra, extra_size = _largest_region(prediction & ~truth)
    if missed_size == 0 and extra_size == 0:
        return None
    positive = missed_size >= extra_size
    region, size = (missed, missed_size) if positive else (extra, extra_size)
    row, col = _centre(region)
    return Click(row, col, positive, size)
