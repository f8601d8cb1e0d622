"""Incremental vs full re-propagation after one correction (prints figures; not a test).

Untrained SAM2 (random weights: costs and agreement between the two runs, not accuracy).
A synthetic moving-disk stack is prompted with its true mask on frame 0 and tracked
forward; then frame ``T/2`` is corrected (the true mask) in two identical sessions sharing
one model. One re-tracks the whole stack forward from the first confirmed frame (``full``),
the other re-tracks from the corrected frame until the masks agree with the previous run
(IoU ≥ 0.98) on as many consecutive frames as SAM2's memory holds (``incremental``).
Image features are computed up front in both, so only tracking is timed.

Reported, in one run: frames tracked and seconds of each, their ratios, and the per-frame
IoU between the two results (min and mean). Target (issue 9, 2-core CPU, 40 frames at
``--image-size 512``): ≥ 3× fewer frames, ≥ 2.5× less time, IoU ≥ 0.98.

Usage: ``python benchmarks/bench_repropagation.py [--frames 40] [--image-size 1024]
[--device cpu]``
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels")
    parser.add_argument("--image-size", type=int, default=1024, help="SAM2 input size")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best)")
    parser.add_argument("--agree-iou", type=float, default=0.98)
    args = parser.parse_args(argv)

    from napari_sam_lora import Session, load_model
    from napari_sam_lora.synthetic import make_stack

    model = load_model("untrained:sam2.1_hiera_tiny", args.device, args.image_size)
    image, truth = make_stack("moving_disk", n_frames=args.frames, shape=(args.size,) * 2)
    truth = truth == 1
    middle = args.frames // 2

    def prepared() -> Session:
        session = Session(image, model=model)
        session.encode()
        session.add_mask(0, 1, truth[0])
        session.propagate_all("forward")
        user = session.labels[middle].copy()
        user[user == 1] = 0
        user[truth[middle]] = 1
        session.add_correction(middle, user)
        return session

    results = {}
    sessions = {}
    for name, options in (("full", {"full": True}), ("incremental", {})):
        session = prepared()
        start = time.perf_counter()
        report = session.repropagate(
            middle, direction="forward", agree_iou=args.agree_iou, **options
        )
        seconds = time.perf_counter() - start
        results[name] = {"frames_tracked": len(report.tracked), "seconds": round(seconds, 2)}
        results[name]["stopped"] = report.stopped
        sessions[name] = session
    ious = [
        _iou(sessions["full"].labels[t] == 1, sessions["incremental"].labels[t] == 1)
        for t in range(args.frames)
    ]
    full, inc = results["full"], results["incremental"]
    summary = {
        "model": model.label,
        "frames": args.frames,
        "image_size": model.image_size,
        "corrected_frame": middle,
        **results,
        "fewer_frames_x": round(full["frames_tracked"] / max(inc["frames_tracked"], 1), 2),
        "less_time_x": round(full["seconds"] / max(inc["seconds"], 1e-9), 2),
        "iou_min": round(float(np.min(ious)), 4),
        "iou_mean": round(float(np.mean(ious)), 4),
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
