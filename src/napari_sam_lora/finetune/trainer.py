"""Train one LoRA adapter on annotated stacks, as a cancellable, resumable generator.

>>> from napari_sam_lora.engine.core.jobs import drain
>>> from napari_sam_lora.finetune import load_config, train
>>> result = drain(train(load_config("configs/finetune/example.yaml")))

Stages (each yields :class:`~.events.Progress`): check the data (refuses on problems), load
the model, inject the adapter (fails clearly when ``target_modules`` matches nothing; logs
the modules and the trainable-parameter count), record the examples (or reuse the cache),
validate the base model (epoch 0), train epoch by epoch, diagnose on validation.

Written to the output folder: ``adapter.safetensors`` + ``adapter.json`` (the best epoch by
the monitored validation metric, rewritten whenever it improves, so a cancel or a crash
keeps it), ``metrics.csv`` + ``metrics.png``, ``checkpoint.pt`` (every
``checkpoint_every`` steps, at each epoch's end and when cancelled: training continues
from its step when run again), ``diagnosis.json`` + ``diagnosis.md``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_sam_lora.engine.core.atomic import write_files
from napari_sam_lora.engine.core.errors import CheckpointError
from napari_sam_lora.engine.learning.adapters import (
    InjectionReport,
    activate,
    active_adapter,
    adapter_names,
    delete_adapter,
    freeze_except,
    inject_adapter,
    restore_adapter_state,
)
from napari_sam_lora.engine.tracking.models import load_failure
from napari_sam_lora.finetune import loop
from napari_sam_lora.finetune.adapter_file import save_finetuned
from napari_sam_lora.finetune.config import ConfigError, FineTuneConfig
from napari_sam_lora.finetune.data_check import DataReport, check_data
from napari_sam_lora.finetune.diagnose import Diagnosis, diagnose, write_diagnosis
from napari_sam_lora.finetune.events import EpochMetrics, Progress
from napari_sam_lora.finetune.examples import load_or_record
from napari_sam_lora.finetune.metrics import plot_metrics, write_metrics_csv
from napari_sam_lora.finetune.pairs import DataError
from napari_sam_lora.finetune.store import ExampleSet

__all__ = ["ADAPTER", "FineTuneResult", "read_checkpoint", "save_checkpoint", "train"]

logger = logging.getLogger(__name__)

#: Name of the adapter while it trains (the file holds copies named ``obj<id>_ft``).
ADAPTER = "finetuned"
#: Outputs of an earlier run, removed when a run starts over.
STALE = (
    "checkpoint.pt",
    "adapter.safetensors",
    "adapter.json",
    "metrics.csv",
    "metrics.png",
    "diagnosis.json",
    "diagnosis.md",
)


@dataclass
class FineTuneResult:
    """What a finished (or already finished) run produced."""

    output: Path
    adapter_path: Path | None
    stop_reason: str
    steps: int
    best_epoch: int | None
    history: list[EpochMetrics]
    injection: InjectionReport
    examples: dict[str, dict[str, int]]
    train_seconds: float
    record_seconds: float
    diagnosis: Diagnosis | None = None
    warnings: list[str] = field(default_factory=list)


def train(config: FineTuneConfig, model: Any = None) -> Generator[Progress, None, FineTuneResult]:
    """Run the whole fine-tuning; see the module docstring. Close the generator to cancel.

    Parameters
    ----------
    config : FineTuneConfig
        From :func:`~napari_sam_lora.finetune.config.load_config`.
    model : LoadedModel, optional
        An already loaded model matching ``config.model``; default: load ``config.model``.
        The adapter is removed from the decoder at the end (it is in the saved file).

    Raises
    ------
    DataError
        The data has problems (the message lists them; run check-data for the report).
    AdapterError
        ``lora.target_modules`` matches no decoder module (the message shows names).
    ConfigError
        A checkpoint of another config is in the output folder and ``resume`` is on.
    CheckpointError
        The checkpoint in the output folder cannot be read (checked before the model loads).
    WriteError
        The output folder is not writable (checked before the model loads).
    """
    yield Progress("check", 0, 1, "checking the data")
    report = check_data(config)
    if not report.ok:
        problems = report.all_problems()
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DataError(f"the data has problems: {'; '.join(problems[:3])}{more}")
    yield Progress("check", 1, 1, f"{len(report.stacks_data)} stack(s) OK")
    preflight_output(config.output)
    if config.resume:
        read_checkpoint(config.output / "checkpoint.pt")  # a bad one fails now, not later
    if model is None:
        model = yield from _load_model(config)
    decoder = model.predictor.sam_mask_decoder
    try:
        torch.manual_seed(config.training.seed)  # peft's random lora_A: reproducible runs
        injection = inject_adapter(decoder, ADAPTER, config.lora)
        message = (
            f"LoRA on {len(injection.modules)} decoder modules, {injection.n_params:,} "
            f"trainable parameters: {', '.join(injection.modules)}"
        )
        logger.info(message)
        yield Progress("inject", 1, 1, message)
        tic = time.perf_counter()
        examples = yield from _examples(config, model, report)
        record_seconds = time.perf_counter() - tic
        return (yield from _Run(config, model, examples, injection, record_seconds).run())
    finally:
        if ADAPTER in adapter_names(decoder):  # the saved file has it; leave the model clean
            if active_adapter(decoder) == ADAPTER:  # delete_adapter fails on an active last one
                activate(decoder, None)
            delete_adapter(decoder, ADAPTER)


def _load_model(config: FineTuneConfig) -> Generator[Progress, None, Any]:
    from napari_sam_lora.engine.core.jobs import relay
    from napari_sam_lora.engine.tracking.predictor import iter_load_model

    steps = iter_load_model(config.model.name, config.model.device, config.model.image_size)
    return (yield from relay(steps, lambda p: Progress("load", p[1], p[2], f"model: {p[0]}")))


def _examples(
    config: FineTuneConfig, model: Any, report: DataReport
) -> Generator[Progress, None, ExampleSet]:
    files = [Path(p) for s in report.stacks for p in (s.images_path, s.labels_path)]
    return (yield from load_or_record(config, model, report.stacks_data, report.val_frames, files))


class _Run:
    """State of one training run (what the checkpoint saves)."""

    def __init__(
        self,
        config: FineTuneConfig,
        model: Any,
        examples: ExampleSet,
        injection: InjectionReport,
        record_seconds: float,
    ) -> None:
        self.config, self.model, self.injection = config, model, injection
        self.decoder = model.predictor.sam_mask_decoder
        self.train_set, self.val_set = examples.subset("train"), examples.subset("val")
        if not len(self.train_set) or not len(self.val_set):
            raise DataError(
                f"recorded {len(self.train_set)} training and {len(self.val_set)} validation "
                "examples; both must be non-empty (check the split and the annotations)"
            )
        self.counts = {"train": self.train_set.counts(), "val": self.val_set.counts()}
        t = config.training
        self.per_epoch = loop.steps_per_epoch(self.train_set, t.batch_size)
        self.total = t.epochs * self.per_epoch
        if t.max_steps is not None:
            self.total = min(self.total, t.max_steps)
        self.weights = config.lora  # LoraSettings carries the loss weights
        self.optimizer = torch.optim.AdamW(
            freeze_except(self.decoder, ADAPTER), lr=t.lr, weight_decay=config.lora.weight_decay
        )
        self.key = config.digest("lora", "model", "split") + "-" + examples_key(examples, config)
        self.path = config.output / "checkpoint.pt"
        self.adapter_path = config.output / "adapter"
        self.step, self.seconds, self.record_seconds = 0, 0.0, record_seconds
        self.rows: list[EpochMetrics] = []
        self.sums = [0.0, 0.0, 0]  # loss × n, IoU sum, n of the running epoch
        self.best: dict[str, Any] = {"value": None, "epoch": None, "since": 0, "state": None}
        self.stop_reason: str | None = None
        self.updating = [False]
        ids = config.object_ids or sorted({i.obj_id for i in self.train_set.infos})
        self.object_ids = list(ids)

    # -- checkpoint ----------------------------------------------------------------------
    def save(self) -> None:
        save_checkpoint(
            self.path,
            key=self.key,
            step=self.step,
            seconds=self.seconds,
            rows=[r.to_dict() for r in self.rows],
            sums=list(self.sums),
            best={k: v for k, v in self.best.items() if k != "state"},
            best_state=self.best["state"] or {},
            adapter=loop.snapshot(self.decoder, ADAPTER),
            optimizer=self.optimizer.state_dict(),
            torch_rng=torch.get_rng_state(),
            stop_reason=self.stop_reason,
        )

    def restore(self) -> bool:
        """Continue from the checkpoint (True), or start over, removing stale outputs."""
        saved = read_checkpoint(self.path) if self.config.resume else None
        if saved is None:
            for name in STALE:
                (self.config.output / name).unlink(missing_ok=True)
            torch.manual_seed(self.config.training.seed)  # LoRA dropout: reproducible runs
            return False
        if saved["key"] != self.key:
            raise ConfigError(
                f"{self.path} was written by a run with other settings or data; set "
                "resume: false (or use --restart) to start over, or choose another output"
            )
        self.step, self.seconds, self.sums = saved["step"], saved["seconds"], saved["sums"]
        self.rows = [EpochMetrics(**r) for r in saved["rows"]]
        self.best = {**saved["best"], "state": saved["best_state"] or None}
        restore_adapter_state(self.decoder, ADAPTER, saved["adapter"])
        self.optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        self.stop_reason = saved["stop_reason"]
        logger.info("resuming from step %d of %d (%s)", self.step, self.total, self.path)
        return True

    # -- the run -------------------------------------------------------------------------
    def run(self) -> Generator[Progress, None, FineTuneResult]:
        resumed = self.restore()
        if resumed:
            yield Progress("train", self.step, self.total, f"resumed at step {self.step}")
        if not self.rows:
            yield from self._end_epoch(0)
        t, completed = self.config.training, False
        try:
            while self.stop_reason is None:
                epoch = len(self.rows)  # rows[0] is the base model (epoch 0)
                batches = loop.epoch_batches(self.train_set, t.batch_size, t.seed, epoch)
                for indices in batches[self.step - (epoch - 1) * self.per_epoch :]:
                    if self.step >= self.total:
                        break
                    yield from self._step(indices, epoch)
                yield from self._end_epoch(epoch)
            completed = True
        finally:
            if not completed and not self.updating[0] and self.stop_reason is None:
                self.save()
                logger.info("training stopped at step %d; checkpoint saved", self.step)
            freeze_except(self.decoder, None)
        return (yield from self._finish())

    def _step(self, indices: list[int], epoch: int) -> Generator[Progress, None, None]:
        t = self.config.training
        tic = time.perf_counter()
        batch = loop.make_batch(self.train_set, indices, self.config.lora, self._device)
        lr = loop.lr_at(self.step, self.total, t.lr, t.lr_schedule)
        loss, iou_sum, n = loop.train_step(
            self.decoder, ADAPTER, batch, self.optimizer, self.weights, lr, self.updating
        )
        self.seconds += time.perf_counter() - tic
        self.step += 1
        self.sums = [self.sums[0] + loss * n, self.sums[1] + iou_sum, self.sums[2] + n]
        if self.step % t.checkpoint_every == 0:
            self.save()
        yield Progress(
            "train", self.step, self.total, f"epoch {epoch}, step {self.step}: loss {loss:.4f}"
        )

    @property
    def _device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def _end_epoch(self, epoch: int) -> Generator[Progress, None, None]:
        cfg, stop = self.config, self.config.early_stopping
        name = None if epoch == 0 else ADAPTER
        val_loss, val_iou = yield from loop.evaluate_set(
            self.decoder, name, self.val_set, cfg.lora, cfg.training.batch_size, epoch
        )
        n = self.sums[2]
        row = EpochMetrics(
            epoch=epoch,
            step=self.step,
            train_loss=self.sums[0] / n if n else math.nan,
            train_iou=self.sums[1] / n if n else math.nan,
            val_loss=val_loss,
            val_iou=val_iou,
            lr=loop.lr_at(self.step, self.total, cfg.training.lr, cfg.training.lr_schedule),
            seconds=self.seconds,
        )
        if epoch > 0:
            row = self._judge(row)
        self.rows.append(row)
        self.sums = [0.0, 0.0, 0]
        if epoch > 0 and self.step >= self.total:
            capped = cfg.training.max_steps is not None and self.total == cfg.training.max_steps
            self.stop_reason = "max_steps" if capped else "epochs"
        elif epoch > 0 and stop.patience is not None and self.best["since"] >= stop.patience:
            self.stop_reason = "early_stopping"
        write_metrics_csv(self.rows, cfg.output / "metrics.csv")
        plot_metrics(self.rows, cfg.output / "metrics.png", title=f"fine-tuning: {cfg.output.name}")
        self.save()
        logger.info(row.describe())
        yield Progress("train", self.step, self.total, row.describe(), epoch=row)

    def _judge(self, row: EpochMetrics) -> EpochMetrics:
        """Mark ``row`` best (and save the adapter) when the monitored metric improved."""
        stop, best = self.config.early_stopping, self.best
        value = row.val_loss if stop.monitor == "val_loss" else row.val_iou
        sign = 1.0 if stop.monitor == "val_loss" else -1.0
        if best["value"] is None or sign * (best["value"] - value) > stop.min_delta:
            best.update(
                value=value, epoch=row.epoch, since=0, state=loop.snapshot(self.decoder, ADAPTER)
            )
            self._save_adapter(row)
            return EpochMetrics(**{**row.to_dict(), "best": True})
        best["since"] += 1
        return row

    def _save_adapter(self, row: EpochMetrics) -> None:
        base = self.rows[0]
        save_finetuned(
            self.adapter_path,
            self.decoder,
            ADAPTER,
            self.object_ids,
            self.model,
            self.config.lora,
            {
                "epoch": row.epoch,
                "step": row.step,
                "val_loss": row.val_loss,
                "val_iou": row.val_iou,
                "base_val_loss": base.val_loss,
                "base_val_iou": base.val_iou,
                "monitor": self.config.early_stopping.monitor,
                "threshold": self.config.threshold,
                "image_size": self.model.image_size,
                "examples": self.counts,
                "modules": list(self.injection.modules),
                "n_params": self.injection.n_params,
                "config": self.config.to_dict(),
            },
        )

    def _finish(self) -> Generator[Progress, None, FineTuneResult]:
        warnings = []
        if self.best["state"] is not None:
            restore_adapter_state(self.decoder, ADAPTER, self.best["state"])
        base = self.rows[0]
        best = next((r for r in self.rows if r.epoch == self.best["epoch"]), None)
        if best is not None and best.val_iou <= base.val_iou:
            warnings.append(
                f"the best epoch's validation IoU ({best.val_iou:.3f}) does not beat the base "
                f"model's ({base.val_iou:.3f})"
            )
        diagnosis = yield from diagnose(self.decoder, ADAPTER, self.val_set, self.config.threshold)
        write_diagnosis(diagnosis, self.config.output)
        saved = self.adapter_path.with_suffix(".safetensors")
        yield Progress("done", 1, 1, diagnosis.summary())
        return FineTuneResult(
            output=self.config.output,
            adapter_path=saved if saved.is_file() else None,
            stop_reason=str(self.stop_reason),
            steps=self.step,
            best_epoch=self.best["epoch"],
            history=list(self.rows),
            injection=self.injection,
            examples=self.counts,
            train_seconds=self.seconds,
            record_seconds=self.record_seconds,
            diagnosis=diagnosis,
            warnings=warnings + diagnosis.warnings,
        )


#: What every checkpoint holds (``restore`` reads each of them).
CHECKPOINT_KEYS = (
    "version",
    "key",
    "step",
    "seconds",
    "rows",
    "sums",
    "best",
    "best_state",
    "adapter",
    "optimizer",
    "torch_rng",
    "stop_reason",
)
RESTART = "run again with --restart (resume: false) to start over"


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write the checkpoint atomically (:mod:`~napari_sam_lora.engine.core.atomic`).

    Raises
    ------
    WriteError
        Disk full or read-only folder; the previous checkpoint stays and no temporary file
        is left.
    """
    payload = {"version": loop.CHECKPOINT_VERSION, **state}
    write_files({path: lambda temp: torch.save(payload, temp)})


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``; ``None`` when there is none (or of an older version).

    Raises
    ------
    CheckpointError
        A folder, a truncated or damaged file, one holding Python objects (never
        unpickled), or not a checkpoint mapping; the message says to use ``--restart``.
    """
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint; remove it or {RESTART}")
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot resume from {path}: it is truncated or not a checkpoint "
            f"({load_failure(exc)}); {RESTART}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"cannot resume from {path}: it holds a {type(state).__name__}, not a checkpoint; "
            f"{RESTART}"
        )
    if state.get("version") != loop.CHECKPOINT_VERSION:
        return None
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"cannot resume from {path}: it has no {', '.join(missing[:3])}; {RESTART}"
        )
    return dict(state)


def preflight_output(folder: Path) -> None:
    """Create ``folder`` and prove it is writable (a probe file written and removed).

    Raises
    ------
    WriteError
        Naming the folder and what to do (a file in the way, read-only, disk full).
    """
    probe = folder / ".napari-sam-lora-write-test"
    write_files({probe: b"ok"})
    probe.unlink(missing_ok=True)


def examples_key(examples: ExampleSet, config: FineTuneConfig) -> str:
    """What the checkpoint depends on besides LoRA, model and split: examples and training."""
    training = config.digest("training", skip=("training.checkpoint_every",))
    return f"{training}-{examples.key}-{len(examples)}"
