"""napari-sam-lora: SAM2 on image stacks in napari, learning from every correction.

Heavy dependencies (torch, sam2, peft) are imported lazily, so importing this package
and starting napari stay fast. The scripting API lives in :mod:`napari_sam_lora.engine`;
``Session`` is re-exported here for convenience.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from napari_sam_lora.engine.session import Session

__all__ = ["Session", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Session":
        from napari_sam_lora.engine.session import Session

        return Session
    raise AttributeError(f"module 'napari_sam_lora' has no attribute {name!r}")
