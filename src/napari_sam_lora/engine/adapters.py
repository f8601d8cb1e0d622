"""peft LoRA adapters on SAM2's mask decoder: injection, switching, proposals, pools, files.

Adapters are injected *in place* into ``sam_mask_decoder`` with
``peft.inject_adapter_in_model``, so every SAM2 call path (tracking included) sees the
active adapter. Each adapter has a name per object and slot (``obj1_a0``); one is active
at a time, or none (the base model). Injecting, proposing and training never change which
adapter is active for the caller: they switch temporarily and switch back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from sam2.modeling.sam2_base import NO_OBJ_SCORE
from torch import nn

from napari_sam_lora.engine.errors import SamLoraError
from napari_sam_lora.engine.features import DecoderInputs
from napari_sam_lora.engine.lora_settings import LoraSettings
from napari_sam_lora.engine.losses import logits_iou
from napari_sam_lora.engine.native import preload_triton

preload_triton()  # peft imports triton (via transformers); see preload_triton for why first

from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model  # noqa: E402
from peft import set_peft_model_state_dict as _peft_set_state  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from peft.tuners.tuners_utils import delete_adapter as _peft_delete_adapter  # noqa: E402

logger = logging.getLogger(__name__)

FORMAT_NAME = "napari-sam-lora-adapters"
FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
#: Decoder modules that run inside ``forward_image``: adapting them would stale the cache.
_ENCODER_SIDE = ("conv_s0", "conv_s1")
_LORA_KEY = re.compile(r"\.lora_[A-Za-z_]+\.")


class AdapterError(SamLoraError, ValueError):
    """An adapter cannot be created, found or used (bad name, regex matching nothing...)."""


class AdapterFileError(SamLoraError):
    """An adapter file is missing, damaged, or was trained on another base model."""


# --------------------------------------------------------------------------- injection


@dataclass(frozen=True)
class InjectionReport:
    """What :func:`inject_adapter` did: adapter name, wrapped modules, trainable parameters."""

    name: str
    modules: tuple[str, ...]
    n_params: int


def lora_layers(decoder: nn.Module) -> list[BaseTunerLayer]:
    """The peft LoRA layers inside ``decoder``."""
    return [m for m in decoder.modules() if isinstance(m, BaseTunerLayer)]


def adapter_names(decoder: nn.Module) -> list[str]:
    """Names of the adapters injected into ``decoder``, in injection order."""
    return list(getattr(decoder, "peft_config", {}))


def matching_modules(decoder: nn.Module, regex: str) -> list[str]:
    """Names of the decoder modules ``regex`` matches in full (peft's rule), LoRA parts excluded."""
    pattern = re.compile(regex)
    return [
        name
        for name, _ in decoder.named_modules()
        if name
        and ".lora_" not in name
        and not name.endswith(".base_layer")
        and pattern.fullmatch(name)
    ]


def _check_targets(decoder: nn.Module, regex: str) -> list[str]:
    names = matching_modules(decoder, regex)
    if not names:
        sample = [n for n, m in decoder.named_modules() if isinstance(m, nn.Linear)][:12]
        raise AdapterError(
            f"target_modules {regex!r} matches no module of the mask decoder. Names look like: "
            f"{', '.join(sample)}, ..."
        )
    for name in names:
        module = decoder.get_submodule(name)
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        if name.split(".")[0] in _ENCODER_SIDE:
            raise AdapterError(
                f"target_modules {regex!r} matches {name}, which runs inside the image encoder "
                "(forward_image); adapting it would make cached features stale."
            )
        if not isinstance(base, nn.Linear):
            raise AdapterError(
                f"target_modules {regex!r} matches {name} ({type(base).__name__}); "
                "only Linear layers can be adapted."
            )
    return names


def _check_new_name(decoder: nn.Module, name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise AdapterError(f"Adapter name {name!r} must use only letters, digits, '_' and '-'.")
    if name in adapter_names(decoder):
        raise AdapterError(f"An adapter named {name!r} already exists on this decoder.")


def _lora_config(settings: LoraSettings) -> LoraConfig:
    return LoraConfig(
        target_modules=settings.target_modules,
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        bias="none",
    )


def inject_adapter(decoder: nn.Module, name: str, settings: LoraSettings) -> InjectionReport:
    """Inject a new LoRA adapter ``name`` into ``decoder`` in place (peft).

    The new adapter starts as the identity (peft's zero-initialised ``lora_B``); its weights
    are frozen and the decoder's active adapter is left unchanged.

    Raises
    ------
    AdapterError
        Bad or duplicate name, regex matching no module (the message lists decoder module
        names), or matching a module that is not a Linear or runs in the image encoder.
    """
    _check_new_name(decoder, name)
    modules = _check_targets(decoder, settings.target_modules)
    _inject(decoder, _lora_config(settings), name)
    n_params = sum(p.numel() for p in adapter_parameters(decoder, name))
    logger.info(
        "Injected LoRA adapter %s into %d modules (%d parameters)", name, len(modules), n_params
    )
    return InjectionReport(name=name, modules=tuple(modules), n_params=n_params)


def _inject(decoder: nn.Module, config: LoraConfig, name: str) -> None:
    """peft injection keeping the active adapter; base and new weights end up frozen.

    Other adapters keep their ``requires_grad`` flags (peft's injection resets them).
    """
    previous = active_adapter(decoder)
    trainable = {p for other in adapter_names(decoder) for p in adapter_parameters(decoder, other)}
    trainable = {p for p in trainable if p.requires_grad}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*peft_config.*")
        inject_adapter_in_model(config, decoder, adapter_name=name)
    activate(decoder, previous)
    for p in decoder.parameters():
        p.requires_grad_(p in trainable)


def delete_adapter(decoder: nn.Module, name: str) -> None:
    """Remove adapter ``name`` from ``decoder`` (the active adapter is kept when another)."""
    _require(decoder, name)
    previous = active_adapter(decoder)
    _peft_delete_adapter(decoder, name, prefix="lora_")
    decoder.peft_config.pop(name, None)
    activate(decoder, None if previous == name else previous)


# --------------------------------------------------------------------------- switching


def _require(decoder: nn.Module, name: str) -> None:
    if name not in adapter_names(decoder):
        raise AdapterError(
            f"No adapter named {name!r} on this decoder; it has {adapter_names(decoder) or 'none'}."
        )


def active_adapter(decoder: nn.Module) -> str | None:
    """Name of the active adapter, or ``None`` when the base model runs."""
    layers = lora_layers(decoder)
    return _layer_state(layers[0]) if layers else None


def activate(decoder: nn.Module, name: str | None) -> None:
    """Make ``name`` the active adapter; ``None`` disables all adapters (base model).

    ``requires_grad`` flags are left as they were (see :func:`freeze_except`).
    """
    if name is not None:
        _require(decoder, name)
    for layer in lora_layers(decoder):
        if _layer_state(layer) == name:
            continue
        flags = [(p, p.requires_grad) for p in layer.parameters()]
        if name is None:
            layer.enable_adapters(False)
        else:
            layer.enable_adapters(True)
            layer.set_adapter(name, inference_mode=True)
        for p, flag in flags:  # peft's switching touches requires_grad; keep the caller's
            p.requires_grad_(flag)


def _layer_state(layer: BaseTunerLayer) -> str | None:
    return None if layer.disable_adapters else layer.active_adapters[0]


@contextmanager
def use_adapter(decoder: nn.Module, name: str | None) -> Iterator[None]:
    """Context manager running ``decoder`` with adapter ``name`` (``None``: base model)."""
    previous = active_adapter(decoder)
    activate(decoder, name)
    try:
        yield
    finally:
        activate(decoder, previous)


def adapter_parameters(decoder: nn.Module, name: str) -> list[nn.Parameter]:
    """The LoRA parameters (``lora_A``/``lora_B``) of adapter ``name``."""
    _require(decoder, name)
    params = []
    for layer in lora_layers(decoder):
        for attr in ("lora_A", "lora_B"):
            store = getattr(layer, attr, {})
            if name in store:
                params.extend(store[name].parameters())
    return params


def freeze_except(decoder: nn.Module, name: str | None) -> list[nn.Parameter]:
    """Freeze every decoder parameter except adapter ``name``'s LoRA weights; return those."""
    for p in decoder.parameters():
        p.requires_grad_(False)
    trainable = adapter_parameters(decoder, name) if name is not None else []
    for p in trainable:
        p.requires_grad_(True)
    return trainable


def adapter_state(decoder: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Detached copies of adapter ``name``'s LoRA tensors, keyed by parameter name."""
    tag = f".{name}."
    return {
        k: p.detach().clone()
        for k, p in decoder.named_parameters()
        if tag in k and _LORA_KEY.search(k)
    }


def restore_adapter_state(decoder: nn.Module, name: str, state: Mapping[str, torch.Tensor]) -> None:
    """Copy tensors saved by :func:`adapter_state` back into adapter ``name``."""
    params = dict(decoder.named_parameters())
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value)


# --------------------------------------------------------------------------- proposals


@dataclass(frozen=True)
class Proposal:
    """One adapter's mask for one frame, as SAM2 would output it.

    Attributes
    ----------
    adapter_name : str or None
        Adapter that produced it (``None``: base model).
    logits : np.ndarray
        ``(4h, 4w)`` float32 low-res logits of SAM2's pick (``-1024`` when the object
        score says "absent").
    iou_pred, object_score : float
        Predicted IoU of the pick, and object-score probability (sigmoid).
    confidence : float
        ``iou_pred × object_score``: the model's own confidence, used for ranking.
    mask_index : int
        Index of the pick among the decoder's masks.
    """

    adapter_name: str | None
    logits: np.ndarray
    iou_pred: float
    object_score: float
    confidence: float
    mask_index: int

    @property
    def mask(self) -> np.ndarray:
        """Boolean low-res mask (``logits > 0``)."""
        return self.logits > 0


def decoder_device(decoder: nn.Module) -> torch.device:
    """Device of the decoder's weights."""
    return next(decoder.parameters()).device


@torch.no_grad()
def propose(decoder: nn.Module, adapter_name: str | None, inputs: DecoderInputs) -> Proposal:
    """Run the decoder with ``adapter_name`` on recorded inputs, in eval mode (no dropout).

    Picks SAM2's choice among the multimask outputs (argmax predicted IoU) and applies the
    object-score gating of ``SAM2Base._forward_sam_heads``.
    """
    if inputs.image_embeddings.shape[0] != 1:
        raise ValueError("propose expects DecoderInputs for a single object (batch 1).")
    was_training = decoder.training
    decoder.eval()
    try:
        with use_adapter(decoder, adapter_name):
            masks, ious, _, obj = decoder(**inputs.to(decoder_device(decoder)).as_kwargs())
    finally:
        decoder.train(was_training)
    index = int(ious[0].argmax())
    logits = masks[0, index].float()
    obj_logit = float(obj.reshape(-1)[0])
    if getattr(decoder, "pred_obj_scores", False) and obj_logit <= 0:
        logits = torch.full_like(logits, NO_OBJ_SCORE)
    iou_pred = float(ious[0, index])
    score = float(torch.sigmoid(torch.tensor(obj_logit)))
    return Proposal(
        adapter_name=adapter_name,
        logits=logits.cpu().numpy().astype(np.float32),
        iou_pred=iou_pred,
        object_score=score,
        confidence=min(max(iou_pred, 0.0), 1.0) * score,
        mask_index=index,
    )


# --------------------------------------------------------------------------- pools


@dataclass
class ReplayEntry:
    """A past correction kept for fine-tuning: CPU inputs, target mask, adapter trained."""

    adapter_name: str
    inputs: DecoderInputs
    target: np.ndarray


@dataclass
class CorrectionPlan:
    """What :meth:`AdapterPool.plan` decided for one correction.

    ``examples`` (newest first) is what to pass to ``train_adapter``; ``fine_tune`` selects
    the fine-tuning learning rate and step cap; ``ious`` are each adapter's IoU on the
    correction (used only for the new-adapter rule), ``proposals`` their proposals.
    """

    obj_id: int
    adapter_name: str
    is_new: bool
    fine_tune: bool
    reason: str
    examples: list[tuple[DecoderInputs, np.ndarray]]
    proposals: dict[str, Proposal] = field(default_factory=dict)
    ious: dict[str, float] = field(default_factory=dict)


def _cpu_clone(t: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(False):
        return t.detach().to("cpu").clone()


def cpu_copy(inputs: DecoderInputs) -> DecoderInputs:
    """A CPU copy of ``inputs`` made of normal (not inference-mode) tensors, ``extra`` dropped."""
    return DecoderInputs(
        frame=inputs.frame,
        obj_id=inputs.obj_id,
        image_embeddings=_cpu_clone(inputs.image_embeddings),
        image_pe=_cpu_clone(inputs.image_pe),
        sparse_prompt_embeddings=_cpu_clone(inputs.sparse_prompt_embeddings),
        dense_prompt_embeddings=_cpu_clone(inputs.dense_prompt_embeddings),
        high_res_features=tuple(_cpu_clone(f) for f in inputs.high_res_features),
        multimask_output=inputs.multimask_output,
    )


_cpu_copy = cpu_copy  # kept for callers written against the first draft


class AdapterPool:
    """The adapters of one object (at most ``settings.max_adapters_per_object``).

    LIT's rule: a correction on which *every* adapter's IoU is ``<= new_adapter_iou``
    starts a new adapter (while there is room); otherwise the adapter the model itself is
    most confident in (predicted IoU × object score; never ground truth) is fine-tuned on
    the correction plus its replay entries. Flow: ``plan`` → ``begin`` → ``train_adapter``
    → ``commit`` (or ``abort`` when cancelled).
    """

    def __init__(self, obj_id: int, settings: LoraSettings) -> None:
        self.obj_id = int(obj_id)
        self.settings = settings
        self.names: list[str] = []
        self.replay: deque[ReplayEntry] = deque(maxlen=settings.replay_size)
        self.reports: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self.names)

    def next_name(self) -> str:
        """First free slot name, ``obj<id>_a<k>``."""
        k = 0
        while f"obj{self.obj_id}_a{k}" in self.names:
            k += 1
        return f"obj{self.obj_id}_a{k}"

    def adopt(self, name: str) -> None:
        """Register an adapter already on the decoder (e.g. loaded from a file)."""
        if name not in self.names:
            self.names.append(name)

    def proposals(self, decoder: nn.Module, inputs: DecoderInputs) -> list[Proposal]:
        """Every adapter's proposal for ``inputs``, most confident first."""
        props = [propose(decoder, name, inputs) for name in self.names]
        return sorted(props, key=lambda p: p.confidence, reverse=True)

    def best(self, decoder: nn.Module, inputs: DecoderInputs) -> Proposal | None:
        """The most confident adapter's proposal (``None`` with no adapter)."""
        props = self.proposals(decoder, inputs)
        return props[0] if props else None

    def plan(self, decoder: nn.Module, inputs: DecoderInputs, target: np.ndarray) -> CorrectionPlan:
        """Decide, for a correction ``target`` on ``inputs``, which adapter to train and how."""
        target = np.asarray(target).astype(bool)
        props = {p.adapter_name: p for p in self.proposals(decoder, inputs)}
        ious = {name: logits_iou(p.logits, target) for name, p in props.items()}
        examples = [(inputs, target)]
        room = len(self.names) < self.settings.max_adapters_per_object
        if not self.names or (room and max(ious.values()) <= self.settings.new_adapter_iou):
            reason = "first correction" if not self.names else "every adapter failed"
            return CorrectionPlan(
                self.obj_id, self.next_name(), True, False, reason, examples, props, ious
            )
        name = max(props.values(), key=lambda p: p.confidence).adapter_name
        reason = "most confident adapter" if room else "pool full: most confident adapter"
        examples += [(e.inputs, e.target) for e in reversed(self.replay) if e.adapter_name == name]
        return CorrectionPlan(self.obj_id, str(name), False, True, reason, examples, props, ious)

    def begin(self, decoder: nn.Module, plan: CorrectionPlan) -> InjectionReport | None:
        """Inject the plan's adapter when it is new."""
        if not plan.is_new:
            return None
        report = inject_adapter(decoder, plan.adapter_name, self.settings)
        self.adopt(plan.adapter_name)
        return report

    def commit(self, plan: CorrectionPlan, report: Any = None) -> None:
        """Record a finished training: keep the correction (on CPU) for replay."""
        inputs, target = plan.examples[0]
        if self.settings.replay_size > 0:
            self.replay.append(ReplayEntry(plan.adapter_name, cpu_copy(inputs), target.copy()))
        self.reports.setdefault(plan.adapter_name, []).append(report)

    def abort(self, decoder: nn.Module, plan: CorrectionPlan) -> None:
        """Undo :meth:`begin` after a cancelled run (drops a newly injected adapter)."""
        if plan.is_new and plan.adapter_name in self.names:
            delete_adapter(decoder, plan.adapter_name)
            self.names.remove(plan.adapter_name)


# --------------------------------------------------------------------------- files


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


_paths = adapter_paths  # kept for callers written against the first draft


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON serialisable")


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
    text = json.dumps(doc, indent=2, default=_json_default)
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
