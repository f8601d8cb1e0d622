"""napari-sam-lora: SAM2 on image stacks in napari, learning from every correction.

Heavy dependencies (torch, sam2, peft) are imported lazily, so importing this package
and starting napari stay fast. The scripting API::

    from napari_sam_lora import Session, Learner, load_model

is the engine's (:mod:`napari_sam_lora.engine`), the same one the widgets use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from napari_sam_lora.engine.learning.learner import Learner
    from napari_sam_lora.engine.tracking.predictor import load_model
    from napari_sam_lora.engine.tracking.session import Session

_LAZY = {
    "Session": "napari_sam_lora.engine.tracking.session",
    "Learner": "napari_sam_lora.engine.learning.learner",
    "load_model": "napari_sam_lora.engine.tracking.predictor",
}

__all__ = ["Learner", "Session", "__version__", "load_model"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_sam_lora' has no attribute {name!r}")
