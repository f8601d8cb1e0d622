"""The fine-tuning config: one YAML file names the data, the split, the LoRA recipe and training.

Every section is checked before anything heavy happens: unknown keys raise a
:class:`ConfigError` listing the valid keys of that section, and bad values raise one naming
the key, the value and what is allowed. Relative paths are resolved against the folder of
the config file. See ``configs/finetune/example.yaml`` for a documented example.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from napari_sam_lora.engine.core.errors import ConfigError
from napari_sam_lora.engine.core.validation import (
    MAX_IMAGE_SIZE,
    MAX_OBJECT_ID,
    MIN_IMAGE_SIZE,
    check_image_size,
    check_keys,
    check_rule,
    kind_of,
    read_yaml,
    short_repr,
    to_int,
)
from napari_sam_lora.engine.core.validation import coerce_value as value_of
from napari_sam_lora.engine.learning.lora_settings import (
    MAX_STEPS,
    LoraSettings,
    SettingsError,
    load_settings,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "EarlyStopping",
    "ExamplesConfig",
    "FineTuneConfig",
    "ModelConfig",
    "PairConfig",
    "SplitConfig",
    "TrainingConfig",
    "load_config",
]

PROMPT_KINDS = ("point", "box")
MAX_EPOCHS = 10_000
MAX_BATCH = 4096


def _valid_image_size(value: int) -> bool:
    try:
        check_image_size(value)
    except ConfigError:
        return False
    return True


Rule = tuple[Callable[[Any], bool], str]


@dataclass(frozen=True)
class PairConfig:
    """One image stack and its labels (paths as written in the config)."""

    images: str
    labels: str
    name: str | None = None


@dataclass(frozen=True)
class DataConfig:
    """Where the annotated stacks are: explicit ``pairs`` and/or a ``folder`` of pairs."""

    pairs: tuple[PairConfig, ...] = ()
    folder: str | None = None
    image_suffix: str = "_image"
    labels_suffix: str = "_labels"


@dataclass(frozen=True)
class SplitConfig:
    """Train/validation split: whole stacks or single frames, seeded."""

    by: str = "stack"
    val_fraction: float = 0.25
    val: tuple[str, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """The SAM2 model the adapter is trained for (and must be used with)."""

    name: str = "sam2.1_hiera_tiny"
    image_size: int | None = None
    device: str | None = None


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation over the recorded examples (AdamW on the adapter's LoRA weights)."""

    lr: float = 1e-3
    lr_schedule: str = "cosine"
    epochs: int = 20
    max_steps: int | None = None
    batch_size: int = 8
    seed: int = 0
    checkpoint_every: int = 25


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the monitored validation metric has not improved for ``patience`` epochs."""

    monitor: str = "val_iou"
    patience: int | None = 5
    min_delta: float = 0.0


@dataclass(frozen=True)
class ExamplesConfig:
    """How training examples are recorded from the annotated stacks."""

    tracking: bool = True
    clicks: bool = True
    correct_below: float = 0.5
    max_clicks: int = 3
    start: str = "first"
    prompts: tuple[str, ...] = PROMPT_KINDS
    prompt_frames: int = 2
    dtype: str = "float16"
    cache: str | None = None


_RULES: dict[str, dict[str, Rule]] = {
    "data": {
        "image_suffix": (lambda v: bool(v), "a non-empty file-name suffix such as _image"),
        "labels_suffix": (lambda v: bool(v), "a non-empty file-name suffix such as _labels"),
    },
    "split": {
        "by": (lambda v: v in ("stack", "frame"), "'stack' or 'frame'"),
        "val_fraction": (lambda v: 0.0 < v < 1.0, "a fraction in (0, 1)"),
    },
    "model": {
        "image_size": (
            lambda v: _valid_image_size(v),
            f"a multiple of 32 in {MIN_IMAGE_SIZE} … {MAX_IMAGE_SIZE} (what SAM2 accepts)",
        )
    },
    "training": {
        "lr": (lambda v: v > 0, "a learning rate > 0"),
        "lr_schedule": (lambda v: v in ("constant", "cosine"), "'constant' or 'cosine'"),
        "epochs": (lambda v: 1 <= v <= MAX_EPOCHS, f"an integer >= 1 and <= {MAX_EPOCHS}"),
        "max_steps": (
            lambda v: 1 <= v <= MAX_STEPS * 10,
            f"an integer >= 1 and <= {MAX_STEPS * 10}, or null for no cap",
        ),
        "batch_size": (lambda v: 1 <= v <= MAX_BATCH, f"an integer >= 1 and <= {MAX_BATCH}"),
        "checkpoint_every": (lambda v: v >= 1, "a number of steps >= 1"),
    },
    "early_stopping": {
        "monitor": (lambda v: v in ("val_loss", "val_iou"), "'val_loss' or 'val_iou'"),
        "patience": (lambda v: v >= 1, "a number of epochs >= 1, or null to disable"),
        "min_delta": (lambda v: v >= 0, "a number >= 0"),
    },
    "examples": {
        "correct_below": (lambda v: 0.0 < v <= 1.0, "an IoU in (0, 1]"),
        "max_clicks": (lambda v: v >= 0, "an integer >= 0"),
        "start": (lambda v: v in ("first", "middle"), "'first' or 'middle'"),
        "prompts": (lambda v: set(v) <= set(PROMPT_KINDS), f"a list drawn from {PROMPT_KINDS}"),
        "prompt_frames": (lambda v: v >= 0, "an integer >= 0"),
        "dtype": (lambda v: v in ("float16", "float32"), "'float16' or 'float32'"),
    },
}

_TOP_KEYS = (
    "data",
    "split",
    "model",
    "lora",
    "training",
    "early_stopping",
    "examples",
    "threshold",
    "output",
    "resume",
    "object_ids",
)


@dataclass(frozen=True)
class FineTuneConfig:
    """A checked fine-tuning config.

    Attributes
    ----------
    data, split, model, training, early_stopping, examples
        The sections (see the example config for every key).
    lora : LoraSettings
        The preset with the config's overrides applied (saved with the adapter, and used
        when live learning continues on top of it).
    preset : str
        Name or path of the preset the LoRA settings started from.
    threshold : float
        Mask probability threshold used by the metrics and the diagnosis.
    output : Path
        Output folder (adapter, metrics, checkpoint, diagnosis, example cache).
    resume : bool
        Continue from ``<output>/checkpoint.pt`` when one exists.
    object_ids : tuple of int
        Objects the saved file registers the adapter for (one copy each), so that
        ``Learner.load`` adopts it for them; empty: every id of the training stacks.
    base_dir : Path
        Folder relative paths are resolved against (the config file's folder).
    """

    data: DataConfig
    lora: LoraSettings
    preset: str = "default"
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    threshold: float = 0.5
    output: Path = Path("finetune_output")
    resume: bool = True
    object_ids: tuple[int, ...] = ()
    base_dir: Path = Path(".")

    def resolve(self, path: str | Path) -> Path:
        """``path`` resolved against :attr:`base_dir` (absolute paths are kept)."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else Path(os.path.normpath(self.base_dir / path))

    @property
    def cache_dir(self) -> Path:
        """Folder of the recorded examples."""
        cache = self.examples.cache
        return self.resolve(cache) if cache else self.output / "examples"

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict of the whole config (paths as strings)."""
        return json.loads(json.dumps(asdict(self), default=str))

    def digest(self, *sections: str, skip: tuple[str, ...] = ()) -> str:
        """sha256 of the named sections (what a cache or checkpoint depends on).

        ``skip`` names ``section.key`` entries left out (e.g. ``examples.cache``).
        """
        doc = self.to_dict()
        picked = {k: dict(doc[k]) if isinstance(doc[k], dict) else doc[k] for k in sections}
        for dotted in skip:
            section, key = dotted.split(".", 1)
            picked.get(section, {}).pop(key, None)
        blob = json.dumps(picked, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_config(path: str | Path, **overrides: Any) -> FineTuneConfig:
    """Read and check a fine-tuning YAML file.

    Parameters
    ----------
    path : str or Path
        The YAML config.
    **overrides
        Top-level keys replacing the file's values (e.g. ``output=...``, ``resume=False``).

    Raises
    ------
    ConfigError
        Missing or unreadable file, invalid YAML, unknown keys (the message lists the
        valid ones) or bad values (the message names the key and what is allowed).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    doc = read_yaml(path, "config")
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections, not a {kind_of(doc)}")
    doc.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return config_from_dict(doc, base_dir=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_from_dict(doc: Mapping[str, Any], base_dir: str | Path = ".") -> FineTuneConfig:
    """Build a :class:`FineTuneConfig` from a mapping (see :func:`load_config`)."""
    check_keys("top level", doc, _TOP_KEYS)
    if "data" not in doc:
        raise ConfigError("the config has no 'data' section: name image/label pairs or a folder")
    base = Path(base_dir)
    data = _data(doc["data"])
    preset, lora = _lora(doc.get("lora"))
    output = doc.get("output", "finetune_output")
    if not isinstance(output, str | Path) or not str(output).strip():
        raise ConfigError(f"output={short_repr(output)} is not allowed: expected a folder path")
    config = FineTuneConfig(
        data=data,
        lora=lora,
        preset=preset,
        split=_section("split", doc.get("split"), SplitConfig),
        model=_section("model", doc.get("model"), ModelConfig),
        training=_section("training", doc.get("training"), TrainingConfig),
        early_stopping=_section("early_stopping", doc.get("early_stopping"), EarlyStopping),
        examples=_section("examples", doc.get("examples"), ExamplesConfig),
        threshold=value_of("threshold", doc.get("threshold", 0.5), "float"),
        output=Path(os.path.normpath(base / str(output))),
        resume=value_of("resume", doc.get("resume", True), "bool"),
        object_ids=_object_ids(doc.get("object_ids")),
        base_dir=base,
    )
    if not 0.0 < config.threshold < 1.0:
        raise ConfigError(f"threshold={config.threshold!r} is not allowed: expected a (0, 1) value")
    if config.split.val and config.split.by != "stack":
        raise ConfigError("split.val names validation stacks; it needs split.by: stack")
    if not (config.examples.tracking or config.examples.clicks or config.examples.prompts):
        raise ConfigError("examples: tracking, clicks and prompts are all off; nothing to learn")
    return config


# --------------------------------------------------------------------------- sections


def _data(raw: Any) -> DataConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"data must be a mapping with 'pairs' and/or 'folder', not {kind_of(raw)}"
        )
    section = _section("data", {k: v for k, v in raw.items() if k != "pairs"}, DataConfig)
    pairs = raw.get("pairs") or []
    if not isinstance(pairs, list):
        raise ConfigError(f"data.pairs must be a list of {{images, labels}}, not {kind_of(pairs)}")
    checked = tuple(_section(f"data.pairs[{i}]", p, PairConfig) for i, p in enumerate(pairs))
    if not checked and not section.folder:
        raise ConfigError("data names no stacks: give data.pairs (images + labels) or data.folder")
    return DataConfig(checked, section.folder, section.image_suffix, section.labels_suffix)


def _object_ids(raw: Any) -> tuple[int, ...]:
    if raw is None:
        return ()
    ids = [raw] if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if not isinstance(ids, list) or not all(
        to_int(i) is not None and 1 <= i <= MAX_OBJECT_ID for i in ids
    ):
        raise ConfigError(
            f"object_ids={short_repr(raw)} is not allowed: expected a list of ids in "
            f"1 … {MAX_OBJECT_ID}"
        )
    return tuple(sorted({int(i) for i in ids}))


def _lora(raw: Any) -> tuple[str, LoraSettings]:
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"lora must be a mapping, not {kind_of(raw)}")
    valid = ("preset", *[k for k in LoraSettings.valid_keys() if k != "name"])
    check_keys("lora", raw, valid)
    preset = raw.get("preset", "default")
    if not isinstance(preset, str):
        raise ConfigError(f"lora.preset={short_repr(preset)} is not allowed: expected a name")
    try:
        settings = load_settings(preset)
        overrides = {k: v for k, v in raw.items() if k != "preset"}
        return preset, settings.replace(**overrides) if overrides else settings
    except SettingsError as exc:
        raise ConfigError(f"lora: {exc}") from None


def _section(name: str, raw: Any, cls: type) -> Any:
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name} must be a mapping of keys, not {kind_of(raw)}")
    keys = [f.name for f in fields(cls)]
    check_keys(name, raw, keys)
    required = [f.name for f in fields(cls) if f.default is f.default_factory is MISSING]
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"{name} needs {', '.join(missing)}")
    rules = _RULES.get(name.split("[")[0], {})
    values = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        value = value_of(f"{name}.{f.name}", raw[f.name], str(f.type))
        check_rule(f"{name}.{f.name}", value, rules.get(f.name), shown=raw[f.name])
        values[f.name] = value
    return cls(**values)
