"""Lazy readers for image stacks on disk: TIFF, zarr / OME-Zarr, ``.npy``, folders of frames.

Every reader returns an *array-like* that :class:`~napari_sam_lora.engine.Session` accepts
(``shape``, ``dtype``, ``stack[t]`` → numpy): nothing but headers is read when a stack is
opened; frames are read when SAM2 asks for them.

- TIFF (``.tif``/``.tiff``): a read-only memory map when the file is uncompressed and
  contiguous, otherwise a zarr view of the TIFF's pages (``tifffile``'s zarr store); first
  series; singleton axes dropped.
- zarr / OME-Zarr (a ``.zarr`` folder, or any folder with zarr metadata): an array as is;
  a group as OME-Zarr (``multiscales[0]``, its first, full-resolution dataset, 0.4 and 0.5
  metadata); singleton axes (``t``, ``c``, ``z`` of size 1) dropped.
- ``.npy``: ``numpy.load(mmap_mode="r")``; pickled object arrays are refused.
- a folder of frames (``.tif``, ``.tiff``, ``.png``, ``.jpg``, ``.jpeg``, ``.npy``), in
  natural order (``frame2`` before ``frame10``); every frame must have the first frame's
  shape and dtype.

:func:`open_stack` picks the reader from the path; :func:`read_labels` reads a labels file
fully (seed masks are small) as integers. Errors are :class:`StackError` naming the file;
a truncated or damaged TIFF is found when it is opened (its image data must lie inside the
file) and says so in plain words, and a TIFF frame that cannot be read later names the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_lora.engine.core.errors import StackError

__all__ = [
    "FRAME_SUFFIXES",
    "STACK_SUFFIXES",
    "FrameStack",
    "is_stack_path",
    "is_zarr",
    "open_stack",
    "read_labels",
    "stack_name",
]

#: File suffixes read as one stack each.
STACK_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")
#: File suffixes read as one frame each inside a folder of frames.
FRAME_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
_ZARR_MARKERS = (".zarray", ".zgroup", "zarr.json")


def stack_name(path: str | os.PathLike[str]) -> str:
    """The name a stack goes by in tables and output files: the path's stem.

    ``a/cells_01.ome.zarr`` → ``cells_01``; ``a/frames/`` → ``frames``.
    """
    name = Path(path).name
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif", *STACK_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a zarr array or group (a folder with zarr metadata)."""
    return path.is_dir() and (
        path.suffix.lower() == ".zarr" or any((path / m).exists() for m in _ZARR_MARKERS)
    )


def is_stack_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a stack :func:`open_stack` can read (by name only)."""
    path = Path(path)
    if path.is_dir():
        return is_zarr(path) or bool(_frame_files(path))
    return path.suffix.lower() in STACK_SUFFIXES


def open_stack(path: str | os.PathLike[str]) -> Any:
    """Open a stack lazily; see the module docstring for the formats.

    Parameters
    ----------
    path : str or PathLike
        A TIFF, ``.npy`` file, zarr / OME-Zarr folder, or a folder of frames.

    Returns
    -------
    array-like
        ``(T, H, W)``, ``(T, H, W, C)`` or ``(H, W)``; frames are read on access.

    Raises
    ------
    StackError
        Missing file, unknown format, unreadable or damaged file, frames that differ.
    """
    path = Path(path)
    if not path.exists():
        raise StackError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            if is_zarr(path):
                return _open_zarr(path)
            return _open_frames(path)
        suffix = path.suffix.lower()
        if suffix in (".tif", ".tiff"):
            return _open_tiff(path)
        if suffix == ".npy":
            return _open_npy(path)
    except StackError:
        raise
    except ImportError as exc:
        raise StackError(
            f"{path}: reading this format needs {exc.name!r}; install napari-sam-lora[batch]"
        ) from exc
    except Exception as exc:
        if type(exc).__name__ == "TiffFileError" or isinstance(exc, EOFError):
            raise StackError(
                f"{path}: cannot read the stack: the TIFF file is truncated or damaged ({exc}); "
                "copy or export it again"
            ) from exc
        raise StackError(f"{path}: cannot read the stack ({type(exc).__name__}: {exc})") from exc
    raise StackError(
        f"{path}: unknown stack format {path.suffix!r}; use TIFF, zarr / OME-Zarr, .npy or "
        "a folder of frames"
    )


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a labels image (any format :func:`open_stack` reads) fully, as integers.

    Raises
    ------
    StackError
        Unreadable file, or values that are not non-negative integers.
    """
    data = np.asarray(open_stack(path)[...])
    if data.dtype.kind == "b":
        return data.astype(np.int32)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise StackError(f"{path}: labels must be whole numbers (object ids), not fractions")
        data = data.astype(np.int64)
    elif data.dtype.kind not in "iu":
        raise StackError(f"{path}: labels must be integers, not {data.dtype}")
    if data.size and data.min() < 0:
        raise StackError(f"{path}: labels must be ≥ 0 (0 = background), found {data.min()}")
    return data


# --------------------------------------------------------------------------- TIFF


def _tiff_data_end(series: Any) -> int:
    """Where the image data of a TIFF series ends in the file (from its page headers)."""
    end = 0
    for page in series.pages:
        if page is None:
            continue
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        for offset, count in zip(offsets, counts, strict=False):
            if count:
                end = max(end, int(offset) + int(count))
    return end


def _open_tiff(path: Path) -> Any:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise StackError(f"{path}: the TIFF holds no image")
        shape = tif.series[0].shape
        end, size = _tiff_data_end(tif.series[0]), path.stat().st_size
    if end > size:
        raise StackError(
            f"{path}: the TIFF file is truncated or damaged: its image data ends at byte {end} "
            f"but the file has only {size} bytes (an interrupted copy or export?); copy or "
            "export it again"
        )
    try:
        return _squeezed(tifffile.memmap(path, mode="r"))
    except Exception:  # compressed, tiled or non-contiguous: read through zarr
        pass
    try:
        import zarr

        store = tifffile.imread(path, aszarr=True, series=0)
        array = zarr.open(store, mode="r")
        if hasattr(array, "keys"):  # a pyramid: its first level is full resolution
            array = array[sorted(array.array_keys(), key=_natural_key)[0]]
    except ImportError:  # no zarr: read the whole file (still no JPEG round trip)
        array = tifffile.imread(path, series=0)
    if tuple(array.shape) != tuple(shape):
        array = tifffile.imread(path, series=0)
    if isinstance(array, np.ndarray):
        return _squeezed(array)
    return _squeezed(_NamedReads(array, path))


# --------------------------------------------------------------------------- zarr / OME-Zarr


def _open_zarr(path: Path) -> Any:
    import zarr

    node = zarr.open(str(path), mode="r")
    if not hasattr(node, "keys"):  # an array
        return _squeezed(node)
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if multiscales:
        datasets = multiscales[0].get("datasets") or []
        if not datasets:
            raise StackError(f"{path}: OME-Zarr multiscales without datasets")
        return _squeezed(node[datasets[0]["path"]])
    arrays = sorted(node.array_keys())
    if len(arrays) == 1:
        return _squeezed(node[arrays[0]])
    raise StackError(
        f"{path}: a zarr group with {len(arrays)} arrays and no OME-Zarr multiscales; "
        "give the path of one array"
    )


# --------------------------------------------------------------------------- .npy


def _open_npy(path: Path) -> Any:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise StackError(f"{path}: not a numeric .npy array ({exc}); pickles are refused") from exc
    return _squeezed(array)


# --------------------------------------------------------------------------- frames


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _frame_files(folder: Path) -> list[Path]:
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in FRAME_SUFFIXES
    ]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _read_frame(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def _open_frames(folder: Path) -> FrameStack:
    files = _frame_files(folder)
    if not files:
        raise StackError(
            f"{folder}: no frames ({', '.join(FRAME_SUFFIXES)}) and no zarr metadata in the folder"
        )
    return FrameStack(files, _read_frame)


class FrameStack:
    """A folder of frame files seen as one lazy ``(T, H, W[, C])`` array.

    Parameters
    ----------
    files : sequence of Path
        One file per frame, in order.
    read : callable
        ``read(path) -> ndarray`` for one frame.
    """

    def __init__(self, files: Sequence[Path], read: Callable[[Path], np.ndarray]) -> None:
        self.files = list(files)
        self._read = read
        first = read(self.files[0])
        self.frame_shape = tuple(first.shape)
        self.dtype = first.dtype
        self.shape = (len(self.files), *self.frame_shape)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return len(self.files)

    def frame(self, index: int) -> np.ndarray:
        """Read frame ``index``; a frame of another shape or dtype is a :class:`StackError`."""
        path = self.files[index]
        data = self._read(path)
        if tuple(data.shape) != self.frame_shape or data.dtype != self.dtype:
            raise StackError(
                f"{path}: frame of shape {data.shape} {data.dtype}, but the folder's first frame "
                f"is {self.frame_shape} {self.dtype}; every frame must match"
            )
        return data

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self.frame(range(len(self))[int(key)])
        head, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if head is Ellipsis:
            head, rest = slice(None), ()
            if isinstance(key, tuple) and len(key) > 1:
                return np.asarray(self)[key]
        if isinstance(head, int | np.integer):
            return self.frame(range(len(self))[int(head)])[rest]
        indices = range(len(self))[head] if isinstance(head, slice) else np.asarray(head)
        frames = [self.frame(int(i)) for i in indices]
        stacked = np.stack(frames) if frames else np.empty((0, *self.frame_shape), self.dtype)
        return stacked[(slice(None), *rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype)


# --------------------------------------------------------------------------- helpers


class _NamedReads:
    """A lazy array whose read errors are :class:`StackError`\\ s naming its file."""

    def __init__(self, array: Any, path: Path) -> None:
        self.array = array
        self.path = path
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except Exception as exc:
            raise StackError(
                f"{self.path}: the file is truncated or damaged, a frame cannot be read "
                f"({type(exc).__name__}: {exc}); copy or export it again"
            ) from exc

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype)


class _Squeezed:
    """A lazy view of an array without its singleton axes (``arr[0, :, 0]``-style)."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self._keep = [i for i, s in enumerate(array.shape) if s != 1]
        if len(self._keep) < 2:  # a single-pixel-wide image: keep the last two axes
            self._keep = sorted({*self._keep, array.ndim - 2, array.ndim - 1})
        self.shape = tuple(int(array.shape[i]) for i in self._keep)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _full_key(self, key: Any) -> tuple:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = (*key[:i], *[slice(None)] * (self.ndim - len(key) + 1), *key[i + 1 :])
        key = (*key, *[slice(None)] * (self.ndim - len(key)))
        full: list[Any] = [0] * self.array.ndim
        for axis, k in zip(self._keep, key, strict=True):
            full[axis] = k
        return tuple(full)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.array[self._full_key(key)])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype)


def _squeezed(array: Any) -> Any:
    """``array`` itself when it has no singleton axis, else a lazy squeezed view."""
    if all(int(s) != 1 for s in array.shape):
        return array
    return _Squeezed(array)
