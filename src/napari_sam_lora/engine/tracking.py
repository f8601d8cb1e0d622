"""Prompts → SAM2, propagation plans and label images (numpy in, numpy out)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from napari_sam_lora.engine.errors import PromptError
from napari_sam_lora.engine.prompts import BoxPrompt, MaskPrompt, PointPrompt, Prompt

Direction = Literal["forward", "backward", "both"]
DIRECTIONS: tuple[str, ...] = ("forward", "backward", "both")


@dataclass(frozen=True)
class PropagationStep:
    """One tracked frame, as yielded by ``Session.propagate``.

    Attributes
    ----------
    frame : int
        Frame index.
    done : int
        Frames processed so far in this job (1-based).
    total : int
        Frames this job will process.
    labels : np.ndarray
        ``(H, W)`` int32 label image of the frame (0 = background, ids as prompted).
    """

    frame: int
    done: int
    total: int
    labels: np.ndarray


@dataclass(frozen=True)
class Pass:
    """One call of SAM2's propagation: from ``start`` over ``count`` more frames."""

    start: int
    count: int
    reverse: bool

    @property
    def frames(self) -> range:
        """The frames it visits, in order."""
        if self.reverse:
            return range(self.start, self.start - self.count - 1, -1)
        return range(self.start, self.start + self.count + 1)


def _check_frame(frame: int, num_frames: int) -> None:
    if not 0 <= int(frame) < num_frames:
        raise PromptError(
            f"frame {frame} is out of range: the stack has {num_frames} frame(s) "
            f"(0–{num_frames - 1})"
        )


def _check_inside(rows_cols: np.ndarray, shape: tuple[int, int], what: str, frame: int) -> None:
    height, width = shape
    for row, col in np.asarray(rows_cols, dtype=float).reshape(-1, 2):
        if not (-0.5 <= row <= height - 0.5 and -0.5 <= col <= width - 0.5):
            raise PromptError(
                f"{what} (row {row:.1f}, col {col:.1f}) on frame {frame} lies outside the "
                f"{height}×{width} image"
            )


def validate_prompts(
    prompts: Sequence[Prompt], num_frames: int, frame_shape: tuple[int, int]
) -> None:
    """Raise :class:`PromptError` with a specific message for the first bad prompt."""
    if not prompts:
        raise PromptError(
            "no prompts: add at least one positive point, a box or a painted mask on some frame"
        )
    boxes: dict[tuple[int, int], int] = defaultdict(int)
    for prompt in prompts:
        _check_frame(prompt.frame, num_frames)
        if int(prompt.obj_id) < 1:
            raise PromptError(f"object id {prompt.obj_id} is invalid: ids start at 1")
        if isinstance(prompt, PointPrompt):
            if len(prompt.points) != len(prompt.labels):
                raise PromptError("each point needs one label (1 positive, 0 negative)")
            if not set(np.unique(prompt.labels)) <= {0, 1}:
                raise PromptError("point labels must be 1 (positive) or 0 (negative)")
            _check_inside(prompt.points, frame_shape, "point", prompt.frame)
        elif isinstance(prompt, BoxPrompt):
            _check_box(prompt, frame_shape)
            boxes[(prompt.frame, prompt.obj_id)] += 1
        elif isinstance(prompt, MaskPrompt):
            if prompt.mask.shape != tuple(frame_shape):
                raise PromptError(
                    f"mask for object {prompt.obj_id} on frame {prompt.frame} has shape "
                    f"{prompt.mask.shape}, but frames are {tuple(frame_shape)}"
                )
        else:
            raise PromptError(f"not a prompt: {prompt!r}")
    for (frame, obj_id), count in boxes.items():
        if count > 1:
            raise PromptError(
                f"object {obj_id} has {count} boxes on frame {frame}; SAM2 takes one box per "
                "object and frame"
            )


def _check_box(prompt: BoxPrompt, frame_shape: tuple[int, int]) -> None:
    if prompt.box.size != 4:
        raise PromptError("a box needs four numbers: (row0, col0, row1, col1)")
    r0, c0, r1, c1 = prompt.box
    _check_inside(np.array([[r0, c0], [r1, c1]]), frame_shape, "box corner", prompt.frame)
    if r1 - r0 < 1 or c1 - c0 < 1:
        raise PromptError(f"the box for object {prompt.obj_id} on frame {prompt.frame} is empty")


def prompted_frames(prompts: Iterable[Prompt]) -> list[int]:
    """Sorted frames that carry at least one prompt."""
    return sorted({int(p.frame) for p in prompts})


def send_prompts(predictor: Any, state: dict, prompts: Sequence[Prompt]) -> None:
    """Give validated prompts to SAM2: per (frame, object) a mask first, then box + points."""
    grouped: dict[tuple[int, int], list[Prompt]] = defaultdict(list)
    for prompt in prompts:
        grouped[(int(prompt.frame), int(prompt.obj_id))].append(prompt)
    for (frame, obj_id), group in sorted(grouped.items()):
        for mask in (p for p in group if isinstance(p, MaskPrompt)):
            predictor.add_new_mask(state, frame_idx=frame, obj_id=obj_id, mask=mask.mask)
        points = [p for p in group if isinstance(p, PointPrompt)]
        boxes = [p for p in group if isinstance(p, BoxPrompt)]
        if not points and not boxes:
            continue
        kwargs: dict[str, Any] = {}
        if points:
            kwargs["points"] = np.concatenate([p.points[:, ::-1] for p in points])  # → (x, y)
            kwargs["labels"] = np.concatenate([p.labels for p in points])
        if boxes:
            r0, c0, r1, c1 = boxes[0].box
            kwargs["box"] = np.array([c0, r0, c1, r1], dtype=np.float32)
        predictor.add_new_points_or_box(state, frame_idx=frame, obj_id=obj_id, **kwargs)


def plan_passes(
    direction: str,
    frame_range: tuple[int, int] | None,
    prompted: Sequence[int],
    num_frames: int,
) -> list[Pass]:
    """The propagation passes for a direction over an inclusive frame range.

    Forward starts at the first prompted frame inside the range (or its start), backward
    at the last one (or its end); ``both`` does forward, then backward.
    """
    if direction not in DIRECTIONS:
        raise PromptError(f"unknown direction {direction!r}; choose one of {DIRECTIONS}")
    first, last = (0, num_frames - 1) if frame_range is None else map(int, frame_range)
    _check_frame(first, num_frames)
    _check_frame(last, num_frames)
    if first > last:
        raise PromptError(f"empty frame range {first}–{last}: the start is after the end")
    inside = [t for t in prompted if first <= t <= last]
    passes = []
    if direction in ("forward", "both"):
        start = inside[0] if inside else first
        passes.append(Pass(start, last - start, reverse=False))
    if direction in ("backward", "both"):
        start = inside[-1] if inside else last
        if direction == "backward" or start > first:
            passes.append(Pass(start, start - first, reverse=True))
    return passes


def compose_labels(obj_ids: Sequence[int], logits: Any) -> np.ndarray:
    """``(H, W)`` int32 label image from per-object mask logits ``(N, 1, H, W)``.

    A pixel gets the id of the object with the highest positive logit; 0 elsewhere.
    """
    scores = np.asarray(logits, dtype=np.float32).reshape(len(obj_ids), *np.shape(logits)[-2:])
    best = scores.argmax(axis=0)
    ids = np.asarray(obj_ids, dtype=np.int32)
    return np.where(scores.max(axis=0) > 0, ids[best], 0).astype(np.int32)
