"""Propagation benchmark (prints figures; not a test).

Same untrained SAM2 (random weights: timings only, masks are meaningless), same frames,
one run, each configuration in its own subprocess so peak memory is its own:

(a) our propagation from a numpy stack vs stock ``SAM2VideoPredictor`` on the same frames
    saved as JPEGs (time per frame; target ratio ours/stock ≤ 1.0);
(b) re-propagation after a new prompt with our feature cache vs with it disabled
    (target ≥ 1.5× faster on CPU, with zero image-encoder calls);
(c) peak resident memory of each configuration.

Usage: ``python benchmarks/bench_propagation.py [--frames 8] [--size 512] [--image-size 1024]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = "untrained:sam2.1_hiera_tiny"


def make_stack(frames: int, size: int) -> np.ndarray:
    """A 16-bit stack with a bright disk moving across noise."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:size, :size]
    stack = rng.normal(1000, 200, (frames, size, size))
    for t in range(frames):
        centre = (size // 2, size // 4 + t * size // (2 * frames))
        stack[t][(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < (size // 10) ** 2] += 20000
    return np.clip(stack, 0, 65535).astype(np.uint16)


def peak_mb() -> float:
    """Peak resident set size of this process in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(stack: np.ndarray, image_size: int, cache_mb: float, device: str) -> dict:
    from napari_sam_lora.engine.tracking.predictor import load_model
    from napari_sam_lora.engine.tracking.session import Session

    model = load_model(MODEL, device=device, image_size=image_size)
    centre = [stack.shape[1] // 2, stack.shape[2] // 4]
    start = time.perf_counter()  # like stock: set-up, first prompt and propagation
    session = Session(stack, model=model, feature_cache_mb=cache_mb)
    session.add_points(0, 1, [centre])
    session.propagate_all("forward")
    first = time.perf_counter() - start
    calls = session.encoder_calls
    session.add_points(stack.shape[0] // 2, 1, [centre, [5, 5]], [1, 0])
    start = time.perf_counter()
    session.propagate_all("both")
    again = time.perf_counter() - start
    return {
        "propagate_s": first,
        "repropagate_s": again,
        "repropagate_encoder_calls": session.encoder_calls - calls,
        "peak_mb": peak_mb(),
    }


def run_stock(stack: np.ndarray, image_size: int, device: str) -> dict:
    import torch
    from PIL import Image
    from sam2.build_sam import build_sam2_video_predictor

    from napari_sam_lora.engine.tracking.models import VARIANTS

    folder = Path(tempfile.mkdtemp())
    low, high = np.percentile(stack, [0.5, 99.5])
    eight_bit = (np.clip((stack - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    for t, frame in enumerate(eight_bit):
        Image.fromarray(frame).convert("RGB").save(folder / f"{t:05d}.jpg")
    torch.manual_seed(0)
    predictor = build_sam2_video_predictor(
        VARIANTS["sam2.1_hiera_tiny"].config,
        ckpt_path=None,
        device=device,
        hydra_overrides_extra=[f"++model.image_size={image_size}"],
    )
    predictor.fill_hole_area = 0
    start = time.perf_counter()
    state = predictor.init_state(str(folder))
    predictor.add_new_points_or_box(
        state, 0, 1, points=[[stack.shape[2] // 4, stack.shape[1] // 2]], labels=[1]
    )
    for _ in predictor.propagate_in_video(state):
        pass
    return {"propagate_s": time.perf_counter() - start, "peak_mb": peak_mb()}


def child(args: argparse.Namespace) -> None:
    stack = make_stack(args.frames, args.size)
    if args.mode == "stock":
        result = run_stock(stack, args.image_size, args.device)
    else:
        cache_mb = 0.0 if args.mode == "nocache" else 4096.0
        result = run_ours(stack, args.image_size, cache_mb, args.device)
    print(json.dumps(result))


def measure(mode: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--frames",
        str(args.frames),
        "--size",
        str(args.size),
        "--image-size",
        str(args.image_size),
        "--device",
        args.device,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=512, help="frame height and width")
    parser.add_argument("--image-size", type=int, default=1024, help="SAM2 input size")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best)")
    parser.add_argument("--child", dest="mode", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        from napari_sam_lora.engine.tracking.models import pick_device

        args.device = pick_device(None).type
    if args.mode:
        child(args)
        return
    print(
        f"model {MODEL} (UNTRAINED, random weights), {args.frames} frames "
        f"{args.size}×{args.size} uint16, SAM2 input {args.image_size} px, {args.device}"
    )
    stock, ours, nocache = (measure(m, args) for m in ("stock", "ours", "nocache"))
    n = args.frames
    print(
        f"(a) per frame: ours {ours['propagate_s'] / n:.2f} s, stock SAM2 from JPEGs "
        f"{stock['propagate_s'] / n:.2f} s (incl. JPEG loading) -> ratio "
        f"{ours['propagate_s'] / stock['propagate_s']:.2f} (target <= 1.0)"
    )
    print(
        f"(b) re-propagation after a new prompt: cached {ours['repropagate_s']:.1f} s "
        f"({ours['repropagate_encoder_calls']} encoder calls), uncached "
        f"{nocache['repropagate_s']:.1f} s ({nocache['repropagate_encoder_calls']} calls) -> "
        f"{nocache['repropagate_s'] / ours['repropagate_s']:.2f}x faster (target >= 1.5x)"
    )
    print(
        f"(c) peak RSS: ours {ours['peak_mb']:.0f} MB, ours without cache "
        f"{nocache['peak_mb']:.0f} MB, stock {stock['peak_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
