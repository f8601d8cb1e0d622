"""Training examples recorded the way SAM2 works at annotation time, cached on disk.

Per stack and annotated object, with the features of each frame computed once:

``tracking``
    The object is prompted with its ground-truth mask on its start frame and tracked frame
    by frame; the mask decoder's inputs on every annotated frame (memory-conditioned
    features, empty prompt) are recorded with the true mask as the target. Where the
    tracked mask's IoU is below ``correct_below`` the simulated user of the evaluation
    steps in, so SAM2's memory holds what it would hold during a real annotation session.
``click``
    Those corrections start with clicks at the centre of the largest error region (up to
    ``max_clicks``); the decoder inputs of each click (memory features + points + SAM2's
    previous mask) are recorded too. Then the full mask conditions SAM2.
``point`` / ``box``
    On ``prompt_frames`` frames per object, a fresh prompt sampled from the ground truth
    (one interior point; the jittered bounding box) on an untracked frame, no memory.

Examples are written to ``<cache>/shard_*.safetensors`` (``index.json`` lists them), so
recording happens once and training, resuming and diagnosing read them lazily.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_sam_lora.engine.tracking.features import DecoderInputs
from napari_sam_lora.finetune.config import ExamplesConfig, FineTuneConfig
from napari_sam_lora.finetune.events import Progress
from napari_sam_lora.finetune.pairs import StackData
from napari_sam_lora.finetune.store import ExampleSet, ExampleWriter
from napari_sam_lora.simulation import SessionTracker, iou, next_click, scan_order, start_frame

__all__ = ["cache_key", "load_or_record", "record_examples"]

logger = logging.getLogger(__name__)


def cache_key(config: FineTuneConfig, files: Sequence[Path]) -> str:
    """Key of the examples: config sections they depend on, and the data files' size/date."""
    stats = sorted(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    digest = hashlib.sha256("\n".join(stats).encode()).hexdigest()[:16]
    sections = config.digest("data", "split", "model", "examples", skip=("examples.cache",))
    return f"{sections}-{digest}"


def load_or_record(
    config: FineTuneConfig,
    model: Any,
    stacks: Sequence[StackData],
    val_frames: dict[str, np.ndarray],
    files: Sequence[Path],
) -> Generator[Progress, None, ExampleSet]:
    """The cached examples when their key matches; else record them (:func:`record_examples`)."""
    key = cache_key(config, files)
    cached = ExampleSet.open(config.cache_dir, key)
    if cached is not None:
        yield Progress("record", 1, 1, f"reusing {len(cached)} recorded examples")
        return cached
    seed = config.split.seed
    return (
        yield from record_examples(
            model, stacks, val_frames, config.examples, config.cache_dir, key, seed
        )
    )


def record_examples(
    model: Any,
    stacks: Sequence[StackData],
    val_frames: dict[str, np.ndarray],
    config: ExamplesConfig,
    folder: Path,
    key: str,
    seed: int = 0,
) -> Generator[Progress, None, ExampleSet]:
    """Record the examples of every stack into ``folder``; yields per frame visited.

    Parameters
    ----------
    model : LoadedModel
        The base model (no adapter active).
    stacks : sequence of StackData
        Checked stacks.
    val_frames : dict
        ``{stack name: (T,) bool}``: validation frames (see ``pairs.split_frames``).
    config : ExamplesConfig
        What to record.
    folder : Path
        Cache folder (emptied first).
    key : str
        Written to the index; :meth:`ExampleSet.open` only reuses a cache with the same key.
    seed : int
        Seed of the sampled prompts.

    Returns
    -------
    ExampleSet
        As ``StopIteration.value``. Closing the generator leaves an incomplete cache,
        which is never reused.
    """
    from napari_sam_lora.engine.tracking.session import Session

    writer = ExampleWriter(folder, key, config.dtype)
    rng = np.random.default_rng(seed)
    total = sum(_units(s, config) for s in stacks)
    done = 0
    for stack in stacks:
        session = Session(stack.images, model=model)
        for obj_id in stack.object_ids:
            truth = stack.labels == obj_id
            recorder = SessionTracker(
                session, obj_id, on_record=_Sink(writer, stack, truth, val_frames[stack.name])
            )
            for frame in _annotate(recorder, truth, stack.annotated, config):
                done += 1
                yield Progress(
                    "record", done, total, f"{stack.name}, object {obj_id}, frame {frame}"
                )
            for frame in _prompt(recorder, truth, stack.annotated, config, rng):
                done += 1
                yield Progress(
                    "record", done, total, f"{stack.name}, object {obj_id}, prompt {frame}"
                )
        session.reset()
        del session
    examples = writer.finish()
    logger.info("Recorded %d examples: %s", len(examples), examples.counts())
    return examples


def _units(stack: StackData, config: ExamplesConfig) -> int:
    per_object = (len(stack.labels) - 1) if (config.tracking or config.clicks) else 0
    per_object += config.prompt_frames if config.prompts else 0
    return per_object * len(stack.object_ids)


class _Sink:
    """Writes the recorded inputs of annotated frames of one object, with their targets."""

    def __init__(
        self, writer: ExampleWriter, stack: StackData, truth: np.ndarray, val: np.ndarray
    ) -> None:
        self.writer, self.stack, self.truth, self.val = writer, stack, truth, val

    def __call__(self, kind: str, frame: int, obj_id: int, inputs: DecoderInputs | None) -> None:
        if inputs is None or not self.stack.annotated[frame]:
            return
        self.writer.add(
            inputs,
            self.truth[frame],
            stack=self.stack.name,
            frame=int(frame),
            obj_id=int(obj_id),
            kind=kind,
            split="val" if self.val[frame] else "train",
        )


def _annotate(
    rec: SessionTracker, truth: np.ndarray, annotated: np.ndarray, config: ExamplesConfig
) -> Generator[int, None, None]:
    """Track the object like the evaluation's simulated user; yield each frame visited."""
    if not (config.tracking or config.clicks) or len(truth) < 2:
        return
    start = start_frame(truth.any(axis=(1, 2)), annotated, config.start)
    rec.begin(start, truth[start])
    for frame, reverse in scan_order(start, len(truth)):
        predicted = rec.track(frame, reverse, record=config.tracking)
        if annotated[frame] and iou(predicted, truth[frame]) < config.correct_below:
            final, points, labels = truth[frame], [], []
            while config.clicks and len(points) < config.max_clicks:
                click = next_click(predicted, truth[frame])
                if click is None:
                    break
                points.append((click.row, click.col))
                labels.append(click.label)
                predicted = rec.prompt(
                    "click", frame, points=np.array(points, np.float32), labels=np.array(labels)
                )
                if iou(predicted, truth[frame]) >= config.correct_below:
                    final = predicted
                    break
            rec.correct(frame, final)
        yield frame


def _prompt(
    rec: SessionTracker,
    truth: np.ndarray,
    annotated: np.ndarray,
    config: ExamplesConfig,
    rng: np.random.Generator,
) -> Generator[int, None, None]:
    """Fresh point/box prompts sampled from the truth on evenly spread frames."""
    if not config.prompts or config.prompt_frames == 0:
        return
    present = np.flatnonzero(annotated & truth.any(axis=(1, 2)))
    picks = present[np.linspace(0, len(present) - 1, config.prompt_frames).round().astype(int)]
    for frame in picks:
        mask = truth[frame]
        for kind in config.prompts:
            rec.begin_fresh()
            if kind == "box":
                rec.prompt("box", int(frame), box=_jittered_box(mask, rng))
            else:
                point = _interior_point(mask, rng)
                rec.prompt("point", int(frame), points=point[None], labels=np.array([1]))
        yield int(frame)


def _jittered_box(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask's bounding box ``(row0, col0, row1, col1)``, each side moved by <= 10 %."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = r1 - r0, c1 - c0
    jitter = rng.uniform(-0.1, 0.1, 4) * np.array([h, w, h, w])
    box = np.array([r0, c0, r1, c1], float) + jitter
    height, width = mask.shape
    for lo, hi, size in ((0, 2, height), (1, 3, width)):
        box[lo] = np.clip(box[lo], 0, size - 2)
        box[hi] = np.clip(box[hi], box[lo] + 1, size - 1)
    return box.astype(np.float32)


def _interior_point(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random pixel of ``mask`` at least half as deep inside as its deepest pixel."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(depth >= 0.5 * depth.max())
    k = int(rng.integers(len(rows)))
    return np.array([rows[k], cols[k]], np.float32)
