"""Incremental re-propagation: re-track after a change only as far as it changes anything.

After a correction or an accept on frame *t*, each direction is re-tracked from *t* until the
new masks agree with the previous run (IoU ≥ ``agree_iou`` for every object) on
``agree_frames`` consecutive frames — by default SAM2's memory bank (7 for SAM2.1), the
depth of the memory chain a change travels along. Conditioning frames reach further through
attention, so this is an approximation, measured against a full re-propagation in the
tests and ``benchmarks/bench_repropagation.py``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.engine.tracking.plans import Pass, PropagationStep, plan_passes

if TYPE_CHECKING:
    from napari_sam_lora.engine.tracking.session import Session

__all__ = ["RepropagationReport", "mask_ious", "repropagate_steps"]


@dataclass
class RepropagationReport:
    """What :meth:`Session.repropagate_steps` did.

    Attributes
    ----------
    frame : int
        The frame the change was made on.
    tracked : list of int
        Frames re-tracked, in order.
    stopped : dict
        ``{"forward"|"backward": frame}`` where a pass stopped early because the new masks
        agreed with the previous ones; a direction missing here ran to the stack's end.
    full : bool
        Whether a full re-propagation was asked for.
    """

    frame: int
    tracked: list[int] = field(default_factory=list)
    stopped: dict[str, int] = field(default_factory=dict)
    full: bool = False


def repropagate_steps(
    session: Session,
    frame: int,
    direction: str = "both",
    agree_iou: float = 0.98,
    agree_frames: int | None = None,
    full: bool = False,
    frame_range: tuple[int, int] | None = None,
) -> Generator[PropagationStep, None, RepropagationReport]:
    """:meth:`Session.repropagate_steps` (see there)."""
    frame = int(frame)
    if not 0 <= frame < session.num_frames:
        raise PromptError(f"frame {frame} is out of range (0–{session.num_frames - 1})")
    if not 0.0 < float(agree_iou) <= 1.0:
        raise PromptError(f"agree_iou must be in (0, 1], not {agree_iou}")
    needed = session.memory_frames if agree_frames is None else int(agree_frames)
    if needed < 1:
        raise PromptError(f"agree_frames must be at least 1, not {agree_frames}")
    report = RepropagationReport(frame, full=bool(full))
    first, last = frame_range if frame_range is not None else (0, session.num_frames - 1)
    if not 0 <= first <= last < session.num_frames:
        raise PromptError(
            f"frame range {first}–{last} is not inside the stack (0–{session.num_frames - 1})"
        )
    if full:
        for step in session.propagate_steps(direction, frame_range):
            report.tracked.append(step.frame)
            yield step
        return report
    if not session.annotations.confirmed_frames():
        raise PromptError("no prompts: add a point, box or mask before propagating")
    plan_passes(direction, None, [frame], session.num_frames)  # validates the direction
    if not first <= frame <= last:
        return report  # the change lies outside the range: nothing in it to re-track
    passes = []
    if direction in ("forward", "both") and frame < last:
        passes.append(("forward", Pass(frame, last - frame, reverse=False)))
    if direction in ("backward", "both") and frame > first:
        passes.append(("backward", Pass(frame, frame - first, reverse=True)))
    total = sum(len(p.frames) for _, p in passes)
    done = 0
    with session.exclusive():
        session._follow_annotation()
        for name, sam_pass in passes:
            agreeing = 0
            steps = session._run_pass(sam_pass, compare=True)
            try:
                for tracked, agrees in steps:
                    done += 1
                    report.tracked.append(tracked)
                    yield PropagationStep(tracked, done, total, session.labels[tracked].copy())
                    if tracked == frame:
                        continue
                    agreeing = agreeing + 1 if _all_agree(agrees, agree_iou) else 0
                    if agreeing >= needed:
                        report.stopped[name] = tracked
                        break
            finally:
                steps.close()
    return report


def mask_ious(before: np.ndarray, after: np.ndarray, obj_ids: Sequence[int]) -> list[float]:
    """Per object, the IoU of its mask before and after (two empty masks agree: 1.0)."""
    ious = []
    for obj_id in obj_ids:
        a, b = before == int(obj_id), after == int(obj_id)
        union = np.count_nonzero(a | b)
        ious.append(1.0 if union == 0 else np.count_nonzero(a & b) / union)
    return ious


def _all_agree(ious: Sequence[float], threshold: float) -> bool:
    return all(iou >= threshold for iou in ious)
