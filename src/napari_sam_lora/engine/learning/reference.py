"""The reference mask a candidate is compared with to estimate its IoU (numpy only).

A proposal for frame ``t`` is compared with the object's mask on the nearest frame the user
confirmed, moved by the object's own recent motion: when two confirmed frames lie on that
side (the nearest one and one beyond it), their centroids give a per-frame velocity and
the reference is shifted by it to frame ``t`` (constant velocity, whole pixels). With only
one confirmed frame the mask is used where it is. An empty confirmed mask (the object is
absent there) is used as it is.
"""

from __future__ import annotations

import numpy as np

from napari_sam_lora.engine.annotation.state import AnnotationState

__all__ = ["reference_mask", "shifted"]


def shifted(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``mask`` moved by whole pixels (down ``rows``, right ``cols``); what leaves is lost."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(rows) >= h or abs(cols) >= w:
        return out
    src_r = slice(max(0, -rows), h - max(0, rows))
    dst_r = slice(max(0, rows), h - max(0, -rows))
    src_c = slice(max(0, -cols), w - max(0, cols))
    dst_c = slice(max(0, cols), w - max(0, -cols))
    out[dst_r, dst_c] = mask[src_r, src_c]
    return out


def _centroid(mask: np.ndarray) -> np.ndarray | None:
    rows, cols = np.nonzero(mask)
    return None if rows.size == 0 else np.array([rows.mean(), cols.mean()])


def reference_mask(annotations: AnnotationState, frame: int, obj_id: int) -> np.ndarray | None:
    """The object's confirmed mask nearest to ``frame`` (another frame; ties: the most
    recently confirmed), moved by the object's velocity; ``None`` without one."""
    frame = int(frame)
    others = [f for f, _ in annotations.confirmed(obj_id) if f != frame]
    if not others:
        return None
    nearest = min(others, key=lambda f: (abs(f - frame), -annotations.entry(f, obj_id).order))
    mask = annotations.confirmed_mask(nearest, obj_id)
    side = np.sign(nearest - frame)
    beyond = [f for f in others if np.sign(f - nearest) == side and f != nearest]
    here = _centroid(mask)
    if not beyond or here is None:
        return mask
    farther = min(beyond, key=lambda f: abs(f - nearest))
    there = _centroid(annotations.confirmed_mask(farther, obj_id))
    if there is None:
        return mask
    velocity = (here - there) / (nearest - farther)
    rows, cols = np.rint(velocity * (frame - nearest)).astype(int)
    return shifted(mask, int(rows), int(cols))
