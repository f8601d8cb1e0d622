"""Loading SAM2 for stacks: :func:`load_model` → :class:`LoadedModel`.

The predictor itself (feature cache, decoder-input capture, CPU fixes) is
:class:`~napari_sam_lora.engine.tracking.sam2_bridge.StackPredictor`; model names, checkpoints and
devices are in :mod:`.models`.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from sam2.build_sam import build_sam2_video_predictor

from napari_sam_lora.engine.core.errors import CheckpointError, ModelError
from napari_sam_lora.engine.core.jobs import drain, relay
from napari_sam_lora.engine.core.memory import limit_heap_growth
from napari_sam_lora.engine.core.validation import check_image_size
from napari_sam_lora.engine.tracking.models import (
    ModelSpec,
    iter_download,
    parse_model,
    pick_device,
    read_checkpoint,
    variant_of_state,
    verify_checksum,
)
from napari_sam_lora.engine.tracking.sam2_bridge import StackPredictor

__all__ = ["LoadedModel", "StackPredictor", "iter_load_model", "load_model"]

_SAM2_OVERRIDES = [
    "++model._target_=napari_sam_lora.engine.tracking.sam2_bridge.StackPredictor",
    # Keep corrections on already tracked frames as conditioning frames (see
    # docs/architecture.md, "SAM2 settings").
    "++model.add_all_frames_to_correct_as_cond=true",
]


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
    # optional compiled extension and warns on every frame without it.
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
    problems = state_dict_mismatch(predictor.state_dict(), state)
    if problems:
        raise CheckpointError(f"{path} does not fit {spec.variant.name}: {problems}")
    try:
        predictor.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} does not fit {spec.variant.name}: {str(exc).splitlines()[0]}"
        ) from exc


def state_dict_mismatch(expected: dict[str, Any], found: dict[str, Any], most: int = 3) -> str:
    """What keeps ``found`` from loading where ``expected`` is: keys it lacks, keys it has
    too many, tensors of another shape (``""`` when it fits), naming up to ``most`` each."""

    def names(keys: list[str]) -> str:
        more = f" and {len(keys) - most} more" if len(keys) > most else ""
        return ", ".join(keys[:most]) + more

    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    shapes = [
        f"{k} is {tuple(getattr(found[k], 'shape', ()))}, not {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if tuple(getattr(found[k], "shape", ())) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing {names(missing)}")
    if extra:
        parts.append(f"unexpected {names(extra)}")
    if shapes:
        parts.append(f"tensor shapes differ: {names(shapes)}")
    return "; ".join(parts)


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
    if image_size is not None:
        image_size = check_image_size(image_size, ModelError)
    spec = parse_model(model)
    torch_device = pick_device(device)
    path = spec.path
    if not spec.untrained and path is None:
        path = yield from relay(iter_download(spec.variant), lambda p: ("download", *p))
    yield ("build", 0, 1)
    limit_heap_growth()  # sessions free big tensors every frame (engine/core/memory.py)
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
