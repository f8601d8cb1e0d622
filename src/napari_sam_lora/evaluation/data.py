"""Reading an evaluation data set: an image stack, its label masks and what is annotated.

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

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "EvalData",
    "load_eval_data",
    "load_suite",
    "natural_key",
    "parse_frame_list",
    "parse_frame_range",
    "parse_ids",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")


class DataError(ValueError):
    """The images or labels cannot be used for an evaluation (the message says why)."""


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


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders embedded numbers by value (``f2`` before ``f10``)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    found = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes]
    return sorted(found, key=lambda p: natural_key(p.name))


def _read_file(path: Path) -> np.ndarray:
    """One image file as an array (TIFF via tifffile, anything else via Pillow)."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        from PIL import Image

        with Image.open(path) as image:
            if image.mode == "P":  # palette: the indices are the values
                return np.array(image)
            if image.mode in ("RGBA", "LA", "PA"):
                image = image.convert("RGBA" if image.mode == "RGBA" else "L")
            return np.array(image)
    except Exception as exc:  # every reader has its own exception types
        raise DataError(f"cannot read {path}: {exc}") from exc


def read_images(path: str | Path) -> tuple[np.ndarray, list[str] | None]:
    """The image stack at ``path`` and, for a folder, the frame file stems.

    Raises
    ------
    DataError
        Missing or unreadable path, no frames, frames of different shapes, bad shape.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"images: {path} does not exist")
    stems = None
    if path.is_dir():
        files = _files(path, IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"images: {path} holds no PNG, JPEG or TIFF frames")
        frames = [_read_file(f) for f in files]
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            bad = next(f for f, a in zip(files, frames, strict=True) if a.shape != frames[0].shape)
            raise DataError(
                f"images: the frames in {path} differ in shape: {files[0].name} is "
                f"{frames[0].shape}, {bad.name} is {_read_file(bad).shape}"
            )
        stack, stems = np.stack(frames), [f.stem for f in files]
    else:
        stack = _read_file(path)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim == 4 and stack.shape[-1] not in (3, 4):
        raise DataError(
            f"images: {path} has shape {stack.shape}; expected (T, H, W) or (T, H, W, 3|4)"
        )
    if stack.ndim not in (3, 4) or stack.dtype.kind not in "uif" or stack.dtype == np.float16:
        raise DataError(
            f"images: {path} has shape {stack.shape} and dtype {stack.dtype}; expected "
            "(T, H, W) or (T, H, W, 3|4) numbers"
        )
    return stack, stems


def _as_ids(array: np.ndarray, where: str) -> np.ndarray:
    """Integer object ids from a label array (non-negative whole numbers)."""
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype.kind in "ui":
        if not (array[..., :3] == array[..., :1]).all():
            raise DataError(
                f"labels: {where} is a colour image; save masks as palette (indexed) or "
                "grey-value PNGs, where the value is the object id"
            )
        array = array[..., 0]
    if array.dtype == bool:
        array = array.astype(np.int32)
    if array.dtype.kind not in "uif":
        raise DataError(f"labels: {where} has dtype {array.dtype}; expected integer ids")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise DataError(f"labels: {where} holds fractional values; expected integer ids")
    if array.size and array.min() < 0:
        raise DataError(f"labels: {where} holds negative values; ids must be >= 0")
    if array.size and array.max() > np.iinfo(np.int32).max:
        raise DataError(f"labels: {where} holds ids too large for int32")
    return array.astype(np.int32)


def _frame_of(stem: str, stems: list[str] | None, num_frames: int) -> int | None:
    if stems is not None and stem in stems:
        return stems.index(stem)
    digits = re.findall(r"\d+", stem)
    if digits and int(digits[-1]) < num_frames:
        return int(digits[-1])
    return None


def read_labels(
    path: str | Path, shape: tuple[int, int, int], stems: list[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(T, H, W)`` int32 and the annotated frames ``(T,)`` bool.

    Parameters
    ----------
    path : str or Path
        Label array file or folder of masks.
    shape : tuple of int
        ``(T, H, W)`` of the images.
    stems : list of str, optional
        File stems of the image frames (when the images are a folder).
    """
    path = Path(path)
    num_frames, height, width = shape
    if not path.exists():
        raise DataError(f"labels: {path} does not exist")
    if not path.is_dir():
        labels = _as_ids(_read_file(path), str(path))
        if labels.ndim == 2:
            labels = labels[None]
        if labels.shape != tuple(shape):
            raise DataError(
                f"labels: {path} has shape {labels.shape} ({_frames(labels.shape)}), but the "
                f"images are {tuple(shape)} ({_frames(shape)}); they must match"
            )
        return labels, np.ones(num_frames, dtype=bool)
    files = _files(path, MASK_SUFFIXES)
    if not files:
        raise DataError(f"labels: {path} holds no PNG or TIFF masks")
    labels = np.zeros(shape, dtype=np.int32)
    annotated = np.zeros(num_frames, dtype=bool)
    for file in files:
        frame = _frame_of(file.stem, stems, num_frames)
        if frame is None:
            raise DataError(
                f"labels: cannot tell which frame {file.name} belongs to; name masks like "
                "the image frames, or by frame number (00000.png, 00001.png, ...)"
            )
        if annotated[frame]:
            raise DataError(f"labels: two masks in {path} belong to frame {frame}")
        mask = _as_ids(_read_file(file), str(file))
        if mask.shape != (height, width):
            raise DataError(
                f"labels: {file.name} is {mask.shape[:2]}, but the frames are {(height, width)}"
            )
        labels[frame], annotated[frame] = mask, True
    return labels, annotated


def _frames(shape: tuple[int, ...]) -> str:
    return f"{shape[0]} frame(s) of {shape[1]}x{shape[2]}"


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


def is_suite(path: str | Path) -> bool:
    """Whether ``path`` is a synthetic suite folder (holds ``suite.json``)."""
    return (Path(path) / "suite.json").is_file()


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
    folder = Path(folder)
    try:
        suite = json.loads((folder / "suite.json").read_text(encoding="utf-8"))
        stacks = [(s["kind"], s["image"], s["labels"]) for s in suite["stacks"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read {folder / 'suite.json'}: {exc}") from exc
    if not stacks:
        raise DataError(f"{folder / 'suite.json'} lists no stacks")
    wanted = None if objects is None else parse_ids(objects)
    found = []
    for kind, image, labels in stacks:
        try:
            data = load_eval_data(folder / image, folder / labels, frames)
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
