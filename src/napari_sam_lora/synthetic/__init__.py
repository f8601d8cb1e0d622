"""Seeded synthetic image stacks with ground-truth labels, for tests, demos and benchmarks.

Every stack is ``(T, H, W)`` and comes with an ``int32`` label stack of the same shape in
which the tracked object has id ``1`` (``two_objects`` also has id ``2``) and everything
else, *decoys included*, is ``0``. Decoys are distractors with exactly the object's
brightness: a model that only separates by intensity segments them too.

Images are ``uint8`` (background ~30, objects ~200, Gaussian noise), except ``noisy16``,
which is ``uint16`` with a dynamic range well beyond 8 bits, heavy noise and a few saturated
hot pixels (it exercises robust percentile normalisation).

Only numpy is needed to generate stacks; :func:`write_suite` also uses ``tifffile``. A
written suite is read back by :func:`napari_sam_lora.data.suite.read_suite` (the one
``suite.json`` reader). Nothing here imports torch or napari.

Examples
--------
>>> from napari_sam_lora.synthetic import make_stack
>>> image, labels = make_stack("decoy", n_frames=4, shape=(64, 64), seed=1)
>>> image.shape, image.dtype.name, labels.dtype.name
((4, 64, 64), 'uint8', 'int32')
"""

from __future__ import annotations

from napari_sam_lora.synthetic.stacks import (
    DEFAULT_SUITE,
    KIND_DESCRIPTIONS,
    KINDS,
    make_stack,
    object_ids,
)
from napari_sam_lora.synthetic.suite import write_suite

__all__ = [
    "DEFAULT_SUITE",
    "KINDS",
    "KIND_DESCRIPTIONS",
    "make_stack",
    "object_ids",
    "write_suite",
]
