"""Corrections: what the user changed on a frame, per object (numpy in, numpy out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.engine.core.validation import check_label_image

CorrectionKind = Literal["changed", "erased", "new"]


@dataclass(frozen=True)
class Correction:
    """The user's mask for one object on one frame, where it differs from the model's.

    Attributes
    ----------
    frame : int
        Frame index.
    obj_id : int
        Object id (label value).
    mask : np.ndarray
        ``(H, W)`` bool: the object as the user wants it (empty when erased).
    kind : {"changed", "erased", "new"}
        Edited, removed entirely, or an id the model did not output on this frame.
    changed_pixels : int
        How many pixels of this object differ from the model's output.
    """

    frame: int
    obj_id: int
    mask: np.ndarray
    kind: CorrectionKind
    changed_pixels: int


def diff_corrections(
    frame: int,
    model_labels: np.ndarray,
    user_labels: np.ndarray,
    known_ids: set[int] | None = None,
) -> list[Correction]:
    """Per-object corrections between the model's label image and the user's edit.

    Parameters
    ----------
    frame : int
        The frame both label images belong to.
    model_labels, user_labels : np.ndarray
        ``(H, W)`` integer label images: SAM2's last output and the user's layer.
    known_ids : set of int, optional
        Objects the model already tracks; other ids are "new". Default: the ids in
        ``model_labels``.

    Raises
    ------
    PromptError
        Shapes differ, the user's labels hold a value that is no object id (negative,
        fractional, NaN, beyond 2³¹ − 1), or nothing changed on this frame.
    """
    model_labels = np.asarray(model_labels)
    user_labels = check_label_image(user_labels, f"the corrected labels on frame {frame}")
    if model_labels.shape != user_labels.shape:
        raise PromptError(
            f"the corrected frame has shape {user_labels.shape}, but the model's output on "
            f"frame {frame} has shape {model_labels.shape}"
        )
    model_ids = set(np.unique(model_labels)) - {0}
    known = model_ids if known_ids is None else set(known_ids)
    corrections = []
    for obj_id in sorted(model_ids | set(np.unique(user_labels)) - {0}):
        wanted = user_labels == obj_id
        changed = int(np.count_nonzero(wanted != (model_labels == obj_id)))
        if not changed:
            continue
        kind: CorrectionKind = (
            "new" if obj_id not in known else "erased" if not wanted.any() else "changed"
        )
        corrections.append(Correction(int(frame), int(obj_id), wanted, kind, changed))
    if not corrections:
        raise PromptError(
            f"nothing to learn on frame {frame}: the layer matches the model's output there. "
            "Paint, erase or fill the mask first."
        )
    return corrections


def merge_object(labels: np.ndarray, obj_id: int, mask: np.ndarray) -> np.ndarray:
    """``labels`` with object ``obj_id`` replaced by ``mask``; other objects' pixels kept.

    Pixels of ``obj_id`` outside ``mask`` become background; ``mask`` pixels that belong
    to another object stay that object's.
    """
    merged = np.array(labels, copy=True)
    merged[(merged == obj_id) & ~mask] = 0
    merged[mask & (merged == 0)] = obj_id
    return merged
