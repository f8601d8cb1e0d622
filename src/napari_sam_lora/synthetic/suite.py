"""Write and read a folder of synthetic stacks (``<kind>_image.tif``, ``<kind>_labels.tif``,
``suite.json``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from napari_sam_lora.synthetic.stacks import (
    DEFAULT_SUITE,
    KIND_DESCRIPTIONS,
    KINDS,
    _check_kind,
    make_stack,
    object_ids,
)


def write_suite(
    outdir: str | Path,
    kinds: Iterable[str] = DEFAULT_SUITE,
    n_frames: int = 8,
    shape: tuple[int, int] = (128, 128),
    seed: int = 0,
) -> dict[str, Any]:
    """Write synthetic stacks as TIFF files plus a ``suite.json`` index.

    For each kind, ``<kind>_image.tif`` and ``<kind>_labels.tif`` (axes ``TYX``) are
    written to ``outdir``, which is created if needed. Existing files are overwritten.

    Parameters
    ----------
    outdir : str or Path
        Output folder.
    kinds : iterable of str
        Kinds to write; default :data:`DEFAULT_SUITE` (the nuclei fields by name).
    n_frames, shape, seed
        As in :func:`make_stack`; the same for every kind.

    Returns
    -------
    dict
        The content of ``suite.json``: ``generator``, ``n_frames``, ``shape``, ``seed`` and
        ``stacks``, a list of ``{"kind", "description", "image", "labels", "dtype",
        "shape", "object_ids"}`` with file names relative to ``outdir``.

    Raises
    ------
    ValueError
        If a kind is unknown or no kinds are given.
    OSError
        If the files cannot be written.
    """
    import tifffile

    kinds = list(kinds)
    if not kinds:
        raise ValueError(f"no kinds given; valid kinds are: {', '.join(KINDS)}")
    for kind in kinds:
        _check_kind(kind)
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    stacks = []
    for kind in kinds:
        image, labels = make_stack(kind, n_frames=n_frames, shape=shape, seed=seed)
        image_name, labels_name = f"{kind}_image.tif", f"{kind}_labels.tif"
        # minisblack: a stack of 3 or 4 frames must not be read as RGB(A)
        tiff = {"photometric": "minisblack", "metadata": {"axes": "TYX"}}
        tifffile.imwrite(out / image_name, image, **tiff)
        tifffile.imwrite(out / labels_name, labels, compression="zlib", **tiff)
        stacks.append(
            {
                "kind": kind,
                "description": KIND_DESCRIPTIONS[kind],
                "image": image_name,
                "labels": labels_name,
                "dtype": image.dtype.name,
                "shape": list(image.shape),
                "object_ids": list(object_ids(kind)),
            }
        )
    suite = {
        "generator": "napari_sam_lora.synthetic",
        "n_frames": int(n_frames),
        "shape": [int(s) for s in shape],
        "seed": int(seed),
        "stacks": stacks,
    }
    (out / "suite.json").write_text(json.dumps(suite, indent=2) + "\n", encoding="utf-8")
    return suite
