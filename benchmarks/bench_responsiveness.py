"""Viewer responsiveness while the dock works (prints figures; not a test).

Runs a real napari viewer (use ``xvfb-run -a`` on a machine without a display) with the
SAM2 LoRA dock and drives it the way a user does, with the untrained SAM2 (random weights):

0. **dock**: opening the dock (its imports and widgets), and **layers**: "Add prompt
   layers" (napari creates three layers: prompts, boxes, masks); not issue 12's phases,
   reported for comparison;
1. **load**: Propagate on a fresh dock, from the click until the model is built (the
   first import of torch/sam2 and the model build, on the worker);
2. **propagate**: from then until the last frame is written (the masks layer exists
   already), and the imports learning needs (on the worker, after the last frame);
3. **learn**: Learn from a corrected frame (training on the worker);
4. **propose**: Propose over the stack.

A 10 ms QTimer on the main thread measures event-loop latency (how late each tick fires)
through all of it; each phase reports its p99 and its **maximum stall** (the longest the
event loop did not run), next to the idle floor of this machine measured in the same run.
Target (issue 12): no stall over 200 ms.

With ``--training-ratio`` it also trains one adapter on the main thread and on the worker
(same seed) and reports the per-step time ratio (issue 3 target ≤ 1.15).

Usage: ``xvfb-run -a python benchmarks/bench_responsiveness.py [--image-size 1024]
[--device cpu] [--frames 8]``
"""

from __future__ import annotations

import argparse
import faulthandler
import time

import numpy as np

TARGET_MS = 200.0


class TickMeter:
    """A 10 ms QTimer; records when each tick fires and how late it is."""

    def __init__(self, interval_ms: int = 10, stall_file=None, stall_after: float = 0.15) -> None:
        from qtpy.QtCore import QTimer

        self.stall_file, self.stall_after = stall_file, stall_after
        self.interval = interval_ms / 1000
        self.times: list[float] = []
        self.delays: list[float] = []
        self._last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        if self.stall_file is not None:  # re-arm: dumps every thread's stack if we stall
            faulthandler.dump_traceback_later(self.stall_after, repeat=True, file=self.stall_file)
        now = time.perf_counter()
        self.times.append(now)
        self.delays.append(max(0.0, now - self._last - self.interval))
        self._last = now

    def window(self, start: float, end: float) -> np.ndarray:
        """Delays (ms) of the ticks that fired in ``[start, end]`` (the first late tick
        after ``end`` included: it closes a stall that began inside)."""
        times, delays = np.asarray(self.times), np.asarray(self.delays)
        inside = (times >= start) & (times <= end)
        after = np.nonzero(times > end)[0]
        if after.size:
            inside[after[0]] = True
        return delays[inside] * 1000

    def mark(self, text: str) -> None:
        """Write a phase marker between the stack dumps."""
        if self.stall_file is not None:
            self.stall_file.write(f"=== {text} ===\n")
            self.stall_file.flush()

    def stop(self) -> None:
        self.timer.stop()
        if self.stall_file is not None:
            faulthandler.cancel_dump_traceback_later()


class GcMeter:
    """Records each garbage collection: when it ended, how long it took, its generation.

    A collection holds the GIL throughout, whichever thread runs it: a full (generation 2)
    collection of a heap holding torch, SAM2 and napari stops the event loop for its
    whole duration.
    """

    def __init__(self) -> None:
        import gc
        import threading

        self._start: dict[int, float] = {}
        self.records: list[tuple[float, float, int]] = []  # (end, seconds, generation)
        self._ident = threading.get_ident
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._start[self._ident()] = now
        else:
            began = self._start.pop(self._ident(), now)
            self.records.append((now, now - began, int(info["generation"])))

    def longest(self, start: float, end: float) -> tuple[float, int]:
        """The longest collection (ms, generation) that ended in ``[start, end]``."""
        inside = [(s, g) for t, s, g in self.records if start <= t <= end]
        if not inside:
            return 0.0, -1
        seconds, generation = max(inside)
        return seconds * 1000, generation


def pump(app, until, timeout: float = 900.0) -> float:
    """Run the Qt event loop until ``until()``; returns the time it became true."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(5)
    poll.timeout.connect(lambda: loop.quit() if until() else None)
    poll.start()
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    loop.exec()
    poll.stop()
    if not until():
        raise TimeoutError("the dock's job did not finish")
    return time.perf_counter()


def idle(app, seconds: float) -> None:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def widget_phases(args: argparse.Namespace) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam_lora.annotator import ModelReady
    from napari_sam_lora.synthetic import make_stack

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    image, truth = make_stack("decoy", n_frames=args.frames, shape=(args.size, args.size))
    viewer.add_image(image, name="img")
    idle(app, 1.0)
    stall_file = open(args.stalls, "w") if args.stalls else None  # noqa: SIM115
    meter = TickMeter(stall_file=stall_file)
    collections = GcMeter()
    idle(app, 2.0)
    floor_end = time.perf_counter()
    phases: list[tuple[str, float, float]] = [("idle", floor_end - 2.0, floor_end)]
    idle(app, 0.05)  # the idle window's closing tick

    meter.mark("dock")
    start = time.perf_counter()
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam-lora", "SAM2 LoRA")
    widget.set_model("untrained:sam2.1_hiera_tiny")
    widget.image_size = args.image_size
    if args.device:
        widget.device_combo.setCurrentText(args.device)
    widget.learning.repropagate_check.setChecked(False)  # one phase at a time
    idle(app, 1.0)
    phases.append(("dock", start, time.perf_counter()))
    idle(app, 0.05)

    marks: dict[str, float] = {}
    on_yield = widget._on_yield

    def spy(item):  # when the model is ready: the load phase ends
        if isinstance(item, ModelReady) and "model" not in marks:
            marks["model"] = time.perf_counter()
            meter.mark("propagate (model ready)")
        on_yield(item)

    widget._on_yield = spy

    meter.mark("layers")
    start = time.perf_counter()
    widget.add_prompt_layers()  # prompts, boxes and the (empty) masks layer
    rows, cols = np.nonzero(truth[0] == 1)
    widget.points_combo.layer.add(np.array([0.0, rows.mean(), cols.mean()]))
    idle(app, 1.5)  # their first paint included
    phases.append(("layers", start, time.perf_counter()))
    idle(app, 0.05)

    def done() -> bool:
        return widget.job is not None and not widget.job.is_running

    meter.mark("load")
    start = time.perf_counter()
    assert widget.propagate(), widget.status.text()
    end = pump(app, done)
    assert widget.job.state == "finished", widget.status.text()
    phases += [("load", start, marks["model"]), ("propagate", marks["model"], end)]

    masks = viewer.layers["img masks"]
    frame = args.frames // 2
    viewer.dims.set_current_step(0, frame)
    user = masks.data[frame].copy()
    user[user == 1] = 0
    user[truth[frame] == 1] = 1
    changed = np.nonzero(masks.data[frame] != user)
    masks.data_setitem((np.full(changed[0].size, frame), *changed), user[changed])
    meter.mark("learn")
    start = time.perf_counter()
    assert widget.learning.learn(), widget.learning.status.text()
    end = pump(app, done)
    phases.append(("learn", start, end))
    meter.mark("propose")
    start = time.perf_counter()
    assert widget.learning.propose(0, args.frames - 1), widget.learning.status.text()
    end = pump(app, done)
    phases.append(("propose", start, end))
    meter.stop()
    report = widget.learning.report
    viewer.close()

    print(
        f"dock phases, untrained sam2.1_hiera_tiny (random weights) at {args.image_size} px, "
        f"{args.frames} frames of {args.size}², device {args.device or 'auto'}; "
        f"learn: {report.trained[0].steps if report and report.trained else 0} steps"
    )
    print(
        f"{'phase':<10} {'seconds':>8} {'ticks':>6} {'p99 ms':>8} {'max stall ms':>13} "
        f"{'longest gc ms':>14}"
    )
    worst = 0.0
    for name, t0, t1 in phases:
        delays = meter.window(t0, t1)
        gc_ms, generation = collections.longest(t0, t1)
        gc_text = f"{gc_ms:9.0f} (g{generation})" if generation >= 0 else f"{'–':>14}"
        if delays.size == 0:
            print(f"{name:<10} {t1 - t0:8.2f} {0:6d} {'–':>8} {(t1 - t0) * 1000:13.0f} {gc_text}")
            worst = max(worst, (t1 - t0) * 1000)
            continue
        stall = float(delays.max()) + meter.interval * 1000
        if name not in ("idle", "dock", "layers"):
            worst = max(worst, stall)
        print(
            f"{name:<10} {t1 - t0:8.2f} {delays.size:6d} {np.percentile(delays, 99):8.1f} "
            f"{stall:13.0f} {gc_text}"
        )
    verdict = "OK" if worst <= TARGET_MS else "OVER"
    print(
        f"worst stall in load, propagate, learn, propose: {worst:.0f} ms "
        f"(target <= {TARGET_MS:.0f} ms): {verdict}"
    )


def training_ratio(args: argparse.Namespace) -> None:
    """Issue 3's figure: the same training on the main thread and on the worker."""
    import torch
    from qtpy.QtCore import QEventLoop

    from napari_sam_lora._qt.threading import start_job
    from napari_sam_lora.engine.core.jobs import drain
    from napari_sam_lora.engine.learning.adapters import inject_adapter
    from napari_sam_lora.engine.learning.lora_settings import load_settings
    from napari_sam_lora.engine.learning.training import train_adapter
    from napari_sam_lora.engine.tracking.predictor import load_model
    from napari_sam_lora.engine.tracking.session import Session
    from napari_sam_lora.synthetic import make_stack

    image, truth = make_stack("moving_disk", n_frames=4, shape=(128, 128))
    model = load_model("untrained:sam2.1_hiera_tiny", args.device or "cpu", args.image_size)
    session = Session(image, model=model)
    session.add_mask(0, 1, truth[0] == 1)
    session.propagate_all("forward")
    decoder, inputs = model.predictor.sam_mask_decoder, session.decoder_inputs(2, 1)
    settings = load_settings("default")

    def training(name: str):
        torch.manual_seed(0)
        inject_adapter(decoder, name, settings)
        return train_adapter(decoder, name, [(inputs, truth[2] == 1)], settings)

    drain(training("warmup"))
    start = time.perf_counter()
    report = drain(training("main"))
    main_s = time.perf_counter() - start
    loop, steps = QEventLoop(), []
    start = time.perf_counter()
    gen = training("worker")
    start_job(lambda: gen, on_yield=steps.append, on_done=lambda _: loop.quit())
    loop.exec()
    worker_s = time.perf_counter() - start
    ratio = (worker_s / max(len(steps), 1)) / (main_s / max(report.steps, 1))
    print(
        f"training: main thread {main_s:.2f} s / {report.steps} steps, worker {worker_s:.2f} s "
        f"/ {len(steps)} steps -> per-step ratio {ratio:.2f} (target <= 1.15)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=1024, help="SAM2 input size")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: auto)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="frame height and width")
    parser.add_argument("--training-ratio", action="store_true")
    parser.add_argument(
        "--stalls",
        default=None,
        metavar="FILE",
        help="write every thread's stack to FILE each time the event loop stalls > 150 ms "
        "(faulthandler: shows what the main thread runs during a stall)",
    )
    args = parser.parse_args()
    widget_phases(args)
    if args.training_ratio:
        from qtpy.QtWidgets import QApplication

        QApplication.instance() or QApplication([])
        training_ratio(args)


if __name__ == "__main__":
    main()
