"""Pre-flight checks before long runs (``evaluate``, ``train``, ``segment``): fail in seconds.

A long run should not discover after its baseline pass that its output folder is read-only,
that an adapter file belongs to another model or that ``target_modules`` matches nothing.
:func:`preflight` checks those things up front, through the engine's public APIs (the
atomic writer's folder rules, :func:`~.adapter_files.check_adapters`,
:func:`~.adapters.check_targets`), and changes nothing: no folder is created, no adapter
is injected.

>>> preflight(outputs=[args.output], model=model, adapters=[args.adapter], settings=settings)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_sam_lora.engine.core.atomic import write_error
from napari_sam_lora.engine.core.errors import WriteError

__all__ = ["PreflightReport", "check_output", "preflight"]


@dataclass
class PreflightReport:
    """What :func:`preflight` checked.

    Attributes
    ----------
    outputs : list of Path
        Output folders that can be written (or created).
    adapters : dict
        ``{adapter file: [adapter names it would add]}``.
    target_modules : list of str
        Decoder modules the LoRA settings would adapt (empty when no settings were given).
    """

    outputs: list[Path] = field(default_factory=list)
    adapters: dict[str, list[str]] = field(default_factory=dict)
    target_modules: list[str] = field(default_factory=list)


def check_output(folder: str | os.PathLike[str]) -> Path:
    """Raise :class:`WriteError` unless ``folder`` can be written or created (changes nothing).

    A probe file is written and removed in ``folder``, or, when it does not exist yet, in
    its nearest existing parent (so nothing is created).
    """
    folder = Path(folder)
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise WriteError(
            f"cannot write to {folder}: {existing} is a file, not a folder; remove it or "
            "choose another output folder"
        )
    probe = existing / f".napari-sam-lora-probe-{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        raise write_error(folder / "output", exc) from None
    finally:
        with suppress(OSError):
            probe.unlink(missing_ok=True)
    return folder


def preflight(
    *,
    outputs: Iterable[str | os.PathLike[str] | None] = (),
    model: Any = None,
    adapters: Iterable[str | os.PathLike[str] | None] = (),
    settings: Any = None,
) -> PreflightReport:
    """Check, before a long run, that it can finish: outputs, adapter files, LoRA targets.

    Parameters
    ----------
    outputs : iterable of path
        Folders the run writes (``None`` entries are skipped).
    model : LoadedModel, optional
        The loaded model; needed for ``adapters`` and ``settings``.
    adapters : iterable of path
        Adapter files the run loads onto ``model`` (validated in full, not injected).
    settings : LoraSettings or str, optional
        The LoRA recipe (or preset name / YAML path) the run trains with: its
        ``target_modules`` must match Linear modules of ``model``'s decoder.

    Returns
    -------
    PreflightReport

    Raises
    ------
    WriteError
        An output folder cannot be written (the message names it and what to do).
    AdapterFileError
        An adapter file is missing, damaged or belongs to another model.
    AdapterError, SettingsError
        The settings are invalid or ``target_modules`` matches nothing usable.
    """
    report = PreflightReport()
    for folder in outputs:
        if folder is not None:
            report.outputs.append(check_output(folder))
    adapter_files = [a for a in adapters if a is not None]
    if (adapter_files or settings is not None) and model is None:
        raise ValueError("preflight needs the model to check adapters or settings")
    if model is None:
        return report
    decoder = model.predictor.sam_mask_decoder
    if adapter_files:
        from napari_sam_lora.engine.learning.adapter_files import check_adapters

        for path in adapter_files:
            report.adapters[str(path)] = check_adapters(path, decoder).names
    if settings is not None:
        from napari_sam_lora.engine.learning.adapters import check_targets
        from napari_sam_lora.engine.learning.lora_settings import LoraSettings, load_settings

        recipe = settings if isinstance(settings, LoraSettings) else load_settings(settings)
        report.target_modules = check_targets(decoder, recipe.target_modules)
    return report
