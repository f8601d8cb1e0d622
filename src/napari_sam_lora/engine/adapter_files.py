"""Adapter files: safetensors weights + a JSON record (base model, settings, reports).

Loading never unpickles: safetensors and JSON only, validated in full before anything is
injected, so a damaged file or another base model leaves the current adapters untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from napari_sam_lora.engine.adapters import (
    _LORA_KEY,
    _NAME_RE,
    AdapterFileError,
    _inject,
    _require,
    activate,
    active_adapter,
    adapter_names,
    decoder_device,
    matching_modules,
)
from napari_sam_lora.engine.jsonable import json_default
from napari_sam_lora.engine.lora_settings import LoraSettings
from napari_sam_lora.engine.native import preload_triton

preload_triton()  # before peft, as in adapters.py

from peft import LoraConfig, get_peft_model_state_dict  # noqa: E402
from peft import set_peft_model_state_dict as _peft_set_state  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from peft.tuners.tuners_utils import delete_adapter as _peft_delete_adapter  # noqa: E402

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
FORMAT_NAME = "napari-sam-lora-adapters"


@dataclass
class LoadedAdapters:
    """What :func:`load_adapters` put on the decoder, and the file's records."""

    names: list[str]
    renamed: dict[str, str]
    object_ids: dict[str, int | None]
    settings: LoraSettings | None
    reports: dict[str, Any]
    metadata: dict[str, Any]
    variant: str
    base_checksum: str


def decoder_checksum(decoder: nn.Module) -> str:
    """sha256 over the decoder's base (non-LoRA) tensors; the same before and after injection."""
    tensors = {
        k.replace(".base_layer.", "."): v
        for k, v in decoder.state_dict().items()
        if not _LORA_KEY.search(k)
    }
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}|{t.dtype}|{tuple(tensors[key].shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def adapter_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(<path>.safetensors, <path>.json)`` (a ``.safetensors``/``.json`` suffix is dropped)."""
    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    return base.parent / f"{base.name}.safetensors", base.parent / f"{base.name}.json"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_adapters(
    path: str | os.PathLike[str],
    decoder: nn.Module,
    names: Sequence[str],
    metadata: Mapping[str, Any] | None = None,
    *,
    variant: str = "unknown",
    settings: LoraSettings | None = None,
    object_ids: Mapping[str, int] | None = None,
    reports: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Save adapters ``names`` to ``<path>.safetensors`` + ``<path>.json``.

    The safetensors file holds peft's per-adapter state dicts with keys prefixed by the
    adapter name (``obj1_a0.transformer....lora_A.weight``); the JSON holds the format
    version, base variant and decoder checksum, each adapter's LoRA config, module list,
    object id and training reports, the settings and free ``metadata``.

    Returns
    -------
    tuple of Path
        The safetensors and JSON paths written.
    """
    st_path, json_path = adapter_paths(path)
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for name in names:
        _require(decoder, name)
        state = get_peft_model_state_dict(decoder, adapter_name=name)
        tensors.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in state.items()})
        cfg = decoder.peft_config[name]
        entries.append(
            {
                "name": name,
                "object_id": (object_ids or {}).get(name),
                "r": cfg.r,
                "lora_alpha": cfg.lora_alpha,
                "lora_dropout": cfg.lora_dropout,
                "target_modules": cfg.target_modules,
                "modules": sorted({k.rsplit(".lora_", 1)[0] for k in state}),
                "report": (reports or {}).get(name),
            }
        )
    blob = safetensors.torch.save(tensors)
    doc = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "base": {"variant": variant, "decoder_sha256": decoder_checksum(decoder)},
        "safetensors_sha256": hashlib.sha256(blob).hexdigest(),
        "adapters": entries,
        "settings": settings.to_dict() if settings is not None else None,
        "metadata": dict(metadata or {}),
    }
    text = json.dumps(doc, indent=2, default=json_default)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(st_path, blob)
    _atomic_write(json_path, text.encode("utf-8"))
    logger.info("Saved %d adapter(s) to %s", len(entries), st_path)
    return st_path, json_path


def _read_files(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    st_path, json_path = adapter_paths(path)
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
        blob = st_path.read_bytes()
    except FileNotFoundError as exc:
        raise AdapterFileError(f"Adapter file missing: {exc.filename}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFileError(f"Cannot read adapter settings {json_path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise AdapterFileError(f"{json_path} is not a napari-sam-lora adapter file.")
    if doc.get("format_version") != FORMAT_VERSION:
        raise AdapterFileError(
            f"{json_path} has format version {doc.get('format_version')!r}; this version of "
            f"napari-sam-lora reads version {FORMAT_VERSION}."
        )
    if hashlib.sha256(blob).hexdigest() != doc.get("safetensors_sha256"):
        raise AdapterFileError(
            f"{st_path} is damaged or does not belong to {json_path} (checksum mismatch)."
        )
    try:
        return doc, safetensors.torch.load(blob)
    except Exception as exc:
        raise AdapterFileError(f"{st_path} is not a readable safetensors file: {exc}") from exc


def _validate_entry(
    decoder: nn.Module, entry: Mapping[str, Any], new_name: str, tensors: Mapping[str, Any]
) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """Check one adapter record against the decoder; return its config and state dict."""
    name = entry["name"]
    if new_name in adapter_names(decoder):
        raise AdapterFileError(
            f"The decoder already has an adapter named {new_name!r}; load with rename=..."
        )
    if not _NAME_RE.fullmatch(new_name):
        raise AdapterFileError(f"Invalid adapter name {new_name!r} in the file or rename.")
    config = LoraConfig(
        target_modules=entry["target_modules"],
        r=int(entry["r"]),
        lora_alpha=entry["lora_alpha"],
        lora_dropout=entry["lora_dropout"],
        bias="none",
    )
    targets = sorted(matching_modules(decoder, entry["target_modules"]))
    if targets != sorted(entry["modules"]):
        raise AdapterFileError(
            f"Adapter {name!r} was trained on modules {entry['modules'][:3]}... that do not "
            "match this decoder."
        )
    state = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{name}.")}
    expected = {}
    for module_name in targets:
        module = decoder.get_submodule(module_name)
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        expected[f"{module_name}.lora_A.weight"] = (config.r, base.in_features)
        expected[f"{module_name}.lora_B.weight"] = (base.out_features, config.r)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if shapes != expected:
        raise AdapterFileError(f"Adapter {name!r} has missing or mis-shaped LoRA tensors.")
    return config, state


def load_adapters(
    path: str | os.PathLike[str],
    decoder: nn.Module,
    expected_base_checksum: str | None = None,
    *,
    rename: Mapping[str, str] | None = None,
) -> LoadedAdapters:
    """Load adapters saved by :func:`save_adapters` into ``decoder`` (safetensors + JSON only).

    Everything is validated before anything is injected; on any failure the decoder's
    existing adapters are left exactly as they were.

    Parameters
    ----------
    path : str or PathLike
        ``<path>``, ``<path>.safetensors`` or ``<path>.json``.
    decoder : nn.Module
        ``sam_mask_decoder`` of the base model.
    expected_base_checksum : str, optional
        Checksum the file must have been trained on; default: this decoder's own.
    rename : mapping, optional
        ``{name in file: name to use}``, to avoid clashes with existing adapters.

    Raises
    ------
    AdapterFileError
        Missing/damaged files, unknown format, wrong base model, name clash, bad tensors.
    """
    doc, tensors = _read_files(path)
    actual = decoder_checksum(decoder)
    expected = expected_base_checksum or actual
    recorded = doc.get("base", {}).get("decoder_sha256")
    if recorded != expected or actual != expected:
        raise AdapterFileError(
            f"{path} was trained on another base model (variant "
            f"{doc.get('base', {}).get('variant')!r}, decoder checksum {str(recorded)[:12]}...);"
            f" this decoder's checksum is {actual[:12]}.... Load the same model variant and"
            " checkpoint."
        )
    rename = dict(rename or {})
    try:
        planned = [(e, rename.get(e["name"], e["name"])) for e in doc["adapters"]]
        checked = [(new, *_validate_entry(decoder, e, new, tensors)) for e, new in planned]
        settings = LoraSettings.from_dict(doc["settings"]) if doc.get("settings") else None
    except AdapterFileError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterFileError(f"{path} has invalid adapter records: {exc!r}") from exc
    if len({new for new, *_ in checked}) != len(checked):
        raise AdapterFileError(f"{path}: two adapters would get the same name; use rename=...")
    _inject_loaded(decoder, checked)
    return LoadedAdapters(
        names=[new for new, *_ in checked],
        renamed={e["name"]: new for e, new in planned},
        object_ids={new: e.get("object_id") for e, new in planned},
        settings=settings,
        reports={new: e.get("report") for e, new in planned},
        metadata=doc.get("metadata") or {},
        variant=str(doc.get("base", {}).get("variant")),
        base_checksum=actual,
    )


def _inject_loaded(
    decoder: nn.Module, checked: list[tuple[str, LoraConfig, dict[str, torch.Tensor]]]
) -> None:
    previous = active_adapter(decoder)
    done: list[str] = []
    try:
        for new, config, state in checked:
            _inject(decoder, config, new)
            done.append(new)
            device = decoder_device(decoder)
            result = _peft_set_state(
                decoder, {k: v.to(device) for k, v in state.items()}, adapter_name=new
            )
            if getattr(result, "unexpected_keys", None):
                raise AdapterFileError(f"Unexpected tensors for {new}: {result.unexpected_keys}")
    except Exception as exc:
        for name in done:
            _peft_delete_adapter(decoder, name, prefix="lora_")
            decoder.peft_config.pop(name, None)
        activate(decoder, previous)
        if isinstance(exc, AdapterFileError):
            raise
        raise AdapterFileError(f"Could not load adapters: {exc}") from exc
