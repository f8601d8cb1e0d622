"""Baseline and learning runs of the simulated user on SAM2, with timing and peak memory.

Both runs use the same model, frames and protocol; per stack one :class:`Session` holds the
image features, which are computed once up front (``encode_shared`` in the results) and then
read from the cache by both runs. Per object and run the tracker is reset, the run's
learner is closed (its adapters removed) and the random seed is set again, so the order
of the runs does not matter. With ``scope="class"`` the learning run keeps one learner per
stack instead, across its objects in order (the shared adapters an object's corrections
train propose for the next objects); it is closed after the stack. The simulated user and
its tracker are :mod:`napari_sam_lora.simulation`'s, shared with fine-tuning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_lora.evaluation.data import EvalData
from napari_sam_lora.evaluation.metering import PHASES, PeakMemory, PhaseTimer
from napari_sam_lora.simulation import (
    FrameRecord,
    ObjectResult,
    SessionTracker,
    UserSettings,
    run_object,
)

logger = logging.getLogger(__name__)

__all__ = ["PHASES", "RUNS", "EvalConfig", "EvalResult", "RunResult", "evaluate"]

RUNS = ("baseline", "lora")


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
    scope: str = "object"


@dataclass
class EvalResult:
    """Both runs, the model as shown to users, shared and total seconds."""

    runs: dict[str, RunResult]
    model_label: str
    image_size: int
    lora_settings: dict[str, Any]
    encode_shared_seconds: float = 0.0
    total_seconds: float = 0.0
    scope: str = "object"


def _pre_encode(session: Any, timer: PhaseTimer, bar: Any) -> None:
    """Fill the feature cache with every frame, when it can hold them all."""
    encoded = 0
    with timer.phase("encode"):
        for done, _total in session.encode_steps():
            encoded = done
            bar.update(1)
    if encoded < session.num_frames:
        logger.info("feature cache too small for the stack: frames are encoded when tracked")
        bar.update(session.num_frames - encoded)


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
        Model, preset, simulated user, seed and learning scope (``"object"``: a fresh
        learner per object; ``"class"``: one per stack, shared by its objects).
    model : LoadedModel, optional
        An already loaded model (``config.model``/``device``/``image_size`` are then unused).
    progress : bool
        Show progress bars (tqdm, on stderr).

    Returns
    -------
    EvalResult

    Raises
    ------
    SettingsError
        ``config.scope`` is not ``"object"`` or ``"class"`` (before anything loads).
    """
    from napari_sam_lora import load_model
    from napari_sam_lora.engine import load_settings
    from napari_sam_lora.engine.learning.records import check_scope

    started = time.perf_counter()
    check_scope(config.scope)
    settings = load_settings(config.preset)
    if model is None:
        model = load_model(config.model, config.device, config.image_size)
    runner = _Runs(config, settings, model, datasets, progress)
    try:
        for data in datasets:
            session = runner.open(data)
            shared = None  # class scope: the stack's one learner, across its objects
            try:
                for obj_id in map(int, data.object_ids):
                    for name in RUNS:
                        learner = None
                        if name == "lora" and config.scope == "class":
                            if shared is None:
                                shared = _learner(session, settings, config)
                            learner = shared
                        elif name == "lora":
                            learner = _learner(session, settings, config)
                        try:
                            runner.run(session, data, obj_id, name, learner)
                        finally:
                            if learner is not None and learner is not shared:
                                learner.close()
            finally:
                if shared is not None:
                    shared.close()
            del session
    finally:
        runner.close()
    return EvalResult(
        runs=runner.runs,
        model_label=model.label,
        image_size=model.image_size,
        lora_settings=settings.to_dict(),
        encode_shared_seconds=runner.shared.seconds["encode"],
        total_seconds=time.perf_counter() - started,
        scope=config.scope,
    )


def _learner(session: Any, settings: Any, config: EvalConfig) -> Any:
    """A learning run's learner of ``config.scope``, with ``config.adapter`` loaded."""
    from napari_sam_lora import Learner

    learner = Learner(session, settings, scope=config.scope)
    try:
        if config.adapter is not None:
            learner.load(config.adapter)
    except BaseException:
        learner.close()
        raise
    return learner


class _Runs:
    """Both runs' results, meters and progress bar over one evaluation."""

    def __init__(
        self,
        config: EvalConfig,
        settings: Any,
        model: Any,
        datasets: Sequence[EvalData],
        progress: bool,
    ) -> None:
        self.config, self.settings, self.model, self.progress = config, settings, model, progress
        self.runs = {name: RunResult(name) for name in RUNS}
        self.memory = {name: PeakMemory(model.device) for name in RUNS}
        self.shared = PhaseTimer(model.device, lambda: model.predictor.encoder_seconds)
        total = sum(2 * len(d.object_ids) * (d.num_frames - 1) for d in datasets)
        self.bar = _progress(total, "evaluating", progress)
        self.corrections = dict.fromkeys(RUNS, 0)  # shown next to the bar

    def open(self, data: EvalData) -> Any:
        """A session on ``data`` with every frame's features computed once, up front."""
        from napari_sam_lora import Session

        session = Session(data.images, model=self.model)
        with _progress(data.num_frames, f"encoding {data.name}", self.progress) as enc_bar:
            _pre_encode(session, self.shared, enc_bar)
        return session

    def run(self, session: Any, data: EvalData, obj_id: int, name: str, learner: Any) -> None:
        """One object through the simulated user in run ``name``."""
        import torch

        self.bar.set_description(f"{name} {data.name} object {obj_id}")
        torch.manual_seed(self.config.seed)
        np.random.seed(self.config.seed % 2**32)
        timer = PhaseTimer(session.model.device, lambda: session.encoder_seconds)
        tracker = SessionTracker(session, obj_id, learner, phase=timer.phase)
        run = self.runs[name]

        def on_frame(record: FrameRecord) -> None:
            self.corrections[name] += record.action in ("clicks", "mask")
            self.bar.update(1)
            shown = ", ".join(f"{k} {v}" for k, v in self.corrections.items())
            self.bar.set_postfix_str(f"corrections: {shown}", refresh=False)

        start = time.perf_counter()
        with self.memory[name].watch():
            result = run_object(
                tracker,
                data.labels == obj_id,
                data.annotated,
                obj_id,
                self.config.user,
                learning=learner is not None,
                on_frame=on_frame,
            )
        run.seconds["total"] = run.seconds.get("total", 0.0) + time.perf_counter() - start
        for phase, seconds in timer.seconds.items():
            run.seconds[phase] += seconds
        run.objects.append((data.name, result))
        run.trainings += [
            {"stack": data.name, "obj_id": obj_id, **_training(t)} for t in tracker.trainings
        ]

    def close(self) -> None:
        """Close the bar; record peak memory; leave grad mode on for the caller."""
        import torch

        self.bar.close()
        torch.set_grad_enabled(True)
        for name in RUNS:
            self.runs[name].peak_memory_mb = self.memory[name].peak_mb
            self.runs[name].peak_gpu_memory_mb = self.memory[name].gpu_mb


def _training(report: Any) -> dict[str, Any]:
    keys = (
        "adapter_name",
        "fine_tune",
        "steps",
        "seconds",
        "best_iou",
        "final_iou",
        "stop_reason",
        "escalation",
        "rank",
        "warning",
    )
    return {k: getattr(report, k, None) for k in keys}
