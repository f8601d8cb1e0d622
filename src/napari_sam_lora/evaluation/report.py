"""``report.json``, ``report.md`` and ``report.png`` from an evaluation.

``report.json`` holds ``baseline`` and ``lora`` (each: ``corrections``, ``clicks``,
``mask_corrections``, ``accepted_candidates``, ``accepted_candidates_oracle``,
``scored_frames``, ``mean_iou``, ``mean_iou_tracked``, ``mean_iou_final``, ``seconds``
with ``encode``/``track``/``train``/``propose``/``total``, ``peak_memory_mb``,
``peak_gpu_memory_mb``, ``per_object`` and, for lora, ``trainings``), plus ``reduction``
(1 − lora.corrections / baseline.corrections), ``accepted_candidates_oracle``,
``confidence_vs_oracle`` (accepted by confidence / accepted by oracle), ``seconds``
(``encode_shared``, ``total``), ``stacks`` and ``settings``.

``mean_iou`` is over scored frames, of the mask each run had before any correction: what
SAM2 tracked, or the candidate the user accepted. ``mean_iou_tracked`` is SAM2's own
output only, ``mean_iou_final`` what the frames ended as after the user.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_lora.engine.atomic import atomic_files
from napari_sam_lora.engine.jsonable import json_default
from napari_sam_lora.evaluation.data import EvalData
from napari_sam_lora.evaluation.protocol import ObjectResult
from napari_sam_lora.evaluation.runner import PHASES, RUNS, EvalResult, RunResult

logger = logging.getLogger(__name__)

__all__ = ["build_report", "markdown", "plot", "write_report"]

_COUNTS = (
    "corrections",
    "clicks",
    "mask_corrections",
    "accepted_candidates",
    "accepted_candidates_oracle",
    "scored_frames",
)


def _mean(results: list[ObjectResult], key: str) -> float | None:
    values = [getattr(f, key) for r in results for f in r.scored]
    return float(np.mean(values)) if values else None


def _run_dict(run: RunResult) -> dict[str, Any]:
    results = [r for _, r in run.objects]
    per_object = [{"stack": stack, **r.to_dict()} for stack, r in run.objects]
    out: dict[str, Any] = {k: int(sum(o[k] for o in per_object)) for k in _COUNTS}
    out["mean_iou"] = _mean(results, "iou_model")
    out["mean_iou_tracked"] = _mean(results, "iou_tracked")
    out["mean_iou_final"] = _mean(results, "iou_final")
    seconds = {k: round(float(run.seconds.get(k, 0.0)), 3) for k in (*PHASES, "total")}
    out["seconds"] = seconds
    out["peak_memory_mb"] = round(run.peak_memory_mb, 1)
    out["peak_gpu_memory_mb"] = (
        None if run.peak_gpu_memory_mb is None else round(run.peak_gpu_memory_mb, 1)
    )
    out["per_object"] = per_object
    if run.name == "lora":
        out["trainings"] = run.trainings
    return out


def _ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator == 0 else float(numerator / denominator)


def build_report(
    result: EvalResult, datasets: Sequence[EvalData], settings: dict[str, Any]
) -> dict[str, Any]:
    """The content of ``report.json`` (see the module docstring for the keys)."""
    from napari_sam_lora import __version__

    runs = {name: _run_dict(result.runs[name]) for name in RUNS}
    base, lora = runs["baseline"], runs["lora"]
    reduction = _ratio(base["corrections"] - lora["corrections"], base["corrections"])
    return {
        **runs,
        "reduction": reduction,
        "accepted_candidates_oracle": lora["accepted_candidates_oracle"],
        "confidence_vs_oracle": _ratio(
            lora["accepted_candidates"], lora["accepted_candidates_oracle"]
        ),
        "seconds": {
            "encode_shared": round(result.encode_shared_seconds, 3),
            "total": round(result.total_seconds, 3),
        },
        "stacks": [
            {
                "name": d.name,
                "frames": d.num_frames,
                "first_frame": d.first_frame,
                "frame_shape": list(d.images.shape[1:3]),
                "annotated_frames": int(d.annotated.sum()),
                "object_ids": list(d.object_ids),
            }
            for d in datasets
        ],
        "settings": {
            **settings,
            "model_label": result.model_label,
            "image_size": result.image_size,
            "lora": result.lora_settings,
            "version": __version__,
        },
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """``report.md``: summary table, per-object table, settings."""
    base, lora = report["baseline"], report["lora"]
    rows = [*_COUNTS, "mean_iou", "mean_iou_tracked", "mean_iou_final", "peak_memory_mb"]
    lines = [
        "# napari-sam-lora evaluation",
        "",
        f"Model: {report['settings']['model_label']}, image size "
        f"{report['settings']['image_size']}, LoRA preset "
        f"`{report['settings'].get('preset', report['settings']['lora']['name'])}`, "
        f"threshold {report['settings'].get('threshold')}, "
        f"max clicks {report['settings'].get('max_clicks')}, "
        f"start {report['settings'].get('start')}.",
        "",
        f"**Corrections: {base['corrections']} without learning, {lora['corrections']} with "
        f"learning (reduction {_pct(report['reduction'])}).** Candidates accepted by model "
        f"confidence: {lora['accepted_candidates']}; by oracle selection (true IoU): "
        f"{report['accepted_candidates_oracle']} (confidence/oracle "
        f"{_pct(report['confidence_vs_oracle'])}).",
        "",
        "| | baseline | lora |",
        "|---|---:|---:|",
        *(f"| {k} | {_fmt(base[k], _digits(k))} | {_fmt(lora[k], _digits(k))} |" for k in rows),
        *(
            f"| seconds {k} | {_fmt(base['seconds'][k], 1)} | {_fmt(lora['seconds'][k], 1)} |"
            for k in (*PHASES, "total")
        ),
        "",
        f"Image features were computed once for both runs in "
        f"{report['seconds']['encode_shared']:.1f} s; the whole evaluation took "
        f"{report['seconds']['total']:.1f} s.",
        "",
        "## Per object",
        "",
        "| stack | object | start | scored | corrections (baseline / lora) | clicks | "
        "masks | accepted | oracle | mean IoU (baseline / lora) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b, lo in zip(base["per_object"], lora["per_object"], strict=True):
        lines.append(
            f"| {b['stack']} | {b['obj_id']} | {b['start_frame']} | {b['scored_frames']} | "
            f"{b['corrections']} / {lo['corrections']} | {b['clicks']} / {lo['clicks']} | "
            f"{b['mask_corrections']} / {lo['mask_corrections']} | "
            f"{lo['accepted_candidates']} | {lo['accepted_candidates_oracle']} | "
            f"{_fmt(b['mean_iou'], 2)} / {_fmt(lo['mean_iou'], 2)} |"
        )
    settings = {k: v for k, v in report["settings"].items() if k != "lora"}
    lines += ["", "## Settings", "", "```json", json.dumps(settings, indent=2), "```", ""]
    return "\n".join(lines)


def _digits(key: str) -> int:
    return 0 if key.endswith("_mb") else 3


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def plot(report: dict[str, Any], path: str | Path) -> bool:
    """``report.png``: corrections per object, and IoU over frames, for both runs.

    Returns ``False`` (and logs a warning) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: report.png was not written")
        return False
    base, lora = report["baseline"]["per_object"], report["lora"]["per_object"]
    names = [f"{o['stack']}:{o['obj_id']}" for o in base]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    x = np.arange(len(names))
    left.bar(x - 0.2, [o["corrections"] for o in base], 0.4, label="baseline", color="0.6")
    left.bar(x + 0.2, [o["corrections"] for o in lora], 0.4, label="lora", color="tab:blue")
    left.bar(
        x + 0.2,
        [o["accepted_candidates"] for o in lora],
        0.4,
        bottom=[o["corrections"] for o in lora],
        label="lora: accepted candidates",
        color="tab:blue",
        alpha=0.3,
    )
    from matplotlib.ticker import MaxNLocator

    tallest = max([o["corrections"] for o in base] + [o["scored_frames"] for o in lora] + [1])
    left.set_ylim(0, tallest * 1.3)
    left.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_ylabel("corrections (frames)")
    left.set_title("Corrections per object")
    left.legend(fontsize=8, loc="upper left", ncols=3)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (b, lo) in enumerate(zip(base, lora, strict=True)):
        colour = colours[k % len(colours)]
        for obj, style, label in ((b, "--", "baseline"), (lo, "-", "lora")):
            frames = sorted(
                (f["frame"], f["iou_model"]) for f in obj["frames"] if f["iou_model"] is not None
            )
            if frames:
                fx, fy = zip(*frames, strict=True)
                right.plot(fx, fy, style, color=colour, marker=".", label=f"{names[k]} {label}")
    right.axhline(report["settings"].get("threshold", 0.5), color="k", lw=0.8, ls=":")
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("frame")
    right.set_ylabel("IoU before correction")
    right.set_title("IoU over frames (dashed: baseline, solid: lora)")
    if len(names) <= 6:
        right.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(
    result: EvalResult,
    datasets: Sequence[EvalData],
    output: str | Path,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and ``report.png`` into ``output`` (created).

    The three files are written all-or-nothing (:mod:`napari_sam_lora.engine.atomic`): on a
    full disk the previous report stays complete and no temporary file is left.

    Returns
    -------
    dict
        The content of ``report.json``.

    Raises
    ------
    WriteError
        Naming the file that could not be written and what to do.
    """
    report = build_report(result, datasets, settings)
    out = Path(output)
    text = json.dumps(report, indent=2, default=json_default)
    with atomic_files() as files:
        files.add(out / "report.json", text + "\n")
        files.add(out / "report.md", markdown(report))
        if not plot(report, files.path(out / "report.png")):
            files.drop(out / "report.png")
    return report
