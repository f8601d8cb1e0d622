"""The simulated-user benchmark (LIT protocol): baseline SAM2 against learning from corrections.

``napari-sam-lora evaluate IMAGES LABELS`` runs it from the command line; from Python:

>>> from napari_sam_lora.evaluation import EvalConfig, evaluate, load_eval_data, write_report
>>> data = load_eval_data("stack.tif", "labels.tif")
>>> result = evaluate([data], EvalConfig(model="sam2.1_hiera_tiny", preset="strong"))
>>> report = write_report(result, [data], "out", settings={})
>>> report["reduction"]

Modules: :mod:`.runner` (both runs of the simulated user of :mod:`napari_sam_lora.simulation`
on SAM2), :mod:`.metering` (timing, memory), :mod:`.report` (``report.json``, ``report.md``,
``report.png``); stacks are read by :mod:`napari_sam_lora.data`.
"""

from napari_sam_lora.evaluation.data import DataError, EvalData, load_eval_data, load_suite
from napari_sam_lora.evaluation.report import build_report, write_report
from napari_sam_lora.evaluation.runner import EvalConfig, EvalResult, evaluate
from napari_sam_lora.simulation.clicks import Click, iou, next_click
from napari_sam_lora.simulation.protocol import ObjectResult, UserSettings, run_object

__all__ = [
    "Click",
    "DataError",
    "EvalConfig",
    "EvalData",
    "EvalResult",
    "ObjectResult",
    "UserSettings",
    "build_report",
    "evaluate",
    "iou",
    "load_eval_data",
    "load_suite",
    "next_click",
    "run_object",
    "write_report",
]
