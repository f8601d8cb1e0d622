"""An evaluation data set: an image stack, its label masks and what is annotated.

Files are read by the one data-reading module, :mod:`napari_sam_lora.data` (the forms are
described there and below); this module selects frames and objects for ``evaluate``.

Images
    A multi-page TIFF, a ``.npy`` array (``(T, H, W)`` or ``(T, H, W, 3|4)``), or a folder
    of frames (PNG, JPEG or TIFF files, one frame each, in natural sort order:
    ``frame2.png`` before ``frame10.png``).
Labels
    A label TIFF or ``.npy`` of integers with the same frame count and frame shape
    (0 = background, every other value = one object), or a folder of PNG (or TIFF) masks,
    DAVIS style: the palette index, or the grey value, of a pixel is its object id.
Sparse annotation
    Frames without annotation are tracked but never scored. In a label *folder*, a frame
    with no mask file is unannotated (mask files are matched to frames by file name: the
    same stem as the image file, or the frame number, e.g. ``00012.png``). A label array
    annotates every frame, unless ``annotated_frames`` names the annotated ones. An
    annotated frame where an object has no pixels says "the object is absent here".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sam_lora.data.stacks import natural_key, read_images, read_labels
from napari_sam_lora.data.suite import is_suite, read_suite
from napari_sam_lora.engine.core.errors import DataError

__all__ = [
    "DataError",
    "EvalData",
    "is_suite",
    "load_eval_data",
    "load_real_data",
    "load_suite",
    "natural_key",
    "parse_frame_list",
    "parse_frame_range",
    "parse_ids",
]


@dataclass
class EvalData:
    """One stack to evaluate.

    Attributes
    ----------
    name : str
        Shown in reports (file or folder name, or the synthetic kind).
    images : np.ndarray
        ``(T, H, W)`` or ``(T, H, W, C)``.
    labels : np.ndarray
        ``(T, H, W)`` int32 object ids.
    annotated : np.ndarray
        ``(T,)`` bool: frames whose annotation is known (the only ones scored).
    object_ids : list of int
        Objects to evaluate.
    first_frame : int
        Index, in the source, of frame 0 here (``--frames`` selects a range).
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    annotated: np.ndarray
    object_ids: list[int]
    first_frame: int = 0

    @property
    def num_frames(self) -> int:
        """Number of frames ``T``."""
        return int(self.images.shape[0])


def parse_frame_range(text: str, num_frames: int) -> tuple[int, int]:
    """``"A:B"`` (Python-style, end excluded; either side may be empty) → ``(start, stop)``."""
    match = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", text)
    if match is None:
        raise DataError(f"--frames {text!r}: expected A:B, e.g. 0:20 (end excluded), :20 or 5:")
    start, stop, _ = slice(
        int(match[1]) if match[1] else None, int(match[2]) if match[2] else None
    ).indices(num_frames)
    if stop - start < 2:
        raise DataError(
            f"--frames {text!r} selects {max(stop - start, 0)} of the {num_frames} frames; "
            "at least 2 are needed"
        )
    return start, stop


def parse_frame_list(text: str, num_frames: int) -> list[int]:
    """``"0,5,10:20"`` → sorted frame indices (``A:B`` excludes ``B``)."""
    frames: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        if ":" in part:
            start, stop = (p.strip() for p in part.split(":", 1))
            if not (start.isdigit() and stop.isdigit()):
                raise DataError(f"--annotated-frames: {part!r} is not a range like 10:20")
            frames.update(range(int(start), int(stop)))
        elif part.isdigit():
            frames.add(int(part))
        else:
            raise DataError(f"--annotated-frames: {part!r} is not a frame number")
    if not frames:
        raise DataError("--annotated-frames names no frame")
    outside = sorted(f for f in frames if f >= num_frames)
    if outside:
        raise DataError(
            f"--annotated-frames: frame {outside[0]} is out of range (the stack has "
            f"{num_frames} frames)"
        )
    return sorted(frames)


def parse_ids(text: str) -> list[int]:
    """``"1,3"`` → ``[1, 3]`` (positive ids)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise DataError(f"--objects {text!r}: expected positive ids separated by commas, e.g. 1,3")
    return sorted({int(p) for p in parts})


def _select(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    annotated: np.ndarray,
    frames: str | None,
    objects: str | None,
) -> EvalData:
    start, stop = (0, images.shape[0]) if frames is None else parse_frame_range(frames, len(labels))
    if stop - start < 2:
        raise DataError(f"images: {name} has {stop - start} frame; at least 2 are needed")
    images, labels, annotated = images[start:stop], labels[start:stop], annotated[start:stop]
    if not annotated.any():
        raise DataError(f"labels: no frame in {start}:{stop} is annotated")
    present = sorted(int(i) for i in np.unique(labels[annotated]) if i != 0)
    if not present:
        raise DataError(
            f"labels: no objects: every annotated frame in {start}:{stop} is all background (0)"
        )
    wanted = present if objects is None else parse_ids(objects)
    missing = [i for i in wanted if i not in present]
    if missing:
        raise DataError(
            f"--objects: id {missing[0]} has no pixels on the annotated frames "
            f"{start}:{stop}; ids present: {', '.join(map(str, present))}"
        )
    return EvalData(name, images, labels, annotated, wanted, first_frame=start)


def load_eval_data(
    images: str | Path,
    labels: str | Path,
    frames: str | None = None,
    objects: str | None = None,
    annotated_frames: str | None = None,
) -> EvalData:
    """Read and check an image stack and its labels.

    Parameters
    ----------
    images, labels : str or Path
        See the module docstring for the accepted forms.
    frames : str, optional
        ``"A:B"``: evaluate frames ``A`` to ``B - 1`` only.
    objects : str, optional
        ``"1,3"``: evaluate these object ids only (default: every id in the labels).
    annotated_frames : str, optional
        ``"0,5,10:20"``: only these frames (indices in the whole stack) are annotated.

    Returns
    -------
    EvalData

    Raises
    ------
    DataError
        With one message naming the problem: unreadable or missing files, mismatched
        frame counts or shapes, no objects, an id with no pixels, bad option values.
    """
    stack, stems = read_images(images)
    label_array, annotated = read_labels(labels, stack.shape[:3], stems)
    if annotated_frames is not None:
        chosen = parse_frame_list(annotated_frames, stack.shape[0])
        unmasked = [f for f in chosen if not annotated[f]]
        if unmasked:
            raise DataError(f"--annotated-frames: frame {unmasked[0]} has no mask in {labels}")
        annotated = np.isin(np.arange(stack.shape[0]), chosen)
    return _select(Path(images).name, stack, label_array, annotated, frames, objects)


def load_suite(
    folder: str | Path, frames: str | None = None, objects: str | None = None
) -> list[EvalData]:
    """Every stack of a suite written by ``napari-sam-lora synthetic``, checked.

    ``objects`` keeps, in each stack, the listed ids it has (stacks with none are left
    out); ``frames`` applies to every stack.

    Raises
    ------
    DataError
        Unreadable ``suite.json`` or stack files, or any problem :func:`load_eval_data`
        reports (the message names the stack).
    """
    stacks = read_suite(folder)
    wanted = None if objects is None else parse_ids(objects)
    found = []
    for stack in stacks:
        kind = stack.kind
        try:
            data = load_eval_data(stack.image, stack.labels, frames)
        except DataError as exc:
            raise DataError(f"suite stack {kind!r}: {exc}") from exc
        data.name = kind
        if wanted is not None:  # each stack keeps the requested ids it has
            data.object_ids = [i for i in data.object_ids if i in wanted]
        if data.object_ids:
            found.append(data)
    if not found:
        raise DataError(f"--objects {objects}: no stack of the suite has these ids")
    return found


def load_real_data(
    name: str,
    source: str | Path | None = None,
    frames: str | None = None,
    objects: str | None = None,
    annotated_frames: str | None = None,
) -> EvalData:
    """A microscopy stack shipped in a downloaded wheel (see
    :mod:`napari_sam_lora.evaluation.real_data`), checked like :func:`load_eval_data`.

    Parameters
    ----------
    name : str
        One of :func:`napari_sam_lora.evaluation.real_data.real_stacks`.
    source : str or Path, optional
        The wheel file or a folder holding it (default: the real-data cache).
    frames, objects, annotated_frames : str, optional
        As in :func:`load_eval_data`.

    Returns
    -------
    EvalData
        Named after the stack; every frame is annotated unless ``annotated_frames`` says.

    Raises
    ------
    DataError
        Unknown name, missing or unreadable wheel, or a bad option value.
    """
    from napari_sam_lora.evaluation.real_data import read_real_stack

    stack, labels, _ = read_real_stack(name, source)
    annotated = np.ones(stack.shape[0], dtype=bool)
    if annotated_frames is not None:
        chosen = parse_frame_list(annotated_frames, stack.shape[0])
        annotated = np.isin(np.arange(stack.shape[0]), chosen)
    return _select(name, stack, labels, annotated, frames, objects)
