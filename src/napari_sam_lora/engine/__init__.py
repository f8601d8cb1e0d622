"""The engine: SAM2, LoRA and training on numpy stacks; no Qt, no napari.

Importing this package is cheap; torch and sam2 load when ``Session`` (or another name
that needs them) is first used. The names exported here are the engine's public API:
applications (evaluation, fine-tuning, batch, the CLI) and the napari layers use only
these and the public functions of the engine's modules, never SAM2's internals (which
live in :mod:`.sam2_bridge`).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from napari_sam_lora.engine.annotation.prompts import BoxPrompt, MaskPrompt, PointPrompt, Prompt
from napari_sam_lora.engine.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DownloadError,
    JobCancelled,
    ModelError,
    PromptError,
    SamLoraError,
    StackError,
    WriteError,
)

_LAZY = {
    "Session": "napari_sam_lora.engine.tracking.session",
    "RepropagationReport": "napari_sam_lora.engine.tracking.repropagation",
    "Learner": "napari_sam_lora.engine.learning.learner",
    "Candidate": "napari_sam_lora.engine.learning.candidates",
    "LearnReport": "napari_sam_lora.engine.learning.learner",
    "AcceptReport": "napari_sam_lora.engine.learning.candidates",
    "AnnotationState": "napari_sam_lora.engine.annotation.state",
    "LoraSettings": "napari_sam_lora.engine.learning.lora_settings",
    "load_settings": "napari_sam_lora.engine.learning.lora_settings",
    "drain": "napari_sam_lora.engine.core.jobs",
    "PropagationStep": "napari_sam_lora.engine.tracking.plans",
    "LoadedModel": "napari_sam_lora.engine.tracking.predictor",
    "load_model": "napari_sam_lora.engine.tracking.predictor",
    "iter_load_model": "napari_sam_lora.engine.tracking.predictor",
}

__all__ = [
    "BoxPrompt",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DownloadError",
    "JobCancelled",
    "MaskPrompt",
    "ModelError",
    "PointPrompt",
    "Prompt",
    "PromptError",
    "SamLoraError",
    "StackError",
    "WriteError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_sam_lora.engine' has no attribute {name!r}")
