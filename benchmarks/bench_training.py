"""Benchmark: our default LoRA recipe vs the LIT-LoRA reference recipe on one correction.

Not a test: it logs figures. Both recipes train on the *same* recorded decoder inputs of
one synthetic frame (a bright disk on noise) with the disk as the correction, then report
training time and the IoU of the adapted decoder's mask on the corrected frame and on the
next frame (the disk moved a little). The model is SAM2.1 hiera-tiny with **random
(untrained) weights** (no checkpoint is downloaded), so the absolute IoUs say nothing about
real images: this measures the mechanics and the cost of each recipe.

Usage::

    python benchmarks/bench_training.py [--image-size 1024] [--recipes default lit lit-100]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_sam_lora.engine.adapters import inject_adapter, propose
from napari_sam_lora.engine.features import DecoderInputs
from napari_sam_lora.engine.jobs import drain
from napari_sam_lora.engine.lora_settings import LoraSettings, load_settings
from napari_sam_lora.engine.losses import logits_iou
from napari_sam_lora.engine.training import train_adapter

logger = logging.getLogger("bench_training")
FRAME_SIZE = 512
_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def disk_frame(center: tuple[float, float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``FRAME_SIZE``² grey frame (noise + bright disk) and the disk's mask."""
    yy, xx = np.mgrid[:FRAME_SIZE, :FRAME_SIZE] / FRAME_SIZE
    mask = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= 0.15**2
    rng = np.random.default_rng(seed)
    image = np.clip(0.2 + 0.05 * rng.standard_normal(mask.shape), 0, 1)
    image[mask] = 0.9
    return image.astype(np.float32), mask


def record_inputs(model: nn.Module, image: np.ndarray, image_size: int) -> DecoderInputs:
    """Decoder inputs SAM2 builds for an init frame with an empty prompt (as when tracking)."""
    img = torch.from_numpy(image)[None, None].expand(1, 3, -1, -1)
    img = F.interpolate(img, size=(image_size, image_size), mode="bilinear", align_corners=False)
    img = (img[0] - _MEAN) / _STD
    with torch.inference_mode():
        _, feats, _, sizes = model._prepare_backbone_features(model.forward_image(img[None]))
        high_res = tuple(
            x.permute(1, 2, 0).view(x.size(1), x.size(2), *s)
            for x, s in zip(feats[:-1], sizes[:-1], strict=True)
        )
        pix = (feats[-1] + model.no_mem_embed).permute(1, 2, 0).view(1, -1, *sizes[-1])
        sparse, dense = model.sam_prompt_encoder(
            points=(torch.zeros(1, 1, 2), -torch.ones(1, 1, dtype=torch.int32)),
            boxes=None,
            masks=None,
        )
        pe = model.sam_prompt_encoder.get_dense_pe()
    return DecoderInputs(0, 1, pix, pe, sparse, dense, high_res, True)


def recipes(names: list[str]) -> dict[str, LoraSettings]:
    """Named recipes; ``lit-100`` is LIT with its early stops off (always 100 epochs)."""
    out = {}
    for name in names:
        if name == "lit-100":
            out[name] = load_settings("lit").replace(
                name="lit-100", plateau_patience=None, fail_iou=None
            )
        else:
            settings = load_settings(name)
            out[settings.name] = settings
    return out


def run(args: argparse.Namespace) -> None:
    """Record the inputs once, then train and evaluate each recipe on a fresh decoder."""
    from sam2.build_sam import build_sam2_video_predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        ckpt_path=None,
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={args.image_size}"],
    )
    image, target = disk_frame((0.45, 0.5), seed=0)
    next_image, next_target = disk_frame((0.47, 0.54), seed=1)
    tic = time.perf_counter()
    inputs = record_inputs(model, image, args.image_size)
    next_inputs = record_inputs(model, next_image, args.image_size)
    logger.info(
        "SAM2.1 hiera-tiny, UNTRAINED (random weights), image_size %d, frame %d², torch %s, "
        "%d thread(s), load average %.1f; encoding 2 frames took %.1f s",
        args.image_size, FRAME_SIZE, torch.__version__, torch.get_num_threads(),
        os.getloadavg()[0], time.perf_counter() - tic,
    )  # fmt: skip
    base = model.sam_mask_decoder
    logger.info(
        "base model: IoU %.3f on the corrected frame, %.3f on the next",
        logits_iou(propose(base, None, inputs).logits, target),
        logits_iou(propose(base, None, next_inputs).logits, next_target),
    )
    header = f"{'recipe':<10} {'steps':>5} {'train s':>8} {'wall s':>7} {'s/step':>7} "
    header += f"{'stop':<15} {'IoU corr.':>9} {'IoU next':>8}"
    logger.info(header)
    for name, settings in recipes(args.recipes).items():
        decoder = copy.deepcopy(base)
        inject_adapter(decoder, "obj1_a0", settings)
        tic = time.perf_counter()
        report = drain(train_adapter(decoder, "obj1_a0", [(inputs, target)], settings))
        wall = time.perf_counter() - tic
        corrected = logits_iou(propose(decoder, "obj1_a0", inputs).logits, target)
        following = logits_iou(propose(decoder, "obj1_a0", next_inputs).logits, next_target)
        logger.info(
            f"{name:<10} {report.steps:>5} {report.seconds:>8.2f} {wall:>7.2f} "
            f"{report.seconds / report.steps:>7.3f} {report.stop_reason:<15} "
            f"{corrected:>9.3f} {following:>8.3f}"
        )


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=1024, help="SAM2 input size")
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=["default", "lit", "lit-100"],
        help="presets (default, lit, strong, or a YAML path) and lit-100",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("napari_sam_lora").setLevel(logging.WARNING)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
