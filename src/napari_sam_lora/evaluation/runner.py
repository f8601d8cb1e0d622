"""Baseline and learning runs of the simulated user on SAM2, with timing and peak memory.

Both runs use the same model, frames and protocol; per stack one :class:`Session` holds the
image features, which are computed once up front (``encode_shared`` in the results) and then
read from the cache by both runs. Per object and run the tracker is reset, every adapter is
deleted and the random seed is set again, so the order of the runs does not matter.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_lora.evaluation.data import EvalData
from napari_sam_lora.evaluation.protocol import (
    CandidateMask,
    FrameRecord,
    ObjectResult,
    UserSettings,
    run_object,
)

logger = logging.getLogger(__name__)

RUNS = ("baseline", "lora")
PHASES = ("encode", "track", "train", "propose")


class PhaseTimer:
    """Seconds per phase; image-encoder time is moved out of the phase it happened in."""

    def __init__(self, device: Any = None) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._cuda = getattr(device, "type", None) == "cuda"

    def _now(self) -> float:
        if self._cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the block's wall time (minus encoder time inside it) to ``name``."""
        start, encode = self._now(), self.seconds["encode"]
        try:
            yield
        finally:
            inner = self.seconds["encode"] - encode
            self.seconds[name] += self._now() - start - inner

    @contextmanager
    def timing_encoder(self, predictor: Any) -> Iterator[None]:
        """Count ``predictor.forward_image`` calls as ``encode`` while the block runs."""
        original = predictor.forward_image

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self._now()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds["encode"] += self._now() - start

        predictor.forward_image = timed
        try:
            yield
        finally:
            del predictor.forward_image  # back to the class's method


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class PeakMemory:
    """Peak resident memory of the process while the block runs (sampled every 20 ms).

    Where ``/proc`` is missing, falls back to ``ru_maxrss`` (the peak since the process
    started). On CUDA, ``gpu_mb`` is torch's peak allocated memory.
    """

    def __init__(self, device: Any = None) -> None:
        self.peak_mb = 0.0
        self.gpu_mb: float | None = None
        self._cuda = getattr(device, "type", None) == "cuda"
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            rss = _rss_bytes()
            if rss is not None:
                self.peak_mb = max(self.peak_mb, rss / 2**20)

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Sample memory while the block runs."""
        import torch

        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        self._stop.clear()
        rss = _rss_bytes()
        if rss is None:  # no /proc: the process-wide peak is the best we have
            scale = 1 if sys.platform == "darwin" else 1024
            self.peak_mb = max(
                self.peak_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
            )
        else:
            self.peak_mb = max(self.peak_mb, rss / 2**20)
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()
            rss = _rss_bytes()
            if rss is not None:
                self.peak_mb = max(self.peak_mb, rss / 2**20)
            if self._cuda:
                peak = torch.cuda.max_memory_allocated() / 2**20
                self.gpu_mb = max(self.gpu_mb or 0.0, peak)


class SamTracker:
    """The :class:`~napari_sam_lora.evaluation.protocol.Tracker` on a SAM2 session.

    With a ``learner`` (the learning run), corrections train the object's adapter and
    candidates are the learner's proposals; without one (the baseline), corrections only
    condition SAM2 and there are no candidates.
    """

    def __init__(self, session: Any, obj_id: int, timer: PhaseTimer, learner: Any = None):
        self.session, self.obj_id, self.timer, self.learner = session, int(obj_id), timer, learner
        self.trainings: list[Any] = []
        self._tracked: dict[int, np.ndarray] = {}

    def begin(self, frame: int, mask: np.ndarray) -> None:
        with self.timer.phase("track"):
            self.session.reset()
            self.session.state["decoder_store"].clear()  # no records of an earlier run
            self.session.add_mask(frame, self.obj_id, mask)

    def track(self, frame: int, reverse: bool) -> np.ndarray:
        direction = "backward" if reverse else "forward"
        with self.timer.phase("track"):
            for _ in self.session.propagate(direction, frame_range=(frame, frame)):
                pass
        self._tracked[frame] = self.session.labels[frame].copy()
        return self.session.labels[frame] == self.obj_id

    def click(self, frame: int, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        with self.timer.phase("track"):
            frame_labels = self.session.add_points(frame, self.obj_id, points, labels)
        return frame_labels == self.obj_id

    def correct(self, frame: int, mask: np.ndarray) -> None:
        if self.learner is None:
            with self.timer.phase("track"):
                self.session.add_mask(frame, self.obj_id, mask)
            return
        from napari_sam_lora.engine.errors import PromptError
        from napari_sam_lora.engine.jobs import drain

        # The correction is the user's final mask against what SAM2 tracked on the frame.
        self.session.labels[frame] = self._tracked[frame]
        user = np.where(mask, self.obj_id, 0).astype(np.int32)
        with self.timer.phase("train"):
            try:
                report = drain(self.learner.learn(frame, user))
            except PromptError as exc:  # nothing to learn: still condition SAM2
                logger.info("frame %d: not trained (%s)", frame, exc)
                self.session.add_mask(frame, self.obj_id, mask)
                return
        self.trainings.extend(report.trained)

    def candidates(self, frame: int) -> list[CandidateMask]:
        if self.learner is None:
            return []
        with self.timer.phase("propose"):
            found = self.learner.propose(frames=[frame], obj_ids=[self.obj_id])
        return [
            CandidateMask(c.masks[0], float(c.confidences[0]), c.adapter_name, c) for c in found
        ]

    def accept(self, frame: int, candidate: CandidateMask) -> None:
        with self.timer.phase("propose"):
            self.learner.accept(candidate.payload, frames=[frame])


@dataclass
class RunResult:
    """One run (baseline or lora) over every stack and object."""

    name: str
    objects: list[tuple[str, ObjectResult]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    peak_memory_mb: float = 0.0
    peak_gpu_memory_mb: float | None = None
    trainings: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvalConfig:
    """What to evaluate with: model, LoRA preset, simulated user, seed."""

    model: str = "sam2.1_hiera_tiny"
    device: str | None = None
    image_size: int | None = None
    preset: str | Path = "default"
    user: UserSettings = field(default_factory=UserSettings)
    seed: int = 0
    adapter: str | Path | None = None


@dataclass
class EvalResult:
    """Both runs, the model as shown to users, shared and total seconds."""

    runs: dict[str, RunResult]
    model_label: str
    image_size: int
    lora_settings: dict[str, Any]
    encode_shared_seconds: float = 0.0
    total_seconds: float = 0.0


def _clear_adapters(decoder: Any) -> None:
    from napari_sam_lora.engine.adapters import activate, adapter_names, delete_adapter

    for name in adapter_names(decoder):
        delete_adapter(decoder, name)
    activate(decoder, None)


def _pre_encode(session: Any, timer: PhaseTimer, bar: Any) -> None:
    """Fill the feature cache with every frame, when it can hold them all."""
    import torch

    predictor, store = session.model.predictor, session.feature_cache
    for frame in range(session.num_frames):
        with timer.phase("encode"), torch.inference_mode(), session.model.precision():
            predictor._get_image_feature(session.state, frame, 1)
        bar.update(1)
        if frame == 0 and store.nbytes * session.num_frames > store.budget_bytes:
            logger.info("feature cache too small for the stack: frames are encoded when tracked")
            bar.update(session.num_frames - 1)
            return


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, leave=False)


def evaluate(
    datasets: Sequence[EvalData],
    config: EvalConfig,
    model: Any = None,
    progress: bool = True,
) -> EvalResult:
    """Run the baseline and the learning run on every object of every stack.

    Parameters
    ----------
    datasets : sequence of EvalData
        Checked stacks (see :func:`~napari_sam_lora.evaluation.data.load_eval_data`).
    config : EvalConfig
        Model, preset, simulated user and seed.
    model : LoadedModel, optional
        An already loaded model (``config.model``/``device``/``image_size`` are then unused).
    progress : bool
        Show progress bars (tqdm, on stderr).

    Returns
    -------
    EvalResult
    """
    import torch

    from napari_sam_lora.engine.learning import Learner
    from napari_sam_lora.engine.lora_settings import load_settings
    from napari_sam_lora.engine.predictor import load_model
    from napari_sam_lora.engine.session import Session

    started = time.perf_counter()
    settings = load_settings(config.preset)
    if model is None:
        model = load_model(config.model, config.device, config.image_size)
    decoder = model.predictor.sam_mask_decoder
    runs = {name: RunResult(name) for name in RUNS}
    memory = {name: PeakMemory(model.device) for name in RUNS}
    shared = PhaseTimer(model.device)
    total = sum(2 * len(d.object_ids) * (d.num_frames - 1) for d in datasets)
    bar = _progress(total, "evaluating", progress)
    bar.corrections = dict.fromkeys(RUNS, 0)  # shown next to the bar
    try:
        for data in datasets:
            session = Session(data.images, model=model)
            with (
                _progress(data.num_frames, f"encoding {data.name}", progress) as enc_bar,
                shared.timing_encoder(model.predictor),
            ):
                _pre_encode(session, shared, enc_bar)
            for obj_id in map(int, data.object_ids):
                truth = data.labels == obj_id
                for name in RUNS:
                    bar.set_description(f"{name} {data.name} object {obj_id}")
                    learner = Learner(session, settings) if name == "lora" else None
                    if learner is not None and config.adapter is not None:
                        learner.load(config.adapter)
                    result, tracker = _run_one(
                        session, truth, data.annotated, obj_id, config, name, runs[name],
                        memory[name], learner, bar,
                    )  # fmt: skip
                    runs[name].objects.append((data.name, result))
                    runs[name].trainings += [
                        {"stack": data.name, "obj_id": obj_id, **_training(t)}
                        for t in tracker.trainings
                    ]
                    _clear_adapters(decoder)
            del session
    finally:
        bar.close()
        _clear_adapters(decoder)
        torch.set_grad_enabled(True)
    for name in RUNS:
        runs[name].peak_memory_mb = memory[name].peak_mb
        runs[name].peak_gpu_memory_mb = memory[name].gpu_mb
    return EvalResult(
        runs=runs,
        model_label=model.label,
        image_size=model.image_size,
        lora_settings=settings.to_dict(),
        encode_shared_seconds=shared.seconds["encode"],
        total_seconds=time.perf_counter() - started,
    )


def _run_one(
    session: Any,
    truth: np.ndarray,
    annotated: np.ndarray,
    obj_id: int,
    config: EvalConfig,
    name: str,
    run: RunResult,
    memory: PeakMemory,
    learner: Any,
    bar: Any,
) -> tuple[ObjectResult, SamTracker]:
    import torch

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    timer = PhaseTimer(session.model.device)
    tracker = SamTracker(session, obj_id, timer, learner)

    def on_frame(record: FrameRecord) -> None:
        bar.corrections[name] += record.action in ("clicks", "mask")
        bar.update(1)
        shown = ", ".join(f"{k} {v}" for k, v in bar.corrections.items())
        bar.set_postfix_str(f"corrections: {shown}", refresh=False)

    start = time.perf_counter()
    with memory.watch(), timer.timing_encoder(session.model.predictor):
        result = run_object(
            tracker, truth, annotated, obj_id, config.user, learning=learner is not None,
            on_frame=on_frame,
        )  # fmt: skip
    run.seconds["total"] = run.seconds.get("total", 0.0) + time.perf_counter() - start
    for phase, seconds in timer.seconds.items():
        run.seconds[phase] += seconds
    return result, tracker


def _training(report: Any) -> dict[str, Any]:
    keys = ("adapter_name", "fine_tune", "steps", "seconds", "best_iou", "final_iou", "stop_reason")
    return {k: getattr(report, k, None) for k in keys}
