"""Viewer responsiveness while an adapter trains on the worker (prints figures; not a test).

Runs a real napari viewer (use ``xvfb-run -a`` on a machine without a display), records
the same correction's decoder inputs with the untrained SAM2 (random weights), then trains
the same adapter recipe three times with the same seed:

1. on the main thread, blocking (reference training time);
2. on the worker through the plugin's one threading module, while a 10 ms QTimer on the
   main thread measures event-loop latency (how late each tick fires);
3. idle: the same timer with nothing running (the latency floor of this machine).

Targets (issue 3): p99 latency ≤ 50 ms while training; worker time ≤ 1.15× main thread.

Usage: ``xvfb-run -a python benchmarks/bench_responsiveness.py [--image-size 1024]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def record_inputs(image_size: int):
    """Track the synthetic disk stack and return (decoder, inputs of frame 2, target)."""
    from napari_sam_lora.engine.predictor import load_model
    from napari_sam_lora.engine.session import Session
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=4, shape=(128, 128))
    session = Session(image, model=load_model("untrained:sam2.1_hiera_tiny", "cpu", image_size))
    session.add_mask(0, 1, truth[0] == 1)
    session.propagate_all("forward")
    return session.model.predictor.sam_mask_decoder, session.decoder_inputs(2, 1), truth[2] == 1


def training(decoder, inputs, target, preset: str, name: str):
    """A fresh adapter's training generator on one correction (seeded)."""
    import torch

    from napari_sam_lora.engine.adapters import inject_adapter
    from napari_sam_lora.engine.lora_settings import load_settings
    from napari_sam_lora.engine.training import train_adapter

    settings = load_settings(preset)
    torch.manual_seed(0)
    inject_adapter(decoder, name, settings)
    return train_adapter(decoder, name, [(inputs, target)], settings)


class TickMeter:
    """A 10 ms QTimer; records how late each tick fires."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.interval = interval_ms / 1000
        self.delays: list[float] = []
        self._last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.delays.append(max(0.0, now - self._last - self.interval))
        self._last = now

    def stop(self) -> np.ndarray:
        self.timer.stop()
        return np.asarray(self.delays[1:]) * 1000


def run_worker(gen, app) -> tuple[float, int, np.ndarray]:
    """Train on the plugin's worker; return seconds, steps and tick delays (ms)."""
    from qtpy.QtCore import QEventLoop

    from napari_sam_lora._qt.threading import start_job

    loop = QEventLoop()
    steps: list[object] = []
    meter = TickMeter()
    start = time.perf_counter()
    start_job(lambda: gen, on_yield=steps.append, on_done=lambda _: loop.quit())
    loop.exec_()  # the Qt event loop, idle between events, as in napari
    seconds = time.perf_counter() - start
    return seconds, len(steps), meter.stop()


def idle(app, seconds: float) -> np.ndarray:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    meter = TickMeter()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()
    return meter.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--preset", default="default")
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam_lora.engine.jobs import drain

    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((4, 256, 256)))
    app = QApplication.instance()
    decoder, inputs, target = record_inputs(args.image_size)

    drain(training(decoder, inputs, target, args.preset, "warmup"))  # first-call costs
    start = time.perf_counter()
    report = drain(training(decoder, inputs, target, args.preset, "main"))
    main_s = time.perf_counter() - start
    worker_s, worker_steps, delays = run_worker(
        training(decoder, inputs, target, args.preset, "worker"), app
    )
    floor = idle(app, min(worker_s, 5.0))
    viewer.close()

    print(
        f"untrained sam2.1_hiera_tiny at {args.image_size} px, preset {args.preset}, "
        f"{report.steps} steps ({report.stop_reason})"
    )
    ratio = (worker_s / worker_steps) / (main_s / report.steps)
    print(
        f"training: main thread {main_s:.2f} s / {report.steps} steps, worker "
        f"{worker_s:.2f} s / {worker_steps} steps -> per-step ratio {ratio:.2f} "
        "(target <= 1.15)"
    )
    print(
        f"event-loop latency while training: p50 {np.percentile(delays, 50):.1f} ms, "
        f"p99 {np.percentile(delays, 99):.1f} ms, max {delays.max():.1f} ms over "
        f"{delays.size} ticks (target p99 <= 50 ms)"
    )
    print(f"idle floor: p99 {np.percentile(floor, 99):.1f} ms, max {floor.max():.1f} ms")


if __name__ == "__main__":
    main()
