"""Prompt records: what the user asked SAM2 to segment, on which frame, for which object.

Coordinates follow napari's convention: ``(row, col)`` in pixels of the frame, i.e.
``(y, x)``. The engine converts to SAM2's ``(x, y)`` internally.

Building a record checks its types and shapes (:mod:`.validation`): a frame or object id
that is not a whole number, points that are not ``(N, 2)`` finite numbers, a box that is not
four numbers or a mask that is not 2D raise :class:`~.errors.PromptError` at once. Checks
that need the stack (frame range, image bounds, mask shape, empty prompts, id range) are
made by :func:`~.tracking.validate_prompts` before SAM2 sees anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam_lora.engine.core.validation import (
    check_box,
    check_mask,
    check_points,
    integer_value,
)


@dataclass(frozen=True)
class PointPrompt:
    """Positive/negative clicks for one object on one frame.

    Attributes
    ----------
    frame : int
        Frame index in the stack.
    obj_id : int
        Object id (the label value written to the output layer), ``>= 1``.
    points : np.ndarray
        ``(N, 2)`` float array of ``(row, col)`` pixel coordinates.
    labels : np.ndarray
        ``(N,)`` int array, ``1`` for positive and ``0`` for negative clicks.
    """

    frame: int
    obj_id: int
    points: np.ndarray
    labels: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _set_ids(self)
        points, labels = check_points(self.points, self.labels)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)


@dataclass(frozen=True)
class BoxPrompt:
    """A bounding box for one object on one frame.

    Attributes
    ----------
    frame : int
        Frame index in the stack.
    obj_id : int
        Object id, ``>= 1``.
    box : np.ndarray
        ``(4,)`` float array ``(row0, col0, row1, col1)``; corners in any order.
    """

    frame: int
    obj_id: int
    box: np.ndarray

    def __post_init__(self) -> None:
        _set_ids(self)
        object.__setattr__(self, "box", check_box(self.box))


@dataclass(frozen=True)
class MaskPrompt:
    """A painted mask for one object on one frame.

    Attributes
    ----------
    frame : int
        Frame index in the stack.
    obj_id : int
        Object id, ``>= 1``.
    mask : np.ndarray
        ``(H, W)`` boolean mask with the frame's shape.
    """

    frame: int
    obj_id: int
    mask: np.ndarray

    def __post_init__(self) -> None:
        _set_ids(self)
        object.__setattr__(self, "mask", check_mask(self.mask))


def _set_ids(prompt: Any) -> None:
    """Frame and object id as Python ints (whole numbers only; ranges are checked later)."""
    object.__setattr__(prompt, "frame", integer_value(prompt.frame, "a prompt's frame"))
    object.__setattr__(prompt, "obj_id", integer_value(prompt.obj_id, "a prompt's object id"))


Prompt = PointPrompt | BoxPrompt | MaskPrompt


def prompt_key(prompt: Prompt) -> tuple:
    """What makes two prompts the same prompt (kind, place and content)."""
    if isinstance(prompt, PointPrompt):
        content = (prompt.points.tobytes(), prompt.labels.tobytes())
    elif isinstance(prompt, BoxPrompt):
        content = (prompt.box.tobytes(),)
    else:
        content = (np.packbits(np.asarray(prompt.mask, bool)).tobytes(),)
    return (type(prompt).__name__, int(prompt.frame), int(prompt.obj_id), *content)
