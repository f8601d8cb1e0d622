"""The output Labels layer: per-frame results written as undoable edits (Qt-free)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels

from napari_sam_lora.engine.core.validation import check_ids_fit
from napari_sam_lora.layers._common import same_layer, transform_kwargs
from napari_sam_lora.layers.stack import StackSource

if TYPE_CHECKING:
    import napari

__all__ = [
    "find_output_layer",
    "output_labels_layer",
    "plane_index",
    "write_frame",
]


def find_output_layer(
    viewer: napari.viewer.Viewer, image_layer: Image, source: StackSource
) -> Labels | None:
    """The existing output Labels layer of an image, or ``None``.

    See :func:`output_labels_layer` for the names and shape it matches.
    """
    name = f"{image_layer.name} masks"
    pattern = re.compile(re.escape(name) + r"( \[\d+\])?")
    for layer in viewer.layers:
        if (
            isinstance(layer, Labels)
            and pattern.fullmatch(layer.name)
            and tuple(layer.data.shape) == tuple(source.layer_shape)
        ):
            return layer
    return None


def output_labels_layer(
    viewer: napari.viewer.Viewer, image_layer: Image, source: StackSource
) -> Labels:
    """Get or create the output Labels layer "<image> masks".

    An existing Labels layer of that name (or "<image> masks [n]", napari's renaming) is
    reused when its shape is the image's non-channel shape; otherwise a new int32 layer of
    that shape, with the image's transform, is added; the active layer stays active.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    image_layer : napari.layers.Image
    source : StackSource
        The stack the results belong to.

    Returns
    -------
    napari.layers.Labels
    """
    layer = find_output_layer(viewer, image_layer, source)
    if layer is not None:
        return layer
    name = f"{image_layer.name} masks"
    active = viewer.layers.selection.active
    data = np.zeros(source.layer_shape, dtype=np.int32)
    layer = viewer.add_labels(data, name=name, **transform_kwargs(image_layer))
    if active is not None:  # keep the user's tool (e.g. adding points) active
        viewer.layers.selection.active = active
    return layer


def plane_index(labels_layer: Labels, source: StackSource, frame: int) -> tuple[int | slice, ...]:
    """Index into ``labels_layer.data`` selecting frame ``frame`` as an ``(H, W)`` plane.

    Parameters
    ----------
    labels_layer : napari.layers.Labels
        Of the image's non-channel shape (``source.layer_shape``) or the stack's ``(T, H, W)``.
    source : StackSource
    frame : int

    Raises
    ------
    ValueError
        If the layer has neither shape.
    """
    shape = tuple(int(s) for s in labels_layer.data.shape)
    if shape == tuple(source.layer_shape):
        return source.frame_index(frame)
    if shape == source.frames_shape:
        return (int(frame), slice(None), slice(None))
    raise ValueError(
        f"labels layer '{labels_layer.name}' has shape {shape}; expected "
        f"{tuple(source.layer_shape)} for image '{source.image_name}'"
    )


def write_frame(
    labels_layer: Labels,
    source: StackSource,
    frame: int,
    label_image: np.ndarray,
    viewer: napari.viewer.Viewer | None = None,
) -> bool:
    """Write one frame's label image into a Labels layer, undoably.

    Only changed pixels are written, through ``Labels.data_setitem`` (recorded in the layer's
    own undo history), and the display is refreshed. For a layer with no annotation behind
    it; the masks layer of a session shows its annotation model
    (:class:`~napari_sam_lora.layers.masks_view.MasksView`).

    Parameters
    ----------
    labels_layer : napari.layers.Labels
        Of the image's non-channel shape (``source.layer_shape``) or the stack's ``(T, H, W)``.
    source : StackSource
    frame : int
        Frame index.
    label_image : np.ndarray
        ``(H, W)`` integer label image (0 background).
    viewer : napari.viewer.Viewer, optional
        When given and the layer is no longer in ``viewer.layers``, nothing is written.

    Returns
    -------
    bool
        Whether the frame was written (``False`` if the layer was removed from the viewer).

    Raises
    ------
    ValueError
        If the label image or the layer has the wrong shape.
    PromptError
        If an id of ``label_image`` does not fit the layer's dtype (e.g. id 300 in a uint8
        layer); nothing is written.
    """
    if viewer is not None and not any(same_layer(labels_layer, x) for x in viewer.layers):
        return False
    new = np.asarray(label_image)
    if new.shape != source.frame_shape:
        raise ValueError(
            f"label image has shape {new.shape}; frames of '{source.image_name}' are "
            f"{source.frame_shape}"
        )
    data = labels_layer.data
    shape = tuple(int(s) for s in data.shape)
    index = plane_index(labels_layer, source, frame)
    if new.size and new.max() > 0:
        check_ids_fit(int(new.max()), data.dtype, where=f"of layer '{labels_layer.name}'")
    new = new.astype(data.dtype, copy=False)
    rows, cols = np.nonzero(np.asarray(data[index]) != new)
    if rows.size == 0:
        return True
    small = np.min_scalar_type(max(shape))  # compact undo history
    rows, cols = rows.astype(small), cols.astype(small)
    spatial = iter((rows, cols))
    indices = tuple(
        np.full(rows.size, k, dtype=small) if isinstance(k, int) else next(spatial) for k in index
    )
    labels_layer.data_setitem(indices, new[rows, cols])
    return True
