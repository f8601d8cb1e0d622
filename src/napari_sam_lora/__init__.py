"""napari-sam-lora: SAM2 on image stacks in napari, learning from every correction.

Heavy dependencies (torch, sam2, peft) are imported lazily, so importing this package
and starting napari stay fast. The scripting API::

    from napari_sam_lora import Session, Learner, load_model

is the engine's (:mod:`napari_sam_lora.engine`), the same one the widgets use.
``__version__`` is the installed distribution's version (from the git tag it was built
from; see ``[tool.setuptools_scm]`` in pyproject.toml).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str
    from napari_sam_lora.engine.learning.learner import Learner
    from napari_sam_lora.engine.tracking.predictor import load_model
    from napari_sam_lora.engine.tracking.session import Session

_LAZY = {
    "Session": "napari_sam_lora.engine.tracking.session",
    "Learner": "napari_sam_lora.engine.learning.learner",
    "load_model": "napari_sam_lora.engine.tracking.predictor",
}

__all__ = ["Learner", "Session", "__version__", "load_model"]


#: What ``__version__`` is when the package runs from a source tree that was never installed.
UNKNOWN_VERSION = "0+unknown"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-sam-lora")
    except PackageNotFoundError:
        return UNKNOWN_VERSION


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read once, on first use: importing the package stays cheap
        globals()["__version__"] = value = _version()
        return value
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_sam_lora' has no attribute {name!r}")
