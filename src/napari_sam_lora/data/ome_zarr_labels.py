"""Writing a label stack as OME-Zarr (NGFF 0.4, zarr format 2) with ``ome-zarr``.

The one OME-Zarr writer of the project: ``segment``'s label outputs and ``export
--format ome-zarr`` both come here. The store's root is a one-level ``multiscales`` image
(dataset ``"s0"``, as ``ome-zarr`` names it; one chunk per frame) written by
``ome_zarr.writer.write_multiscale``, reading the labels one frame at a time, so a lazy
stack is never held whole. Readers of the project
(:func:`napari_sam_lora.data.readers.open_stack`), napari and any NGFF tool open it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OME_ZARR_MISSING", "write_ome_zarr_labels"]

OME_ZARR_MISSING = "OME-Zarr output needs the ome-zarr package: pip install 'napari-sam-lora[{}]'"


def write_ome_zarr_labels(
    store: str | Path,
    labels: Any,
    *,
    axis: str = "t",
    dtype: np.dtype | str | None = None,
    metadata: Mapping[str, Any] | None = None,
    read_frame: Callable[[int], np.ndarray] | None = None,
    extra: str = "batch",
) -> None:
    """Write ``labels`` to the new OME-Zarr group ``store``.

    Parameters
    ----------
    store : path
        The group's folder (created; must not hold another group).
    labels : array-like
        ``(T, H, W)`` (or ``(H, W)``) integer labels; ``labels[t]`` is read per frame.
    axis : {"t", "z"}
        What the stack axis is: time, or space (a z-stack).
    dtype : dtype, optional
        The written type (default: the labels' own).
    metadata : mapping, optional
        Extra root attributes (e.g. ``{"image-label": ...}`` or the job's settings).
    read_frame : callable, optional
        ``read_frame(t)`` -> frame ``t`` as a 2-D array, for callers that check each frame
        (default: ``np.asarray(labels[t])``).
    extra : str
        The package extra named in the error when ``ome-zarr`` is not installed.

    Raises
    ------
    ImportError
        ``ome-zarr`` (or dask / zarr) is not installed; the message names the extra.
    ValueError
        ``axis`` is neither ``"t"`` nor ``"z"``, or the labels are not 2-D or 3-D.
    """
    try:
        import dask
        import dask.array as da
        import zarr
        from ome_zarr.format import FormatV04
        from ome_zarr.writer import add_metadata, write_multiscale
    except ImportError as exc:  # pragma: no cover - the extra is not installed
        raise ImportError(OME_ZARR_MISSING.format(extra)) from exc

    if axis not in ("t", "z"):
        raise ValueError(f"axis must be 't' (time) or 'z' (space), not {axis!r}")
    shape = tuple(int(s) for s in np.shape(labels))
    if len(shape) not in (2, 3):
        raise ValueError(f"labels must be (T, H, W) or (H, W), not of shape {shape}")
    dtype = np.dtype(dtype if dtype is not None else getattr(labels, "dtype", np.int32))
    if len(shape) == 2:
        stack = da.from_array(np.asarray(labels, dtype=dtype), chunks=shape)
        axes = ["y", "x"]
    else:
        reader = read_frame or (lambda t: np.asarray(labels[t]))

        def frame(t: int) -> np.ndarray:
            return np.asarray(reader(t)).astype(dtype, copy=False)

        stack = da.stack(
            [
                da.from_delayed(dask.delayed(frame)(t), shape=shape[1:], dtype=dtype)
                for t in range(shape[0])
            ]
        )
        axes = [axis, "y", "x"]
    fmt = FormatV04()
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    with dask.config.set(scheduler="synchronous"):  # one frame in memory at a time
        write_multiscale([stack], root, fmt=fmt, axes=axes, name="labels")
    if metadata:
        add_metadata(root, dict(metadata), fmt=fmt)
