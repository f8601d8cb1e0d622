"""Memory benchmark: peak RSS and seconds per frame against the stack's length and the
number of objects (prints figures; not a test).

Untrained SAM2 (random weights): the masks are meaningless, the memory and the time are
what a user's session costs. Every configuration runs in its own subprocess, so each peak
is its own: a session is made on a synthetic 16-bit stack (bright disks moving on noise),
every object is clicked on frame 0, and the stack is propagated forward once. The stack is
lazy (frames made when read, as from a file) so the peak is the session's; ``--in-memory``
hands it a numpy array instead (its bytes then count too).

Reported per run: peak resident memory (``ru_maxrss``), seconds per tracked frame, and what
the session holds at the end (features, decoder-input records, SAM2's per-frame outputs,
the label images).

Usage::

    python benchmarks/bench_memory.py                       # 20/100/300 frames, 1/8/32 objects
    python benchmarks/bench_memory.py --frames 20 300 --objects --device cuda
    python benchmarks/bench_memory.py --old-src /tmp/old/src --frames 20 60   # older code

The acceptance figure is ``peak(300 frames) / peak(20 frames)`` at image size 1024.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

MODEL = "untrained:sam2.1_hiera_tiny"
_MB = 2**20


class SyntheticStack:
    """A lazy uint16 stack of ``objects`` bright disks drifting across noise: each frame is
    made when it is read (as a reader of a file on disk would give it), so the peak measured
    is the session's, not the input array's."""

    def __init__(self, frames: int, size: int, objects: int) -> None:
        self.shape = (frames, size, size)
        self.dtype = np.dtype(np.uint16)
        self.ndim = 3
        self.grid = int(np.ceil(np.sqrt(objects)))
        self._objects = objects
        self._radius = max(3, size // (4 * self.grid))

    def __len__(self) -> int:
        return self.shape[0]

    def centre(self, k: int) -> list[int]:
        """Where disk ``k`` is on frame 0, ``(row, col)``."""
        size, grid = self.shape[1], self.grid
        return [int((k // grid + 0.5) * size / grid), int((k % grid + 0.5) * size / grid)]

    def __getitem__(self, t: int) -> np.ndarray:
        frames, size, _ = self.shape
        t = int(t)
        rows, cols = np.mgrid[:size, :size]
        frame = np.random.default_rng(t).normal(1000, 200, (size, size))
        for k in range(self._objects):
            r0, c0 = self.centre(k)
            c0 += self._radius * np.sin(2 * np.pi * t / frames)
            frame[(rows - r0) ** 2 + (cols - c0) ** 2 < self._radius**2] += 20000
        return np.clip(frame, 0, 65535).astype(np.uint16)


def _storage_mb(value) -> float:
    """Megabytes of distinct tensor storage reachable from ``value``."""
    import torch

    seen: dict[int, int] = {}

    def walk(v) -> None:
        if isinstance(v, torch.Tensor):
            storage = v.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)
        elif hasattr(v, "__dataclass_fields__"):
            for name in v.__dataclass_fields__:
                walk(getattr(v, name))

    walk(value)
    return sum(seen.values()) / _MB


def run_one(
    frames: int, objects: int, size: int, image_size: int, device: str, in_memory: bool = False
) -> dict:
    """One configuration, in this process."""
    import torch

    from napari_sam_lora.engine.tracking.predictor import load_model
    from napari_sam_lora.engine.tracking.session import Session

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    lazy = SyntheticStack(frames, size, objects)
    stack = np.stack([lazy[t] for t in range(frames)]) if in_memory else lazy
    model = load_model(MODEL, device=device, image_size=image_size)
    session = Session(stack, model=model)
    for k in range(objects):
        session.add_points(0, k + 1, [lazy.centre(k)])
    start, first = time.perf_counter(), None
    for step in session.propagate_steps("forward"):
        if first is None:
            first = time.perf_counter()  # the prompted frame costs no tracking
        del step
    seconds = time.perf_counter() - (first or start)
    state = session.state
    labels = session.labels
    held = {
        "features_mb": _storage_mb([v for v, _ in state["feature_store"]._items.values()]),
        "records_mb": state["decoder_store"].nbytes / _MB,
        "sam2_outputs_mb": _storage_mb(state["output_dict_per_obj"]),
        "labels_mb": (labels.nbytes if hasattr(labels, "nbytes") else 0) / _MB,
    }
    return {
        "frames": frames,
        "objects": objects,
        "image_size": image_size,
        "device": device,
        "stack": "numpy" if in_memory else "lazy",
        "s_per_frame": seconds / max(frames - 1, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **{k: round(v, 1) for k, v in held.items()},
    }


def _spawn(args: argparse.Namespace, frames: int, objects: int) -> dict:
    env = dict(os.environ)
    if args.old_src:
        env["PYTHONPATH"] = args.old_src + os.pathsep + env.get("PYTHONPATH", "")
    command = [
        sys.executable,
        __file__,
        "--one",
        json.dumps([frames, objects, args.size, args.image_size, args.device, args.in_memory]),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"frames": frames, "objects": objects, "error": done.stderr.strip()[-800:]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="*", default=[20, 100, 300])
    parser.add_argument("--objects", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument(
        "--object-frames", type=int, default=10, help="frames of the runs over objects"
    )
    parser.add_argument("--size", type=int, default=512, help="side of the stack's frames")
    parser.add_argument("--image-size", type=int, default=1024, help="SAM2's input size")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    parser.add_argument(
        "--in-memory",
        action="store_true",
        help="hand the session a numpy stack (its bytes count in the peak) instead of a lazy one",
    )
    parser.add_argument("--old-src", default=None, help="run another checkout's src/")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*json.loads(args.one))), flush=True)
        return
    print(
        f"untrained SAM2.1 hiera-tiny (random weights), image size {args.image_size}, "
        f"{args.size}² uint16 frames ({'numpy' if args.in_memory else 'lazy'} stack), "
        f"{args.device}",
        flush=True,
    )
    rows = []
    for frames, objects in [(n, 1) for n in args.frames] + [
        (args.object_frames, k) for k in args.objects
    ]:
        rows.append(_spawn(args, frames, objects))
        print(json.dumps(rows[-1]), flush=True)  # each run as it ends
    by_frames = {r["frames"]: r for r in rows[: len(args.frames)] if "peak_rss_mb" in r}
    if len(by_frames) >= 2:
        low, high = min(by_frames), max(by_frames)
        ratio = by_frames[high]["peak_rss_mb"] / by_frames[low]["peak_rss_mb"]
        print(f"peak RSS {high} frames / {low} frames: {ratio:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
