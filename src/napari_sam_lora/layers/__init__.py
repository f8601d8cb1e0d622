"""Thin adapter between napari layers and the engine (Qt-free).

Reads an image layer as a lazy stack of frames (:mod:`.stack`), reads prompts from
Points/Shapes/Labels layers (:mod:`.prompts`), writes per-frame results into an output Labels
layer as undoable edits (:mod:`.output`), keeps the masks layer a view of a session's
annotation model and hands the user's strokes and Ctrl+Z to it (:mod:`.masks_view`), and
shows the adapters' proposals as candidate layers that are accepted or rejected
(:mod:`.candidates`), and the objects' centroids per frame as a Tracks layer
(:mod:`.tracks`).

Axis vocabulary
---------------
*Layer axes* are the image layer's non-channel axes (``image_layer.ndim`` of them; an RGB(A)
layer's colour axis is the last data axis and is not a layer axis). Of the layer axes, one is
the *stack axis* (time or z), the last two others are the *spatial axes* (rows, columns), and
any remaining ones are *fixed* at the viewer's current position (4D+ images).
"""

from napari_sam_lora.layers._common import same_layer
from napari_sam_lora.layers.candidates import (
    add_candidate_layer,
    candidate_layers,
    candidate_of,
    drop_candidate_frames,
    frame_labels,
    is_candidate_layer,
    reject_candidate,
)
from napari_sam_lora.layers.masks_view import MasksView
from napari_sam_lora.layers.output import (
    find_output_layer,
    output_labels_layer,
    plane_index,
    write_frame,
)
from napari_sam_lora.layers.prompts import (
    box_prompts,
    install_click_labels,
    make_prompt_layers,
    mask_prompts,
    object_color,
    point_prompts,
    prompt_items,
    prompt_layer_state,
    prompt_object_ids,
    remove_prompt_items,
    set_prompt_layer_state,
    style_prompt_layers,
)
from napari_sam_lora.layers.stack import StackSource, StackView, stack_from_image_layer
from napari_sam_lora.layers.tracks import (
    TrackCache,
    show_tracks,
    tracks_data,
    tracks_graph,
    tracks_layer_name,
)

__all__ = [
    "MasksView",
    "StackSource",
    "StackView",
    "TrackCache",
    "add_candidate_layer",
    "box_prompts",
    "candidate_layers",
    "candidate_of",
    "drop_candidate_frames",
    "find_output_layer",
    "frame_labels",
    "install_click_labels",
    "is_candidate_layer",
    "make_prompt_layers",
    "mask_prompts",
    "object_color",
    "output_labels_layer",
    "plane_index",
    "point_prompts",
    "prompt_items",
    "prompt_layer_state",
    "prompt_object_ids",
    "reject_candidate",
    "remove_prompt_items",
    "same_layer",
    "set_prompt_layer_state",
    "show_tracks",
    "stack_from_image_layer",
    "style_prompt_layers",
    "tracks_data",
    "tracks_graph",
    "tracks_layer_name",
    "write_frame",
]
