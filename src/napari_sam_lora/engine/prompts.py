"""Prompt records: what the user asked SAM2 to segment, on which frame, for which object.

Coordinates follow napari's convention: ``(row, col)`` in pixels of the frame, i.e.
``(y, x)``. The engine converts to SAM2's ``(x, y)`` internally.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
        points = np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
        labels = (
            np.ones(len(points), dtype=np.int32)
            if self.labels is None
            else np.asarray(self.labels, dtype=np.int32).reshape(-1)
        )
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
        box = np.asarray(self.box, dtype=np.float32).reshape(-1)
        if box.size == 4:
            r0, c0, r1, c1 = box
            box = np.array([min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1)], dtype=np.float32)
        object.__setattr__(self, "box", box)


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
        object.__setattr__(self, "mask", np.asarray(self.mask).astype(bool))


Prompt = PointPrompt | BoxPrompt | MaskPrompt
