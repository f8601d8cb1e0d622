"""Prompts → SAM2, propagation plans and label images (numpy in, numpy out)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from napari_sam_lora.engine.annotation.prompts import BoxPrompt, MaskPrompt, PointPrompt, Prompt
from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.engine.core.validation import check_frame, check_object_id, short_repr

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
    check_frame(frame, num_frames)


def _check_inside(rows_cols: np.ndarray, shape: tuple[int, int], what: str, frame: int) -> None:
    height, width = shape
    for row, col in np.asarray(rows_cols, dtype=float).reshape(-1, 2):
        if not (-0.5 <= row <= height - 0.5 and -0.5 <= col <= width - 0.5):
            raise PromptError(
                f"{what} (row {row:.1f}, col {col:.1f}) on frame {frame} lies outside the "
                f"{height}×{width} image"
            )


def validate_prompts(
    prompts: Sequence[Prompt],
    num_frames: int,
    frame_shape: tuple[int, int],
    known_objects: Collection[int] = (),
) -> None:
    """Raise :class:`PromptError` with a specific message for the first bad prompt.

    Checks every prompt before any reaches SAM2: it is a prompt record, its frame is in
    range, its object id is 1 … 2³¹ − 1 (:mod:`.validation`), points are non-empty, labelled
    0/1 and inside the image, a box is non-empty and inside, a mask has the frame's shape and
    at least one pixel — unless its object is among ``known_objects``, where an empty mask
    says "not on this frame" — and each (frame, object) has at most one box.
    """
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
        raise PromptError(
            f"prompts must be a list of PointPrompt, BoxPrompt or MaskPrompt, got "
            f"{short_repr(prompts)}"
        )
    if not prompts:
        raise PromptError(
            "no prompts: add at least one positive point, a box or a painted mask on some frame"
        )
    boxes: dict[tuple[int, int], int] = defaultdict(int)
    for prompt in prompts:
        if not isinstance(prompt, PointPrompt | BoxPrompt | MaskPrompt):
            raise PromptError(
                f"not a prompt: {short_repr(prompt)}; use PointPrompt, BoxPrompt or MaskPrompt"
            )
        _check_frame(prompt.frame, num_frames)
        if int(prompt.obj_id) < 1:
            raise PromptError(f"object id {prompt.obj_id} is invalid: ids start at 1")
        check_object_id(prompt.obj_id)
        if isinstance(prompt, PointPrompt):
            _check_points(prompt, frame_shape)
        elif isinstance(prompt, BoxPrompt):
            _check_box(prompt, frame_shape)
            boxes[(prompt.frame, prompt.obj_id)] += 1
        else:
            _check_mask(prompt, frame_shape, int(prompt.obj_id) in set(known_objects))
    for (frame, obj_id), count in boxes.items():
        if count > 1:
            raise PromptError(
                f"object {obj_id} has {count} boxes on frame {frame}; SAM2 takes one box per "
                "object and frame"
            )


def _check_points(prompt: PointPrompt, frame_shape: tuple[int, int]) -> None:
    if len(prompt.points) == 0:
        raise PromptError(
            f"no points for object {prompt.obj_id} on frame {prompt.frame}: give at least one "
            "(row, col) click"
        )
    if len(prompt.points) != len(prompt.labels):
        raise PromptError("each point needs one label (1 positive, 0 negative)")
    if not set(np.unique(prompt.labels)) <= {0, 1}:
        raise PromptError("point labels must be 1 (positive) or 0 (negative)")
    _check_inside(prompt.points, frame_shape, "point", prompt.frame)


def _check_mask(prompt: MaskPrompt, frame_shape: tuple[int, int], known: bool = False) -> None:
    if prompt.mask.shape != tuple(frame_shape):
        raise PromptError(
            f"mask for object {prompt.obj_id} on frame {prompt.frame} has shape "
            f"{prompt.mask.shape}, but frames are {tuple(frame_shape)}"
        )
    if not known and not prompt.mask.any():
        raise PromptError(
            f"the mask for new object {prompt.obj_id} on frame {prompt.frame} is empty: paint at "
            "least one pixel (to remove an object, reset it instead)"
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


def send_prompts(
    predictor: Any,
    state: dict,
    prompts: Sequence[Prompt],
    shown_mask: Callable[[int, int], np.ndarray | None] | None = None,
) -> None:
    """Give validated prompts to SAM2: per (frame, object) a mask first, then box + points.

    ``shown_mask(frame, obj_id)`` gives what the user sees of the object there, for clicks
    and boxes on frames whose SAM2 outputs were dropped (see
    :meth:`~napari_sam_lora.engine.tracking.sam2_bridge.StackPredictor.add_new_points_or_box`).
    """
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
        if shown_mask is not None:
            kwargs["shown_mask"] = shown_mask(frame, obj_id)
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
