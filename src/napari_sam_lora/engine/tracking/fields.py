"""Whole fields of cells: seeding every object of a label image, the instant preview of a
click, and divisions (``Session.add_label_image``, ``Session.preview``,
``Session.split_object``; *Segment all* is :mod:`.automatic`).

Each function takes the session and uses only its public verbs, its annotation model and
the SAM2 bridge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam_lora.engine.annotation.prompts import BoxPrompt, MaskPrompt, PointPrompt, Prompt
from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.engine.core.validation import (
    check_frame,
    check_label_image,
    check_mask,
    check_object_id,
)
from napari_sam_lora.engine.tracking import sam2_bridge as bridge
from napari_sam_lora.engine.tracking.plans import validate_prompts

if TYPE_CHECKING:
    from napari_sam_lora.engine.tracking.session import Session

__all__ = ["preview_mask", "seed_label_image", "split_object"]


def seed_label_image(session: Session, frame: int, label_image: Any) -> list[int]:
    """See :meth:`Session.add_label_image`."""
    frame = check_frame(frame, session.num_frames)
    labels = check_label_image(label_image, "the seed labels")
    if labels.shape != session.frame_shape:
        raise PromptError(
            f"the seed labels have shape {labels.shape}; frames are {session.frame_shape}"
        )
    ids = np.unique(labels)
    ids = [int(i) for i in ids[ids != 0]]
    if not ids:
        raise PromptError(f"the seed labels of frame {frame} hold no object (all 0)")
    prompts = [MaskPrompt(frame, obj_id, labels == obj_id) for obj_id in ids]
    with session.annotation.action(f"seed {len(ids)} object(s) on frame {frame}"):
        session.add_prompts(prompts)
    return ids


def preview_mask(
    session: Session, frame: int, obj_id: int, prompts: Sequence[Prompt]
) -> np.ndarray:
    """See :meth:`Session.preview` (decoder only: SAM2's state does not change)."""
    prompts = list(prompts)
    frame, obj_id = check_frame(frame, session.num_frames), int(obj_id)
    if not prompts:
        raise PromptError("nothing to preview: click on the object or draw a box")
    if any((int(p.frame), int(p.obj_id)) != (frame, obj_id) for p in prompts):
        raise PromptError(f"a preview is of one object on one frame ({obj_id}, {frame})")
    validate_prompts(
        prompts, session.num_frames, session.frame_shape, [*session.object_ids, obj_id]
    )
    masks = [p for p in prompts if isinstance(p, MaskPrompt)]
    if masks:
        return np.asarray(masks[-1].mask, bool).copy()
    points = [p for p in prompts if isinstance(p, PointPrompt)]
    boxes = [p for p in prompts if isinstance(p, BoxPrompt)]
    xy = np.concatenate([p.points[:, ::-1] for p in points]) if points else None
    codes = np.concatenate([p.labels for p in points]) if points else None
    box = None
    if boxes:
        r0, c0, r1, c1 = boxes[-1].box
        box = np.array([c0, r0, c1, r1], dtype=np.float32)
    with session.model.precision():
        logits = bridge.preview_logits(
            session.model.predictor, session.state, frame, xy, codes, box
        )
        return bridge.video_masks(session.model.predictor, session.state, logits)[0, 0] > 0


def split_object(
    session: Session, frame: int, obj_id: int, daughter_masks: Sequence[Any]
) -> list[int]:
    """See :meth:`Session.split_object`."""
    frame = check_frame(frame, session.num_frames)
    obj_id = check_object_id(obj_id, where="split_object")
    if obj_id not in session.object_ids:
        raise PromptError(f"object {obj_id} does not exist (objects: {session.object_ids})")
    if obj_id in session.annotation.parents().values():
        raise PromptError(f"object {obj_id} has already divided")
    masks = [check_mask(m) for m in daughter_masks]
    if len(masks) != 2:
        raise PromptError(f"a division makes two daughters; got {len(masks)} mask(s)")
    for k, mask in enumerate(masks):
        if mask.shape != session.frame_shape:
            raise PromptError(
                f"daughter mask {k + 1} has shape {mask.shape}; frames are {session.frame_shape}"
            )
        if not mask.any():
            raise PromptError(f"daughter mask {k + 1} is empty: paint each daughter")
    if (masks[0] & masks[1]).any():
        raise PromptError("the two daughter masks overlap: each pixel belongs to one")
    first = max([*session.object_ids, int(session.labels.max())]) + 1
    daughters = [first, first + 1]
    with session.annotation.action(f"split object {obj_id} on frame {frame}"):
        session.annotation.set_lineage(
            {**session.annotation.lineage, **{d: (obj_id, frame) for d in daughters}}
        )
        kept = [p for p in session.annotation.prompts if not _after(p, obj_id, frame)]
        if len(kept) != len(session.annotation.prompts):
            session.set_prompts(kept)
        for t, o in session.annotations.keys_in_order():
            if o == obj_id and t >= frame:
                session.annotation.erase_entry(t, o)
        for t in session.labels.frames_with(obj_id):
            if t >= frame:
                plane = session.labels[t].copy()
                plane[plane == obj_id] = 0
                session.annotation.write_frame(t, plane)
        session.add_prompts(
            [MaskPrompt(frame, d, m) for d, m in zip(daughters, masks, strict=True)]
        )
    return daughters


def _after(prompt: Prompt, obj_id: int, frame: int) -> bool:
    return int(prompt.obj_id) == obj_id and int(prompt.frame) >= frame
