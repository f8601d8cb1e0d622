"""Helpers shared by the layer modules (Qt-free)."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image

__all__ = ["find_layer", "same_layer", "transform_kwargs"]


def same_layer(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same layer.

    Plugins receive napari objects wrapped in proxies (a new proxy per access), so identity
    (``is``) is not reliable; layers' ``unique_id`` is.
    """
    if a is None or b is None:
        return a is b
    return a is b or getattr(a, "unique_id", object()) == getattr(b, "unique_id", object())


def find_layer(viewer: Any, name: str, kind: type, ndim: int) -> Any:
    """The first layer of ``viewer`` named ``name``, of type ``kind`` and dimension ``ndim``."""
    for layer in viewer.layers:
        if layer.name == name and isinstance(layer, kind) and layer.ndim == ndim:
            return layer
    return None


def transform_kwargs(image_layer: Image) -> dict[str, Any]:
    """Keyword arguments giving a new layer the transform of ``image_layer``."""
    return {
        "scale": tuple(image_layer.scale),
        "translate": tuple(image_layer.translate),
        "rotate": np.asarray(image_layer.rotate),
        "shear": np.asarray(image_layer.shear),
        "affine": np.asarray(image_layer.affine.affine_matrix),
    }
