"""The dock's worker jobs and what they yield (Qt-free).

Each dock action that takes time is a generator run on the worker thread
(:mod:`napari_sam_lora._qt.threading`); closing it cancels at its next ``yield``. A job
changes the annotation only through the engine's verbs, each of which is one undo step that
a cancel rolls back. Besides the engine's progress objects (``PropagationStep``,
``LearnStep``) a job yields one typed result, so a panel routes by type:

============================  ================================================================
job                           yields
============================  ================================================================
:func:`propagation_job`       :class:`LoadProgress`, :class:`ModelReady`, steps
:func:`seed_job`              :class:`LoadProgress`, :class:`ModelReady`, :class:`Seeded`
:func:`segment_all_job`       :class:`LoadProgress`, :class:`ModelReady`, :class:`Seeded`
:func:`preview_job`           :class:`LoadProgress`, :class:`ModelReady`, :class:`Previewed`
:func:`split_job`             :class:`Divided`
:func:`learn_job`             ``LearnStep``, ``PropagationStep``, ``LearnReport``
:func:`load_job`              :class:`Loaded`
:func:`propose_job`           :class:`Proposed`
:func:`accept_job`            ``PropagationStep``, :class:`Accepted`
:func:`auto_accept_job`       ``PropagationStep``, :class:`AutoAccepted`
:func:`save_job`              :class:`Saved`
:func:`restore_prepare_job`   :class:`LoadProgress`, :class:`Prepared`
:func:`restore_apply_job`     :class:`Restored`
============================  ================================================================
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam_lora.annotator.imports import paused_collection, prepare_engine, prepare_learning
from napari_sam_lora.annotator.sessions import ModelReady, PropagateRequest, SessionCache
from napari_sam_lora.engine.annotation.prompts import MaskPrompt, prompt_key
from napari_sam_lora.engine.core.file_paths import adapter_paths, state_paths
from napari_sam_lora.engine.core.native import preload_triton
from napari_sam_lora.engine.tracking.models import file_sha256
from napari_sam_lora.engine.tracking.session_files import SessionFileError, check_state

__all__ = [
    "Accepted",
    "AutoAccepted",
    "Divided",
    "LearnOptions",
    "Loaded",
    "Prepared",
    "Previewed",
    "Proposed",
    "Restored",
    "Saved",
    "Seeded",
    "accept_job",
    "auto_accept_job",
    "learn_job",
    "load_job",
    "merged_prompts",
    "preview_job",
    "propagation_job",
    "propose_job",
    "restore_apply_job",
    "restore_prepare_job",
    "save_job",
    "saved_adapters",
    "seed_job",
    "segment_all_job",
    "session_base",
    "split_job",
]


# -- propagation -------------------------------------------------------------------------------
def propagation_job(
    cache: SessionCache,
    request: PropagateRequest,
    learner_of: Callable[[Any], Any] | None = None,
    keep: Callable[[Any], bool] | None = None,
) -> Generator:
    """Load or reuse the model and session, make the prompts the prompt layers', then
    propagate (adapters assisting with ``request.assist`` once there are any) — one undo
    step, rolled back on cancel.

    Frames the user confirmed are kept; nothing is read from the masks layer (the user's
    strokes reached the annotation as they were painted). The session's prompts for which
    ``keep(prompt)`` is true stay (seeded objects: in no prompt layer); a divided object's
    prompts from its division frame on are left out (its daughters go on there). Yields
    :class:`LoadProgress`, one :class:`ModelReady`, then the session's ``PropagationStep``
    objects; the first finished propagation runs ``cache.warm_up`` (learning's imports).
    """
    session = yield from cache.iter_session(request)
    yield ModelReady(str(session.model_label))
    learner = learner_of(session) if learner_of is not None else None
    assist = learner.assist_hook() if learner is not None and request.assist else None
    with session.annotation.action("propagate"):  # the prompts and the tracking: ONE step
        session.set_prompts(merged_prompts(session, request.prompts, keep))
        yield from session.propagate_steps(request.direction, request.frame_range, assist=assist)
    if cache.warm_up is not None and not cache.warmed_up:
        cache.warmed_up = True
        cache.warm_up()


def merged_prompts(
    session: Any, layer_prompts: list[Any], keep: Callable[[Any], bool] | None = None
) -> list[Any]:
    """The prompts a propagation gives the session: the prompt layers' (less a divided
    object's from its division frame on) and the session's own that ``keep`` keeps, in
    the session's order where it has them (so nothing is re-sent needlessly)."""
    divided: dict[int, int] = {}
    for parent, frame in session.annotation.lineage.values():
        divided[int(parent)] = min(int(frame), divided.get(int(parent), int(frame)))
    layer = [
        p
        for p in layer_prompts
        if int(p.obj_id) not in divided or int(p.frame) < divided[int(p.obj_id)]
    ]
    if keep is None or not any(keep(p) for p in session.prompts):
        return layer
    wanted = {prompt_key(p) for p in layer}
    ordered = [p for p in session.prompts if keep(p) or prompt_key(p) in wanted]
    have = {prompt_key(p) for p in ordered}
    return ordered + [p for p in layer if prompt_key(p) not in have]


# -- whole fields ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seeded:
    """Yielded by :func:`seed_job` and :func:`segment_all_job`: the objects made on
    ``frame`` (ids ascending; none when *Segment all* kept nothing) and their mask prompts."""

    ids: list[int]
    frame: int
    prompts: list[Any]
    what: str = "seed"


def _masks_of(session: Any, frame: int, ids: list[int]) -> list[Any]:
    wanted = {int(i) for i in ids}
    return [
        p
        for p in session.prompts
        if isinstance(p, MaskPrompt) and int(p.frame) == frame and int(p.obj_id) in wanted
    ]


def seed_job(cache: SessionCache, request: PropagateRequest, frame: int, labels: Any) -> Generator:
    """Get the session as Propagate does, then make every non-zero id of ``labels`` (the
    frame's label image, in the session's frame) an object with its mask as prompt — one
    undo step, rolled back on cancel. Yields :class:`LoadProgress`, one
    :class:`ModelReady`, then :class:`Seeded`."""
    session = yield from cache.iter_session(request)
    yield ModelReady(str(session.model_label))
    values = np.unique(np.asarray(labels))
    count = int(np.count_nonzero(values))
    with session.annotation.action(f"seed {count} object(s) on frame {frame}"):
        ids = session.add_label_image(frame, labels)
        yield Seeded(list(ids), int(frame), _masks_of(session, frame, ids))


def segment_all_job(
    cache: SessionCache, request: PropagateRequest, frame: int, options: Any = None
) -> Generator:
    """Get the session as Propagate does, then *Segment all* on ``frame`` (sam2's
    automatic mask generator; ``options`` an ``AutomaticOptions`` or its fields as a dict):
    its masks become new
    objects — one undo step. The generator is one call: a cancel drops its result (rolls
    the action back) once it returns. Yields :class:`LoadProgress`, one
    :class:`ModelReady`, then :class:`Seeded` (``ids`` empty when nothing was kept)."""
    session = yield from cache.iter_session(request)
    yield ModelReady(str(session.model_label))
    _prepare_automatic()
    if isinstance(options, dict):  # made here: the module imports SAM2 (off the viewer)
        from napari_sam_lora.engine.tracking.automatic import AutomaticOptions

        options = AutomaticOptions(**options)
    with session.annotation.action(f"segment all on frame {frame}"):
        ids = session.segment_all(frame, options)
        yield Seeded(list(ids), int(frame), _masks_of(session, frame, ids), "segment all")


def _prepare_automatic() -> None:
    """Import what sam2's mask generator needs without crashing or stalling the viewer:
    ``torchvision.ops`` imports ``torch._dynamo`` and so ``triton``, which must be loaded
    first with its own symbols (:func:`~napari_sam_lora.engine.core.native.preload_triton`;
    under an LLVM-based OpenGL driver it segfaults otherwise)."""
    prepare_engine()
    if "torchvision.ops" in sys.modules:
        return
    with paused_collection():
        preload_triton()
        importlib.import_module("torchvision.ops")


@dataclass(frozen=True)
class Previewed:
    """Yielded by :func:`preview_job`: SAM2's mask of ``obj_id`` on ``frame`` (in the
    session's frame), or ``None`` and the ``error`` that stopped it."""

    frame: int
    obj_id: int
    mask: Any
    error: BaseException | None = None


def preview_job(
    cache: SessionCache,
    request: PropagateRequest,
    frame: int,
    obj_id: int,
    prompts: list[Any],
) -> Generator:
    """SAM2's mask for an object's clicks and box on one frame (``Session.preview``:
    decoder only once the frame is encoded), getting the session as Propagate does when
    there is none. Changes nothing: no object, no undo step. Never fails: an error is
    yielded in :class:`Previewed` (a preview only shows, it reports quietly)."""
    try:
        session = cache.session_for(request)
        if session is None:
            session = yield from cache.iter_session(request)
            yield ModelReady(str(session.model_label))
        mask = session.preview(frame, obj_id, prompts)
    except Exception as exc:  # shown in the panel, not as a notification
        yield Previewed(int(frame), int(obj_id), None, exc)
        return
    yield Previewed(int(frame), int(obj_id), np.asarray(mask, bool))


@dataclass(frozen=True)
class Divided:
    """Yielded by :func:`split_job`: the parent, the frame and the two daughters' ids, and
    the daughters' mask prompts."""

    parent: int
    frame: int
    daughters: list[int]
    prompts: list[Any]


def split_job(session: Any, frame: int, obj_id: int, masks: list[Any]) -> Generator:
    """Divide ``obj_id`` on ``frame`` into two daughters painted as ``masks`` (new ids,
    lineage recorded) — one undo step. Yields :class:`Divided`."""
    with session.annotation.action(f"split object {obj_id} on frame {frame}"):
        daughters = session.split_object(frame, obj_id, masks)
        prompts = _masks_of(session, frame, daughters)
        yield Divided(int(obj_id), int(frame), list(daughters), prompts)


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
    """Cancellable: check the files fit the stack (its pixels too; with a region, the
    region of each frame: the frames the session reads), then get the session
    (loading the model if needed) and check the model; yields :class:`LoadProgress`
    while loading, then one :class:`Prepared`. Changes no annotation."""
    doc = check_state(base, request.frames_to_track)
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
