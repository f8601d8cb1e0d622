"""The dock's worker jobs and what they yield (Qt-free).

Each dock action that takes time is a generator run on the worker thread
(:mod:`napari_sam_lora._qt.threading`); closing it cancels at its next ``yield``. A job
changes the annotation only through the engine's verbs, each of which is one undo step that
a cancel rolls back. Besides the engine's progress objects (``PropagationStep``,
``LearnStep``) a job yields one typed result, so a panel routes by type:

============================  ====================================================
job                           yields
============================  ====================================================
:func:`propagation_job`       :class:`LoadProgress`, :class:`ModelReady`, steps
:func:`learn_job`             ``LearnStep``, ``PropagationStep``, ``LearnReport``
:func:`load_job`              :class:`Loaded`
:func:`propose_job`           :class:`Proposed`
:func:`accept_job`            ``PropagationStep``, :class:`Accepted`
:func:`auto_accept_job`       ``PropagationStep``, :class:`AutoAccepted`
:func:`save_job`              :class:`Saved`
:func:`restore_prepare_job`   :class:`LoadProgress`, :class:`Prepared`
:func:`restore_apply_job`     :class:`Restored`
============================  ====================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_sam_lora.annotator.imports import prepare_learning
from napari_sam_lora.annotator.sessions import ModelReady, PropagateRequest, SessionCache
from napari_sam_lora.engine.core.file_paths import adapter_paths, state_paths
from napari_sam_lora.engine.tracking.models import file_sha256
from napari_sam_lora.engine.tracking.session_files import SessionFileError, check_state

__all__ = [
    "Accepted",
    "AutoAccepted",
    "LearnOptions",
    "Loaded",
    "Prepared",
    "Proposed",
    "Restored",
    "Saved",
    "accept_job",
    "auto_accept_job",
    "learn_job",
    "load_job",
    "propagation_job",
    "propose_job",
    "restore_apply_job",
    "restore_prepare_job",
    "save_job",
    "saved_adapters",
    "session_base",
]


# -- propagation -------------------------------------------------------------------------------
def propagation_job(
    cache: SessionCache, request: PropagateRequest, learner_of: Callable[[Any], Any] | None = None
) -> Generator:
    """Load or reuse the model and session, make the prompts the prompt layers', then
    propagate (adapters assisting with ``request.assist`` once there are any) — one undo
    step, rolled back on cancel.

    Frames the user confirmed are kept; nothing is read from the masks layer (the user's
    strokes reached the annotation as they were painted). Yields :class:`LoadProgress`,
    one :class:`ModelReady`, then the session's ``PropagationStep`` objects; the first
    finished propagation runs ``cache.warm_up`` (learning's imports).
    """
    session = yield from cache.iter_session(request)
    yield ModelReady(str(session.model_label))
    learner = learner_of(session) if learner_of is not None else None
    assist = learner.assist_hook() if learner is not None and request.assist else None
    with session.annotation.action("propagate"):  # the prompts and the tracking: ONE step
        session.set_prompts(request.prompts)
        yield from session.propagate_steps(request.direction, request.frame_range, assist=assist)
    if cache.warm_up is not None and not cache.warmed_up:
        cache.warmed_up = True
        cache.warm_up()


# -- learning ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LearnOptions:
    """What follows a Learn or an Accept: re-tracking from the changed frame within
    ``frame_range`` (``None``: the whole stack), adapters assisting with ``assist``."""

    repropagate: bool = True
    frame_range: tuple[int, int] | None = None
    assist: bool = True


def learn_job(control: Any, session: Any, frame: int, options: LearnOptions) -> Generator:
    """Train on the frame's corrections no adapter learned from yet, then re-propagate
    (one undo step). The learner is made here: the first import of peft does not block
    the viewer. Yields ``LearnStep`` and ``PropagationStep`` objects, then the
    ``LearnReport``; a cancel leaves the corrections to be learned."""
    prepare_learning()
    learner = control.learner_for(session)
    report = yield from learner.learn_steps(
        frame,
        repropagate=options.repropagate,
        frame_range=options.frame_range,
        assist=options.assist,
    )
    yield report


@dataclass(frozen=True)
class Loaded:
    """Yielded by :func:`load_job`: the adapters of a file, and whether they were new."""

    names: list[str]
    new: list[str]


def load_job(control: Any, session: Any, path: str) -> Generator:
    """Load adapters onto the session's model; yields :class:`Loaded` (a file whose
    content is already loaded adds nothing: ``Loaded.new`` is then empty)."""
    prepare_learning()
    learner = control.learner_for(session)
    before = set(learner.adapter_names())
    names = list(learner.load(path))
    yield Loaded(names, [n for n in names if n not in before])


@dataclass(frozen=True)
class Proposed:
    """Yielded by :func:`propose_job`: the candidates, best first."""

    candidates: list[Any]
    first: int
    last: int


def propose_job(learner: Any, first: int, last: int) -> Generator:
    """Every adapter's masks for frames ``first``–``last`` (decoder only: fast)."""
    yield Proposed(list(learner.propose(frames=range(first, last + 1))), first, last)


@dataclass(frozen=True)
class Accepted:
    """Yielded by :func:`accept_job`: the candidate, what was accepted, and the frames
    left alone because the user had confirmed them."""

    candidate: Any
    report: Any
    skipped: list[int]


def accept_job(plan: Any, options: LearnOptions) -> Generator:
    """Accept ``plan`` (an ``AcceptPlan``) and re-propagate — one undo step. Yields
    ``PropagationStep`` objects, then :class:`Accepted`."""
    report = yield from plan.learner.accept_steps(
        plan.candidate,
        plan.frames,
        overwrite_confirmed=plan.overwrite,
        repropagate=options.repropagate,
        frame_range=options.frame_range,
        assist=options.assist,
    )
    yield Accepted(plan.candidate, report, list(plan.skipped))


@dataclass(frozen=True)
class AutoAccepted:
    """Yielded by :func:`auto_accept_job`: ``[(Candidate, AcceptReport)]`` and the bar."""

    accepted: list[tuple[Any, Any]]
    bar: float

    @property
    def frames(self) -> list[int]:
        """Every frame accepted, ascending."""
        return sorted({f for _, report in self.accepted for f in report.frames})


def auto_accept_job(
    learner: Any, candidates: list[Any], bar: float, options: LearnOptions
) -> Generator:
    """Accept, per (object, frame), the best candidate whose estimated IoU reaches
    ``bar`` (never on frames the user confirmed), then re-propagate — one undo step.
    Yields ``PropagationStep`` objects, then :class:`AutoAccepted`."""
    accepted = yield from learner.auto_accept_steps(
        candidates,
        bar,
        repropagate=options.repropagate,
        frame_range=options.frame_range,
        assist=options.assist,
    )
    yield AutoAccepted(list(accepted), float(bar))


# -- session files -----------------------------------------------------------------------------
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
    """Yielded by :func:`save_job`: the files written."""

    paths: list[Path]
    adapters: list[Path]


def save_job(session: Any, learner: Any, base: Path) -> Generator:
    """Write the session's annotation (``<base>.session.json`` + ``.npz``) and, when there
    are adapters, the adapters tagged with the state file's checksum; yields
    :class:`Saved`."""
    paths = list(session.save_state(base))
    adapters: list[Path] = []
    if learner is not None and learner.adapter_names():
        tag = {"session": paths[0].name, "session_sha256": file_sha256(paths[0])}
        adapters = [Path(p) for p in learner.save(base, tag)]
    yield Saved(paths, adapters)


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
class Prepared:
    """Yielded by :func:`restore_prepare_job`: the session the files fit."""

    session: Any


def restore_prepare_job(cache: SessionCache, request: PropagateRequest, base: Path) -> Generator:
    """Cancellable: check the files fit the stack (its pixels too), then get the session
    (loading the model if needed) and check the model; yields :class:`LoadProgress`
    while loading, then one :class:`Prepared`. Changes no annotation."""
    doc = check_state(base, request.source.frames)
    session = yield from cache.iter_session(request)
    saved_model = str(doc.get("model", ""))
    if saved_model and saved_model != session.model_label:
        raise SessionFileError(
            f"{state_paths(base)[0].name} was saved with model {saved_model}; the panel "
            f"uses {session.model_label}: choose that model under 'model' first"
        )
    yield Prepared(session)


@dataclass
class Restored:
    """Yielded by :func:`restore_apply_job`: what the session holds now."""

    prompts: list[Any]
    confirmed: int
    adapters: list[str] = field(default_factory=list)
    model: str = ""


def restore_apply_job(session: Any, control: Any, base: Path, adapters: Path | None) -> Generator:
    """Load the adapters (first: on error nothing is restored), then restore the session
    (one undo step; SAM2 follows at the next job); yields :class:`Restored`."""
    names: list[str] = []
    if adapters is not None:
        prepare_learning()  # peft and triton, here on the worker
        names = list(control.learner_for(session).load(adapters))
    session.restore_state(base)
    learner = control.learner_of(session)
    if learner is not None:
        learner.adapter_frames.clear()  # SAM2 starts over from the restored state
    yield Restored(
        list(session.prompts),
        len(session.annotations.confirmed()),
        names,
        str(session.model_label),
    )
