"""Reading image stacks and label masks into memory (evaluation and fine-tuning).

Images
    A multi-page TIFF, a ``.npy`` array (``(T, H, W)`` or ``(T, H, W, 3|4)``), or a folder
    of frames (PNG, JPEG or TIFF files, one frame each, in natural sort order:
    ``frame2.png`` before ``frame10.png``). The stack must pass the engine's stack check
    (:func:`napari_sam_lora.engine.tracking.frames.check_stack`): numbers, no empty axis.
Labels
    A label TIFF or ``.npy`` of integers with the same frame count and frame shape
    (0 = background, every other value = one object), or a folder of PNG (or TIFF) masks,
    DAVIS style: the palette index, or the grey value, of a pixel is its object id. Values
    follow the engine's label rules
    (:func:`napari_sam_lora.engine.core.validation.check_label_image`).
Sparse annotation
    In a label *folder*, a frame with no mask file is unannotated (mask files are matched
    to frames by file name: the same stem as the image file, or the frame number, e.g.
    ``00012.png``). A label array annotates every frame.

Lazy readers for batch runs (TIFF memory maps, zarr, OME-Zarr) are in :mod:`.readers`.
Errors are :class:`~napari_sam_lora.engine.core.errors.DataError` naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from napari_sam_lora.engine.core.errors import DataError, PromptError, StackError
from napari_sam_lora.engine.core.validation import check_label_image
from napari_sam_lora.engine.tracking.frames import check_stack

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "DataError",
    "natural_key",
    "read_images",
    "read_labels",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")


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
    if stack.size == 0:
        raise DataError(
            f"images: {path} holds no pixels (shape {stack.shape}); it is empty or not an "
            "image file"
        )
    if stack.ndim == 4 and stack.shape[-1] not in (3, 4):
        raise DataError(
            f"images: {path} has shape {stack.shape}; expected (T, H, W) or (T, H, W, 3|4)"
        )
    if stack.ndim not in (3, 4):
        raise DataError(
            f"images: {path} has shape {stack.shape} and dtype {stack.dtype}; expected "
            "(T, H, W) or (T, H, W, 3|4) numbers"
        )
    try:  # the engine's own stack check: what evaluate reads, a Session accepts
        check_stack(stack)
    except StackError as exc:
        raise DataError(f"images: {path}: {exc}") from None
    return stack, stems


def _as_ids(array: np.ndarray, where: str) -> np.ndarray:
    """Integer object ids from a label array (the engine's label-value rules)."""
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype.kind in "ui":
        if not (array[..., :3] == array[..., :1]).all():
            raise DataError(
                f"labels: {where} is a colour image; save masks as palette (indexed) or "
                "grey-value PNGs, where the value is the object id"
            )
        array = array[..., 0]
    if array.dtype.kind not in "buif":
        raise DataError(f"labels: {where} has dtype {array.dtype}; expected integer ids")
    try:
        return check_label_image(array, f"labels: {where}").astype(np.int32)
    except PromptError as exc:
        raise DataError(
            str(exc).replace(f"labels: {where} hold", f"labels: {where} holds")
        ) from None


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
