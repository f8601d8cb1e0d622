"""Benchmark: our default LoRA recipe vs the LIT-LoRA reference recipe on easy corrections.

Not a test: it logs figures. Every recipe trains on the *same* recorded decoder inputs of
``--corrections`` synthetic frames (a bright disk on noise, moved a little each time) with
the disk as the correction, each on a fresh adapter, then reports the median training time
and the IoU of the adapted decoder's mask on the corrected frame and on the next frame.
With ``--decoy`` it also trains on a frame with an equally bright decoy disk (the look-alike
case, where the default recipe escalates capacity) and reports that separately. The model
is SAM2.1 hiera-tiny with **random (untrained) weights** (no checkpoint is downloaded), so
the absolute IoUs say nothing about real images: this measures the mechanics and the cost
of each recipe.

Usage::

    python benchmarks/bench_training.py [--image-size 1024] [--recipes default lit lit-100]
        [--corrections 5] [--decoy] [--device cpu]

Issue 10's target: the default recipe's median per easy correction <= 3 s on a CPU at 1024.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import logging
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_sam_lora.engine.core.jobs import drain
from napari_sam_lora.engine.learning.adapters import inject_adapter, propose
from napari_sam_lora.engine.learning.lora_settings import LoraSettings, load_settings
from napari_sam_lora.engine.learning.losses import logits_iou
from napari_sam_lora.engine.learning.training import train_adapter
from napari_sam_lora.engine.tracking.features import DecoderInputs

logger = logging.getLogger("bench_training")
FRAME_SIZE = 512
_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def disk_frame(
    center: tuple[float, float], seed: int, decoy: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A ``FRAME_SIZE``² grey frame (noise + bright disk [+ decoy]) and the disk's mask."""
    yy, xx = np.mgrid[:FRAME_SIZE, :FRAME_SIZE] / FRAME_SIZE
    mask = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= 0.15**2
    rng = np.random.default_rng(seed)
    image = np.clip(0.2 + 0.05 * rng.standard_normal(mask.shape), 0, 1)
    if decoy is not None:
        image[(yy - decoy[0]) ** 2 + (xx - decoy[1]) ** 2 <= 0.15**2] = 0.9
    image[mask] = 0.9
    return image.astype(np.float32), mask


def record_inputs(
    model: nn.Module, image: np.ndarray, image_size: int, device: torch.device
) -> DecoderInputs:
    """Decoder inputs SAM2 builds for an init frame with an empty prompt (as when tracking)."""
    img = torch.from_numpy(image)[None, None].expand(1, 3, -1, -1).to(device)
    img = F.interpolate(img, size=(image_size, image_size), mode="bilinear", align_corners=False)
    img = (img[0] - _MEAN.to(device)) / _STD.to(device)
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


def _train_once(
    base: nn.Module, settings: LoraSettings, example: tuple, following: tuple
) -> dict[str, float | str]:
    """Train a fresh adapter on one correction; time, steps, stop, IoUs, escalation."""
    inputs, target = example
    decoder = copy.deepcopy(base)
    inject_adapter(decoder, "obj1_a0", settings)
    tic = time.perf_counter()
    report = drain(train_adapter(decoder, "obj1_a0", [(inputs, target)], settings))
    wall = time.perf_counter() - tic
    return {
        "seconds": report.seconds,
        "wall": wall,
        "steps": report.steps,
        "stop": report.stop_reason,
        "escalated": "yes" if report.escalated else "no",
        "corrected": logits_iou(propose(decoder, "obj1_a0", inputs).logits, target),
        "next": logits_iou(propose(decoder, "obj1_a0", following[0]).logits, following[1]),
    }


def run(args: argparse.Namespace) -> None:
    """Record the inputs once, then train and evaluate each recipe on fresh decoders."""
    from sam2.build_sam import build_sam2_video_predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        ckpt_path=None,
        device=str(device),
        hydra_overrides_extra=[f"++model.image_size={args.image_size}"],
    )
    tic = time.perf_counter()
    frames = [
        disk_frame((0.45 + 0.02 * k, 0.5 + 0.04 * k), seed=k) for k in range(args.corrections + 1)
    ]
    recorded = [(record_inputs(model, im, args.image_size, device), m) for im, m in frames]
    easy = list(itertools.pairwise(recorded))
    hard = []
    if args.decoy:
        d0 = disk_frame((0.3, 0.3), seed=50, decoy=(0.7, 0.7))
        d1 = disk_frame((0.32, 0.34), seed=51, decoy=(0.7, 0.7))
        hard = [tuple((record_inputs(model, im, args.image_size, device), m) for im, m in (d0, d1))]
    logger.info(
        "SAM2.1 hiera-tiny, UNTRAINED (random weights), image_size %d, frame %d², torch %s, "
        "device %s, %d thread(s), load average %.1f; encoding %d frames took %.1f s",
        args.image_size, FRAME_SIZE, torch.__version__, device, torch.get_num_threads(),
        os.getloadavg()[0], len(recorded) + 2 * len(hard), time.perf_counter() - tic,
    )  # fmt: skip
    base = model.sam_mask_decoder
    logger.info(
        "base model: IoU %.3f on the first corrected frame",
        logits_iou(propose(base, None, recorded[0][0]).logits, recorded[0][1]),
    )
    header = f"{'recipe':<10} {'case':<6} {'n':>2} {'median s':>8} {'max s':>6} {'steps':>5} "
    header += f"{'stop (1st)':<15} {'escal.':>6} {'IoU corr.':>9} {'IoU next':>8}"
    logger.info(header)
    medians = {}
    for name, settings in recipes(args.recipes).items():
        for case, pairs in (("easy", easy), ("decoy", hard)):
            if not pairs:
                continue
            rows = [_train_once(base, settings, ex, nxt) for ex, nxt in pairs]
            seconds = [float(r["seconds"]) for r in rows]
            if case == "easy":
                medians[name] = float(np.median(seconds))
            logger.info(
                f"{name:<10} {case:<6} {len(rows):>2} {np.median(seconds):>8.2f} "
                f"{max(seconds):>6.2f} {np.median([r['steps'] for r in rows]):>5.0f} "
                f"{rows[0]['stop']:<15} {sum(r['escalated'] == 'yes' for r in rows):>6} "
                f"{np.mean([r['corrected'] for r in rows]):>9.3f} "
                f"{np.mean([r['next'] for r in rows]):>8.3f}"
            )
    if "default" in medians:
        ratios = ", ".join(
            f"{n} {m / medians['default']:.1f}x" for n, m in medians.items() if n != "default"
        )
        logger.info(
            "median training per easy correction, default: %.2f s (target <= 3 s at 1024 on CPU)%s",
            medians["default"],
            f"; relative to default: {ratios}" if ratios else "",
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
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument(
        "--corrections", type=int, default=5, help="easy corrections per recipe (median)"
    )
    parser.add_argument(
        "--decoy", action="store_true", help="also train on a frame with a look-alike decoy"
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("napari_sam_lora").setLevel(logging.WARNING)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
