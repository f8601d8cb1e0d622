"""What the *Save and restore* panel does on the worker, without its widgets.

:func:`save_job` turns the masks layer's hand edits into corrections, then writes the
session state (``<base>.session.json`` + ``.session.npz``) and, with adapters, the adapter
file tagged with the state file's checksum; :func:`restore_prepare_job` checks the files
against the stack and gets the session (loading the model), :func:`restore_apply_job`
loads the adapters and restores the session. The panel is
:class:`~napari_sam_lora._qt._annotation_files.AnnotationFilesPanel`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_lora._qt._imports import prepare_learning
from napari_sam_lora._qt._propagation import PropagateRequest, pending_edits
from napari_sam_lora.engine.core.file_paths import adapter_paths, state_paths
from napari_sam_lora.engine.tracking.models import file_sha256
from napari_sam_lora.engine.tracking.session_files import SessionFileError, check_state

__all__ = [
    "Prepared",
    "Restored",
    "RestoredFrame",
    "Saved",
    "restore_apply_job",
    "restore_prepare_job",
    "save_job",
    "saved_adapters",
    "session_base",
]


def session_base(path: str | os.PathLike[str]) -> Path:
    """The base path of a session's files: ``cells`` for ``cells``, ``cells.session.json``,
    ``cells.session.npz`` or ``cells.safetensors``."""
    base = Path(path)
    if base.name.endswith(".safetensors"):
        base = base.with_name(base.name[: -len(".safetensors")])
    json_path, _ = state_paths(base)
    return json_path.with_name(json_path.name[: -len(".session.json")])


@dataclass(frozen=True)
class Saved:
    """Yielded by :func:`save_job`: the files written, and the edits saved as corrections."""

    paths: list[Path]
    adapters: list[Path]
    corrected: list[int]


def save_job(
    session: Any, learner: Any, base: Path, user_labels: np.ndarray | None = None
) -> Generator:
    """Worker: the masks layer's hand edits become corrections (as Propagate would make
    them), then the session state and, when there are adapters, the adapters are written
    under ``base``; yields one :class:`Saved`."""
    corrected = pending_edits(session, user_labels)
    for frame in corrected:
        session.add_correction(frame, np.asarray(user_labels[frame]))
        yield frame
    paths = list(session.save_state(base))
    adapters: list[Path] = []
    if learner is not None and learner.adapter_names():
        tag = {"session": paths[0].name, "session_sha256": file_sha256(paths[0])}
        adapters = [Path(p) for p in learner.save(base, tag)]
    yield Saved(paths, adapters, corrected)


def saved_adapters(base: Path) -> tuple[Path | None, str]:
    """The adapter file saved with the session at ``base``, or ``None`` and why not.

    An adapter file left there by an earlier save (it names another session file's
    checksum) is not the session's; a file without that tag (saved with *Save adapters…*
    under the same name) is used.
    """
    weights, settings = adapter_paths(base)
    if not weights.is_file():
        return None, ""
    try:
        tag = json.loads(settings.read_text("utf-8")).get("metadata", {}).get("session_sha256")
    except (OSError, ValueError, AttributeError):
        tag = None  # the loader names what is wrong with it
    if tag is not None and tag != file_sha256(state_paths(base)[0]):
        return None, f"{weights.name} belongs to an earlier save: adapters not loaded"
    return weights, ""


@dataclass(frozen=True)
class RestoredFrame:
    """Yielded by :func:`restore_job`: one frame of the restored labels."""

    frame: int
    labels: np.ndarray


@dataclass
class Restored:
    """Yielded last by :func:`restore_job`: what the session holds now."""

    prompts: list[Any]
    confirmed: int
    adapters: list[str] = field(default_factory=list)
    model: str = ""


@dataclass(frozen=True)
class Prepared:
    """Yielded by :func:`restore_prepare_job`: the session the files fit."""

    session: Any


def restore_prepare_job(cache: Any, request: PropagateRequest, base: Path) -> Generator:
    """Worker, cancellable: check the files fit the stack (its pixels too), then get the
    session (loading the model if needed) and check the model; yields
    :class:`LoadProgress` while loading, then one :class:`Prepared`. Changes no
    annotation state."""
    doc = check_state(base, request.source.frames)
    session = yield from cache.iter_session(request)
    saved_model = str(doc.get("model", ""))
    if saved_model and saved_model != session.model_label:
        raise SessionFileError(
            f"{state_paths(base)[0].name} was saved with model {saved_model}; the panel "
            f"uses {session.model_label}: choose that model under 'model' first"
        )
    yield Prepared(session)


def restore_apply_job(session: Any, control: Any, base: Path, adapters: Path | None) -> Generator:
    """Worker: load the adapters (first: on error nothing is restored), restore the
    session (SAM2 is conditioned again on every confirmed frame); yields a
    :class:`RestoredFrame` per frame, then one :class:`Restored`."""
    names: list[str] = []
    if adapters is not None:
        prepare_learning()  # peft and triton, here on the worker
        names = list(control.learner_for(session).load(adapters))
    session.restore_state(base)
    learner = control.learner_of(session)
    if learner is not None:
        learner.adapter_frames.clear()  # SAM2 started over from the restored state
    for frame in range(session.num_frames):
        yield RestoredFrame(frame, np.array(session.labels[frame], copy=True))
    yield Restored(
        list(session.prompts),
        len(session.annotations.confirmed()),
        names,
        str(session.model_label),
    )
