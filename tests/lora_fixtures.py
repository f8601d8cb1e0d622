"""Helpers and fixtures for the LoRA tests: an untrained SAM2 at image_size 256 and real
decoder inputs recorded from it, without the tracker.

Import the fixtures into a test module (``from lora_fixtures import decoder, ...``); the
model and inputs are built once per session and every test gets a fresh decoder copy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from napari_sam_lora.engine.tracking.features import DecoderInputs

IMAGE_SIZE = 256


@cache
def sam_model() -> nn.Module:
    """Untrained SAM2.1 hiera-tiny at ``IMAGE_SIZE`` (no weights can be downloaded here)."""
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(0)
    return build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        ckpt_path=None,
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={IMAGE_SIZE}"],
    )


def disk_mask(
    size: int = IMAGE_SIZE, center: tuple[float, float] = (0.45, 0.55), radius: float = 0.18
) -> np.ndarray:
    """Boolean ``(size, size)`` disk."""
    yy, xx = np.mgrid[:size, :size] / size
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def disk_image(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """Grey ``(H, W)`` float image in [0, 1]: noisy background, bright disk."""
    rng = np.random.default_rng(seed)
    image = 0.2 + 0.05 * rng.standard_normal(mask.shape)
    image[mask] = 0.9
    return np.clip(image, 0, 1).astype(np.float32)


def record_inputs(
    model: nn.Module, image: np.ndarray, frame: int = 0, obj_id: int = 1
) -> DecoderInputs:
    """The decoder inputs SAM2 builds for an init frame with an empty prompt.

    Mirrors ``forward_image`` → ``_prepare_backbone_features`` → ``_track_step`` with
    ``directly_add_no_mem_embed`` (the 2.1 configs), under ``torch.inference_mode`` like
    the real capture, so the tensors are inference tensors.
    """
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    img = torch.from_numpy(image)[None].expand(3, -1, -1)
    img = torch.nn.functional.interpolate(
        img[None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
    )[0]
    img = ((img - mean) / std)[None]
    with torch.inference_mode():
        backbone_out = model.forward_image(img)
        _, feats, _, sizes = model._prepare_backbone_features(backbone_out)
        high_res = tuple(
            x.permute(1, 2, 0).view(x.size(1), x.size(2), *s)
            for x, s in zip(feats[:-1], sizes[:-1], strict=True)
        )
        pix = feats[-1] + model.no_mem_embed
        pix = pix.permute(1, 2, 0).view(1, model.hidden_dim, *sizes[-1])
        sparse, dense = model.sam_prompt_encoder(
            points=(torch.zeros(1, 1, 2), -torch.ones(1, 1, dtype=torch.int32)),
            boxes=None,
            masks=None,
        )
        pe = model.sam_prompt_encoder.get_dense_pe()
    return DecoderInputs(frame, obj_id, pix, pe, sparse, dense, high_res, True)


@cache
def _recorded(seed: int, center: tuple[float, float]) -> tuple[DecoderInputs, np.ndarray]:
    mask = disk_mask(center=center)
    return record_inputs(sam_model(), disk_image(mask, seed)), mask


def example(seed: int = 0, center: tuple[float, float] = (0.45, 0.55)):
    """``(DecoderInputs, target mask)`` for a bright disk image (cached)."""
    return _recorded(seed, center)


def fresh_decoder() -> nn.Module:
    """A deep copy of the untrained model's mask decoder, in eval mode."""
    return copy.deepcopy(sam_model().sam_mask_decoder).eval()


@pytest.fixture
def decoder() -> Iterator[nn.Module]:
    """Fresh decoder per test (adapters injected by one test never leak into another).

    Runs the test with one torch thread: on the 2-core test machines, shared with other
    jobs, two threads made a training step ~10x slower (oversubscription).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield fresh_decoder()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def disk_example() -> tuple[DecoderInputs, np.ndarray]:
    """Recorded inputs and target for the standard disk image."""
    return example()


def identity_adapter_file(model, path):
    """An (untrained, identity) adapter for object 1 saved from ``model`` at ``path``;
    returns its JSON file (the safetensors file is beside it)."""
    from napari_sam_lora.engine.learning.adapter_files import save_adapters
    from napari_sam_lora.engine.learning.adapters import delete_adapter, inject_adapter
    from napari_sam_lora.engine.learning.lora_settings import load_settings

    decoder = model.predictor.sam_mask_decoder
    inject_adapter(decoder, "obj1_a0", load_settings("default"))
    try:
        save_adapters(
            path, decoder, ["obj1_a0"], variant="sam2.1_hiera_tiny", object_ids={"obj1_a0": 1}
        )
    finally:
        delete_adapter(decoder, "obj1_a0")
    return path.parent / f"{path.name}.json"


@pytest.fixture(autouse=True)
def clean_decoder(tiny_model):
    """The shared test model leaves each test without adapters (use as an autouse fixture:
    ``_clean_decoder = lora_fixtures.clean_decoder``)."""
    yield
    from napari_sam_lora.engine.learning.adapters import activate, adapter_names, delete_adapter

    decoder = tiny_model.predictor.sam_mask_decoder
    for name in adapter_names(decoder):
        delete_adapter(decoder, name)
    if adapter_names(decoder) == []:
        activate(decoder, None)
