"""The simulated user of the LIT protocol, on any tracker (SAM2 or a test double).

Per object, with the tracker's state reset:

1. The ground-truth mask of the start frame prompts the tracker (that frame is not scored).
2. Frames are tracked one at a time, forward from the start to the last frame, then
   backward from the frame before the start to frame 0 (``--start middle`` puts the start
   in the middle, as for z-stacks; ``first`` at the first frame where the object is
   annotated, so the backward part is usually empty).
3. On each *scored* frame (annotated, not the start) with IoU < threshold the user steps in.
   In the learning run, the adapters' candidate the model is most confident in is looked
   at first: if its IoU reaches the threshold it is accepted (one keypress, no correction).
   Otherwise the user clicks, up to ``max_clicks`` times, at the centre of the largest
   error region (:func:`~napari_sam_lora.simulation.clicks.next_click`), and paints the
   full ground-truth mask if the IoU is still below the threshold. One corrected frame =
   one correction, however many clicks it took. The frame's final mask then conditions the
   tracker (and, in the learning run, trains the object's adapter).
4. Oracle selection (the best candidate by *true* IoU, as LIT's code picks it) is recorded
   on the same frames without changing the run, so both selections can be compared.

With a learner whose adapters are shared by every object (``scope="class"``), an object
can get candidates before its own first correction: such accepts are counted as
:attr:`ObjectResult.accepted_uncorrected` — corrections a look-alike's corrections saved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

import numpy as np

from napari_sam_lora.engine.learning.calibration import candidate_scores
from napari_sam_lora.simulation.clicks import iou, next_click

__all__ = [
    "Action",
    "CandidateMask",
    "FrameRecord",
    "ObjectResult",
    "Tracker",
    "UserSettings",
    "run_object",
    "scan_order",
    "start_frame",
]

Action = Literal["none", "accepted", "clicks", "mask", "unscored"]
START_MODES = ("first", "middle")


@dataclass(frozen=True)
class CandidateMask:
    """A proposal offered to the simulated user: mask, model confidence, name."""

    mask: np.ndarray
    confidence: float
    name: str = ""
    payload: object = None


class Tracker(Protocol):
    """What the simulated user needs from a tracker (one object at a time)."""

    def begin(self, frame: int, mask: np.ndarray) -> None:
        """Reset, then prompt ``frame`` with the ground-truth ``mask``."""

    def track(self, frame: int, reverse: bool) -> np.ndarray:
        """Track ``frame`` from memory; return the object's ``(H, W)`` bool mask."""

    def click(self, frame: int, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Give all clicks so far on ``frame`` (``(n, 2)`` row/col, labels 1/0); new mask."""

    def correct(self, frame: int, mask: np.ndarray) -> None:
        """The user's final ``mask`` for ``frame``: condition on it (and learn from it)."""

    def candidates(self, frame: int) -> Sequence[CandidateMask]:
        """Proposals for ``frame`` (empty when the tracker does not learn)."""

    def accept(self, frame: int, candidate: CandidateMask) -> None:
        """The user accepts ``candidate`` for ``frame``."""


@dataclass(frozen=True)
class UserSettings:
    """How the simulated user behaves."""

    threshold: float = 0.5
    max_clicks: int = 3
    start: str = "first"

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.max_clicks < 0:
            raise ValueError(f"max_clicks must be >= 0, got {self.max_clicks}")
        if self.start not in START_MODES:
            raise ValueError(f"start must be one of {START_MODES}, got {self.start!r}")


@dataclass
class FrameRecord:
    """What happened on one frame.

    ``iou_tracked`` is the tracker's mask before the user; ``iou_model`` what the run had
    without any correction (the accepted candidate's IoU where one was accepted);
    ``iou_final`` after the user. ``candidate_*`` describe the most confident candidate,
    ``oracle_iou`` the best candidate's true IoU (``None`` when there was no candidate).
    """

    frame: int
    action: Action
    iou_tracked: float | None = None
    iou_model: float | None = None
    iou_final: float | None = None
    clicks: int = 0
    candidates: int = 0
    candidate_iou: float | None = None
    candidate_confidence: float | None = None
    oracle_iou: float | None = None
    oracle_accept: bool = False
    candidate_scores: list[dict[str, float]] = field(default_factory=list)


@dataclass
class ObjectResult:
    """One object's run: every frame visited, in visiting order."""

    obj_id: int
    start_frame: int
    frames: list[FrameRecord] = field(default_factory=list)

    @property
    def scored(self) -> list[FrameRecord]:
        """Frames that count."""
        return [f for f in self.frames if f.action != "unscored"]

    @property
    def corrections(self) -> int:
        """Frames the user corrected (clicks and/or a full mask)."""
        return sum(f.action in ("clicks", "mask") for f in self.frames)

    @property
    def clicks(self) -> int:
        """Clicks placed, over all corrected frames."""
        return sum(f.clicks for f in self.frames)

    @property
    def mask_corrections(self) -> int:
        """Corrections that needed the full mask."""
        return sum(f.action == "mask" for f in self.frames)

    @property
    def accepted_candidates(self) -> int:
        """Frames fixed by accepting the most confident candidate."""
        return sum(f.action == "accepted" for f in self.frames)

    @property
    def accepted_uncorrected(self) -> int:
        """Frames fixed by accepting a candidate before the object's first correction of
        its own, in visiting order: what adapters learned elsewhere (class scope: on other
        objects; or a loaded adapter file) saved on an object not corrected yet."""
        count = 0
        for f in self.frames:
            if f.action in ("clicks", "mask"):
                break
            count += f.action == "accepted"
        return count

    @property
    def accepted_candidates_oracle(self) -> int:
        """Frames where the best candidate by true IoU reached the threshold."""
        return sum(f.oracle_accept for f in self.frames)

    def mean(self, key: str) -> float | None:
        """Mean of a :class:`FrameRecord` IoU field over the scored frames."""
        values = [getattr(f, key) for f in self.scored]
        return float(np.mean(values)) if values else None

    def to_dict(self) -> dict:
        """Counts, means and per-frame records, JSON-ready."""
        return {
            "obj_id": self.obj_id,
            "start_frame": self.start_frame,
            "scored_frames": len(self.scored),
            "corrections": self.corrections,
            "clicks": self.clicks,
            "mask_corrections": self.mask_corrections,
            "accepted_candidates": self.accepted_candidates,
            "accepted_uncorrected": self.accepted_uncorrected,
            "accepted_candidates_oracle": self.accepted_candidates_oracle,
            "mean_iou": self.mean("iou_model"),
            "mean_iou_tracked": self.mean("iou_tracked"),
            "mean_iou_final": self.mean("iou_final"),
            "frames": [asdict(f) for f in self.frames],
        }


def start_frame(present: np.ndarray, annotated: np.ndarray, start: str) -> int:
    """The frame to prompt: first annotated frame with the object, or the one nearest the middle.

    Parameters
    ----------
    present, annotated : np.ndarray
        ``(T,)`` bool: the object has pixels / the frame is annotated.
    start : {"first", "middle"}
    """
    usable = np.flatnonzero(np.asarray(present) & np.asarray(annotated))
    if usable.size == 0:
        raise ValueError("the object has no pixels on any annotated frame")
    if start == "first":
        return int(usable[0])
    middle = (len(present) - 1) / 2
    return int(usable[np.argmin(np.abs(usable - middle))])  # ties: the earlier frame


def scan_order(start: int, num_frames: int) -> Iterator[tuple[int, bool]]:
    """``(frame, reverse)`` pairs: forward after ``start``, then backward before it."""
    for frame in range(start + 1, num_frames):
        yield frame, False
    for frame in range(start - 1, -1, -1):
        yield frame, True


def _review(
    tracker: Tracker, frame: int, truth: np.ndarray, record: FrameRecord, threshold: float
) -> bool:
    """Look at the candidates; accept the most confident one if it is good. True if accepted."""
    candidates = list(tracker.candidates(frame))
    record.candidates = len(candidates)
    if not candidates:
        return False
    ious = [iou(c.mask, truth) for c in candidates]
    record.candidate_scores = candidate_scores(candidates, ious)  # for the calibration report
    best = int(np.argmax([c.confidence for c in candidates]))
    record.candidate_iou, record.candidate_confidence = (
        ious[best],
        float(candidates[best].confidence),
    )
    record.oracle_iou = max(ious)
    record.oracle_accept = record.oracle_iou >= threshold
    if ious[best] < threshold:
        return False
    tracker.accept(frame, candidates[best])
    record.action, record.iou_model, record.iou_final = "accepted", ious[best], ious[best]
    return True


def _correct(
    tracker: Tracker,
    frame: int,
    predicted: np.ndarray,
    truth: np.ndarray,
    record: FrameRecord,
    user: UserSettings,
) -> None:
    """Clicks first, then the full mask if still needed; the final mask goes to the tracker."""
    points: list[tuple[int, int]] = []
    labels: list[int] = []
    current, score = predicted, record.iou_tracked
    while len(points) < user.max_clicks:
        click = next_click(current, truth)
        if click is None:
            break
        points.append((click.row, click.col))
        labels.append(click.label)
        current = np.asarray(
            tracker.click(frame, np.array(points, dtype=np.float32), np.array(labels)), bool
        )
        score = iou(current, truth)
        if score >= user.threshold:
            break
    record.clicks = len(points)
    if score is not None and score >= user.threshold:
        record.action, final, record.iou_final = "clicks", current, score
    else:
        record.action, final, record.iou_final = "mask", truth, 1.0
    tracker.correct(frame, final)


def run_object(
    tracker: Tracker,
    truth: np.ndarray,
    annotated: np.ndarray,
    obj_id: int,
    user: UserSettings,
    learning: bool,
    on_frame: Callable[[FrameRecord], None] | None = None,
) -> ObjectResult:
    """Run the simulated user on one object.

    Parameters
    ----------
    tracker : Tracker
        Tracks the object; its state is reset by ``begin``.
    truth : np.ndarray
        ``(T, H, W)`` bool: the object's ground truth (meaningful on annotated frames).
    annotated : np.ndarray
        ``(T,)`` bool: frames that are scored (the start frame never is).
    obj_id : int
        Reported id.
    user : UserSettings
        Threshold, click budget, start mode.
    learning : bool
        Look at the tracker's candidates before correcting (the learning run).
    on_frame : callable, optional
        Called with each :class:`FrameRecord` when the frame is done (progress).

    Returns
    -------
    ObjectResult
    """
    truth = np.asarray(truth, dtype=bool)
    annotated = np.asarray(annotated, dtype=bool)
    start = start_frame(truth.any(axis=(1, 2)), annotated, user.start)
    result = ObjectResult(int(obj_id), start)
    tracker.begin(start, truth[start])
    for frame, reverse in scan_order(start, len(truth)):
        predicted = np.asarray(tracker.track(frame, reverse), dtype=bool)
        if not annotated[frame]:
            record = FrameRecord(frame, "unscored")
        else:
            score = iou(predicted, truth[frame])
            record = FrameRecord(frame, "none", score, score, score)
            if score < user.threshold:
                accepted = learning and _review(
                    tracker, frame, truth[frame], record, user.threshold
                )
                if not accepted:
                    _correct(tracker, frame, predicted, truth[frame], record, user)
        result.frames.append(record)
        if on_frame is not None:
            on_frame(record)
    return result
