"""``check-data``: read every stack a config names and report what training would see.

Counts, shapes, dtypes, intensity ranges, annotated frames, frames with no labels, label-id
statistics, image/label mismatches and the train/validation split, as a readable report.
*Problems* make training impossible or meaningless (``napari-sam-lora check-data`` exits
non-zero and ``train`` refuses to start); *warnings* are worth a look but do not stop it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from napari_sam_lora.data.stacks import read_images
from napari_sam_lora.finetune.config import FineTuneConfig
from napari_sam_lora.finetune.pairs import (
    DataError,
    StackData,
    StackPair,
    find_pairs,
    read_pair,
    split_frames,
)

__all__ = ["DataReport", "StackReport", "check_data"]

#: Objects smaller than this (pixels) on some frame get a warning.
TINY_OBJECT = 16


@dataclass
class StackReport:
    """What one stack holds, and what is wrong with it."""

    name: str
    images_path: str
    labels_path: str
    shape: list[int] | None = None
    dtype: str | None = None
    value_range: list[float] | None = None
    labels_dtype: str | None = None
    annotated_frames: int = 0
    empty_frames: list[int] = field(default_factory=list)
    object_ids: list[int] = field(default_factory=list)
    id_stats: dict[int, dict[str, float]] = field(default_factory=dict)
    train_frames: int = 0
    val_frames: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class DataReport:
    """The whole data set: per-stack reports, global problems and warnings, the split.

    ``stacks_data`` (not serialised) holds the stacks that were read without problems, and
    ``val_frames`` their validation frames, so training does not read them twice.
    """

    stacks: list[StackReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stacks_data: list[StackData] = field(default_factory=list, repr=False)
    val_frames: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """No problem anywhere (warnings allowed)."""
        return not self.problems and not any(s.problems for s in self.stacks)

    def all_problems(self) -> list[str]:
        """Every problem, prefixed with its stack's name."""
        return [f"{s.name}: {p}" for s in self.stacks for p in s.problems] + self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without the arrays)."""
        return {
            "ok": self.ok,
            "problems": self.all_problems(),
            "warnings": [f"{s.name}: {w}" for s in self.stacks for w in s.warnings] + self.warnings,
            "stacks": [asdict(s) for s in self.stacks],
        }

    def format(self) -> str:
        """The report as text, one block per stack, then the split and a verdict."""
        lines = [f"{len(self.stacks)} stack(s)"]
        for s in self.stacks:
            lines.append(f"\n{s.name}")
            lines.append(f"  images  {s.images_path}")
            lines.append(f"  labels  {s.labels_path}")
            if s.shape is not None:
                low, high = s.value_range or (float("nan"), float("nan"))
                lines.append(
                    f"  {s.shape[0]} frames of {'x'.join(map(str, s.shape[1:]))}, {s.dtype}, "
                    f"values {low:g}..{high:g}; labels {s.labels_dtype}"
                )
                lines.append(
                    f"  annotated frames {s.annotated_frames}, with no labels "
                    f"{len(s.empty_frames)}{_frame_list(s.empty_frames)}; "
                    f"train/val frames {s.train_frames}/{s.val_frames}"
                )
            for obj, st in s.id_stats.items():
                lines.append(
                    f"  id {obj}: on {st['frames']:.0f} frame(s), area {st['area_min']:.0f}/"
                    f"{st['area_median']:.0f}/{st['area_max']:.0f} px (min/median/max)"
                )
            lines += [f"  WARNING {w}" for w in s.warnings]
            lines += [f"  PROBLEM {p}" for p in s.problems]
        ids = sorted({i for s in self.stacks for i in s.object_ids})
        train = sum(s.train_frames for s in self.stacks)
        val = sum(s.val_frames for s in self.stacks)
        lines.append(
            f"\nobject ids {ids or 'none'}; annotated frames: {train} train, {val} validation"
        )
        lines += [f"WARNING {w}" for w in self.warnings]
        lines += [f"PROBLEM {p}" for p in self.problems]
        problems = self.all_problems()
        lines.append(
            "OK: ready to train"
            if not problems
            else f"{len(problems)} problem(s): fix them before training"
        )
        return "\n".join(lines)


def _frame_list(frames: list[int], limit: int = 12) -> str:
    if not frames:
        return ""
    shown = ", ".join(map(str, frames[:limit]))
    return f" ({shown}{', ...' if len(frames) > limit else ''})"


def check_data(config: FineTuneConfig) -> DataReport:
    """Read every stack of ``config`` and check it, and the split.

    Never raises for data problems: they are collected in the report.
    """
    report = DataReport()
    try:
        pairs = find_pairs(config)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    if not pairs:
        report.problems.append("the config names no stacks")
    for pair in pairs:
        stack_report, data = _check_stack(pair)
        report.stacks.append(stack_report)
        if data is not None:
            report.stacks_data.append(data)
    _check_split(report, config)
    return report


def _check_stack(pair: StackPair) -> tuple[StackReport, StackData | None]:
    rep = StackReport(pair.name, str(pair.images), str(pair.labels))
    try:
        raw_labels, _ = read_images(pair.labels)
        rep.labels_dtype = str(raw_labels.dtype)
    except DataError:
        pass  # read_pair reports the problem with a better message
    try:
        data = read_pair(pair)
    except DataError as exc:
        rep.problems.append(str(exc).removeprefix(f"stack {pair.name!r}: "))
        return rep, None
    images, labels, annotated = data.images, data.labels, data.annotated
    rep.shape, rep.dtype = list(images.shape), str(images.dtype)
    finite = np.isfinite(images) if images.dtype.kind == "f" else None
    if finite is not None and not finite.all():
        rep.problems.append(f"images hold {int((~finite).sum())} NaN/inf value(s)")
        return rep, None
    rep.value_range = [float(images.min()), float(images.max())]
    if rep.value_range[0] == rep.value_range[1]:
        rep.problems.append(f"the image stack is constant ({rep.value_range[0]:g})")
    rep.annotated_frames = int(annotated.sum())
    present = labels.reshape(len(labels), -1).any(axis=1)
    rep.empty_frames = [int(t) for t in np.flatnonzero(annotated & ~present)]
    rep.object_ids = data.object_ids
    if not rep.object_ids:
        rep.problems.append("no object: every annotated frame is all background (0)")
    if rep.empty_frames:
        rep.warnings.append(
            f"{len(rep.empty_frames)} annotated frame(s) have no labels"
            f"{_frame_list(rep.empty_frames)}: they teach 'object absent'; check they are "
            "really empty and not unannotated"
        )
    if len(images) < 2:
        rep.warnings.append("a single frame: no tracking examples, only prompted ones")
    for obj in rep.object_ids:
        areas = (labels[annotated] == obj).reshape(rep.annotated_frames, -1).sum(axis=1)
        areas = areas[areas > 0]
        rep.id_stats[obj] = {
            "frames": float(len(areas)),
            "area_min": float(areas.min()),
            "area_median": float(np.median(areas)),
            "area_max": float(areas.max()),
        }
        if areas.min() < TINY_OBJECT:
            rep.warnings.append(
                f"id {obj} covers only {int(areas.min())} px on some frame: SAM2 predicts "
                "masks at 1/4 of its input size; tiny objects may be lost"
            )
        if len(areas) == 1 and len(images) > 1:
            rep.warnings.append(f"id {obj} is on a single annotated frame: nothing to track")
    return rep, (None if rep.problems else data)


def _check_split(report: DataReport, config: FineTuneConfig) -> None:
    data = report.stacks_data
    if not data or not report.ok:
        return
    usable = [d.annotated for d in data]
    try:
        report.val_frames = split_frames([d.name for d in data], usable, config)
    except DataError as exc:
        report.problems.append(str(exc))
        return
    by_name = {s.name: s for s in report.stacks}
    for d, use in zip(data, usable, strict=True):
        val = report.val_frames[d.name]
        by_name[d.name].train_frames = int((use & ~val).sum())
        by_name[d.name].val_frames = int((use & val).sum())
    train_ids = {i for d in data for i in d.object_ids if not report.val_frames[d.name].all()}
    val_ids = {i for d in data for i in d.object_ids if report.val_frames[d.name].any()}
    if val_ids - train_ids:
        report.warnings.append(
            f"object id(s) {sorted(val_ids - train_ids)} appear only in validation stacks"
        )
    if len({tuple(d.images.shape[1:]) for d in data}) > 1:
        report.warnings.append("stacks differ in frame size (fine: SAM2 resizes every frame)")
