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

Each run also has ``by_presence``: ``present`` and ``absent`` (frames where the object has
ground-truth pixels or not), each with ``scored_frames``, ``corrections``,
``accepted_candidates`` and ``mean_iou_final``; the top level has ``reduction_present``
and ``reduction_absent``. ``headline`` puts corrections, reductions and the final mean IoU
of both runs side by side. ``calibration`` (see :mod:`.calibration`) measures how well the
confidence shown with the candidates the user examined predicts their true IoU:
``spearman``, ``ece`` (10 bins), ``precision_recall`` of "confidence >= tau => IoU >=
threshold", ``reliability`` bins, and the same for the calibrator's raw score under ``raw``.

``scope`` is the learning run's (``"object"``: each object learns from its own corrections;
``"class"``: one shared set of adapters learns from every object's corrections, object
after object). ``accepted_uncorrected`` (each run, each object, and in ``headline`` with
``objects_helped_uncorrected``) counts the frames fixed by accepting a candidate before the
object's first correction of its own: with class scope, the corrections other objects'
learning saved on objects never corrected before (0 with object scope unless an
``--adapter`` file was loaded).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_lora.engine.core.atomic import atomic_files
from napari_sam_lora.engine.core.jsonable import json_default
from napari_sam_lora.evaluation.calibration import calibration_summary, pairs_from_frames
from napari_sam_lora.evaluation.data import EvalData
from napari_sam_lora.evaluation.runner import PHASES, RUNS, EvalResult, RunResult
from napari_sam_lora.simulation.protocol import ObjectResult

logger = logging.getLogger(__name__)

__all__ = ["build_report", "markdown", "plot", "write_report"]

_COUNTS = (
    "corrections",
    "clicks",
    "mask_corrections",
    "accepted_candidates",
    "accepted_uncorrected",
    "accepted_candidates_oracle",
    "scored_frames",
)


def _mean(results: list[ObjectResult], key: str) -> float | None:
    values = [getattr(f, key) for r in results for f in r.scored]
    return float(np.mean(values)) if values else None


def _presence(datasets: Sequence[EvalData]) -> dict[tuple[str, int], np.ndarray]:
    """``(stack, object) -> (T,)`` bool: the object has ground-truth pixels on the frame."""
    return {
        (d.name, int(obj)): (np.asarray(d.labels) == int(obj)).any(axis=(1, 2))
        for d in datasets
        for obj in d.object_ids
    }


def _by_presence(
    per_object: list[dict[str, Any]], presence: dict[tuple[str, int], np.ndarray]
) -> dict[str, dict[str, Any]]:
    """Scored frames, corrections, accepts and final mean IoU where the object is / is not."""
    groups: dict[str, list[dict[str, Any]]] = {"present": [], "absent": []}
    for obj in per_object:
        here = presence.get((obj["stack"], int(obj["obj_id"])))
        for f in obj["frames"]:
            if f["action"] == "unscored" or here is None:
                continue
            groups["present" if here[f["frame"]] else "absent"].append(f)
    out = {}
    for key, frames in groups.items():
        finals = [f["iou_final"] for f in frames if f["iou_final"] is not None]
        out[key] = {
            "scored_frames": len(frames),
            "corrections": sum(f["action"] in ("clicks", "mask") for f in frames),
            "accepted_candidates": sum(f["action"] == "accepted" for f in frames),
            "mean_iou_final": float(np.mean(finals)) if finals else None,
        }
    return out


def _run_dict(run: RunResult, presence: dict[tuple[str, int], np.ndarray]) -> dict[str, Any]:
    results = [r for _, r in run.objects]
    per_object = [{"stack": stack, **r.to_dict()} for stack, r in run.objects]
    out: dict[str, Any] = {k: int(sum(o.get(k, 0) for o in per_object)) for k in _COUNTS}
    out["mean_iou"] = _mean(results, "iou_model")
    out["mean_iou_tracked"] = _mean(results, "iou_tracked")
    out["mean_iou_final"] = _mean(results, "iou_final")
    seconds = {k: round(float(run.seconds.get(k, 0.0)), 3) for k in (*PHASES, "total")}
    out["seconds"] = seconds
    out["peak_memory_mb"] = round(run.peak_memory_mb, 1)
    out["peak_gpu_memory_mb"] = (
        None if run.peak_gpu_memory_mb is None else round(run.peak_gpu_memory_mb, 1)
    )
    out["by_presence"] = _by_presence(per_object, presence)
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

    presence = _presence(datasets)
    runs = {name: _run_dict(result.runs[name], presence) for name in RUNS}
    base, lora = runs["baseline"], runs["lora"]
    reduction = _ratio(base["corrections"] - lora["corrections"], base["corrections"])
    split = {
        key: _ratio(
            base["by_presence"][key]["corrections"] - lora["by_presence"][key]["corrections"],
            base["by_presence"][key]["corrections"],
        )
        for key in ("present", "absent")
    }
    threshold = float(settings.get("threshold", 0.5))
    frames = [f for o in lora["per_object"] for f in o["frames"]]
    pairs, source = pairs_from_frames(frames)
    calibration = calibration_summary(
        [p["confidence"] for p in pairs],
        [p["iou"] for p in pairs],
        threshold,
        raw_confidence=[p["raw"] for p in pairs],
        source=source,
    )
    confidence_vs_oracle = _ratio(lora["accepted_candidates"], lora["accepted_candidates_oracle"])
    helped = sum(o.get("accepted_uncorrected", 0) > 0 for o in lora["per_object"])
    return {
        "headline": {
            "threshold": threshold,
            "scope": result.scope,
            "corrections": {"baseline": base["corrections"], "lora": lora["corrections"]},
            "reduction": reduction,
            "corrections_present": {
                "baseline": base["by_presence"]["present"]["corrections"],
                "lora": lora["by_presence"]["present"]["corrections"],
            },
            "reduction_present": split["present"],
            "mean_iou_final": {"baseline": base["mean_iou_final"], "lora": lora["mean_iou_final"]},
            "confidence_vs_oracle": confidence_vs_oracle,
            "accepted_uncorrected": lora["accepted_uncorrected"],
            "objects_helped_uncorrected": helped,
            "spearman": calibration["spearman"],
            "ece": calibration["ece"],
        },
        **runs,
        "scope": result.scope,
        "reduction": reduction,
        "reduction_present": split["present"],
        "reduction_absent": split["absent"],
        "calibration": calibration,
        "accepted_candidates_oracle": lora["accepted_candidates_oracle"],
        "confidence_vs_oracle": confidence_vs_oracle,
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
            "scope": result.scope,
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
        f"start {report['settings'].get('start')}, "
        f"learning scope {report.get('scope', 'object')}.",
        "",
        f"**Corrections: {base['corrections']} without learning, {lora['corrections']} with "
        f"learning (reduction {_pct(report['reduction'])}); final mean IoU "
        f"{_fmt(base['mean_iou_final'])} / {_fmt(lora['mean_iou_final'])}.** "
        f"On frames where the object is present: {_presence_line(report, 'present')}; "
        f"absent: {_presence_line(report, 'absent')}. Candidates accepted by model "
        f"confidence: {lora['accepted_candidates']}; by oracle selection (true IoU): "
        f"{report['accepted_candidates_oracle']} (confidence/oracle "
        f"{_pct(report['confidence_vs_oracle'])}).",
        *_scope_lines(report),
        "",
        "Untrained SAM2 (random weights) unless the model above says otherwise: the figures "
        "measure the learning machinery, not SAM2's accuracy.",
        "",
        "| | baseline | lora |",
        "|---|---:|---:|",
        *(
            f"| {k} | {_fmt(base.get(k), _digits(k))} | {_fmt(lora.get(k), _digits(k))} |"
            for k in rows
        ),
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
        "masks | accepted | accepted before own correction | oracle | "
        "mean IoU (baseline / lora) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b, lo in zip(base["per_object"], lora["per_object"], strict=True):
        lines.append(
            f"| {b['stack']} | {b['obj_id']} | {b['start_frame']} | {b['scored_frames']} | "
            f"{b['corrections']} / {lo['corrections']} | {b['clicks']} / {lo['clicks']} | "
            f"{b['mask_corrections']} / {lo['mask_corrections']} | "
            f"{lo['accepted_candidates']} | {_fmt(lo.get('accepted_uncorrected'))} | "
            f"{lo['accepted_candidates_oracle']} | "
            f"{_fmt(b['mean_iou'], 2)} / {_fmt(lo['mean_iou'], 2)} |"
        )
    lines += _calibration_lines(report.get("calibration"))
    settings = {k: v for k, v in report["settings"].items() if k != "lora"}
    lines += ["", "## Settings", "", "```json", json.dumps(settings, indent=2), "```", ""]
    return "\n".join(lines)


def _scope_lines(report: dict[str, Any]) -> list[str]:
    """With class scope: the accepts that spared objects their first corrections."""
    if report.get("scope") != "class":
        return []
    head = report.get("headline", {})
    return [
        "",
        f"Class scope (one shared set of adapters, objects in turn): "
        f"{head.get('accepted_uncorrected', 0)} frame(s) on "
        f"{head.get('objects_helped_uncorrected', 0)} object(s) were fixed by accepting a "
        "candidate before the object had any correction of its own.",
    ]


def _presence_line(report: dict[str, Any], key: str) -> str:
    base = report["baseline"].get("by_presence", {}).get(key)
    lora = report["lora"].get("by_presence", {}).get(key)
    if not base or not lora:
        return "n/a"
    return (
        f"{base['corrections']} → {lora['corrections']} corrections "
        f"({_pct(report.get(f'reduction_{key}'))} fewer) over {base['scored_frames']} frames, "
        f"{lora['accepted_candidates']} accepted, final mean IoU "
        f"{_fmt(base['mean_iou_final'], 2)} / {_fmt(lora['mean_iou_final'], 2)}"
    )


def _calibration_lines(cal: dict[str, Any] | None) -> list[str]:
    """The ``## Calibration`` section of ``report.md``."""
    if not cal:
        return []
    raw = cal.get("raw") or {}
    lines = [
        "",
        "## Calibration",
        "",
        f"{cal['n']} (confidence shown, true IoU) pairs: {cal['source'] or 'candidates'}. "
        f"Spearman rank correlation {_fmt(cal['spearman'], 2)}, expected calibration error "
        f"(10 bins) {_fmt(cal['ece'], 3)}; the calibrator's raw score (agreement with "
        f"the nearest confirmed frame): Spearman {_fmt(raw.get('spearman'), 2)}, "
        f"ECE {_fmt(raw.get('ece'), 3)}.",
        "",
        f"| confidence ≥ τ | selected | precision (IoU ≥ {cal['threshold']:g}) | recall |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['tau']:g} | {r['selected']} | {_fmt(r['precision'], 2)} | {_fmt(r['recall'], 2)} |"
        for r in cal["precision_recall"]
    ]
    lines += [
        "",
        "| confidence bin | candidates | mean confidence | mean IoU |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {b['lo']:.1f}–{b['hi']:.1f} | {b['count']} | {_fmt(b['mean_confidence'], 2)} | "
        f"{_fmt(b['mean_iou'], 2)} |"
        for b in cal["reliability"]
        if b["count"]
    ]
    return lines


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
    fig, (left, right, diagram) = plt.subplots(1, 3, figsize=(17, 4.5), constrained_layout=True)
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
    _reliability_diagram(diagram, report.get("calibration"))
    fig.suptitle(
        f"{report['settings'].get('model_label', '')} — untrained SAM2 = random weights", fontsize=9
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _reliability_diagram(ax: Any, cal: dict[str, Any] | None) -> None:
    """Mean true IoU per confidence bin against the diagonal (shown and raw confidence)."""
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls=":", label="perfect calibration")
    if cal:
        for table, style, label in (
            (cal.get("reliability") or [], "o-", "shown"),
            ((cal.get("raw") or {}).get("reliability") or [], "s--", "raw score"),
        ):
            pts = [(b["mean_confidence"], b["mean_iou"], b["count"]) for b in table if b["count"]]
            if pts:
                x, y, _ = zip(*pts, strict=True)
                ax.plot(x, y, style, label=label, alpha=0.85)
                if label == "shown":
                    for xi, yi, ni in pts:
                        ax.annotate(
                            str(ni), (xi, yi), fontsize=6, xytext=(2, 2), textcoords="offset points"
                        )
        ax.set_title(
            f"Reliability: Spearman {_fmt(cal.get('spearman'), 2)}, ECE {_fmt(cal.get('ece'), 3)}"
            f" ({cal.get('n', 0)} candidates)"
        )
    else:
        ax.set_title("Reliability (no candidates)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (bin mean)")
    ax.set_ylabel("true IoU (bin mean)")
    ax.legend(fontsize=7, loc="upper left")


def write_report(
    result: EvalResult,
    datasets: Sequence[EvalData],
    output: str | Path,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and ``report.png`` into ``output`` (created).

    The three files are written all-or-nothing (:mod:`napari_sam_lora.engine.core.atomic`): on a
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
