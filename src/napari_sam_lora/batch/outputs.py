"""Batch outputs: labels images (OME-Zarr or TIFF), the manifest and the summary table.

Every output — TIFF labels, OME-Zarr labels (a folder), ``manifest.json``, ``summary.csv``
— goes through the project's one atomic writer,
:func:`napari_sam_lora.engine.core.atomic.write_files`: written under a temporary name in the
same folder, ``fsync``-ed, renamed into place. A reader (or a resumed run) sees the old
complete output or the new complete one, never half of one. Leftover temporary names of an
interrupted run start with ``.`` and contain ``.tmp-``; :func:`remove_partials` deletes them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_lora.engine.tracking.models import file_sha256

__all__ = [
    "FORMATS",
    "MANIFEST_NAME",
    "SUMMARY_COLUMNS",
    "SUMMARY_NAME",
    "fingerprint_path",
    "output_path",
    "read_manifest",
    "remove_partials",
    "write_labels",
    "write_manifest",
    "write_summary",
]

FORMATS = {"ome-zarr": ".ome.zarr", "tiff": ".tif"}
MANIFEST_NAME = "manifest.json"
SUMMARY_NAME = "summary.csv"
MANIFEST_FORMAT = "napari-sam-lora-batch-manifest"
MANIFEST_VERSION = 1
SUMMARY_COLUMNS = (
    "stack",
    "status",
    "objects",
    "frames",
    "seconds",
    "adapter_frames",
    "error",
    "output",
    "input",
    "worker",
    "peak_mb",
)


def output_path(output_dir: str | os.PathLike[str], name: str, fmt: str) -> Path:
    """Where stack ``name``'s labels go: ``<dir>/<name>_labels.ome.zarr`` (or ``.tif``)."""
    return Path(output_dir) / f"{name}_labels{FORMATS[fmt]}"


def remove_partials(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary outputs an interrupted run left in ``output_dir``; return them."""
    from napari_sam_lora.engine.core.atomic import remove_temps

    return remove_temps(output_dir)


# --------------------------------------------------------------------------- labels


def write_labels(
    labels: Any,
    path: str | os.PathLike[str],
    fmt: str = "ome-zarr",
    *,
    axis: str = "t",
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a ``(T, H, W)`` labels image atomically as OME-Zarr 0.4 or TIFF, reading it
    one frame at a time.

    Parameters
    ----------
    labels : array-like
        Integer label images (0 = background): a numpy array, or anything with ``shape``,
        ``dtype`` and ``labels[t]`` (a session's compressed labels).
    path : path
        Final path (see :func:`output_path`).
    fmt : {"ome-zarr", "tiff"}
    axis : {"t", "z"}
        What the stack axis is (time or space), for the OME-Zarr axes.
    attrs : mapping, optional
        Extra JSON attributes (model, adapters...) stored under ``"napari-sam-lora"``.
    """
    from napari_sam_lora.engine.core.atomic import write_files

    writers = {"ome-zarr": _write_ome_zarr, "tiff": _write_tiff}
    if fmt not in writers:
        raise ValueError(f"unknown output format {fmt!r}; choose {' or '.join(FORMATS)}")
    final = Path(path)
    write = writers[fmt]
    write_files({final: lambda tmp: write(labels, tmp, axis, attrs or {})})
    return final


def _write_ome_zarr(labels: Any, path: Path, axis: str, attrs: Mapping) -> None:
    from napari_sam_lora.data.ome_zarr_labels import write_ome_zarr_labels

    write_ome_zarr_labels(path, labels, axis=axis, metadata={"napari-sam-lora": dict(attrs)})


def _write_tiff(labels: Any, path: Path, axis: str, attrs: Mapping) -> None:
    import tifffile

    shape = tuple(int(n) for n in np.shape(labels))
    dtype = np.dtype(getattr(labels, "dtype", np.int32))
    if len(shape) == 3:  # one page at a time: a lazy or compressed stack is never dense
        axes = ("T" if axis == "t" else "Z") + "YX"
        pages: Any = (np.asarray(labels[t], dtype=dtype) for t in range(shape[0]))
    else:
        axes, pages = "YX", np.asarray(labels, dtype=dtype)
    with open(path, "wb") as handle:
        tifffile.imwrite(
            handle,
            pages,
            shape=shape,
            dtype=dtype,
            compression="zlib",
            photometric="minisblack",
            metadata={"axes": axes},
            description=json.dumps({"napari-sam-lora": dict(attrs)}),
        )


# --------------------------------------------------------------------------- fingerprints


def fingerprint_path(path: str | os.PathLike[str]) -> str:
    """A cheap fingerprint of a file or folder: sha256 over names, sizes and mtimes."""
    path = Path(path)
    digest = hashlib.sha256()
    entries: Iterable[Path] = (
        sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    )
    for entry in entries:
        stat = entry.stat()
        rel = entry.relative_to(path) if path.is_dir() else Path(entry.name)
        digest.update(f"{rel.as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def fingerprint_bytes(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's content (adapter files: small, and copied around)."""
    return file_sha256(Path(path))


# --------------------------------------------------------------------------- manifest


def _write_text(path: Path, text: str) -> None:
    from napari_sam_lora.engine.core.atomic import write_files

    write_files({path: text})


def read_manifest(output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest's ``{"job": ..., "stacks": {name: entry}}``; empty when absent or unusable.

    An unreadable manifest is treated as absent: every stack is redone (nothing is lost
    but time).
    """
    path = Path(output_dir) / MANIFEST_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"job": {}, "stacks": {}}
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        return {"job": {}, "stacks": {}}
    stacks = doc.get("stacks")
    return {"job": doc.get("job") or {}, "stacks": stacks if isinstance(stacks, dict) else {}}


def write_manifest(
    output_dir: str | os.PathLike[str], job: Mapping[str, Any], stacks: Mapping[str, Any]
) -> Path:
    """Write ``manifest.json`` atomically: the job settings and each stack's entry."""
    doc = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "job": dict(job),
        "stacks": dict(sorted(stacks.items())),
    }
    path = Path(output_dir) / MANIFEST_NAME
    _write_text(path, json.dumps(doc, indent=2, default=str))
    return path


def write_summary(output_dir: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``summary.csv`` atomically, one row per stack (columns: :data:`SUMMARY_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in SUMMARY_COLUMNS})
    path = Path(output_dir) / SUMMARY_NAME
    _write_text(path, buffer.getvalue())
    return path
