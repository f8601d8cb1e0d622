"""Config-driven LoRA fine-tuning of SAM2's mask decoder on annotated stacks (no Qt).

``napari-sam-lora check-data CONFIG.yaml`` and ``napari-sam-lora train CONFIG.yaml`` run it
from the command line; from Python:

>>> from napari_sam_lora.engine.core.jobs import drain
>>> from napari_sam_lora.finetune import check_data, load_config, train
>>> config = load_config("configs/finetune/example.yaml")
>>> print(check_data(config).format())
>>> result = drain(train(config))          # a generator: progress out, result returned
>>> result.adapter_path                     # load with Learner.load or activate_finetuned

Modules: :mod:`.config` (the YAML schema), :mod:`.pairs` (finding and reading stacks,
the split), :mod:`.data_check`, :mod:`.examples` (recording), :mod:`.loop` (batches,
steps, checkpoints), :mod:`.trainer`, :mod:`.metrics`, :mod:`.diagnose`,
:mod:`.adapter_file` (the saved file and how to use it), :mod:`.cli`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from napari_sam_lora.finetune.config import ConfigError, FineTuneConfig, load_config

_LAZY = {
    "DataReport": "napari_sam_lora.finetune.data_check",
    "check_data": "napari_sam_lora.finetune.data_check",
    "train": "napari_sam_lora.finetune.trainer",
    "FineTuneResult": "napari_sam_lora.finetune.trainer",
    "activate_finetuned": "napari_sam_lora.finetune.adapter_file",
    "Progress": "napari_sam_lora.finetune.events",
    "EpochMetrics": "napari_sam_lora.finetune.events",
}

__all__ = ["ConfigError", "FineTuneConfig", "load_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_sam_lora.finetune' has no attribute {name!r}")
