"""What learners hand back: candidates (an adapter's proposed masks) and accept reports."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AcceptReport", "Candidate"]


@dataclass
class AcceptReport:
    """What :meth:`Learner.accept` wrote.

    Attributes
    ----------
    frames : list of int
        Frames whose mask of the object is now the candidate's.
    skipped : list of int
        Frames left alone because the user had confirmed them.
    labels : np.ndarray
        ``(len(frames), H, W)`` label images of ``frames`` after the accept.
    """

    frames: list[int]
    skipped: list[int]
    labels: np.ndarray


@dataclass
class Candidate:
    """One adapter's proposed masks for one object over some frames.

    Attributes
    ----------
    obj_id, adapter_name : int, str
        Whose proposal it is.
    frames : list of int
        Frames proposed, ascending.
    masks : np.ndarray
        ``(len(frames), H, W)`` bool masks at the stack's resolution.
    confidences : np.ndarray
        Per frame: the model's own predicted IoU × object-score probability.
    estimated_ious : np.ndarray, optional
        Per frame: the IoU the user can expect, calibrated on the user's own corrections
        when a calibrator is available; otherwise the confidences.
    raw_scores : np.ndarray, optional
        Per frame: what the calibrator mapped to ``estimated_ious`` (the agreement with the
        nearest confirmed frame, see ``adapter_pool.raw_score``); default the confidences.
    """

    obj_id: int
    adapter_name: str
    frames: list[int]
    masks: np.ndarray
    confidences: np.ndarray
    estimated_ious: np.ndarray | None = None
    raw_scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.estimated_ious is None:
            self.estimated_ious = np.asarray(self.confidences, dtype=np.float32)
        if self.raw_scores is None:
            self.raw_scores = np.asarray(self.confidences, dtype=np.float32)

    @property
    def confidence(self) -> float:
        """Mean confidence over the frames."""
        return float(np.mean(self.confidences)) if len(self.confidences) else 0.0

    @property
    def estimated_iou(self) -> float:
        """Mean estimated IoU over the frames."""
        return float(np.mean(self.estimated_ious)) if len(self.estimated_ious) else 0.0

    @property
    def span(self) -> str:
        """``"3"`` or ``"3-7"``: the frames proposed."""
        if len(self.frames) == 1:
            return f"{self.frames[0]}"
        return f"{self.frames[0]}-{self.frames[-1]}"

    @property
    def short_name(self) -> str:
        """Short layer name keeping the adapter visible: ``"obj1_a0 3-7 ≈0.86"``."""
        return f"{self.adapter_name} {self.span} ≈{self.estimated_iou:.2f}"

    @property
    def name(self) -> str:
        """Human-readable name: object, adapter, frame range, estimated IoU."""
        return (
            f"obj {self.obj_id} {self.adapter_name} frames {self.span} "
            f"≈ IoU {self.estimated_iou:.2f}"
        )

    def frame_estimate(self, frame: int) -> float | None:
        """The estimated IoU on ``frame`` (``None`` when the frame is not proposed)."""
        if frame not in self.frames:
            return None
        return float(self.estimated_ious[self.frames.index(frame)])
