"""Find the image/label stack pairs a config names, read them, and split them.

A ``data.folder`` may hold

- a synthetic suite (``suite.json``, written by ``napari-sam-lora synthetic``);
- ``images/`` and ``labels/`` sub-folders with entries of the same name (files, or folders
  of frames);
- files (or frame folders) named ``<name><image_suffix>.<ext>`` and
  ``<name><labels_suffix>.<ext>`` side by side (``cells_image.tif`` + ``cells_labels.tif``).

Stacks and labels are read by :mod:`napari_sam_lora.data` (multi-page TIFF, ``.npy``, or
a folder of PNG/JPEG/TIFF frames; label folders may annotate only some frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sam_lora.data.stacks import natural_key, read_images, read_labels
from napari_sam_lora.data.suite import is_suite, read_suite
from napari_sam_lora.engine.core.errors import DataError
from napari_sam_lora.finetune.config import FineTuneConfig

__all__ = ["DataError", "StackData", "StackPair", "find_pairs", "read_pair", "split_frames"]

_SUFFIXES = (".tif", ".tiff", ".npy", ".png", ".jpg", ".jpeg", "")


@dataclass(frozen=True)
class StackPair:
    """Paths of one annotated stack."""

    name: str
    images: Path
    labels: Path


@dataclass
class StackData:
    """One annotated stack in memory.

    Attributes
    ----------
    name : str
        Stack name (from the config, the suite or the file name).
    images : np.ndarray
        ``(T, H, W)`` or ``(T, H, W, C)``.
    labels : np.ndarray
        ``(T, H, W)`` int32 object ids.
    annotated : np.ndarray
        ``(T,)`` bool: frames whose labels are known.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    annotated: np.ndarray

    @property
    def object_ids(self) -> list[int]:
        """Ids with pixels on an annotated frame."""
        return sorted(int(i) for i in np.unique(self.labels[self.annotated]) if i != 0)


def find_pairs(config: FineTuneConfig) -> list[StackPair]:
    """Every pair the config names: ``data.pairs`` first, then those found in ``data.folder``.

    Raises
    ------
    DataError
        A folder that does not exist or holds no recognisable pairs, an image without
        labels (or the reverse), or two stacks with the same name.
    """
    data = config.data
    pairs = [
        StackPair(p.name or Path(p.images).stem, config.resolve(p.images), config.resolve(p.labels))
        for p in data.pairs
    ]
    if data.folder:
        pairs += _folder_pairs(config.resolve(data.folder), data.image_suffix, data.labels_suffix)
    names = [p.name for p in pairs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"two stacks are named {twice[0]!r}; give the pairs distinct names")
    return pairs


def _folder_pairs(folder: Path, image_suffix: str, labels_suffix: str) -> list[StackPair]:
    if not folder.is_dir():
        raise DataError(f"data.folder {folder} does not exist or is not a folder")
    if is_suite(folder):
        return [StackPair(s.kind, s.image, s.labels) for s in read_suite(folder)]
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        return _match(
            {_stem(p): p for p in _entries(folder / "images")},
            {_stem(p): p for p in _entries(folder / "labels")},
            folder,
        )
    images, labels = {}, {}
    for entry in _entries(folder):
        stem = _stem(entry)
        if stem.endswith(labels_suffix):
            labels[stem[: -len(labels_suffix)]] = entry
        elif stem.endswith(image_suffix):
            images[stem[: -len(image_suffix)]] = entry
    if not images and not labels:
        raise DataError(
            f"data.folder {folder} holds no pairs: expected suite.json, images/ + labels/ "
            f"sub-folders, or files named <name>{image_suffix}.tif + <name>{labels_suffix}.tif"
        )
    return _match(images, labels, folder)


def _entries(folder: Path) -> list[Path]:
    found = [
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and (p.is_dir() or p.suffix.lower() in _SUFFIXES)
    ]
    return sorted(found, key=lambda p: natural_key(p.name))


def _stem(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _match(images: dict[str, Path], labels: dict[str, Path], folder: Path) -> list[StackPair]:
    lonely = sorted(set(images) ^ set(labels))
    if lonely:
        name = lonely[0]
        what = "has no labels" if name in images else "has no image stack"
        raise DataError(f"{folder}: stack {name!r} {what} ({(images | labels)[name].name})")
    return [StackPair(name, images[name], labels[name]) for name in images]


def read_pair(pair: StackPair) -> StackData:
    """Read and check one pair (see :mod:`napari_sam_lora.data.stacks` for the forms).

    Raises
    ------
    DataError
        Unreadable files, mismatched frame counts or shapes, invalid label values.
    """
    try:
        images, stems = read_images(pair.images)
        labels, annotated = read_labels(pair.labels, images.shape[:3], stems)
    except DataError as exc:
        raise DataError(f"stack {pair.name!r}: {exc}") from None
    return StackData(pair.name, images, labels, annotated)


def split_frames(
    names: list[str], frames: list[np.ndarray], config: FineTuneConfig
) -> dict[str, np.ndarray]:
    """Which frames of each stack are for validation.

    Parameters
    ----------
    names : list of str
        Stack names.
    frames : list of np.ndarray
        Per stack, the ``(T,)`` bool mask of frames that yield examples (annotated, with
        objects).
    config : FineTuneConfig
        ``split.by`` (``stack`` or ``frame``), ``val_fraction``, ``val`` and ``seed``.

    Returns
    -------
    dict
        ``{name: (T,) bool}``, True where a frame belongs to the validation set.

    Raises
    ------
    DataError
        Unknown names in ``split.val``, or a split that leaves training or validation empty.
    """
    split = config.split
    rng = np.random.default_rng(split.seed)
    if split.by == "frame":
        out = {}
        for name, usable in zip(names, frames, strict=True):
            val = np.zeros(len(usable), bool)
            idx = np.flatnonzero(usable)
            n_val = max(0, min(round(split.val_fraction * len(idx)), len(idx) - 1))
            val[rng.permutation(idx)[:n_val]] = True
            out[name] = val
    else:
        unknown = sorted(set(split.val) - set(names))
        if unknown:
            raise DataError(
                f"split.val names {unknown[0]!r}, which is not a stack; stacks: {', '.join(names)}"
            )
        if split.val:
            chosen = set(split.val)
        else:
            n_val = min(max(1, round(split.val_fraction * len(names))), len(names) - 1)
            chosen = {names[i] for i in rng.permutation(len(names))[:n_val]}
        out = {n: np.full(len(f), n in chosen) for n, f in zip(names, frames, strict=True)}
    n_val = sum(int((v & f).sum()) for v, f in zip(out.values(), frames, strict=True))
    n_all = sum(int(f.sum()) for f in frames)
    if n_val == 0:
        hint = "add stacks or use split.by: frame" if split.by == "stack" else "raise val_fraction"
        raise DataError(f"the validation split is empty ({hint})")
    if n_val == n_all:
        raise DataError("the training split is empty: lower split.val_fraction or name fewer val")
    return out
