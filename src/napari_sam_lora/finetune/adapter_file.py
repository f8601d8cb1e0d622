"""The fine-tuned adapter as a file in the live-adapter format, and ways to use it.

The file is written with :func:`napari_sam_lora.engine.learning.adapter_files.save_adapters`: the
same
safetensors + JSON pair live learning writes. It holds one copy of the adapter per object
id (named ``obj<id>_ft``, with that object id), because ``Learner.load`` adopts an adapter
for the object its record names; live learning then fine-tunes each object's copy on its
corrections. The ``metadata.finetune`` record says how it was trained.

Two ways to use it on a session:

- ``Learner(session).load(path)``: the adapter joins each named object's pool (proposals,
  adapter-assisted propagation, fine-tuning on corrections);
- :func:`activate_finetuned`: every SAM2 decoder call (prompts and plain tracking, all
  objects) runs with the adapter, as if it were part of the model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from napari_sam_lora.engine.learning.adapter_files import load_adapters, save_adapters
from napari_sam_lora.engine.learning.adapters import (
    activate,
    adapter_state,
    delete_adapter,
    inject_adapter,
    restore_adapter_state,
)
from napari_sam_lora.engine.learning.lora_settings import LoraSettings

__all__ = ["activate_finetuned", "copy_name", "save_finetuned"]


def copy_name(obj_id: int) -> str:
    """Name of the adapter's copy for object ``obj_id`` in the file."""
    return f"obj{int(obj_id)}_ft"


def save_finetuned(
    path: str | os.PathLike[str],
    decoder: nn.Module,
    adapter_name: str,
    object_ids: Sequence[int],
    model: Any,
    settings: LoraSettings,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Save adapter ``adapter_name`` once per object id to ``<path>.safetensors`` + ``.json``.

    Parameters
    ----------
    path : str or PathLike
        Base path (``.safetensors``/``.json`` are added).
    decoder : nn.Module
        SAM2's mask decoder holding the adapter.
    adapter_name : str
        The trained adapter.
    object_ids : sequence of int
        Objects to register a copy for (at least one).
    model : LoadedModel
        For the base-model record (variant, label).
    settings : LoraSettings
        Saved with the adapter (live learning's recipe when it continues).
    metadata : mapping, optional
        Stored under ``metadata.finetune``.
    """
    if not object_ids:
        raise ValueError("save_finetuned needs at least one object id")
    state = adapter_state(decoder, adapter_name)
    copies: list[str] = []
    try:
        for obj_id in object_ids:
            name = copy_name(obj_id)
            inject_adapter(decoder, name, settings)
            copies.append(name)
            tag = f".{adapter_name}."
            restore_adapter_state(
                decoder, name, {k.replace(tag, f".{name}."): v for k, v in state.items()}
            )
        spec = model.spec
        return save_adapters(
            path,
            decoder,
            copies,
            {"model": spec.label, "untrained": spec.untrained, "finetune": dict(metadata or {})},
            variant=spec.variant.name,
            settings=settings,
            object_ids={copy_name(o): int(o) for o in object_ids},
        )
    finally:
        with warnings.catch_warnings():  # peft: "Adapter ... was active which is now deleted"
            warnings.simplefilter("ignore", UserWarning)
            for name in copies:
                delete_adapter(decoder, name)


def activate_finetuned(target: Any, path: str | os.PathLike[str]) -> str:
    """Load a fine-tuned adapter file and make it active for every SAM2 decoder call.

    Parameters
    ----------
    target : Session or LoadedModel
        Where to load it (a session's model is shared by its other sessions).
    path : str or PathLike
        The file written by training (``adapter``, ``adapter.safetensors`` or ``.json``).

    Returns
    -------
    str
        Name of the active adapter (the file's other copies are identical and removed).

    Notes
    -----
    ``Learner`` switches the decoder back to the base model after learning or proposing;
    use ``Learner.load`` when live learning runs on the same session.
    """
    model = getattr(target, "model", target)
    decoder = model.predictor.sam_mask_decoder
    loaded = load_adapters(path, decoder)
    keep, *extra = loaded.names
    for name in extra:
        delete_adapter(decoder, name)
    activate(decoder, keep)
    return keep
