"""LoRA recipe settings: what to adapt, how to train it, when to stop.

A recipe is a frozen :class:`LoraSettings`. Presets live as YAML files in the package's
``configs/`` folder (``lit``, ``default``, ``strong``); :func:`load_settings` reads a preset
by name or any YAML file by path, and :meth:`LoraSettings.from_dict` builds one from a
mapping. Every value is validated: unknown keys and bad values raise :class:`SettingsError`
with a message that names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

from napari_sam_lora.engine.core.errors import ConfigError
from napari_sam_lora.engine.core.validation import (
    check_rule,
    clip,
    coerce_value,
    read_yaml,
    short_repr,
)

#: LIT-LoRA's target: q/k/v of every attention in the decoder's two-way transformer (21).
LIT_TARGET_MODULES = (
    r"transformer\.(layers\.\d+\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
    r"|final_attn_token_to_image)\.(q_proj|k_proj|v_proj)"
)
#: Every Linear of the two-way transformer plus the hypernetwork MLPs (44 modules).
STRONG_TARGET_MODULES = (
    r"transformer\.(layers\.\d+\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
    r"\.(q_proj|k_proj|v_proj|out_proj)|layers\.\d+\.mlp\.layers\.\d+"
    r"|final_attn_token_to_image\.(q_proj|k_proj|v_proj|out_proj))"
    r"|output_hypernetworks_mlps\.\d+\.layers\.\d+"
)

LOSS_RESOLUTIONS = ("low", "full")


#: Upper bounds: beyond them a setting only allocates memory or time (rank 10⁸ asked for
#: 100 GB). The decoder's Linear layers are at most 2048 wide; LoRA ranks are a few.
MAX_RANK = 256
MAX_STEPS = 100_000
MAX_ADAPTERS_PER_OBJECT = 100
MAX_REPLAY = 10_000


class SettingsError(ConfigError):
    """A LoRA setting is unknown, has a bad value, or a preset/file cannot be read."""


@dataclass(frozen=True)
class LoraSettings:
    """One LoRA recipe (adapter shape, optimiser, stopping rules, loss).

    Attributes
    ----------
    name, description : str
        Preset name and a one-line description (shown in the GUI).
    target_modules : str
        Regex, matched in full against module names *inside* ``sam_mask_decoder``.
    rank, alpha, dropout : int, float, float
        LoRA rank, scaling numerator (scale = alpha / rank) and dropout on the LoRA input.
    lr_new, lr_finetune, weight_decay : float
        AdamW learning rate for a new adapter / when fine-tuning one, and weight decay.
    max_steps_new, max_steps_finetune : int
        Step caps (one step = one optimisation step over the correction + replay batch).
    max_seconds : float or None
        Cap on training wall time per correction (``None``, the default: no cap). What is
        learned is then decided by the steps and the data alone, never by the machine's
        load; a cap makes a busy machine learn less, and the report says so
        (``stop_reason == "max_seconds"``). Meant for interactive waits only.
    target_iou, patience : float or None, int
        Stop once the chosen mask's IoU is ``>= target_iou`` for ``patience`` steps in a row.
    plateau_patience, plateau_min_iou, min_improvement : int or None, float, float
        Stop when the best IoU has not improved by more than ``min_improvement`` for
        ``plateau_patience`` steps, counted once the best IoU exceeds ``plateau_min_iou``
        (LIT: 10 steps, 0.6, any improvement).
    fail_iou, fail_step : float or None, int
        Give up when the best IoU is still ``< fail_iou`` at step ``fail_step`` (LIT: 0.2, 50).
    restore_best : bool
        At the end keep the better (eval-mode IoU on the correction) of the final weights
        and the weights of the best step.
    max_adapters_per_object, new_adapter_iou, replay_size : int, float, int
        Pool rule: a correction on which every adapter has IoU ``<= new_adapter_iou`` starts
        a new adapter (up to the maximum); fine-tuning replays up to ``replay_size`` earlier
        corrections of the object.
    focal_weight, dice_weight, iou_weight, object_score_weight : float
        Loss = focal·w + dice·w on the best of SAM2's masks + MSE(predicted IoU, actual IoU)·w
        + BCE(object score, object present)·w.
    focal_alpha, focal_gamma : float
        Sigmoid focal loss parameters.
    loss_resolution : str
        ``"low"``: the decoder's 4h×4w logits; ``"full"``: logits upsampled to the image
        size (1024² for SAM2, as LIT does).
    """

    name: str = "default"
    description: str = ""
    target_modules: str = LIT_TARGET_MODULES
    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    lr_new: float = 5e-3
    lr_finetune: float = 2e-3
    weight_decay: float = 0.01
    max_steps_new: int = 60
    max_steps_finetune: int = 30
    max_seconds: float | None = None
    target_iou: float | None = 0.95
    patience: int = 3
    plateau_patience: int | None = 10
    plateau_min_iou: float = 0.3
    min_improvement: float = 0.005
    fail_iou: float | None = 0.05
    fail_step: int = 40
    restore_best: bool = True
    max_adapters_per_object: int = 3
    new_adapter_iou: float = 0.4
    replay_size: int = 4
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 5.0
    object_score_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    loss_resolution: str = "low"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = coerce_value(f.name, getattr(self, f.name), str(f.type), SettingsError)
            object.__setattr__(self, f.name, value)
            check_rule(f.name, value, _RULES.get(f.name), SettingsError)
        try:
            re.compile(self.target_modules)
        except re.error as exc:
            raise SettingsError(
                f"target_modules={short_repr(self.target_modules)} is not a valid regex: {exc}."
            ) from None
        if self.focal_weight + self.dice_weight <= 0:
            raise SettingsError("focal_weight and dice_weight are both 0: no mask loss left.")

    @classmethod
    def valid_keys(cls) -> list[str]:
        """Names of every setting, in declaration order."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraSettings:
        """Build settings from a mapping; missing keys take the defaults.

        Raises
        ------
        SettingsError
            On unknown keys (the message lists the valid ones) or bad values.
        """
        if not isinstance(data, Mapping):
            raise SettingsError(f"LoRA settings must be a mapping, got {type(data).__name__}.")
        unknown = sorted(clip(str(k), 40) for k in set(data) - set(cls.valid_keys()))
        if unknown:
            raise SettingsError(
                f"Unknown LoRA setting(s) {unknown[:10]}. Valid keys: "
                f"{', '.join(cls.valid_keys())}."
            )
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of every setting (JSON/YAML serialisable)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> LoraSettings:
        """A validated copy with ``changes`` applied (unknown keys raise)."""
        return LoraSettings.from_dict({**self.to_dict(), **changes})


def _is_prob(v: float) -> bool:
    return 0.0 <= v <= 1.0


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "target_modules": (lambda v: bool(v.strip()), "a non-empty regex"),
    "rank": (lambda v: 1 <= v <= MAX_RANK, f"an integer >= 1 and <= {MAX_RANK}"),
    "alpha": (lambda v: v > 0, "a number > 0"),
    "dropout": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "lr_new": (lambda v: v > 0, "a learning rate > 0"),
    "lr_finetune": (lambda v: v > 0, "a learning rate > 0"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "max_steps_new": (lambda v: 1 <= v <= MAX_STEPS, f"an integer >= 1 and <= {MAX_STEPS}"),
    "max_steps_finetune": (lambda v: 1 <= v <= MAX_STEPS, f"an integer >= 1 and <= {MAX_STEPS}"),
    "max_seconds": (lambda v: v > 0, "a number of seconds > 0, or null for no cap"),
    "target_iou": (lambda v: 0.0 < v <= 1.0, "an IoU in (0, 1], or null to disable"),
    "patience": (lambda v: 1 <= v <= MAX_STEPS, f"an integer >= 1 and <= {MAX_STEPS}"),
    "plateau_patience": (
        lambda v: 1 <= v <= MAX_STEPS,
        f"an integer >= 1 and <= {MAX_STEPS}, or null to disable",
    ),
    "plateau_min_iou": (_is_prob, "an IoU in [0, 1]"),
    "min_improvement": (_is_prob, "an IoU difference in [0, 1]"),
    "fail_iou": (_is_prob, "an IoU in [0, 1], or null to disable"),
    "fail_step": (lambda v: 1 <= v <= MAX_STEPS, f"an integer >= 1 and <= {MAX_STEPS}"),
    "max_adapters_per_object": (
        lambda v: 1 <= v <= MAX_ADAPTERS_PER_OBJECT,
        f"an integer >= 1 and <= {MAX_ADAPTERS_PER_OBJECT}",
    ),
    "new_adapter_iou": (_is_prob, "an IoU in [0, 1]"),
    "replay_size": (lambda v: 0 <= v <= MAX_REPLAY, f"an integer >= 0 and <= {MAX_REPLAY}"),
    "focal_weight": (lambda v: v >= 0, "a weight >= 0"),
    "dice_weight": (lambda v: v >= 0, "a weight >= 0"),
    "iou_weight": (lambda v: v >= 0, "a weight >= 0"),
    "object_score_weight": (lambda v: v >= 0, "a weight >= 0"),
    "focal_alpha": (_is_prob, "a number in [0, 1]"),
    "focal_gamma": (lambda v: v >= 0, "a number >= 0"),
    "loss_resolution": (lambda v: v in LOSS_RESOLUTIONS, f"one of {list(LOSS_RESOLUTIONS)}"),
}


def presets_dir() -> Path:
    """Folder holding the preset YAML files (the package's ``configs``)."""
    return Path(str(files("napari_sam_lora") / "configs"))


def available_presets() -> list[str]:
    """Names of the presets that :func:`load_settings` accepts."""
    folder = presets_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_settings(name_or_path: str | Path = "default") -> LoraSettings:
    """Load a preset by name (``"lit"``, ``"default"``, ``"strong"``) or a YAML file by path.

    Parameters
    ----------
    name_or_path : str or Path
        A preset name, or the path of a YAML file holding a flat mapping of settings.

    Returns
    -------
    LoraSettings

    Raises
    ------
    SettingsError
        Unknown preset, unreadable file, invalid YAML, unknown keys or bad values.
    """
    text = str(name_or_path)
    is_path = (
        isinstance(name_or_path, Path)
        or text.endswith((".yaml", ".yml"))
        or len(Path(text).parts) > 1
    )
    path = Path(text) if is_path else presets_dir() / f"{text}.yaml"
    if not path.is_file():
        if is_path:
            raise SettingsError(f"LoRA settings file {path} does not exist.")
        raise SettingsError(
            f"Unknown LoRA preset {text!r}. Available presets: {', '.join(available_presets())}"
            " (or give the path of a YAML file)."
        )
    data = read_yaml(path, "LoRA settings file", SettingsError)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a mapping of settings, not {type(data).__name__}.")
    data.setdefault("name", path.stem)
    try:
        return LoraSettings.from_dict(data)
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}") from exc
