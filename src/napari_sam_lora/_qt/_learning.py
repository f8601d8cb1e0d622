"""The learning panel: learn from a corrected frame, propose, accept/reject, adapter files.

A thin view: it takes the dock's :class:`~napari_sam_lora.annotator.Annotator` (the chosen
stack, its session and learner), the dock's job slot (one job at a time across propagation
and learning) and its lifecycle — never the dock widget. The checks live in
:mod:`napari_sam_lora.annotator.learning`, the worker jobs and their typed results in
:mod:`napari_sam_lora.annotator.jobs`.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam_lora._qt import threading as _threading
from napari_sam_lora._qt._loss_plot import LossPlot
from napari_sam_lora._qt._shortcuts import key_of, with_key
from napari_sam_lora._qt._slot import Activity, JobSlot, PanelJobs
from napari_sam_lora.annotator import Annotator, Lifecycle, Painted, StackChanged, describe_report
from napari_sam_lora.annotator.jobs import (
    Accepted,
    AutoAccepted,
    LearnOptions,
    Loaded,
    Proposed,
    accept_job,
    auto_accept_job,
    learn_job,
    load_job,
    propose_job,
)
from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.engine.learning.lora_settings import available_presets, load_settings
from napari_sam_lora.engine.learning.records import (
    SCOPE_DESCRIPTIONS,
    SCOPES,
    LearnReport,
    LearnStep,
)
from napari_sam_lora.engine.tracking.plans import PropagationStep
from napari_sam_lora.layers import candidate_layers, is_candidate_layer

__all__ = ["KINDS", "LearningPanel"]

FILTER = "LoRA adapters (*.safetensors *.json);;All files (*)"
#: The job kinds this panel starts (its Cancel button is enabled for these only).
KINDS = ("learn", "propose", "accept", "auto_accept", "load")
#: Default bar of auto-accept (estimated IoU).
AUTO_ACCEPT_BAR = 0.90
AUTO_ACCEPT_TIP = (
    "After each Propose, accept by itself, frame by frame, the best candidate whose "
    "estimated IoU reaches this bar (one undo step; frames you confirmed are never touched; "
    "marked auto_accepted). The estimate is calibrated online from your own corrections: "
    "with few corrections, and on untrained (random) weights, it is unreliable."
)


#: How the scopes read in the panel.
_SCOPE_LABELS = {"object": "each object", "class": "all objects (shared)"}


class LearningPanel(PanelJobs, QWidget):
    """Learn, Propose, Accept/Reject, Save/Load adapters; progress, loss/IoU plot, status.

    Parameters
    ----------
    annotator : Annotator
        The dock's model: the chosen stack, its session and learner.
    slot : JobSlot
        The dock's one job slot.
    life : Lifecycle
        The dock's teardown.

    Attributes
    ----------
    control : LearningControl
        Holds the learner (``control.learner``) and does the checks
        (``annotator.learning``).
    report : LearnReport or None
        The last finished learn call.
    job : Job or None
        The last job this panel started.
    """

    def __init__(self, annotator: Annotator, slot: JobSlot, life: Lifecycle) -> None:
        super().__init__()
        self.annotator, self.slot, self.life = annotator, slot, life
        self.viewer = annotator.viewer
        self.control = annotator.learning
        self.report: Any = None
        self.job: _threading.Job | None = None
        self._kind = ""
        self._pending: int | None = None
        self._proposing: tuple = ()
        self._candidates: list[Any] = []
        self._activity: Activity | None = None
        self._build_ui()
        self._connect()
        self._reset_range()

    # -- UI ---------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.preset_combo = QComboBox(self)
        self.preset_combo.addItems(available_presets() or ["default"])
        self.preset_combo.setCurrentText("default")
        self.preset_combo.setToolTip("LoRA settings: default (fast), lit (paper), strong")
        self.preset_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.preset_combo.setMinimumContentsLength(8)
        self.scope_combo = QComboBox(self)
        for scope in SCOPES:
            self.scope_combo.addItem(_SCOPE_LABELS[scope], scope)
        self.scope_combo.setToolTip(
            "\n".join(f"{_SCOPE_LABELS[k]}: {v}" for k, v in SCOPE_DESCRIPTIONS.items())
        )
        self.learn_button = QPushButton(with_key("Learn from this frame", "learn"), self)
        self.learn_button.setToolTip(
            with_key("Train the corrected objects' adapters on this frame's edit", "learn")
        )
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop learning: the adapter keeps its previous weights")
        self.auto_check = QCheckBox("learn when a stroke ends", self)
        self.auto_check.setToolTip(
            "Automatic: learn from the masks layer each time you finish a stroke"
        )
        self.repropagate_check = QCheckBox("re-propagate after Learn / Accept", self)
        self.repropagate_check.setChecked(True)
        self.repropagate_check.setToolTip(
            "Re-track from the corrected or accepted frame, within the Propagate frame range, "
            "until the masks agree with the previous run (frames you confirmed are kept); "
            "part of the same undo step"
        )
        self.progress = QProgressBar(self)
        self.progress.setFormat("idle")
        self.progress.setValue(0)
        self.plot = LossPlot(self)
        self.from_spin, self.to_spin = QSpinBox(self), QSpinBox(self)
        self.propose_button = QPushButton(with_key("Propose", "propose"), self)
        self.propose_button.setToolTip(
            with_key("Each adapter's masks over 'propose frames', as candidate layers", "propose")
        )
        self.accept_button = QPushButton(with_key("Accept", "accept"), self)
        self.accept_button.setToolTip(
            with_key("Accept the selected candidate on all its frames (one undo step)", "accept")
        )
        self.accept_frame_button = QPushButton(with_key("Accept frame", "accept_frame"), self)
        self.accept_frame_button.setToolTip(
            with_key("Accept the selected candidate on the current frame only", "accept_frame")
        )
        self.reject_button = QPushButton(with_key("Reject", "reject"), self)
        self.reject_button.setToolTip(with_key("Remove the selected candidate layer", "reject"))
        self.overwrite_check = QCheckBox("overwrite confirmed frames", self)
        self.overwrite_check.setToolTip(
            "Accept also replaces masks you confirmed (prompted, corrected, accepted)"
        )
        self.auto_accept_check = QCheckBox("auto-accept candidates above ≈IoU", self)
        self.auto_accept_check.setToolTip(AUTO_ACCEPT_TIP)
        self.auto_accept_spin = QDoubleSpinBox(self)
        self.auto_accept_spin.setRange(0.05, 1.0)
        self.auto_accept_spin.setSingleStep(0.01)
        self.auto_accept_spin.setDecimals(2)
        self.auto_accept_spin.setValue(AUTO_ACCEPT_BAR)
        self.auto_accept_spin.setToolTip(AUTO_ACCEPT_TIP)
        self.save_button = QPushButton("Save adapters…", self)
        self.load_button = QPushButton("Load adapters…", self)
        self.status = QLabel("correct a frame in the masks layer, then Learn", self)
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.setContentsMargins(4, 2, 4, 2)
        form.addRow("preset", self.preset_combo)
        form.addRow("learn for", self.scope_combo)
        form.addRow(_row(self.learn_button, self.cancel_button))
        form.addRow(self.auto_check)
        form.addRow(self.repropagate_check)
        form.addRow(self.progress)
        form.addRow(self.plot)
        form.addRow("propose frames", _row(self.from_spin, QLabel("to", self), self.to_spin))
        form.addRow(_row(self.propose_button, self.reject_button))
        form.addRow(_row(self.accept_button, self.accept_frame_button))
        form.addRow(self.overwrite_check)
        form.addRow(_row(self.auto_accept_check, self.auto_accept_spin))
        form.addRow(_row(self.save_button, self.load_button))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.status)

    def _connect(self) -> None:
        life = self.life
        self.preset_combo.currentTextChanged.connect(self._apply_preset)
        self.scope_combo.currentIndexChanged.connect(self._apply_scope)
        for button, action in (
            (self.learn_button, self.learn),
            (self.cancel_button, self.cancel),
            (self.propose_button, self.propose),
            (self.accept_button, self.accept),
            (self.accept_frame_button, self.accept_frame),
            (self.reject_button, self.reject),
            (self.save_button, self.save_adapters),
            (self.load_button, self.load_adapters),
        ):
            button.clicked.connect(lambda *_, a=action: a())
        self.annotator.events.connect(self._on_annotator_event)
        life.on_shutdown(lambda: self.annotator.events.disconnect(self._on_annotator_event))
        life.connect(self.viewer.dims.events.current_step, self._limit_range)
        self.slot.add_listener(self._on_slot)

    def shortcut_actions(self) -> dict[str, Any]:
        """The panel's keyboard actions (bound by the host)."""
        return {
            "learn": self.learn,
            "propose": self.propose,
            "accept": self.accept,
            "accept_frame": self.accept_frame,
            "reject": self.reject,
        }

    def _on_annotator_event(self, event: Any) -> None:
        if not self.life.alive:
            return
        if isinstance(event, StackChanged):
            self._reset_range()
        elif isinstance(event, Painted) and self.auto_check.isChecked():
            frames = event.frames
            QTimer.singleShot(0, lambda: self._auto_learn(frames[-1]))  # leave the event first

    # -- public API --------------------------------------------------------------------------
    @property
    def learner(self) -> Any:
        """The learner of the current session (``None`` before the first action)."""
        return self.control.learner

    @property
    def busy(self) -> bool:
        """Whether a job (propagation or learning) is running."""
        return self.slot.busy

    def learn(self, frame: int | None = None, quiet: bool = False) -> bool:
        """Train on the user's edit of ``frame`` (default: the viewer's current frame).

        ``quiet`` (automatic mode) reports problems in the status line, not as notifications,
        and says nothing when the frame is unchanged. Returns whether a job was started.
        """
        if self._refuse_if_busy(quiet):
            return False
        try:
            args = self.control.prepare_learn(frame, quiet)
        except Exception as exc:
            self._error(exc, quiet)
            return False
        if args is None:
            return False
        session, frame = args
        steps = self._max_steps()
        self.plot.clear()
        self.progress.setRange(0, steps)
        self.progress.setValue(0)
        self.progress.setFormat(f"learning from frame {frame}: step 0 of up to {steps}")
        self.status.setText(f"learning from frame {frame}…")
        self._activity = Activity(f"LoRA: learning from frame {frame}", steps)
        self._start("learn", learn_job, self.control, session, frame, self._options())
        return True

    def propose(self, first: int | None = None, last: int | None = None) -> bool:
        """Propose masks for frames ``first``–``last`` (default: the range spin boxes)."""
        if self._refuse_if_busy():
            return False
        first = self.from_spin.value() if first is None else int(first)
        last = self.to_spin.value() if last is None else int(last)
        try:
            ctx = self.control.prepare_propose(first, last)
        except Exception as exc:
            self._error(exc)
            return False
        self._proposing = (ctx.image, ctx.source, ctx.region)
        self._candidates = []
        self.status.setText(f"proposing frames {first}–{last}…")
        self._start("propose", propose_job, ctx.learner, first, last)
        return True

    def accept(self, layer: Any = None, frames: list[int] | None = None) -> bool:
        """Accept the selected candidate layer on all its frames (or ``frames``): one undo
        step, then SAM2 memory + replay. Frames you confirmed are skipped unless *overwrite
        confirmed frames* is ticked."""
        if self._refuse_if_busy():
            return False
        layer = self.viewer.layers.selection.active if layer is None else layer
        overwrite = self.overwrite_check.isChecked()
        try:
            plan = self.control.plan_accept(layer, frames, overwrite)
            ctx = self.control.context()
        except Exception as exc:
            self._error(exc)
            return False
        self._proposing = (ctx.image, ctx.source, ctx.region)
        self.status.setText(f"accepting object {plan.candidate.obj_id} on frame(s) {plan.frames}…")
        self._start("accept", accept_job, plan, self._options())
        return True

    def auto_accept(self, candidates: list[Any] | None = None, bar: float | None = None) -> bool:
        """Accept on the worker, per (object, frame), the best of ``candidates`` (default:
        the last proposal) whose estimated IoU reaches ``bar`` (default: the spin box);
        written to the masks layer as one undo step, marked ``auto_accepted``. Frames the
        user confirmed are never touched. Returns whether a job was started."""
        if self._refuse_if_busy():
            return False
        candidates = list(self._candidates if candidates is None else candidates)
        bar = float(self.auto_accept_spin.value() if bar is None else bar)
        try:
            ctx = self.control.context()
            if ctx.learner is None or not candidates:
                raise PromptError("nothing to auto-accept: Propose first")
        except Exception as exc:
            self._error(exc)
            return False
        self._proposing = (ctx.image, ctx.source, ctx.region)
        self.status.setText(f"auto-accepting frames with ≈IoU ≥ {bar:.2f}…")
        self._start("auto_accept", auto_accept_job, ctx.learner, candidates, bar, self._options())
        return True

    def accept_frame(self, layer: Any = None) -> bool:
        """Accept the selected candidate on the current frame only."""
        return self.accept(layer, [self.annotator.current_frame()])

    def reject(self, layer: Any = None) -> bool:
        """Remove the selected candidate layer; the masks layer is untouched."""
        layer = self.viewer.layers.selection.active if layer is None else layer
        try:
            name = self.control.reject(layer)
        except Exception as exc:
            self._error(exc)
            return False
        self.status.setText(f"rejected '{name}'")
        return True

    def cancel(self) -> None:
        """Stop the running job at its next step (training keeps the previous adapter)."""
        if self.busy and self.slot.kind in KINDS:
            self.slot.cancel()
            self.cancel_button.setEnabled(False)
            self.status.setText("cancelling…")

    def save_adapters(self, path: str | None = None) -> bool:
        """Save every adapter (a file dialog asks for ``path`` when not given)."""
        if self._refuse_if_busy():
            return False
        try:
            self.control.context()  # fail before asking for a file
            path = path or QFileDialog.getSaveFileName(self, "Save adapters", "", FILTER)[0]
            if not path:
                return False
            weights = self.control.save(path)
        except Exception as exc:
            self._error(exc)
            return False
        self.status.setText(f"saved adapters to {weights}")
        return True

    def load_adapters(self, path: str | None = None) -> bool:
        """Load adapters onto the session's model; on error the current ones are kept."""
        if self._refuse_if_busy():
            return False
        try:
            session = self.control.prepare_load()
            path = path or QFileDialog.getOpenFileName(self, "Load adapters", "", FILTER)[0]
            if not path:
                return False
        except Exception as exc:
            self._error(exc)
            return False
        self.status.setText(f"loading adapters from {path}…")
        self._start("load", load_job, self.control, session, str(path))
        return True

    def release(self) -> None:
        """The dock is closing: close the activity entry (the dock releases the learner
        once the job that may use it has ended)."""
        if self._activity is not None:
            self._activity.close()
            self._activity = None

    def frame_notes(self) -> list[str]:
        """What the selected candidate layer says about the current frame (estimated IoU)."""
        layer = self.viewer.layers.selection.active
        if not is_candidate_layer(layer):
            return []
        info = layer.metadata["napari_sam_lora"]
        frame = self.annotator.current_frame()
        frames = info.get("frames", [])
        values = info.get("estimated_ious") or info.get("confidences") or []
        if frame not in frames or frames.index(frame) >= len(values):
            return [f"candidate {info['adapter']}: no proposal on frame {frame}"]
        return [
            f"candidate {info['adapter']} on frame {frame}: estimated IoU "
            f"{values[frames.index(frame)]:.2f}"
        ]

    # -- internals ---------------------------------------------------------------------------
    def _max_steps(self) -> int:
        learner = self.control.learner
        settings = learner.settings if learner is not None else None
        if settings is None:
            try:
                settings = load_settings(self.preset_combo.currentText())
            except Exception:
                return 0
        return int(settings.max_steps_new)

    def _apply_scope(self, *_: Any) -> None:
        scope = self.scope_combo.currentData()
        try:
            closed = self.control.set_scope(scope)
        except Exception as exc:
            self._error(exc)
            return
        note = " (the previous adapters were dropped: load them again if needed)" if closed else ""
        self.status.setText(f"learning {_SCOPE_LABELS[scope]} from the next correction{note}")

    def _apply_preset(self, *_: Any) -> None:
        try:
            self.control.set_preset(self.preset_combo.currentText())
        except Exception as exc:
            self._error(exc)

    def _on_slot(self, kind: str, running: bool) -> None:
        if not self.life.alive:
            return
        for widget in (
            self.preset_combo,
            self.scope_combo,
            self.learn_button,
            self.auto_accept_check,
            self.auto_accept_spin,
            self.propose_button,
            self.accept_button,
            self.accept_frame_button,
            self.save_button,
            self.load_button,
        ):
            widget.setEnabled(not running)
        self.cancel_button.setEnabled(running and kind in KINDS)

    def _options(self) -> LearnOptions:
        """What follows a Learn or an Accept: the re-propagation over the Propagate range."""
        selection = self.annotator.selection
        return LearnOptions(
            self.repropagate_check.isChecked(), self.annotator.frame_range(), selection.assist
        )

    def _on_yield(self, item: Any) -> None:
        if not self.life.alive:
            return
        if isinstance(item, LearnStep):
            step = item.step
            self.plot.add(step.loss, step.iou)
            self.progress.setMaximum(max(self.progress.maximum(), step.step))
            self.progress.setValue(step.step)
            self.progress.setFormat(
                f"object {item.obj_id} ({item.index}/{item.count}) step {step.step} of up to "
                f"{self.progress.maximum()}: loss {step.loss:.3f}, IoU {step.iou:.2f}"
            )
            if self._activity is not None:
                self._activity.update(step.step, self.progress.maximum())
        elif isinstance(item, PropagationStep):  # the re-propagation after Learn / Accept
            self.annotator.show_step(item.frame, item.labels)
            self.progress.setRange(0, item.total)
            self.progress.setValue(item.done)
            self.progress.setFormat(f"re-propagating: frame {item.frame} ({item.done} tracked)")
        elif isinstance(item, LearnReport):
            self.report = item
            self.status.setText(describe_report(item))
        elif isinstance(item, Loaded):
            if item.names and not item.new:
                self.status.setText(
                    f"already loaded: {', '.join(item.names)} (same file content; not added again)"
                )
            else:
                self.status.setText(f"loaded {len(item.new)} adapter(s): {', '.join(item.new)}")
        elif isinstance(item, Proposed):
            self._show_proposed(item)
        elif isinstance(item, Accepted):
            image, source, _ = self._proposing
            self.control.drop_accepted(image, source, [(item.candidate, item.report)])
            self._select_after_accept()
            note = f"; kept your frame(s) {item.skipped}" if item.skipped else ""
            self.status.setText(
                f"accepted object {item.candidate.obj_id} on frame(s) {item.report.frames} "
                f"(Undo brings it back){note}"
            )
        elif isinstance(item, AutoAccepted):
            image, source, _ = self._proposing
            self.control.drop_accepted(image, source, item.accepted)
            self._candidates = []
            written = item.frames
            self.status.setText(
                f"auto-accepted {len(written)} frame(s) (≈IoU ≥ {item.bar:.2f}): "
                f"{written} (one undo step; marked auto_accepted)"
                if written
                else f"auto-accept: no frame reached ≈IoU ≥ {item.bar:.2f}"
            )

    def _show_proposed(self, item: Proposed) -> None:
        image, source, region = self._proposing  # the proposing session's region
        shown = self.control.show_candidates(image, source, item.candidates, region)
        self._candidates = list(item.candidates) if shown else []
        best = item.candidates[0].short_name if item.candidates else ""
        self.status.setText(
            f"{shown} candidate layer(s); best: {best}. Accept ({key_of('accept')}), "
            f"Accept frame ({key_of('accept_frame')}) or Reject ({key_of('reject')}) "
            f"the selected one"
            if shown
            else f"no proposals for frames {item.first}–{item.last}: propagate over them first"
        )

    def _on_done(self, state: str) -> None:
        if self._activity is not None:
            self._activity.close()
            self._activity = None
        if not self.life.alive:
            return
        kind, job = self._kind, self.job
        self.annotator.apply_strokes()  # strokes painted while the job ran
        self.annotator.flush(kind)
        if state == _threading.CANCELLED:
            self.status.setText(
                "learning cancelled: the adapter keeps its previous weights and your edit "
                "waits to be learned"
                if kind == "learn"
                else f"{kind} cancelled: nothing changed"
            )
            self.progress.setFormat("cancelled" if kind == "learn" else self.progress.format())
        elif state == _threading.FAILED:
            error = job.error if job is not None else None
            text = _threading.describe_error(error) if error is not None else "unknown error"
            self.status.setText(f"{kind} failed: {text}")
        elif kind == "learn":
            self.progress.setValue(self.progress.maximum())
            self.progress.setFormat("learned")
        pending, self._pending = self._pending, None
        if pending is not None and state != _threading.CANCELLED:
            self.learn(pending, quiet=True)
            return
        if (
            kind == "propose"
            and state == _threading.FINISHED
            and self.auto_accept_check.isChecked()
            and self._candidates
        ):
            self.auto_accept()

    def _select_after_accept(self) -> None:
        """Leave the next candidate (or the masks layer) selected, so the next key works."""
        active = self.viewer.layers.selection.active
        if active is not None and is_candidate_layer(active):
            return  # only some frames were accepted: it stays
        others = candidate_layers(self.viewer)
        target = others[-1] if others else self.annotator.output()
        if target is not None:
            self.viewer.layers.selection.active = target

    def _auto_learn(self, frame: int) -> None:
        if not self.life.alive:
            return
        if self.busy:
            self._pending = frame  # learn from it when the running job ends
            return
        self.learn(frame, quiet=True)

    def _refuse_if_busy(self, quiet: bool = False) -> bool:
        if not self.busy:
            return False
        self._error(PromptError("a job is running: wait for it or cancel it first"), quiet)
        return True

    def _error(self, exc: BaseException, quiet: bool = False) -> None:
        """The error in full in this panel's status line, and as a notification unless
        ``quiet``."""
        self.status.setText(f"error: {_threading.describe_error(exc)}")
        if not quiet:
            _threading.notify_error(exc)

    def _reset_range(self, *_: Any) -> None:
        """Another stack: propose from the frame after the current one to the end."""
        if not self.life.alive:
            return
        count, current = self.annotator.frame_count(), self.annotator.current_frame()
        for spin in (self.from_spin, self.to_spin):
            spin.setRange(0, count - 1)
        self.from_spin.setValue(min(current + 1, count - 1))
        self.to_spin.setValue(count - 1)

    def _limit_range(self, *_: Any) -> None:
        """The viewer moved: keep the user's propose frames (only their limits follow the
        stack)."""
        if self.life.alive and self.from_spin.maximum() != self.annotator.frame_count() - 1:
            self._reset_range()


def _row(*widgets: Any) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row
