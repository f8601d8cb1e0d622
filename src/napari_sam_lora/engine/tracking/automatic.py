"""Segment all: sam2's automatic mask generator on one frame, its masks made objects.

SAM2's generator (``sam2.automatic_mask_generator``) prompts a grid of points and keeps the
masks its own scores trust; :func:`automatic_labels` turns them into one label image — best
predicted IoU first, each pixel to one object, the user's objects on the frame keeping their
pixels, masks that end up below ``min_area`` or overlap earlier ones by more than
``max_overlap`` dropped — which :meth:`Session.add_label_image` seeds as objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.engine.core.validation import finite_number, integer_value
from napari_sam_lora.engine.tracking import sam2_bridge as bridge

if TYPE_CHECKING:
    from napari_sam_lora.engine.tracking.session import Session

__all__ = ["AutomaticOptions", "automatic_labels"]


@dataclass(frozen=True)
class AutomaticOptions:
    """Options of *Segment all*.

    Attributes
    ----------
    min_area : int
        Smallest object kept, in pixels of the stack's frames.
    max_overlap : float
        Largest share of a mask already taken by better masks (or the user's objects) for
        it to be kept, in ``[0, 1]``.
    points_per_side : int
        The generator's grid of point prompts (``points_per_side²`` prompts).
    pred_iou_thresh, stability_score_thresh : float
        The generator's own filters (sam2's defaults: 0.8 and 0.95).
    """

    min_area: int = 20
    max_overlap: float = 0.3
    points_per_side: int = 32
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95

    def __post_init__(self) -> None:
        if integer_value(self.min_area, "min_area") < 1:
            raise PromptError(f"min_area must be at least 1 pixel, not {self.min_area}")
        if not 0.0 <= finite_number(self.max_overlap, "max_overlap", PromptError) <= 1.0:
            raise PromptError(f"max_overlap must be in [0, 1], not {self.max_overlap}")
        if not 1 <= integer_value(self.points_per_side, "points_per_side") <= 128:
            raise PromptError(f"points_per_side must be 1–128, not {self.points_per_side}")
        for name in ("pred_iou_thresh", "stability_score_thresh"):
            value = finite_number(getattr(self, name), name, PromptError)
            if not 0.0 <= value <= 1.0:
                raise PromptError(f"{name} must be in [0, 1], not {value}")


def automatic_labels(session: Session, frame: int, options: AutomaticOptions) -> np.ndarray:
    """The label image of the masks sam2's generator finds on ``frame``: new ids above every
    id in use; 0 where nothing new was found (and on the user's existing objects).

    Callers hold :meth:`Session.exclusive`.
    """
    generator = bridge.mask_generator(
        session.model.predictor,
        points_per_side=int(options.points_per_side),
        pred_iou_thresh=float(options.pred_iou_thresh),
        stability_score_thresh=float(options.stability_score_thresh),
        output_mode="binary_mask",
    )
    with session.model.precision():
        found = generator.generate(session.frames.rgb8(frame))
    taken = session.labels[frame] != 0  # the user's objects keep their pixels
    labels = np.zeros(session.frame_shape, dtype=np.int32)
    next_id = max([*session.object_ids, int(session.labels.max())]) + 1
    for record in sorted(found, key=lambda r: -float(r["predicted_iou"])):
        mask = np.asarray(record["segmentation"], bool)
        area = int(mask.sum())
        if area == 0:
            continue
        free = mask & ~taken
        if int(free.sum()) < options.min_area or 1 - free.sum() / area > options.max_overlap:
            continue
        labels[free] = next_id
        taken |= free
        next_id += 1
    return labels
