"""Candidate layers: the adapters' proposals, shown beside the user's labels (Qt-free).

A candidate is one adapter's masks for one object over some frames (an engine
``Candidate``). It is shown as its own semi-transparent Labels layer, never inside the
user's layer. Accepting writes it into the user's Labels layer as ONE undo step (the object's
pixels replaced by the mask, other objects kept) and drops the layer; rejecting drops it.

The candidate layer is the source of truth: what it shows when accepted is what is written
(a user may touch it up first), and :func:`candidate_of` rebuilds the candidate from it.

A session made on a :class:`~napari_sam_lora.layers.masks_view.Region` proposes masks of
the region's shape: the candidate layer still has the image's shape, with the masks at the
region's offset (0 outside), and reading it back crops the region again (what the session
takes). The layer records its region, so a candidate of another region is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels

from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.layers._common import same_layer, transform_kwargs
from napari_sam_lora.layers.output import plane_index
from napari_sam_lora.layers.stack import StackSource

if TYPE_CHECKING:
    import napari

    from napari_sam_lora.engine.learning.learner import Candidate
    from napari_sam_lora.layers.masks_view import Region

__all__ = [
    "CANDIDATE_OPACITY",
    "METADATA_KEY",
    "add_candidate_layer",
    "candidate_layers",
    "candidate_of",
    "drop_candidate_frames",
    "frame_labels",
    "is_candidate_layer",
    "reject_candidate",
]

METADATA_KEY = "napari_sam_lora"
CANDIDATE_OPACITY = 0.9
#: Candidates are drawn as outlines this many pixels wide, so they stand apart from the
#: filled masks layer underneath.
CANDIDATE_CONTOUR = 2
#: ... in this colour, whatever the object's colour in the masks layer.
CANDIDATE_COLOR = "yellow"


def frame_labels(labels_layer: Labels, source: StackSource, frame: int) -> np.ndarray:
    """The user's current labels on one frame.

    Parameters
    ----------
    labels_layer : napari.layers.Labels
        The output layer: of the image's non-channel shape or the stack's ``(T, H, W)``.
    source : StackSource
    frame : int

    Returns
    -------
    np.ndarray
        ``(H, W)`` copy of the frame's label image.

    Raises
    ------
    ValueError
        If the layer's shape matches neither.
    """
    return np.array(labels_layer.data[plane_index(labels_layer, source, frame)], copy=True)


def is_candidate_layer(layer: Any) -> bool:
    """Whether ``layer`` is a candidate layer made by :func:`add_candidate_layer`."""
    meta = getattr(layer, "metadata", None) or {}
    info = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
    return isinstance(layer, Labels) and isinstance(info, dict) and bool(info.get("candidate"))


def candidate_layers(viewer: napari.viewer.Viewer) -> list[Labels]:
    """The viewer's candidate layers, bottom to top."""
    return [layer for layer in viewer.layers if is_candidate_layer(layer)]


def add_candidate_layer(
    viewer: napari.viewer.Viewer,
    image_layer: Image,
    source: StackSource,
    candidate: Candidate,
    region: Region | None = None,
) -> Labels:
    """Show a candidate as a new semi-transparent Labels layer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    image_layer : napari.layers.Image
        The image the candidate belongs to; the layer gets its non-channel shape and its
        transform (like the output layer).
    source : StackSource
        The stack of that image.
    candidate : Candidate
        ``obj_id``, ``adapter_name``, ``frames``, ``masks`` ``(n, H, W)`` and
        ``confidences`` ``(n,)``.
    region : Region, optional
        The rectangle the candidate's session annotates: the masks have its shape and are
        placed at its offset (0 outside); ``None``: whole frames.

    Returns
    -------
    napari.layers.Labels
        Named ``"cand " + candidate.short_name`` (the adapter id stays visible in napari's
        layer list), drawn as a yellow outline; value ``obj_id`` on the masks; metadata
        ``{"napari_sam_lora": {"candidate": True, "obj_id", "adapter", "frames",
        "confidences", "estimated_ious", "image", "region"}}`` (``region``: ``[r0, r1, c0,
        c1]`` or ``None``). It becomes the selected layer.

    Raises
    ------
    PromptError
        If the masks do not match the stack's frames (or the region), or the region does
        not lie inside the image.
    """
    frames = [int(f) for f in candidate.frames]
    masks = np.asarray(candidate.masks, dtype=bool)
    if region is not None:
        region.check_fits(source.frame_shape, f"image '{source.image_name}'")
    shape = source.frame_shape if region is None else region.shape
    if masks.shape != (len(frames), *shape):
        where = "" if region is None else f" on the region {region.describe()}"
        raise PromptError(
            f"candidate '{candidate.name}' has masks of shape {masks.shape}; expected "
            f"{(len(frames), *shape)} for image '{source.image_name}'{where}"
        )
    if any(not 0 <= f < source.num_frames for f in frames):
        raise PromptError(
            f"candidate '{candidate.name}' covers frames {frames}, but image "
            f"'{source.image_name}' has {source.num_frames} frame(s)"
        )
    obj_id = int(candidate.obj_id)
    data = np.zeros(source.layer_shape, dtype=np.min_scalar_type(max(obj_id, 1)))
    for frame, mask in zip(frames, masks, strict=True):
        plane = data[source.frame_index(frame)]  # a view: basic indexing only
        if region is not None:
            plane = plane[region.slices]  # still a view
        plane[mask] = obj_id
    metadata = {
        METADATA_KEY: {
            "candidate": True,
            "obj_id": obj_id,
            "adapter": str(candidate.adapter_name),
            "frames": frames,
            "confidences": [float(c) for c in np.asarray(candidate.confidences)],
            "estimated_ious": [float(c) for c in np.asarray(_estimates(candidate))],
            "image": str(image_layer.name),
            "region": _region_list(region),
        }
    }
    short = getattr(candidate, "short_name", None) or candidate.name
    layer = viewer.add_labels(
        data,
        name=f"cand {short}",
        opacity=CANDIDATE_OPACITY,
        metadata=metadata,
        **transform_kwargs(image_layer),
    )
    from napari.utils.colormaps import DirectLabelColormap

    layer.colormap = DirectLabelColormap(
        color_dict={None: "transparent", 0: "transparent", obj_id: CANDIDATE_COLOR}
    )
    layer.contour = CANDIDATE_CONTOUR
    return layer


def _region_list(region: Region | None) -> list[int] | None:
    return None if region is None else [region.r0, region.r1, region.c0, region.c1]


def _estimates(candidate: Any) -> Any:
    estimated = getattr(candidate, "estimated_ious", None)
    return candidate.confidences if estimated is None else estimated


def _info(candidate_layer: Any) -> dict[str, Any]:
    if candidate_layer is None:
        raise PromptError("no candidate layer is selected: select a 'cand …' layer first")
    if not is_candidate_layer(candidate_layer):
        raise PromptError(
            f"layer '{candidate_layer.name}' is not a candidate layer: select a 'cand …' "
            f"layer (made by Propose)"
        )
    return candidate_layer.metadata[METADATA_KEY]


def candidate_of(
    candidate_layer: Labels, source: StackSource, region: Region | None = None
) -> Candidate:
    """Rebuild the candidate a layer shows, from its metadata and its current pixels.

    Edits made in the candidate layer count: a frame's mask is its non-zero pixels (with a
    ``region``: inside it; what lies outside is not the session's).

    Parameters
    ----------
    candidate_layer : napari.layers.Labels
        Made by :func:`add_candidate_layer`.
    source : StackSource
        The stack of the candidate's image.
    region : Region, optional
        The rectangle the session annotates (the masks get its shape); ``None``: whole
        frames. It must be the one the layer was made with.

    Returns
    -------
    Candidate

    Raises
    ------
    PromptError
        If ``candidate_layer`` is ``None`` or not a candidate layer, or was made on
        another region than ``region``.
    ValueError
        If its shape does not match the stack.
    """
    from napari_sam_lora.engine.learning.learner import Candidate
    from napari_sam_lora.layers.masks_view import Region

    info = _info(candidate_layer)
    made_on = info.get("region")
    made_on = None if made_on is None else [int(v) for v in made_on]
    if made_on != _region_list(region):
        now = "whole frames" if region is None else f"the region {region.describe()}"
        was = "whole frames" if made_on is None else f"the region {Region(*made_on).describe()}"
        raise PromptError(
            f"candidate '{candidate_layer.name}' was proposed on {was}, but the session now "
            f"annotates {now}: Propose again"
        )
    frames = [int(f) for f in info["frames"]]
    shape = source.frame_shape if region is None else region.shape
    masks = np.zeros((len(frames), *shape), dtype=bool)
    for i, frame in enumerate(frames):
        plane = frame_labels(candidate_layer, source, frame)
        masks[i] = (plane if region is None else plane[region.slices]) != 0
    confidences = np.asarray(info.get("confidences", [0.0] * len(frames)), dtype=np.float32)
    estimated = info.get("estimated_ious")
    return Candidate(
        int(info["obj_id"]),
        str(info["adapter"]),
        frames,
        masks,
        confidences,
        None if estimated is None else np.asarray(estimated, dtype=np.float32),
    )


def drop_candidate_frames(
    viewer: Any, layer: Labels, source: StackSource, frames: list[int]
) -> None:
    """Take accepted ``frames`` out of a candidate layer: their planes are cleared and
    their confidences dropped; the layer goes when no frame is left (with a ``viewer``)."""
    info = layer.metadata[METADATA_KEY]
    gone = {int(f) for f in frames} & set(info["frames"])
    remaining = [f for f in info["frames"] if f not in gone]
    if not remaining and viewer is not None:
        _remove(viewer, layer)
        return
    confidences = dict(zip(info["frames"], info.get("confidences", []), strict=False))
    estimated = dict(zip(info["frames"], info.get("estimated_ious", []), strict=False))
    data = layer.data
    for frame in gone:
        data[plane_index(layer, source, frame)] = 0
    layer.metadata = {
        **layer.metadata,
        METADATA_KEY: {
            **info,
            "frames": remaining,
            "confidences": [confidences[f] for f in remaining if f in confidences],
            "estimated_ious": [estimated[f] for f in remaining if f in estimated],
        },
    }
    layer.refresh()


def _remove(viewer: Any, layer: Any) -> None:
    for existing in list(viewer.layers):
        if same_layer(existing, layer):
            viewer.layers.remove(existing)
            return


def reject_candidate(viewer: napari.viewer.Viewer, candidate_layer: Labels) -> None:
    """Drop a candidate layer; the user's layer is untouched.

    Raises
    ------
    PromptError
        If ``candidate_layer`` is ``None`` or not a candidate layer.
    """
    _info(candidate_layer)
    _remove(viewer, candidate_layer)
