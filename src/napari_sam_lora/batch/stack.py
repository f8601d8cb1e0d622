"""One stack through the engine: seed prompts in, labels out — the widget's own path.

:func:`segment_stack` is all a batch worker does with SAM2: build a
:class:`~napari_sam_lora.engine.Session` on the stack with the worker's loaded model, add
the seed prompts, and propagate (with saved adapters through a ``Learner``, adapter-assisted).
There is no second tracking path: a direct ``Session`` run with the same prompts gives the
same labels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam_lora.engine.annotation.prompts import MaskPrompt, PointPrompt, Prompt
from napari_sam_lora.engine.core.errors import PromptError

__all__ = [
    "START_CHOICES",
    "PointRow",
    "StackResult",
    "point_prompts",
    "resolve_start",
    "seed_prompts",
    "segment_stack",
]

#: Where a single-frame seed mask sits: a frame index or one of these.
START_CHOICES = ("first", "middle", "last")


@dataclass(frozen=True)
class PointRow:
    """One click of a points table (already validated): frame, object, (row, col), sign."""

    frame: int
    obj_id: int
    row: float
    col: float
    positive: bool


@dataclass
class StackResult:
    """What :func:`segment_stack` produced for one stack.

    Attributes
    ----------
    labels : array-like
        The session's ``(T, H, W)`` int32 label images (value = object id,
        :attr:`Session.labels`), kept compressed: ``labels[t]`` decodes one frame,
        ``np.asarray(labels)`` all of them; the writers read them frame by frame, so a
        stack's labels are never dense in memory at once.
    object_ids : list of int
        The prompted objects.
    adapter_frames : dict
        ``{frame: sorted object ids}`` where an adapter's mask replaced SAM2's.
    """

    labels: np.ndarray
    object_ids: list[int]
    adapter_frames: dict[int, list[int]] = field(default_factory=dict)


def resolve_start(start: str | int, num_frames: int) -> int:
    """Frame index of ``start`` (``"first"``, ``"middle"``, ``"last"`` or an index).

    Raises
    ------
    PromptError
        An unknown word or an index outside the stack.
    """
    if isinstance(start, str) and not start.lstrip("-").isdigit():
        if start not in START_CHOICES:
            raise PromptError(f"--start {start!r}: choose first, middle, last or a frame index")
        return {"first": 0, "middle": num_frames // 2, "last": num_frames - 1}[start]
    index = int(start)
    if not 0 <= index < num_frames:
        raise PromptError(f"--start {index} is outside the stack (frames 0–{num_frames - 1})")
    return index


def seed_prompts(
    seeds: np.ndarray, num_frames: int, frame_shape: tuple[int, int], start: str | int = "middle"
) -> list[Prompt]:
    """Mask prompts from a seed labels image: one per object and seeded frame.

    Parameters
    ----------
    seeds : np.ndarray
        ``(T, H, W)`` labels matching the stack (every frame with labels is a seed frame)
        or one ``(H, W)`` labels image placed on frame ``start``.
    num_frames, frame_shape
        The stack's geometry.
    start : str or int
        Frame of a single-frame seed image (see :func:`resolve_start`).

    Raises
    ------
    PromptError
        Shapes that do not match the stack, or no labels at all.
    """
    seeds = np.asarray(seeds)
    if seeds.ndim == 3 and seeds.shape[0] == 1:
        seeds = seeds[0]
    if seeds.shape == tuple(frame_shape):
        frames = {resolve_start(start, num_frames): seeds}
    elif seeds.shape == (num_frames, *frame_shape):
        frames = {t: seeds[t] for t in range(num_frames) if seeds[t].any()}
    else:
        raise PromptError(
            f"seed labels of shape {seeds.shape} fit neither the stack ({num_frames}, "
            f"{frame_shape[0]}, {frame_shape[1]}) nor one of its frames {tuple(frame_shape)}"
        )
    prompts: list[Prompt] = []
    for frame, image in frames.items():
        for obj_id in np.unique(image):
            if obj_id != 0:
                prompts.append(MaskPrompt(int(frame), int(obj_id), image == obj_id))
    if not prompts:
        raise PromptError("the seed labels are empty (all 0): nothing to segment")
    return prompts


def point_prompts(rows: Iterable[PointRow]) -> list[Prompt]:
    """Point prompts from points-table rows: one per (frame, object), clicks in row order."""
    groups: dict[tuple[int, int], list[PointRow]] = {}
    for row in rows:
        groups.setdefault((row.frame, row.obj_id), []).append(row)
    return [
        PointPrompt(
            frame,
            obj_id,
            np.array([[r.row, r.col] for r in clicks], dtype=np.float32),
            np.array([1 if r.positive else 0 for r in clicks], dtype=np.int32),
        )
        for (frame, obj_id), clicks in sorted(groups.items())
    ]


def segment_stack(
    stack: Any,
    prompts: Sequence[Prompt],
    model: Any,
    *,
    adapters: Sequence[str | os.PathLike[str]] = (),
    direction: str = "both",
    frame_range: tuple[int, int] | None = None,
    feature_cache_mb: float = 2048.0,
    progress: Callable[[int, int], Any] | None = None,
) -> StackResult:
    """Segment one stack with the engine, exactly as the widget does.

    Parameters
    ----------
    stack : array-like
        ``(T, H, W)`` or ``(T, H, W, C)`` (numpy, zarr, a lazy reader...).
    prompts : sequence of Prompt
        Seed prompts (see :func:`seed_prompts`, :func:`point_prompts`).
    model : str or LoadedModel
        Passed to ``Session``; a ``LoadedModel`` is shared, not copied.
    adapters : sequence of path
        Adapter files (``Learner.save``); with any, propagation is adapter-assisted.
    direction : {"forward", "backward", "both"}
    frame_range : tuple of int, optional
        Inclusive ``(first, last)``.
    feature_cache_mb : float
        The session's image-feature memory budget.
    progress : callable, optional
        ``progress(done, total)`` after every tracked frame (frames of this propagation).

    Returns
    -------
    StackResult

    Raises
    ------
    StackError, PromptError, AdapterFileError
        From the engine, before anything is tracked.
    """
    from napari_sam_lora import Learner, Session

    # nothing learns here: no decoder inputs are recorded (an adapter's assist hook still
    # sees the frame it is asked about)
    session = Session(
        stack, model=model, feature_cache_mb=feature_cache_mb, record_decoder_inputs=False
    )
    session.add_prompts(prompts)
    object_ids = sorted({int(p.obj_id) for p in prompts})

    def track(assist: Any = None) -> np.ndarray:
        for step in session.propagate_steps(direction, frame_range, assist):
            if progress is not None:
                progress(int(step.done), int(step.total))
        # the session ends here: its compressed label frames are the result (never dense)
        return session.labels

    if not adapters:
        return StackResult(track(), object_ids)
    with Learner(session) as learner:  # closing takes its adapters off the shared decoder
        for path in adapters:
            learner.load(path)
        labels = track(learner.assist_hook())
        made = {int(f): sorted(int(i) for i in ids) for f, ids in learner.adapter_frames.items()}
    return StackResult(labels, object_ids, made)
