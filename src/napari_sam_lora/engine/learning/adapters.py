"""peft LoRA adapters on SAM2's mask decoder: injection, switching and proposals.

Pools of adapters per object live in :mod:`.adapter_pool`, adapter files in
:mod:`.adapter_files`.

Adapters are injected *in place* into ``sam_mask_decoder`` with
``peft.inject_adapter_in_model``, so every SAM2 call path (tracking included) sees the
active adapter. Each adapter has a name per object and slot (``obj1_a0``); one is active
at a time, or none (the base model). Injecting, proposing and training never change which
adapter is active for the caller: they switch temporarily and switch back.

peft's warnings about what these operations do on purpose ("Adapter obj2_a0 was active which
is now deleted...") never reach the user's console: every peft call here runs inside
:func:`library_warnings_to_log`, which turns them into ``logging`` records of this module.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from sam2.modeling.sam2_base import NO_OBJ_SCORE
from torch import nn

from napari_sam_lora.engine.core.errors import SamLoraError
from napari_sam_lora.engine.core.native import preload_triton
from napari_sam_lora.engine.learning.lora_settings import LoraSettings
from napari_sam_lora.engine.tracking.features import DecoderInputs

preload_triton()  # peft imports triton (via transformers); see preload_triton for why first

from peft import LoraConfig, inject_adapter_in_model  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from peft.tuners.tuners_utils import delete_adapter as _peft_delete_adapter  # noqa: E402

logger = logging.getLogger(__name__)

#: What an adapter name may be made of.
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
#: Decoder modules that run inside ``forward_image``: adapting them would stale the cache.
_ENCODER_SIDE = ("conv_s0", "conv_s1")
#: Matches the LoRA parts of a parameter name (``...lora_A.<adapter>.weight``).
LORA_KEY = re.compile(r"\.lora_[A-Za-z_]+\.")


class AdapterError(SamLoraError, ValueError):
    """An adapter cannot be created, found or used (bad name, regex matching nothing...)."""


class AdapterFileError(SamLoraError):
    """An adapter file is missing, damaged, or was trained on another base model."""


@contextmanager
def library_warnings_to_log(action: str) -> Iterator[None]:
    """Route the warnings raised inside the block (peft's, torch's) to this module's logger
    (level INFO, naming ``action``) instead of the console; the block's outcome is kept.

    Parameters
    ----------
    action : str
        What the block does, e.g. ``"delete adapter obj2_a0"``.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in caught:
                category = getattr(warning.category, "__name__", "Warning")
                logger.info("%s: %s: %s", action, category, warning.message)


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


def check_targets(decoder: nn.Module, regex: str) -> list[str]:
    """Modules ``regex`` adapts; :class:`AdapterError` if none, a non-Linear or an encoder one."""
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
    if not NAME_RE.fullmatch(name):
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
    modules = check_targets(decoder, settings.target_modules)
    inject_config(decoder, _lora_config(settings), name)
    n_params = sum(p.numel() for p in adapter_parameters(decoder, name))
    logger.info(
        "Injected LoRA adapter %s into %d modules (%d parameters)", name, len(modules), n_params
    )
    return InjectionReport(name=name, modules=tuple(modules), n_params=n_params)


def inject_config(decoder: nn.Module, config: LoraConfig, name: str) -> None:
    """Inject adapter ``name`` from a peft ``config`` as is (no checks), keeping the active one.

    Base and new weights end up frozen. :func:`inject_adapter` is the checked entry point;
    this one serves files whose records were validated in full (:mod:`.adapter_files`).

    Other adapters keep their ``requires_grad`` flags (peft's injection resets them).
    """
    previous = active_adapter(decoder)
    trainable = {p for other in adapter_names(decoder) for p in adapter_parameters(decoder, other)}
    trainable = {p for p in trainable if p.requires_grad}
    with library_warnings_to_log(f"inject adapter {name}"):
        inject_adapter_in_model(config, decoder, adapter_name=name)
    activate(decoder, previous)
    for p in decoder.parameters():
        p.requires_grad_(p in trainable)


def delete_adapter(decoder: nn.Module, name: str) -> None:
    """Remove adapter ``name`` from ``decoder`` (the active adapter is kept when another)."""
    require_adapter(decoder, name)
    previous = active_adapter(decoder)
    with library_warnings_to_log(f"delete adapter {name}"):
        _peft_delete_adapter(decoder, name, prefix="lora_")
    decoder.peft_config.pop(name, None)
    activate(decoder, None if previous == name else previous)


# --------------------------------------------------------------------------- switching


def require_adapter(decoder: nn.Module, name: str) -> None:
    """Raise :class:`AdapterError` unless ``decoder`` has an adapter ``name``."""
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
        require_adapter(decoder, name)
    with library_warnings_to_log(f"activate adapter {name}"):
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
    if layer.disable_adapters or not layer.active_adapters:
        return None  # peft leaves the list empty once the last adapter is deleted
    return layer.active_adapters[0]


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
    require_adapter(decoder, name)
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
        if tag in k and LORA_KEY.search(k)
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
