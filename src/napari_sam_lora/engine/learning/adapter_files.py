"""Adapter files: safetensors weights + a JSON record (base model, settings, reports).

Loading never unpickles: safetensors and JSON only, validated in full (the JSON's schema,
names, object ids, regexes, every tensor's shape, dtype and finiteness against this decoder)
before anything is injected, so a damaged file or another base model leaves the current
adapters untouched. :func:`check_adapters` runs the same validation without injecting (for
pre-flight checks).

Saving writes the pair through :func:`~.atomic.write_files` with ``keep_previous``: the
safetensors file first, then the JSON (which records the safetensors digest). A save killed
between the two renames leaves the old JSON beside the new safetensors and the old
safetensors as its ``previous_path``; loading picks the pair whose digests agree, so either
the old pair or the new pair is always readable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from napari_sam_lora.engine.core.atomic import previous_path, write_files
from napari_sam_lora.engine.core.errors import SamLoraError
from napari_sam_lora.engine.core.file_paths import adapter_paths
from napari_sam_lora.engine.core.jsonable import json_default
from napari_sam_lora.engine.core.native import preload_triton
from napari_sam_lora.engine.core.validation import check_object_id, short_repr
from napari_sam_lora.engine.learning.adapters import (
    LORA_KEY,
    NAME_RE,
    AdapterFileError,
    activate,
    active_adapter,
    adapter_names,
    decoder_device,
    inject_config,
    library_warnings_to_log,
    matching_modules,
    require_adapter,
)
from napari_sam_lora.engine.learning.lora_settings import MAX_RANK, LoraSettings
from napari_sam_lora.engine.learning.records import SCOPES, check_scope

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
    scope: str = "object"


def decoder_checksum(decoder: nn.Module) -> str:
    """sha256 over the decoder's base (non-LoRA) tensors; the same before and after injection."""
    tensors = {
        k.replace(".base_layer.", "."): v
        for k, v in decoder.state_dict().items()
        if not LORA_KEY.search(k)
    }
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}|{t.dtype}|{tuple(tensors[key].shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
    scope: str = "object",
) -> tuple[Path, Path]:
    """Save adapters ``names`` to ``<path>.safetensors`` + ``<path>.json``.

    The safetensors file holds peft's per-adapter state dicts with keys prefixed by the
    adapter name (``obj1_a0.transformer....lora_A.weight``); the JSON holds the format
    version, base variant and decoder checksum, the learner's ``scope`` (``"object"``:
    per-object adapters; ``"class"``: adapters shared by every object, whose object id is
    ``null``), each adapter's LoRA config, module list, object id and training reports, the
    settings and free ``metadata``.

    Returns
    -------
    tuple of Path
        The safetensors and JSON paths written.

    Raises
    ------
    WriteError
        The pair could not be written (disk full, read-only folder...); the previous pair,
        if any, is unchanged and no temporary file is left.
    SettingsError
        ``scope`` is not one of :data:`~.records.SCOPES` (nothing is written).
    """
    scope = check_scope(scope)
    st_path, json_path = adapter_paths(path)
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for name in names:
        require_adapter(decoder, name)
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
        "scope": scope,
        "safetensors_sha256": hashlib.sha256(blob).hexdigest(),
        "adapters": entries,
        "settings": settings.to_dict() if settings is not None else None,
        "metadata": dict(metadata or {}),
    }
    text = json.dumps(doc, indent=2, default=json_default)
    write_files({st_path: blob, json_path: text}, keep_previous=True)
    logger.info("Saved %d adapter(s) to %s", len(entries), st_path)
    return st_path, json_path


def _read_files(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    st_path, json_path = adapter_paths(path)
    if json_path.is_dir() or st_path.is_dir():
        folder = json_path if json_path.is_dir() else st_path
        raise AdapterFileError(f"{folder} is a folder, not an adapter file")
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
            f"{json_path} has format version {short_repr(doc.get('format_version'))}; this "
            f"version of napari-sam-lora reads version {FORMAT_VERSION}."
        )
    if hashlib.sha256(blob).hexdigest() != doc.get("safetensors_sha256"):
        previous = previous_path(st_path)  # a save interrupted between its two renames
        old = previous.read_bytes() if previous.is_file() else b""
        if not old or hashlib.sha256(old).hexdigest() != doc.get("safetensors_sha256"):
            raise AdapterFileError(
                f"{st_path} is damaged or does not belong to {json_path} (checksum mismatch)."
            )
        logger.warning("%s: an interrupted save left the previous pair; loading it", json_path)
        blob = old
    try:
        return doc, safetensors.torch.load(blob)
    except Exception as exc:
        raise AdapterFileError(f"{st_path} is not a readable safetensors file: {exc}") from exc


def _field(entry: Mapping[str, Any], key: str, kinds: Any, what: str, where: str) -> Any:
    if key not in entry:
        raise AdapterFileError(f"{where}: the adapter record has no {key!r}")
    value = entry[key]
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise AdapterFileError(f"{where}: {key}={short_repr(value)} is not {what}")
    return value


def _check_record(entry: Any, where: str) -> dict[str, Any]:
    """The JSON schema of one adapter record: types, ranges, names, ids and regexes."""
    if not isinstance(entry, Mapping):
        raise AdapterFileError(f"{where}: an adapter record is {short_repr(entry)}, not a mapping")
    name = _field(entry, "name", str, "a name", where)
    if not NAME_RE.fullmatch(name):
        raise AdapterFileError(f"{where}: invalid adapter name {short_repr(name)}")
    where = f"{where}, adapter {name!r}"
    rank = _field(entry, "r", int, "a rank (integer)", where)
    if not 1 <= rank <= MAX_RANK:
        raise AdapterFileError(f"{where}: rank {rank} is outside 1 … {MAX_RANK}")
    alpha = _field(entry, "lora_alpha", int | float, "a number", where)
    dropout = _field(entry, "lora_dropout", int | float, "a number", where)
    if not (alpha > 0 and 0 <= dropout < 1):
        raise AdapterFileError(f"{where}: lora_alpha must be > 0 and lora_dropout in [0, 1)")
    regex = _field(entry, "target_modules", str, "a regex", where)
    try:
        re.compile(regex)
    except re.error as exc:
        raise AdapterFileError(
            f"{where}: target_modules {short_repr(regex)} is not a valid regex ({exc})"
        ) from None
    modules = _field(entry, "modules", list, "a list of module names", where)
    if not modules or not all(isinstance(m, str) for m in modules):
        raise AdapterFileError(f"{where}: modules must be a non-empty list of module names")
    obj_id = entry.get("object_id")
    if obj_id is not None:
        try:
            obj_id = check_object_id(obj_id)
        except SamLoraError as exc:
            raise AdapterFileError(f"{where}: {exc}") from None
    return {**entry, "object_id": obj_id}


def _validate_entry(
    decoder: nn.Module, entry: Mapping[str, Any], new_name: str, tensors: Mapping[str, Any]
) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """Check one adapter record against the decoder; return its config and state dict."""
    name = entry["name"]
    if new_name in adapter_names(decoder):
        raise AdapterFileError(
            f"The decoder already has an adapter named {new_name!r}; load with rename=..."
        )
    if not NAME_RE.fullmatch(new_name):
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
    for key, tensor in state.items():
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise AdapterFileError(
                f"Adapter {name!r}: tensor {key} is not finite floating point (NaN, inf or "
                f"{tensor.dtype}); the file is damaged, train or save it again."
            )
    return config, state


@dataclass
class _Plan:
    doc: dict[str, Any]
    planned: list[tuple[dict[str, Any], str]]
    checked: list[tuple[str, LoraConfig, dict[str, torch.Tensor]]]
    settings: LoraSettings | None
    checksum: str
    scope: str = "object"


def _file_scope(doc: Mapping[str, Any], where: str, scopes: Collection[str] | None) -> str:
    """The file's ``scope`` (``"object"`` for files written before scopes existed), checked
    against the scopes the caller can take."""
    scope = doc.get("scope", "object")
    if not isinstance(scope, str) or scope not in SCOPES:
        raise AdapterFileError(
            f"{where}: scope={short_repr(scope)} is not one of {', '.join(map(repr, SCOPES))}"
        )
    if scopes is not None and scope not in scopes:
        raise AdapterFileError(
            f"{where} holds {scope}-scope adapters, which a learner with scope "
            f"{' or '.join(map(repr, scopes))} cannot take: "
            + (
                "they belong to no object; load them into a Learner(..., scope='class')"
                if scope == "class"
                else "load them into a Learner(..., scope='object')"
            )
        )
    return scope


def _plan(
    path: str | os.PathLike[str],
    decoder: nn.Module,
    expected_base_checksum: str | None,
    rename: Mapping[str, str] | None,
    scopes: Collection[str] | None = None,
) -> _Plan:
    """Read and validate a whole adapter file against ``decoder``; nothing is injected."""
    doc, tensors = _read_files(path)
    scope = _file_scope(doc, str(adapter_paths(path)[1]), scopes)
    base = doc.get("base")
    if not isinstance(base, Mapping):
        raise AdapterFileError(f"{path} has no 'base' record (variant, decoder checksum).")
    actual = decoder_checksum(decoder)
    expected = expected_base_checksum or actual
    recorded = base.get("decoder_sha256")
    if recorded != expected or actual != expected:
        raise AdapterFileError(
            f"{path} was trained on another base model (variant "
            f"{short_repr(base.get('variant'))}, decoder checksum {str(recorded)[:12]}...);"
            f" this decoder's checksum is {actual[:12]}.... Load the same model variant and"
            " checkpoint."
        )
    rename = dict(rename or {})
    where = str(adapter_paths(path)[1])
    records = doc.get("adapters")
    if not isinstance(records, list) or not records:
        raise AdapterFileError(f"{where}: 'adapters' must be a non-empty list of records")
    if not isinstance(doc.get("metadata") or {}, Mapping):
        raise AdapterFileError(f"{where}: 'metadata' must be a mapping")
    try:
        entries = [_check_record(e, where) for e in records]
        planned = [(e, rename.get(e["name"], e["name"])) for e in entries]
        checked = [(new, *_validate_entry(decoder, e, new, tensors)) for e, new in planned]
        settings = LoraSettings.from_dict(doc["settings"]) if doc.get("settings") else None
    except AdapterFileError:
        raise
    except (KeyError, TypeError, ValueError, re.error) as exc:
        message = str(exc) if isinstance(exc, SamLoraError) else repr(exc)
        raise AdapterFileError(f"{path} has invalid adapter records: {message}") from exc
    if len({new for new, *_ in checked}) != len(checked):
        raise AdapterFileError(f"{path}: two adapters would get the same name; use rename=...")
    return _Plan(doc, planned, checked, settings, actual, scope)


def _loaded(plan: _Plan, names: list[str]) -> LoadedAdapters:
    doc = plan.doc
    return LoadedAdapters(
        names=names,
        renamed={e["name"]: new for e, new in plan.planned},
        object_ids={new: e["object_id"] for e, new in plan.planned},
        settings=plan.settings,
        reports={new: e.get("report") for e, new in plan.planned},
        metadata=dict(doc.get("metadata") or {}),
        variant=str(doc["base"].get("variant")),
        base_checksum=plan.checksum,
        scope=plan.scope,
    )


def check_adapters(
    path: str | os.PathLike[str],
    decoder: nn.Module,
    expected_base_checksum: str | None = None,
    *,
    rename: Mapping[str, str] | None = None,
    scopes: Collection[str] | None = None,
) -> LoadedAdapters:
    """Validate an adapter file against ``decoder`` exactly as :func:`load_adapters` does,
    without injecting anything (``names`` lists what loading would add).

    Raises
    ------
    AdapterFileError
        As :func:`load_adapters`.
    """
    plan = _plan(path, decoder, expected_base_checksum, rename, scopes)
    return _loaded(plan, [new for new, *_ in plan.checked])


def load_adapters(
    path: str | os.PathLike[str],
    decoder: nn.Module,
    expected_base_checksum: str | None = None,
    *,
    rename: Mapping[str, str] | None = None,
    scopes: Collection[str] | None = None,
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
    scopes : collection of str, optional
        The file scopes the caller takes (default: any); a file of another scope is
        refused before anything is injected. A file without a ``scope`` is ``"object"``.

    Raises
    ------
    AdapterFileError
        Missing/damaged files, unknown format, wrong base model, name clash, bad records
        (object ids, regexes, ranks), bad tensors (shape, NaN/inf), an unknown scope or
        one outside ``scopes``.
    """
    plan = _plan(path, decoder, expected_base_checksum, rename, scopes)
    _inject_loaded(decoder, plan.checked)
    return _loaded(plan, [new for new, *_ in plan.checked])


def _inject_loaded(
    decoder: nn.Module, checked: list[tuple[str, LoraConfig, dict[str, torch.Tensor]]]
) -> None:
    previous = active_adapter(decoder)
    done: list[str] = []
    try:
        for new, config, state in checked:
            inject_config(decoder, config, new)
            done.append(new)
            device = decoder_device(decoder)
            result = _peft_set_state(
                decoder, {k: v.to(device) for k, v in state.items()}, adapter_name=new
            )
            if getattr(result, "unexpected_keys", None):
                raise AdapterFileError(f"Unexpected tensors for {new}: {result.unexpected_keys}")
    except Exception as exc:
        for name in done:
            with library_warnings_to_log(f"undo a failed load of {name}"):
                _peft_delete_adapter(decoder, name, prefix="lora_")
            decoder.peft_config.pop(name, None)
        activate(decoder, previous)
        if isinstance(exc, AdapterFileError):
            raise
        raise AdapterFileError(f"Could not load adapters: {exc}") from exc
