"""SAM2's video predictor, adapted to stacks: feature cache, decoder-input capture, fixes.

:class:`StackPredictor` subclasses sam2's ``SAM2VideoPredictor`` and changes three things:

- image features of every visited frame are kept in a bounded cache held by the inference
  state, so re-propagation makes no image-encoder call for cached frames;
- while a frame is *tracked* (no prompt on it), the mask decoder's inputs are recorded per
  (frame, object) — the "fresh features" LoRA training needs;
- on devices without autocast, memory features stay float32 (sam2 stores them as bfloat16,
  which crashes memory attention on CPU for a second object or reverse tracking).

:func:`load_model` builds it from a model name (see :mod:`.models`).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from sam2 import sam2_video_predictor as _svp
from sam2.build_sam import build_sam2_video_predictor

from napari_sam_lora.engine.errors import CheckpointError
from napari_sam_lora.engine.features import BoundedStore, DecoderInputs
from napari_sam_lora.engine.jobs import drain
from napari_sam_lora.engine.models import (
    ModelSpec,
    iter_download,
    parse_model,
    pick_device,
    read_checkpoint,
    variant_of_state,
    verify_checksum,
)

# sam2 wraps propagation in a tqdm bar printed to stderr; our callers show their own.
_svp.tqdm = lambda iterable, **_: iterable

_SAM2_OVERRIDES = [
    "++model._target_=napari_sam_lora.engine.predictor.StackPredictor",
    # Keep corrections on already tracked frames as conditioning frames (DESIGN §3b).
    "++model.add_all_frames_to_correct_as_cond=true",
]


class StackPredictor(_svp.SAM2VideoPredictor):
    """``SAM2VideoPredictor`` with a feature cache, decoder-input capture and CPU fixes."""

    encoder_calls: int = 0

    def _get_image_feature(self, inference_state: dict, frame_idx: int, batch_size: int):
        store: BoundedStore = inference_state["feature_store"]
        cached = store.get(frame_idx)
        if cached is None:
            device = inference_state["device"]
            image = inference_state["images"][frame_idx].to(device).float().unsqueeze(0)
            backbone_out = self.forward_image(image)
            self.encoder_calls += 1
            shared_pos = inference_state.setdefault(
                "shared_pos_enc", backbone_out["vision_pos_enc"]
            )
            cached = list(backbone_out["backbone_fpn"])
            store.put(frame_idx, cached)
        else:
            shared_pos = inference_state["shared_pos_enc"]
        backbone_out = {
            "vision_features": cached[-1],
            "vision_pos_enc": list(shared_pos),
            "backbone_fpn": list(cached),
        }
        placeholder = inference_state["image_placeholder"]
        inference_state["cached_features"] = {frame_idx: (placeholder, backbone_out)}
        return super()._get_image_feature(inference_state, frame_idx, batch_size)

    def _run_single_frame_inference(self, inference_state: dict, output_dict: dict, **kwargs):
        frame_idx = kwargs["frame_idx"]
        tracking = kwargs.get("point_inputs") is None and kwargs.get("mask_inputs") is None
        obj_id = _obj_id_of(inference_state, output_dict)
        capture = tracking and obj_id is not None and not kwargs.get("is_init_cond_frame")
        with self._capturing(inference_state, frame_idx, obj_id) if capture else nullcontext():
            out, masks = super()._run_single_frame_inference(
                inference_state=inference_state, output_dict=output_dict, **kwargs
            )
        out["maskmem_features"] = self._storable(out["maskmem_features"])
        return out, masks

    def _run_memory_encoder(self, inference_state: dict, *args: Any, **kwargs: Any):
        features, pos_enc = super()._run_memory_encoder(inference_state, *args, **kwargs)
        return self._storable(features), pos_enc

    def _storable(self, features: torch.Tensor | None) -> torch.Tensor | None:
        """Memory features in a dtype memory attention accepts without autocast."""
        if features is None or self.device.type == "cuda":
            return features
        return features.float()

    @contextmanager
    def _capturing(self, inference_state: dict, frame_idx: int, obj_id: int) -> Iterator[None]:
        """Record the mask decoder's inputs for ``(frame_idx, obj_id)`` during the block."""
        store: BoundedStore = inference_state["decoder_store"]

        def hook(_module: torch.nn.Module, _args: tuple, kwargs: dict) -> None:
            record = DecoderInputs(
                frame=frame_idx,
                obj_id=obj_id,
                image_embeddings=kwargs["image_embeddings"].detach(),
                image_pe=kwargs["image_pe"].detach(),
                sparse_prompt_embeddings=kwargs["sparse_prompt_embeddings"].detach(),
                dense_prompt_embeddings=kwargs["dense_prompt_embeddings"].detach(),
                high_res_features=tuple(f.detach() for f in kwargs["high_res_features"]),
                multimask_output=bool(kwargs["multimask_output"]),
            )
            store.put((frame_idx, obj_id), record)

        handles = [self.sam_mask_decoder.register_forward_pre_hook(hook, with_kwargs=True)]
        assist = inference_state.get("assist")
        if assist is not None:
            handles.append(self._assist_hook(assist, frame_idx, obj_id))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _assist_hook(self, assist: Any, frame_idx: int, obj_id: int) -> Any:
        """Let ``assist(frame, obj_id, kwargs, output)`` replace the decoder's output.

        ``assist`` may call the decoder itself; those nested calls are not re-assisted.
        """
        busy = False

        def hook(_module: torch.nn.Module, _args: tuple, kwargs: dict, output: Any) -> Any:
            nonlocal busy
            if busy:
                return None
            busy = True
            try:
                return assist(frame_idx, obj_id, kwargs, output)
            finally:
                busy = False

        return self.sam_mask_decoder.register_forward_hook(hook, with_kwargs=True)


def _obj_id_of(inference_state: dict, output_dict: dict) -> int | None:
    for obj_idx, obj_output in inference_state["output_dict_per_obj"].items():
        if obj_output is output_dict:
            return inference_state["obj_idx_to_id"][obj_idx]
    return None


@dataclass
class LoadedModel:
    """A ready predictor plus what users are shown about it.

    Attributes
    ----------
    predictor : StackPredictor
        The sam2 video predictor (eval mode, on ``device``).
    spec : ModelSpec
        Which variant, untrained or from which file.
    device : torch.device
        Where it runs.
    """

    predictor: StackPredictor
    spec: ModelSpec
    device: torch.device

    @property
    def label(self) -> str:
        """Model name as shown to users (says UNTRAINED for random weights)."""
        return f"{self.spec.label} on {self.device.type}"

    @property
    def image_size(self) -> int:
        """Side of the square input SAM2 resizes frames to."""
        return int(self.predictor.image_size)

    def precision(self) -> Any:
        """Autocast context for inference: bfloat16 on CUDA, full precision elsewhere."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()


def _build(spec: ModelSpec, device: torch.device, image_size: int | None) -> StackPredictor:
    overrides = list(_SAM2_OVERRIDES)
    if image_size is not None:
        overrides.append(f"++model.image_size={int(image_size)}")
    if spec.untrained:
        torch.manual_seed(0)
    predictor = build_sam2_video_predictor(
        spec.variant.config, ckpt_path=None, device="cpu", hydra_overrides_extra=overrides
    )
    # sam2's builder sets fill_hole_area=8 after hydra overrides; hole filling needs an
    # optional compiled extension and warns on every frame without it (DESIGN §3c).
    predictor.fill_hole_area = 0
    return predictor


def _load_weights(predictor: StackPredictor, spec: ModelSpec, path: Any) -> None:
    state = read_checkpoint(path)
    found = variant_of_state(state)
    if found is not None and found != spec.variant:
        raise CheckpointError(
            f"{path} is a {found.name} checkpoint, not {spec.variant.name}; "
            f"choose {found.name} or the right file"
        )
    try:
        predictor.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} does not fit {spec.variant.name}: {str(exc).splitlines()[0]}"
        ) from exc


def _staged(stage: str, steps: Generator[tuple[int, int], None, Any]) -> Generator:
    """Relay ``(done, total)`` progress as ``(stage, done, total)``; return the result."""
    while True:
        try:
            done, total = next(steps)
        except StopIteration as stop:
            return stop.value
        yield stage, done, total


def iter_load_model(
    model: str = "sam2.1_hiera_tiny", device: str | None = None, image_size: int | None = None
) -> Generator[tuple[str, int, int], None, LoadedModel]:
    """Build a predictor, yielding ``(stage, done, total)`` progress; returns it.

    Downloads a named variant into the cache first when needed (stage ``"download"``).

    Parameters
    ----------
    model : str
        Variant name, ``untrained:<variant>`` or a local checkpoint path.
    device : str, optional
        ``"cuda"``, ``"mps"``, ``"cpu"`` or ``None``/``"auto"``.
    image_size : int, optional
        Override the model's input size (1024); smaller is faster and less accurate.
    """
    spec = parse_model(model)
    torch_device = pick_device(device)
    path = spec.path
    if not spec.untrained and path is None:
        path = yield from _staged("download", iter_download(spec.variant))
    yield ("build", 0, 1)
    predictor = _build(spec, torch_device, image_size)
    if path is not None:
        if spec.path is None:
            verify_checksum(spec.variant, path)
        _load_weights(predictor, spec, path)
    predictor = predictor.to(torch_device).eval()
    yield ("build", 1, 1)
    return LoadedModel(predictor, spec, torch_device)


def load_model(
    model: str = "sam2.1_hiera_tiny", device: str | None = None, image_size: int | None = None
) -> LoadedModel:
    """Build a predictor at once (see :func:`iter_load_model`)."""
    return drain(iter_load_model(model, device, image_size))
