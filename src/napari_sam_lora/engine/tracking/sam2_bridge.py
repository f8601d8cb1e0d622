"""Every call into SAM2's private API, and every read of its inference-state dict.

SAM2's video predictor keeps its tracking state in a plain dict and exposes the steps we
need (encode one frame, track one frame, turn low-resolution logits into video-size masks)
only as underscored methods. They are used here and nowhere else, so an upgrade of
``sam2`` that changes them breaks one module, and :func:`check_private_api` says what
changed (the test suite runs it). The supported range is pinned in ``pyproject.toml``.

:class:`StackPredictor` subclasses sam2's ``SAM2VideoPredictor`` and changes three things:

- image features of every visited frame are kept in a bounded cache held by the inference
  state, so re-propagation makes no image-encoder call for cached frames (and the calls
  and seconds the encoder did spend are counted);
- while a frame is *tracked* (no prompt on it), the mask decoder's inputs are recorded per
  (frame, object) — the "fresh features" LoRA training needs — and an optional *assist*
  hook may replace the decoder's output (adapter-assisted propagation);
- on devices without autocast, memory features stay float32 (sam2 stores them as
  bfloat16, which crashes memory attention on CPU for a second object or reverse tracking).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
from sam2 import sam2_video_predictor as _svp

from napari_sam_lora.engine.core.errors import SamLoraError
from napari_sam_lora.engine.tracking.features import (
    BoundedStore,
    DecoderInputs,
    RecordedInputs,
    storage_bytes,
)

# sam2 wraps propagation in a tqdm bar printed to stderr; our callers show their own.
_svp.tqdm = lambda iterable, **_: iterable

#: ``assist(frame, obj_id, decoder_kwargs, decoder_output)`` → replacement output or None.
AssistHook = Callable[[int, int, dict, tuple], "tuple | None"]

#: The private methods we override or call, with the parameters we rely on.
_PRIVATE_API: dict[str, tuple[str, ...]] = {
    "add_new_mask": ("inference_state", "frame_idx", "obj_id", "mask"),
    "add_new_points_or_box": ("inference_state", "frame_idx", "obj_id", "points", "labels", "box"),
    "_get_image_feature": ("inference_state", "frame_idx", "batch_size"),
    "_run_single_frame_inference": (
        "inference_state",
        "output_dict",
        "frame_idx",
        "batch_size",
        "is_init_cond_frame",
        "point_inputs",
        "mask_inputs",
        "reverse",
        "run_mem_encoder",
    ),
    "_run_memory_encoder": ("inference_state", "frame_idx", "batch_size", "high_res_masks"),
    "_get_orig_video_res_output": ("inference_state", "any_res_masks"),
    "remove_object": ("inference_state", "obj_id"),
}
#: SAM2Base methods the instant preview calls.
_BASE_API: dict[str, tuple[str, ...]] = {
    "_forward_sam_heads": (
        "backbone_features",
        "point_inputs",
        "mask_inputs",
        "high_res_features",
        "multimask_output",
    ),
    "_use_multimask": ("is_init_cond_frame", "point_inputs"),
}
#: Inference-state keys read here.
_STATE_KEYS = (
    "obj_id_to_idx",
    "obj_idx_to_id",
    "obj_ids",
    "output_dict_per_obj",
    "temp_output_dict_per_obj",
    "frames_tracked_per_obj",
    "point_inputs_per_obj",
    "mask_inputs_per_obj",
)


#: What SAM2's store of mask prompts holds once a prompt is used (see
#: :meth:`StackPredictor.add_new_mask`): an empty tensor, where SAM2 kept the full mask.
_USED_MASK_PROMPT = torch.zeros(0, dtype=torch.bool)


class Sam2ApiError(SamLoraError):
    """The installed sam2 does not have the private API this engine was written against."""


def check_private_api(state: dict | None = None) -> None:
    """Raise :class:`Sam2ApiError` naming what changed in sam2's private API.

    Parameters
    ----------
    state : dict, optional
        An inference state to check the keys of as well.
    """
    problems = []
    for name, params in {**_PRIVATE_API, **_BASE_API}.items():
        method = getattr(_svp.SAM2VideoPredictor, name, None)
        if method is None:
            problems.append(f"SAM2VideoPredictor.{name} is gone")
            continue
        found = tuple(inspect.signature(method).parameters)
        missing = [p for p in params if p not in found]
        if missing:
            problems.append(f"SAM2VideoPredictor.{name} lost parameter(s) {missing}")
    if state is not None:
        problems += [f"inference state lacks {k!r}" for k in _STATE_KEYS if k not in state]
    if problems:
        from importlib.metadata import version

        raise Sam2ApiError(
            f"sam2 {version('sam2')} is not the version napari-sam-lora supports: "
            + "; ".join(problems)
            + ". Install the sam2 version pinned in napari-sam-lora's requirements."
        )


class StackPredictor(_svp.SAM2VideoPredictor):
    """``SAM2VideoPredictor`` with a feature cache, decoder-input capture and CPU fixes."""

    encoder_calls: int = 0
    encoder_seconds: float = 0.0

    def _get_image_feature(self, inference_state: dict, frame_idx: int, batch_size: int):
        cached = self.frame_features(inference_state, frame_idx)
        shared_pos = inference_state["shared_pos_enc"]
        backbone_out = {
            "vision_features": cached[-1],
            "vision_pos_enc": list(shared_pos),
            "backbone_fpn": list(cached),
        }
        placeholder = inference_state["image_placeholder"]
        inference_state["cached_features"] = {frame_idx: (placeholder, backbone_out)}
        return super()._get_image_feature(inference_state, frame_idx, batch_size)

    def frame_features(self, inference_state: dict, frame_idx: int) -> list[torch.Tensor]:
        """Backbone features of one frame: from the feature cache, else the disk cache or
        the image encoder (then cached)."""
        store: BoundedStore = inference_state["feature_store"]
        cached = store.get(frame_idx)
        if cached is None:
            cached = self._encode(inference_state, frame_idx)
            store.put(frame_idx, cached)
        return cached

    def _encode(self, inference_state: dict, frame_idx: int) -> list[torch.Tensor]:
        """Backbone features of one frame: from the disk cache, or the image encoder."""
        device = inference_state["device"]
        image = inference_state["images"][frame_idx].to(device).float().unsqueeze(0)
        disk = inference_state.get("feature_disk")
        key = disk.key(image) if disk is not None else None
        if key is not None:
            found = disk.get(key, device, feature_shapes(self), feature_dtypes(device))
            if found is not None:
                inference_state.setdefault("shared_pos_enc", self._position_encoding(found))
                return found
        started = _now(self.device)
        backbone_out = self.forward_image(image)
        self.encoder_calls += 1
        self.encoder_seconds += _now(self.device) - started
        inference_state.setdefault("shared_pos_enc", backbone_out["vision_pos_enc"])
        features = list(backbone_out["backbone_fpn"])
        if key is not None:
            disk.put(key, features)
        return features

    def _position_encoding(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The image encoder's positional encodings for features of these shapes (they
        depend on the shapes only, so features read from disk need no encoder run)."""
        encode = self.image_encoder.neck.position_encoding
        with torch.inference_mode():
            return [encode(f).to(f.dtype) for f in features]

    def _run_single_frame_inference(self, inference_state: dict, output_dict: dict, **kwargs):
        frame_idx = kwargs["frame_idx"]
        tracking = kwargs.get("point_inputs") is None and kwargs.get("mask_inputs") is None
        obj_id = _obj_id_of(inference_state, output_dict)
        wanted = inference_state.get("record_inputs", True) or id(inference_state) in _ASSIST
        capture = (
            wanted and tracking and obj_id is not None and not kwargs.get("is_init_cond_frame")
        )
        with recording(self, inference_state, frame_idx, obj_id) if capture else nullcontext():
            out, masks = super()._run_single_frame_inference(
                inference_state=inference_state, output_dict=output_dict, **kwargs
            )
        out["maskmem_features"] = self._storable(out["maskmem_features"])
        return out, masks

    def add_new_mask(self, inference_state: dict, frame_idx: int, obj_id: int, mask: Any):
        """SAM2's ``add_new_mask``, without keeping the mask prompt it has just used.

        SAM2 stores every mask prompt resized to the model's input size as float32 (4 MB a
        (frame, object) at 1024) and never reads it again: it only pops it, or looks at
        which frames have one (``remove_object``). The entry is kept, empty, so those
        still see the frame; the annotation model keeps the mask itself.
        """
        result = super().add_new_mask(inference_state, frame_idx, obj_id, mask)
        obj_idx = inference_state["obj_id_to_idx"][obj_id]
        stored = inference_state["mask_inputs_per_obj"][obj_idx]
        if frame_idx in stored:
            stored[frame_idx] = _USED_MASK_PROMPT
        return result

    def add_new_points_or_box(
        self,
        inference_state: dict,
        frame_idx: int,
        obj_id: int,
        *args: Any,
        shown_mask: np.ndarray | None = None,
        **kwargs: Any,
    ):
        """SAM2's ``add_new_points_or_box``; ``shown_mask`` stands in for the mask SAM2 no
        longer holds.

        SAM2 refines a click on a tracked frame from its own previous mask logits there. On
        a frame whose outputs :func:`prune_tracking` dropped, it would answer the click as
        if nothing had been there, and a click that fixes an edge would replace the whole
        mask. ``shown_mask`` (``(H, W)`` bool at the stack's resolution: what the user sees
        of this object on this frame) is given to SAM2 as those logits, the way SAM2 turns
        a mask into logits (``20 · mask − 10`` at its low resolution), for this call only.
        Ignored where SAM2 still holds an output of the object on the frame.
        """
        tracked: dict = {}  # SAM2's tracked outputs of the object, per frame
        stand_in = None
        obj_idx = object_index(inference_state, obj_id)
        if shown_mask is not None and obj_idx is not None:
            tracked = inference_state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"]
            if frame_output(inference_state, obj_id, frame_idx) is None:
                stand_in = tracked[frame_idx] = {"pred_masks": self._mask_logits(shown_mask)}
        try:
            return super().add_new_points_or_box(
                inference_state, frame_idx, obj_id, *args, **kwargs
            )
        finally:
            if stand_in is not None and tracked.get(frame_idx) is stand_in:
                del tracked[frame_idx]

    def _mask_logits(self, mask: np.ndarray) -> torch.Tensor:
        """``(1, 1, s, s)`` low-resolution logits of a bool mask, as SAM2 makes them from a
        mask (``s`` = image size / 4)."""
        import torch.nn.functional as F

        side = int(self.image_size) // 4
        pixels = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
        low = F.interpolate(
            pixels, size=(side, side), mode="bilinear", align_corners=False, antialias=True
        )
        return (low * 20.0 - 10.0).to(self.device)

    def _run_memory_encoder(self, inference_state: dict, *args: Any, **kwargs: Any):
        features, pos_enc = super()._run_memory_encoder(inference_state, *args, **kwargs)
        return self._storable(features), pos_enc

    def _storable(self, features: torch.Tensor | None) -> torch.Tensor | None:
        """Memory features in a dtype memory attention accepts without autocast."""
        if features is None or self.device.type == "cuda":
            return features
        return features.float()


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def _obj_id_of(inference_state: dict, output_dict: dict) -> int | None:
    for obj_idx, obj_output in inference_state["output_dict_per_obj"].items():
        if obj_output is output_dict:
            return inference_state["obj_idx_to_id"][obj_idx]
    return None


# ------------------------------------------------------------------ decoder hooks
#: Assist hooks per inference state (keyed by ``id(state)``), set by :func:`assisting`.
_ASSIST: dict[int, AssistHook] = {}


@contextmanager
def recording(predictor: StackPredictor, state: dict, frame: int, obj_id: int) -> Iterator[None]:
    """Record the mask decoder's inputs for ``(frame, obj_id)`` while the block runs.

    Also applies the state's assist hook (see :func:`assisting`), if any.
    """
    store: BoundedStore = state["decoder_store"]
    decoder = predictor.sam_mask_decoder

    def hook(_module: torch.nn.Module, _args: tuple, kwargs: dict) -> None:
        high_res = kwargs["high_res_features"]
        if high_res is None or len(high_res) != 2:
            raise Sam2ApiError("SAM2's mask decoder was called without two high-res features")
        image_pe = _shared(state, "decoder_image_pe", kwargs["image_pe"].detach())
        record = RecordedInputs(
            frame=frame,
            obj_id=obj_id,
            image_embeddings=kwargs["image_embeddings"].detach(),
            sparse_prompt_embeddings=kwargs["sparse_prompt_embeddings"].detach(),
            dense_prompt_embeddings=kwargs["dense_prompt_embeddings"].detach(),
            image_pe=image_pe,
            multimask_output=bool(kwargs["multimask_output"]),
        )
        record.nbytes = sum(
            storage_bytes(t)
            for t in (
                record.image_embeddings,
                record.sparse_prompt_embeddings,
                record.dense_prompt_embeddings,
            )
        ) + (0 if image_pe is state["decoder_image_pe"] else storage_bytes(image_pe))
        store.put((frame, obj_id), record)

    handles = [decoder.register_forward_pre_hook(hook, with_kwargs=True)]
    assist = _ASSIST.get(id(state))
    if assist is not None:
        handles.append(_assist_hook(decoder, assist, frame, obj_id))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _shared(state: dict, key: str, tensor: torch.Tensor) -> torch.Tensor:
    """``state[key]`` when it holds the same values as ``tensor`` (one copy for every
    record), else ``tensor``; the first tensor seen becomes the shared one."""
    shared = state.get(key)
    if shared is None:
        state[key] = tensor
        return tensor
    same = shared.shape == tensor.shape and shared.dtype == tensor.dtype
    return shared if same and torch.equal(shared, tensor) else tensor


def decoder_inputs(
    predictor: StackPredictor, state: dict, frame: int, obj_id: int
) -> DecoderInputs | None:
    """The decoder inputs recorded for ``(frame, obj_id)``, with the frame's high-resolution
    features read from the feature cache (or the disk cache, or encoded again); ``None``
    when nothing was recorded there (or the record budget evicted it)."""
    record: RecordedInputs | None = state["decoder_store"].get((int(frame), int(obj_id)))
    if record is None:
        return None
    with torch.inference_mode():
        features = predictor.frame_features(state, int(frame))
    return record.inputs((features[0], features[1]))


def _assist_hook(decoder: torch.nn.Module, assist: AssistHook, frame: int, obj_id: int) -> Any:
    """Let ``assist`` replace the decoder's output; its own nested decoder calls are not
    re-assisted."""
    busy = False

    def hook(_module: torch.nn.Module, _args: tuple, kwargs: dict, output: Any) -> Any:
        nonlocal busy
        if busy:
            return None
        busy = True
        try:
            return assist(frame, obj_id, kwargs, output)
        finally:
            busy = False

    return decoder.register_forward_hook(hook, with_kwargs=True)


@contextmanager
def assisting(state: dict, hook: AssistHook) -> Iterator[None]:
    """While the block runs, every tracked frame of ``state`` goes through ``hook``."""
    key = id(state)
    if key in _ASSIST:
        raise SamLoraError("this session already has an assist hook")
    _ASSIST[key] = hook
    try:
        yield
    finally:
        _ASSIST.pop(key, None)


# ------------------------------------------------------------------ the tracking state
def object_index(state: dict, obj_id: int) -> int | None:
    """SAM2's internal index of ``obj_id`` (``None`` when it is not tracked)."""
    return state["obj_id_to_idx"].get(int(obj_id))


def object_ids(state: dict) -> list[int]:
    """Ids of the objects SAM2 tracks, in its order."""
    return [int(i) for i in state["obj_ids"]]


def frame_output(state: dict, obj_id: int, frame: int) -> dict | None:
    """SAM2's latest output for one object on one frame (temporary outputs first)."""
    obj_idx = object_index(state, obj_id)
    if obj_idx is None:
        return None
    for store in (state["temp_output_dict_per_obj"], state["output_dict_per_obj"]):
        outputs = store.get(obj_idx, {})
        for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
            if frame in outputs.get(key, {}):
                return outputs[key][frame]
    return None


def conditioning_frames(state: dict, obj_id: int) -> list[int]:
    """Frames SAM2 holds as conditioning frames for ``obj_id`` (sorted)."""
    obj_idx = object_index(state, obj_id)
    if obj_idx is None:
        return []
    frames = set(state["output_dict_per_obj"][obj_idx]["cond_frame_outputs"])
    frames |= set(state["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"])
    return sorted(int(f) for f in frames)


def video_masks(predictor: StackPredictor, state: dict, logits: torch.Tensor) -> np.ndarray:
    """``(N, 1, H, W)`` float32 logits at the stack's resolution from SAM2's mask logits."""
    with torch.inference_mode():
        _, masks = predictor._get_orig_video_res_output(state, logits)
    return masks.float().cpu().numpy()


def feature_shapes(predictor: StackPredictor) -> list[tuple[int, ...]]:
    """The shapes of one frame's backbone features as ``forward_image`` gives them (what a
    disk cache file must hold): the neck's levels, the scalped lowest resolution dropped,
    the two finest projected by the mask decoder's ``conv_s0``/``conv_s1``."""
    encoder = predictor.image_encoder
    levels = len(encoder.neck.backbone_channel_list) - encoder.scalp
    side = predictor.image_size // predictor.backbone_stride  # of the coarsest level
    channels = [encoder.neck.d_model] * levels
    if predictor.use_high_res_features_in_sam:
        channels[0] = predictor.sam_mask_decoder.conv_s0.out_channels
        channels[1] = predictor.sam_mask_decoder.conv_s1.out_channels
    sides = [side << (levels - 1 - i) for i in range(levels)]
    return [(1, c, n, n) for c, n in zip(channels, sides, strict=True)]


def feature_dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    """The dtypes the image encoder's features may have on ``device`` now: float32, and the
    autocast dtype while autocast is on (features written under autocast mix both)."""
    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    if torch.is_autocast_enabled(device.type):
        dtypes += (torch.get_autocast_dtype(device.type),)
    return dtypes


def encode(predictor: StackPredictor, state: dict, frame: int) -> None:
    """Run (or read from the cache) the image encoder on ``frame``."""
    with torch.inference_mode():
        predictor._get_image_feature(state, int(frame), 1)


def track_hidden(predictor: StackPredictor, state: dict, frame: int, obj_id: int) -> bool:
    """Track ``frame`` for ``obj_id`` from memory with the frame's own outputs hidden, so
    the decoder inputs recorded on the way carry no trace of the frame's prompt.

    Returns ``False`` (and tracks nothing) when the object has no other conditioning frame.
    """
    obj_idx = object_index(state, obj_id)
    outputs = state["output_dict_per_obj"][obj_idx] if obj_idx is not None else {}
    hidden = {k: outputs[k].pop(frame) for k in outputs if frame in outputs[k]}
    try:
        if not outputs or not outputs["cond_frame_outputs"]:
            return False
        tracked = state["frames_tracked_per_obj"][obj_idx].get(frame, {})
        with torch.inference_mode():
            predictor._run_single_frame_inference(
                inference_state=state,
                output_dict=outputs,
                frame_idx=frame,
                batch_size=1,
                is_init_cond_frame=False,
                point_inputs=None,
                mask_inputs=None,
                reverse=tracked.get("reverse", False),
                run_mem_encoder=False,
            )
        return True
    finally:
        for key, value in hidden.items():
            outputs[key][frame] = value


def remove_object(predictor: StackPredictor, state: dict, obj_id: int) -> None:
    """Forget one object (its prompts, memories and outputs); the others stay."""
    predictor.remove_object(state, int(obj_id), strict=False, need_output=False)


def memory_frames(predictor: StackPredictor) -> int:
    """How many frames SAM2's memory bank holds (``num_maskmem``: 7 for SAM2.1)."""
    return int(getattr(predictor, "num_maskmem", 7))


def forget_tracking(state: dict, frames: Iterable[int]) -> None:
    """Drop SAM2's non-conditioning outputs (its memory of tracked frames) on ``frames``,
    for every object, so that re-tracking them depends only on the conditioning frames
    and the frames outside ``frames`` — the same run gives the same masks every time."""
    wanted = {int(f) for f in frames}
    for obj_idx, outputs in state["output_dict_per_obj"].items():
        tracked = state["frames_tracked_per_obj"].get(obj_idx, {})
        for frame in wanted:
            if frame in outputs["cond_frame_outputs"]:
                continue
            outputs["non_cond_frame_outputs"].pop(frame, None)
            tracked.pop(frame, None)


def memory_reach(predictor: StackPredictor) -> int:
    """How many frames back SAM2 reads a tracked frame's outputs while tracking: its memory
    bank (``num_maskmem``, 7) and its object pointers (``max_obj_ptrs_in_encoder``, 16),
    times the memory stride (1 when tracking)."""
    stride = int(getattr(predictor, "memory_temporal_stride_for_eval", 1))
    reach = max(memory_frames(predictor), int(getattr(predictor, "max_obj_ptrs_in_encoder", 16)))
    return reach * max(stride, 1)


def prune_tracking(state: dict, frame: int, reverse: bool, reach: int) -> None:
    """Drop SAM2's non-conditioning outputs that tracking from ``frame`` on (in the pass's
    direction) can no longer read: those more than ``reach`` frames behind it. Tracking
    gives the same masks as with everything kept; what SAM2 keeps per object stays within
    its conditioning frames and the last ``reach`` tracked frames, whatever the stack's
    length."""
    frame = int(frame)
    for outputs in state["output_dict_per_obj"].values():
        tracked = outputs["non_cond_frame_outputs"]
        stale = [f for f in tracked if (f - frame if reverse else frame - f) > reach]
        for old in stale:
            del tracked[old]


def preview_logits(
    predictor: StackPredictor,
    state: dict,
    frame: int,
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
) -> torch.Tensor:
    """SAM2's low-resolution mask logits ``(1, 1, h, w)`` for clicks ``(N, 2)`` in ``(x, y)``
    stack pixels (labels 1/0) and/or a box ``(x0, y0, x1, y1)`` on ``frame``, as SAM2 answers
    a first prompt there: the frame's cached features (encoded once if needed), the prompt
    encoder and the mask decoder — no memory, and nothing in SAM2's state changes."""
    device = predictor.device
    height, width = state["video_height"], state["video_width"]
    scale = torch.tensor([predictor.image_size / width, predictor.image_size / height])
    coords, codes = [], []
    if box is not None:
        coords.append(torch.as_tensor(box, dtype=torch.float32).reshape(2, 2) * scale)
        codes.append(torch.tensor([2, 3], dtype=torch.int32))
    if points is not None and len(points):
        coords.append(torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2) * scale)
        codes.append(torch.as_tensor(labels, dtype=torch.int32).reshape(-1))
    point_inputs = {
        "point_coords": torch.cat(coords)[None].to(device),
        "point_labels": torch.cat(codes)[None].to(device),
    }
    with torch.inference_mode():
        features = predictor.frame_features(state, int(frame))
        top = features[-1]
        pixels = top + predictor.no_mem_embed.reshape(1, -1, 1, 1).to(top.dtype)
        multimask = predictor._use_multimask(True, point_inputs)
        _, _, _, low_res, _, _, _ = predictor._forward_sam_heads(
            backbone_features=pixels,
            point_inputs=point_inputs,
            mask_inputs=None,
            high_res_features=[features[0], features[1]],
            multimask_output=multimask,
        )
    return low_res


def mask_generator(predictor: StackPredictor, **options: Any) -> Any:
    """sam2's own automatic mask generator (``SAM2AutomaticMaskGenerator``) on the session's
    model, with its image predictor's feature sizes set for the model's image size (sam2
    hard-codes those of 1024)."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(predictor, **options)
    side = int(predictor.image_size)
    generator.predictor._bb_feat_sizes = [(side // k, side // k) for k in (4, 8, 16)]
    return generator
