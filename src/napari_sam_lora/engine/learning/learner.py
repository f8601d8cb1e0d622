"""Learning from corrections on a :class:`Session`: train at once, propose, accept.

A correction on frame *t* trains the object's adapter on the decoder inputs SAM2 recorded
while *tracking* frame *t* — looked up by ``(frame, object)``, so another frame's features
can never be used. A frame that was never tracked is tracked first (without its own
prompt in memory). The adapted decoder then proposes masks for other frames; accepting a
proposal makes it a confirmed conditioning frame for SAM2 and a replay example for the
adapter. Frames the user confirmed are never overwritten unless asked.

With ``scope="object"`` (the default) each object has its own adapter pool and learns only
from its own corrections. With ``scope="class"`` one pool is shared by every object: a
correction on any object trains it, and it proposes for (and assists) every object —
also those never corrected — from each object's own recorded decoder inputs. Either way
the pool of an object is :meth:`Learner.pool_for`'s; nothing else differs.

Example
-------
>>> learner = Learner(session, settings="default")
>>> report = learner.learn(frame=3, user_labels=edited_frame)   # trains right away
>>> candidates = learner.propose(frames=range(4, 10))
>>> learner.accept(candidates[0])                               # skips confirmed frames
>>> labels = session.propagate_all("forward", assist=learner.assist_hook())
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam_lora.engine.annotation.corrections import Correction, merge_object
from napari_sam_lora.engine.core.errors import PromptError, SamLoraError
from napari_sam_lora.engine.core.jobs import drain, relay
from napari_sam_lora.engine.core.validation import finite_number
from napari_sam_lora.engine.learning.adapter_files import (
    decoder_checksum,
    load_adapters,
    save_adapters,
)
from napari_sam_lora.engine.learning.adapter_pool import (
    SHARED_POOL_ID,
    AdapterPool,
    CorrectionPlan,
    ReplayEntry,
    raw_score,
)
from napari_sam_lora.engine.learning.adapters import (
    Proposal,
    activate,
    adapter_names,
    cpu_copy,
    delete_adapter,
    lora_layers,
    matching_modules,
    propose,
    use_adapter,
)
from napari_sam_lora.engine.learning.candidates import AcceptReport, Candidate
from napari_sam_lora.engine.learning.lora_settings import (
    LoraSettings,
    SettingsError,
    load_settings,
)
from napari_sam_lora.engine.learning.namespaces import (
    claim_namespace,
    content_digest,
    free_names,
    release_namespace,
)
from napari_sam_lora.engine.learning.records import LearnReport, LearnStep, check_scope
from napari_sam_lora.engine.learning.reference import reference_mask
from napari_sam_lora.engine.learning.training import TrainingReport, train_adapter
from napari_sam_lora.engine.tracking.features import DecoderInputs
from napari_sam_lora.engine.tracking.plans import PropagationStep
from napari_sam_lora.engine.tracking.repropagation import RepropagationReport
from napari_sam_lora.engine.tracking.session import Session


class Learner:
    """LoRA adapters for one session, trained from corrections: per object, or shared by
    every object (``scope``).

    A learner owns its adapters: they carry the learner's namespace on the (possibly
    shared) decoder and are removed by :meth:`close` (or leaving a ``with`` block), so
    several learners can share one loaded model.

    Parameters
    ----------
    session : Session
        The stack being annotated; its SAM2 decoder receives the adapters.
    settings : str, Path or LoraSettings
        A preset name from ``configs/`` (``"default"``, ``"lit"``, ``"strong"``), a YAML
        path, or settings.
    assist_margin : float
        In adapter-assisted propagation, an adapter's mask replaces SAM2's when its
        confidence beats the base model's by this much.
    scope : {"object", "class"}
        ``"object"``: each object's own pool learns from its own corrections only.
        ``"class"``: one shared pool (at most ``max_adapters_per_object`` adapters, LIT's
        rule, one replay buffer and one calibrator) learns from the corrections and accepts
        of every object and serves every object, also objects never corrected.

    Raises
    ------
    SettingsError, AdapterError
        Bad settings or scope, or ``target_modules`` matching no module of this decoder.
    """

    def __init__(
        self,
        session: Session,
        settings: str | Path | LoraSettings = "default",
        assist_margin: float = 0.1,
        scope: str = "object",
    ) -> None:
        # Checked before anything is loaded, claimed or created.
        margin = finite_number(assist_margin, "assist_margin", SettingsError)
        self.scope = check_scope(scope)
        self.session = session
        self.settings = settings if isinstance(settings, LoraSettings) else load_settings(settings)
        if not matching_modules(self.decoder, self.settings.target_modules):
            from napari_sam_lora.engine.learning.adapters import AdapterError

            raise AdapterError(
                f"target_modules {self.settings.target_modules[:80]!r} matches no module of "
                "the mask decoder; fix the LoRA settings"
            )
        self.assist_margin = margin
        # Object id → pool; with scope="class" the one shared pool, under SHARED_POOL_ID.
        self.pools: dict[int, AdapterPool] = {}
        self.reports: list[TrainingReport] = []
        self.adapter_frames: dict[int, set[int]] = {}
        self._loaded: dict[str, list[str]] = {}  # file content digest → names
        self.namespace = claim_namespace(self.decoder, self)
        self._closed = False

    @property
    def decoder(self) -> torch.nn.Module:
        """SAM2's mask decoder (the adapters live on it, in place)."""
        return self.session.model.predictor.sam_mask_decoder

    def adapter_names(self, obj_id: int | None = None) -> list[str]:
        """This learner's adapters (those serving one object, or all); with
        ``scope="class"`` every object is served by all of them."""
        pools = self.pools.values() if obj_id is None else [self.pool_for(obj_id)]
        return [n for pool in pools if pool is not None for n in pool.names]

    def pool_for(self, obj_id: int) -> AdapterPool | None:
        """The pool that learns from and proposes for ``obj_id``: the object's own, or with
        ``scope="class"`` the shared one (the same for every object); ``None`` while there
        is none (nothing learned or loaded for it yet)."""
        return self.pools.get(self._pool_key(obj_id))

    def _pool_key(self, obj_id: int) -> int:
        return SHARED_POOL_ID if self.scope == "class" else int(obj_id)

    def _pool(self, obj_id: int) -> AdapterPool:
        """:meth:`pool_for`, made when missing."""
        key = self._pool_key(obj_id)
        if key not in self.pools:
            self.pools[key] = AdapterPool(key, self.settings, prefix=self.namespace)
        return self.pools[key]

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Remove this learner's adapters from the decoder and release its namespace."""
        if self._closed:
            return
        present = set(adapter_names(self.decoder))
        for name in self.adapter_names():
            if name in present:
                delete_adapter(self.decoder, name)
        self._base_mode()
        self.pools.clear()
        self._loaded.clear()
        release_namespace(self.decoder, self.namespace)
        self._closed = True

    def _check_open(self) -> None:
        """Raise :class:`SamLoraError` once :meth:`close` ran."""
        if self._closed:
            raise SamLoraError(
                "this learner was closed (its adapters left the decoder): make a new "
                "Learner(session) to go on learning"
            )

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- learning -------------------------------------------------------------------------
    def learn_steps(
        self,
        frame: int,
        user_labels: np.ndarray | None = None,
        repropagate: bool = False,
        frame_range: tuple[int, int] | None = None,
        assist: bool = True,
    ) -> Generator[LearnStep | PropagationStep, None, LearnReport]:
        """Learn from the user's corrections of ``frame`` right away (one undo step).

        With ``user_labels`` (a script's edited label image of the frame) the objects it
        changes become confirmed corrections first; without, the corrections already in
        the annotation that no adapter learned from yet are used (what the dock's paint
        strokes made). Each corrected object's adapter (new or fine-tuned, LIT's rule)
        trains on that frame's own recorded inputs; with ``repropagate`` the masks are
        then re-tracked from the frame (within ``frame_range``, adapters assisting when
        ``assist``) in the same undo step. Yields ``LearnStep`` then ``PropagationStep``
        objects. Closing the generator cancels: the adapter being trained keeps its old
        weights and the annotation returns to what it was (the corrections stay
        unlearned).

        Raises
        ------
        PromptError
            Nothing to learn, shape mismatch, frame out of range, or a frame that cannot
            be tracked (no memory for the object yet).
        """
        self._check_open()
        session = self.session
        frame = int(frame)
        if user_labels is not None:
            corrections = session.diff(frame, user_labels)
        else:
            corrections = self.pending_corrections(frame)
        report = LearnReport(frame, corrections, scope=self.scope)
        with session.annotation.action(f"learn from frame {frame}"):
            with session.exclusive():  # the records first: what SAM2 made before the edit
                inputs = {c.obj_id: self._inputs_for(c, report) for c in corrections}
                if user_labels is not None:
                    session.condition_on(corrections, "correction")
            to_train = [c for c in corrections if inputs.get(c.obj_id) is not None]
            with session.exclusive():
                for index, correction in enumerate(to_train, start=1):
                    trained = yield from self._train_one(
                        correction, inputs[correction.obj_id], index, len(to_train)
                    )
                    report.trained.append(trained)
            self._base_mode()
            session.annotation.mark_learned([(c.frame, c.obj_id) for c in corrections])
            if repropagate:
                yield from self._repropagate(frame, frame_range, assist)
        return report

    def learn(
        self, frame: int, user_labels: np.ndarray | None = None, **options: Any
    ) -> LearnReport:
        """Eager :meth:`learn_steps`: train on the correction and return the report."""
        return drain(self.learn_steps(frame, user_labels, **options))

    def pending_corrections(self, frame: int) -> list[Correction]:
        """The corrections of ``frame`` no adapter has learned from yet.

        Raises
        ------
        PromptError
            There are none.
        """
        session, frame = self.session, int(frame)
        corrections = []
        for _, obj_id in session.annotation.check_unlearned(frame):
            mask = session.annotations.confirmed_mask(frame, obj_id)
            others = [f for f in session.annotations.confirmed_frames(obj_id) if f != frame]
            kind = "new" if not others else "erased" if not mask.any() else "changed"
            corrections.append(Correction(frame, obj_id, mask, kind, int(mask.sum())))
        return corrections

    def _repropagate(
        self, frame: int, frame_range: tuple[int, int] | None, assist: bool
    ) -> Generator[PropagationStep, None, RepropagationReport]:
        hook = self.assist if assist and self.adapter_names() else None
        try:
            return (
                yield from self.session.repropagate_steps(
                    frame, frame_range=frame_range, assist=hook
                )
            )
        finally:
            self._base_mode()

    def _inputs_for(self, correction: Correction, report: LearnReport) -> DecoderInputs | None:
        if correction.kind == "new":
            report.skipped[correction.obj_id] = "new object: learning starts at its next correction"
            return None
        record = self.session.decoder_inputs(correction.frame, correction.obj_id)
        if record is None:
            self._base_mode()
            record = self.session.track_frame(correction.frame, correction.obj_id)
        if (record.frame, record.obj_id) != (correction.frame, correction.obj_id):
            raise SamLoraError(
                f"recorded inputs belong to frame {record.frame}, object {record.obj_id}, not "
                f"frame {correction.frame}, object {correction.obj_id}"
            )
        return record

    def _train_one(
        self, correction: Correction, inputs: DecoderInputs, index: int, count: int
    ) -> Generator[LearnStep, None, TrainingReport]:
        obj_id = correction.obj_id
        pool = self._pool(obj_id)
        reference = self.reference_mask(correction.frame, obj_id)
        plan: CorrectionPlan = pool.plan(self.decoder, inputs, correction.mask, reference)
        pool.begin(self.decoder, plan)
        steps = train_adapter(
            self.decoder, plan.adapter_name, plan.examples, self.settings, fine_tune=plan.fine_tune
        )
        finished = False
        try:
            report = yield from relay(
                steps,
                lambda step: LearnStep(obj_id, plan.adapter_name, index, count, step, self.scope),
            )
            finished = True
        finally:
            if not finished:
                pool.abort(self.decoder, plan)
        pool.commit(plan, report)
        self.reports.append(report)
        return report

    def _base_mode(self) -> None:
        if lora_layers(self.decoder):
            activate(self.decoder, None)

    # -- adapter-assisted propagation -----------------------------------------------------
    def assist_hook(self) -> Any:
        """The hook to pass as ``Session.propagate_steps(..., assist=...)``: where an
        object's most confident adapter beats SAM2's own confidence by ``assist_margin``,
        its mask is used (and goes to memory); such frames get the source ``"adapter"`` and
        are listed in :attr:`adapter_frames`. ``None`` while there are no adapters.

        Raises
        ------
        SamLoraError
            The learner was closed.
        """
        self._check_open()
        return self.assist if self.adapter_names() else None

    def assist(
        self, frame: int, obj_id: int, kwargs: dict, output: tuple
    ) -> tuple[Any, str] | None:
        """The assist hook (see :meth:`assist_hook`): ``(output, adapter name)`` where an
        adapter's mask replaces SAM2's on ``frame``, else ``None`` (with ``scope="class"``
        the shared adapters serve every object)."""
        pool = self.pool_for(obj_id)
        record = self.session.decoder_inputs(frame, obj_id)
        if pool is None or not pool.names or record is None:
            self._forget_adapter_frame(frame, obj_id)
            return None
        _, ious, _, object_logits = output
        base = float(ious[0].max()) * float(torch.sigmoid(object_logits.reshape(-1)[0]))
        best = pool.best(self.decoder, record)
        if best is None or best.confidence <= base + self.assist_margin:
            self._forget_adapter_frame(frame, obj_id)
            return None
        with use_adapter(self.decoder, best.adapter_name):
            replaced = self.decoder(**kwargs)
        self.adapter_frames.setdefault(frame, set()).add(obj_id)
        return replaced, str(best.adapter_name)

    def _forget_adapter_frame(self, frame: int, obj_id: int) -> None:
        ids = self.adapter_frames.get(frame)
        if ids is not None:
            ids.discard(obj_id)
            if not ids:
                del self.adapter_frames[frame]

    # -- candidates -----------------------------------------------------------------------
    def propose(
        self, frames: Iterable[int] | None = None, obj_ids: Iterable[int] | None = None
    ) -> list[Candidate]:
        """Every adapter's masks for ``frames`` (default: all tracked), best first.

        Uses the decoder inputs recorded while tracking (decoder only: fast). Frames
        without recorded inputs for an object are skipped for it. ``obj_ids`` defaults to
        the objects with adapters; with ``scope="class"`` to every object of the session,
        each proposed for by every shared adapter on its own recorded inputs (also objects
        never corrected).

        Raises
        ------
        PromptError
            A frame out of range, or an object this learner has no adapter for (with
            ``scope="class"``: no shared adapter yet).
        """
        self._check_open()
        n = self.session.num_frames
        wanted = range(n) if frames is None else sorted({int(f) for f in frames})
        bad = [f for f in wanted if not 0 <= f < n]
        if bad:
            raise PromptError(f"frame(s) {bad[:5]} out of range: the stack has frames 0–{n - 1}")
        if obj_ids is None:
            ids = list(self.pools) if self.scope == "object" else self.session.object_ids
            ids = [i for i in ids if self.pool_for(i) is not None]
        else:
            ids = [int(i) for i in obj_ids]
            unknown = [i for i in ids if self.pool_for(i) is None]
            if unknown and self.scope == "class":
                raise PromptError(
                    "no shared adapter yet (class scope): correct a frame of any object first"
                )
            if unknown:
                raise PromptError(
                    f"no adapter for object(s) {unknown}: correct a frame of it first "
                    f"(objects with adapters: {sorted(self.pools) or 'none'})"
                )
        candidates = []
        with self.session.exclusive():
            for obj_id in ids:
                records = [r for f in wanted if (r := self.session.decoder_inputs(f, obj_id))]
                references = [self.reference_mask(r.frame, obj_id) for r in records]
                for name in self._pool(obj_id).names:
                    if records:
                        candidates.append(self._candidate(obj_id, name, records, references))
            self._base_mode()
        return sorted(candidates, key=lambda c: c.estimated_iou, reverse=True)

    def _candidate(
        self,
        obj_id: int,
        name: str,
        records: list[DecoderInputs],
        references: list[np.ndarray | None],
    ) -> Candidate:
        proposals = [propose(self.decoder, name, r) for r in records]
        masks = np.stack([self._full_res(p) for p in proposals])
        confidences = np.array([p.confidence for p in proposals], dtype=np.float32)
        raw = np.array(
            [raw_score(p, ref) for p, ref in zip(proposals, references, strict=True)],
            dtype=np.float32,
        )
        estimated = np.asarray(self._pool(obj_id).estimate_ious(raw), dtype=np.float32)
        frames = [r.frame for r in records]
        return Candidate(obj_id, name, frames, masks, confidences, estimated, raw)

    def reference_mask(self, frame: int, obj_id: int) -> np.ndarray | None:
        """What a proposal on ``frame`` is compared with to estimate its IoU: the object's
        confirmed mask on the nearest other frame, moved by its recent motion
        (:func:`~napari_sam_lora.engine.learning.reference.reference_mask`); ``None`` without
        one."""
        return reference_mask(self.session.annotations, frame, obj_id)

    def _full_res(self, proposal: Proposal) -> np.ndarray:
        logits = torch.from_numpy(proposal.logits)[None, None]
        size = self.session.frame_shape
        return (
            F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0, 0].numpy() > 0
        )

    def accept_steps(
        self,
        candidate: Candidate,
        frames: Iterable[int] | None = None,
        overwrite_confirmed: bool = False,
        source: str = "accepted",
        repropagate: bool = False,
        frame_range: tuple[int, int] | None = None,
        assist: bool = True,
    ) -> Generator[PropagationStep, None, AcceptReport]:
        """:meth:`accept`, then (with ``repropagate``) re-track from the first accepted
        frame within ``frame_range`` — ONE undo step, rolled back if the generator is
        closed. Yields ``PropagationStep`` objects; returns the ``AcceptReport``."""
        with self.session.annotation.action(f"accept {candidate.adapter_name}"):
            report = self.accept(candidate, frames, overwrite_confirmed, source)
            if repropagate and report.frames:
                yield from self._repropagate(min(report.frames), frame_range, assist)
        return report

    def accept(
        self,
        candidate: Candidate,
        frames: Iterable[int] | None = None,
        overwrite_confirmed: bool = False,
        source: str = "accepted",
    ) -> AcceptReport:
        """Make a candidate's masks confirmed SAM2 conditioning frames and replay examples
        (one undo step).

        Parameters
        ----------
        candidate : Candidate
            From :meth:`propose`.
        frames : iterable of int, optional
            The frames to accept (default: all the candidate's).
        overwrite_confirmed : bool
            Also replace masks the user confirmed (prompted, corrected, accepted) on those
            frames; by default they are skipped.
        source : {"accepted", "auto_accepted"}
            Recorded in the session's annotations.

        Returns
        -------
        AcceptReport
            Frames written and skipped; label images of the written frames.
        """
        self._check_open()
        asked = None if frames is None else {int(f) for f in frames}
        if asked is not None and not asked <= set(candidate.frames):
            missing = sorted(asked - set(candidate.frames))
            raise PromptError(f"the candidate does not propose frame(s) {missing[:5]}")
        chosen = [f for f in candidate.frames if asked is None or f in asked]
        annotations = self.session.annotations
        skipped = [
            f
            for f in chosen
            if not overwrite_confirmed and annotations.kept_by_accepts(f, candidate.obj_id)
        ]
        pool = self._pool(candidate.obj_id)
        corrections = []
        for frame in (f for f in chosen if f not in skipped):
            mask = candidate.masks[candidate.frames.index(frame)]
            merged = merge_object(self.session.labels[frame], candidate.obj_id, mask)
            obj_mask = merged == candidate.obj_id
            previous = annotations.confirmed_mask(frame, candidate.obj_id)
            if previous is not None and np.array_equal(previous, obj_mask):
                continue  # the same accept twice: nothing new for SAM2 or the replay
            corrections.append(Correction(frame, candidate.obj_id, obj_mask, "changed", 0))
            record = self.session.decoder_inputs(frame, candidate.obj_id)
            if record is None:
                continue
            if source == "accepted":  # the user's own judgement: evidence for the calibrator
                pool.observe(
                    self.decoder,
                    record,
                    obj_mask,
                    exclude=candidate.adapter_name,
                    reference=self.reference_mask(frame, candidate.obj_id),
                )
            if self.settings.replay_size > 0:
                pool.replay.append(ReplayEntry(candidate.adapter_name, cpu_copy(record), obj_mask))
        with self.session.exclusive():
            self.session.condition_on(corrections, source, adapter=candidate.adapter_name)
        written = [c.frame for c in corrections]
        return AcceptReport(written, skipped, self.session.labels[written])

    def auto_accept_steps(
        self,
        candidates: Iterable[Candidate],
        min_estimated_iou: float,
        frames: Iterable[int] | None = None,
        repropagate: bool = False,
        frame_range: tuple[int, int] | None = None,
        assist: bool = True,
    ) -> Generator[PropagationStep, None, list[tuple[Candidate, AcceptReport]]]:
        """:meth:`auto_accept`, then (with ``repropagate``) re-track from the first
        accepted frame within ``frame_range`` — ONE undo step."""
        with self.session.annotation.action("auto-accept"):
            accepted = self.auto_accept(candidates, min_estimated_iou, frames)
            written = [f for _, report in accepted for f in report.frames]
            if repropagate and written:
                yield from self._repropagate(min(written), frame_range, assist)
        return accepted

    def auto_accept(
        self,
        candidates: Iterable[Candidate],
        min_estimated_iou: float,
        frames: Iterable[int] | None = None,
    ) -> list[tuple[Candidate, AcceptReport]]:
        """Accept, frame by frame, the best candidate whose estimated IoU reaches a bar.

        For each (object, frame) the candidate with the highest estimated IoU there is
        chosen; it is accepted on that frame when its estimate is at least
        ``min_estimated_iou``. Frames the user confirmed are never touched (earlier
        automatic accepts may be replaced); accepted frames are recorded as
        ``"auto_accepted"`` and do not feed the calibrator.

        Parameters
        ----------
        candidates : iterable of Candidate
            From :meth:`propose`.
        min_estimated_iou : float
            The bar, in (0, 1].
        frames : iterable of int, optional
            Restrict to these frames (default: every frame the candidates propose).

        Returns
        -------
        list of (Candidate, AcceptReport)
            One entry per candidate that was accepted on at least one frame.

        Raises
        ------
        PromptError
            ``min_estimated_iou`` outside (0, 1].
        """
        self._check_open()
        bar = float(min_estimated_iou)
        if not 0.0 < bar <= 1.0:
            raise PromptError(f"the auto-accept bar must be in (0, 1], not {min_estimated_iou!r}")
        wanted = None if frames is None else {int(f) for f in frames}
        best: dict[tuple[int, int], tuple[float, int]] = {}
        pool = list(candidates)
        for index, candidate in enumerate(pool):
            for frame in candidate.frames:
                if wanted is not None and frame not in wanted:
                    continue
                estimate = candidate.frame_estimate(frame) or 0.0
                key = (candidate.obj_id, frame)
                if estimate >= bar and estimate > best.get(key, (-1.0, -1))[0]:
                    best[key] = (estimate, index)
        chosen: dict[int, list[int]] = {}
        for (obj_id, frame), (_, index) in sorted(best.items()):
            if not self.session.annotations.kept_by_accepts(frame, obj_id):
                chosen.setdefault(index, []).append(frame)
        with self.session.annotation.action("auto-accept"):
            return [
                (pool[index], self.accept(pool[index], frames=picked, source="auto_accepted"))
                for index, picked in sorted(chosen.items())
            ]

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> tuple[Path, Path]:
        """Save every adapter (safetensors + JSON with base model, settings, reports and
        the scope; shared adapters have no object id)."""
        self._check_open()
        names = self.adapter_names()
        if not names:
            raise SamLoraError("no adapters to save yet: correct a frame first")
        spec = self.session.model.spec
        return save_adapters(
            path,
            self.decoder,
            names,
            {"model": spec.label, "untrained": spec.untrained, **(metadata or {})},
            variant=("untrained:" if spec.untrained else "") + spec.variant.name,
            settings=self.settings,
            object_ids={
                n: obj for obj, pool in self.pools.items() if not pool.shared for n in pool.names
            },
            reports={
                n: [r.to_dict() for r in pool.reports.get(n, []) if r]
                for pool in self.pools.values()
                for n in pool.names
            },
            scope=self.scope,
        )

    def load(self, path: str | Path) -> list[str]:
        """Load adapters from a file onto this session's model; returns their names.

        Names already in use are renamed to the object's next free slot; a file whose
        content is already loaded is not loaded again (its names are returned). On any
        error (damaged file, other base model) the current adapters are kept unchanged.

        A class-scope learner takes class-scope files and object-scope ones (files written
        before scopes existed are object-scope): every adapter joins the shared pool. An
        object-scope learner refuses a class-scope file (its adapters belong to no object).

        Raises
        ------
        AdapterFileError
            As :func:`~.adapter_files.load_adapters`, and a scope this learner cannot take.
        """
        self._check_open()
        digest = content_digest(path)
        if digest is not None and digest in self._loaded:
            return list(self._loaded[digest])
        rename = free_names(path, set(adapter_names(self.decoder)), self.namespace)
        scopes = ("object", "class") if self.scope == "class" else ("object",)
        loaded = load_adapters(
            path, self.decoder, decoder_checksum(self.decoder), rename=rename, scopes=scopes
        )
        for name in loaded.names:
            obj_id = loaded.object_ids.get(name)
            if self.scope == "class":
                self._pool(SHARED_POOL_ID).adopt(name)
            elif obj_id is not None:
                self._pool(int(obj_id)).adopt(name)
        self._base_mode()
        if digest is not None:
            self._loaded[digest] = list(loaded.names)
        return loaded.names
