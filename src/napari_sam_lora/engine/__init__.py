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

from napari_sam_lora.engine.errors import (
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
from napari_sam_lora.engine.prompts import BoxPrompt, MaskPrompt, PointPrompt, Prompt

_LAZY = {
    "Session": "napari_sam_lora.engine.session",
    "RepropagationReport": "napari_sam_lora.engine.repropagation",
    "Learner": "napari_sam_lora.engine.learning",
    "Candidate": "napari_sam_lora.engine.candidates",
    "LearnReport": "napari_sam_lora.engine.learning",
    "AcceptReport": "napari_sam_lora.engine.candidates",
    "AnnotationState": "napari_sam_lora.engine.annotations",
    "LoraSettings": "napari_sam_lora.engine.lora_settings",
    "load_settings": "napari_sam_lora.engine.lora_settings",
    "drain": "napari_sam_lora.engine.jobs",
    "PropagationStep": "napari_sam_lora.engine.tracking",
    "LoadedModel": "napari_sam_lora.engine.predictor",
    "load_model": "napari_sam_lora.engine.predictor",
    "iter_load_model": "napari_sam_lora.engine.predictor",
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
