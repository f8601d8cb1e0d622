"""Segment whole experiments: many stacks, seed prompts, saved adapters, dask.distributed.

``napari-sam-lora segment`` and :func:`segment` are the same job (see :mod:`.job`): each
stack goes through the widget's own engine (``Session``, and a ``Learner`` with adapter
files), one task per stack on a dask cluster, results written atomically with a summary
table and a resumable manifest. dask and zarr are imported only when a job runs
(``pip install "napari-sam-lora[batch]"``).

Example
-------
>>> from napari_sam_lora.batch import segment
>>> result = segment("data/*.tif", "out", seeds="seeds/", model="sam2.1_hiera_tiny")
>>> [r["status"] for r in result.rows]
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "segment": "napari_sam_lora.batch.job",
    "segment_steps": "napari_sam_lora.batch.job",
    "BatchResult": "napari_sam_lora.batch.job",
    "BatchStep": "napari_sam_lora.batch.job",
    "segment_stack": "napari_sam_lora.batch.stack",
    "StackResult": "napari_sam_lora.batch.stack",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_sam_lora.batch' has no attribute {name!r}")
