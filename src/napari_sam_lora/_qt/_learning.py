"""The learning panel: learn from a corrected frame, propose, accept/reject, adapter files.

Embedded in :class:`~napari_sam_lora._qt.widget.SamLoraWidget`; shares its session cache, its
job slot (one job at a time across propagation and learning) and its lifecycle. The checks
and layer work live in :mod:`._learning_control`; this module holds widgets and jobs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.layers import Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_sam_lora._qt import threading as _threading
from napari_sam_lora._qt._learning_control import (
    LearningControl,
    accept_job,
    describe_report,
    learn_job,
    load_job,
    propose_job,
)
from napari_sam_lora._qt._loss_plot import LossPlot
from napari_sam_lora.engine.errors import PromptError
from napari_sam_lora.engine.lora_settings import available_presets

if TYPE_CHECKING:
    from napari_sam_lora._qt.widget import SamLoraWidget

__all__ = ["ACCEPT_KEY", "LEARN_KEY", "REJECT_KEY", "LearningPanel"]

LEARN_KEY, ACCEPT_KEY, REJECT_KEY = "Shift-L", "Shift-A", "Shift-R"
FILTER = "LoRA adapters (*.safetensors *.json);;All files (*)"


class LearningPanel(QGroupBox):
    """Learn, Propose, Accept/Reject, Save/Load adapters; progress, loss/IoU plot, status.

    Parameters
    ----------
    host : SamLoraWidget
        The dock widget; its ``sessions`` hold the session the learner uses, its ``job`` is
        the one job slot.

    Attributes
    ----------
    control : LearningControl
        Holds the learner (``control.learner``) and does the checks and layer work.
    report : LearnReport or None
        The last finished learn call.
    job : Job or None
        The last job this panel started (it is also the host's ``job`` while it runs).
    """

    def __init__(self, host: SamLoraWidget) -> None:
        super().__init__("Learn from corrections (LoRA)", host)
        self.host, self.viewer = host, host.viewer
        self.control = LearningControl(host)
        self.report: Any = None
        self.job: _threading.Job | None = None
        self._kind = ""
        self._pending: int | None = None
        self._proposing: tuple = ()
        self._build_ui()
        self._connect()
        self._reset_range()

    # -- UI ---------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.preset_combo = QComboBox(self)
        self.preset_combo.addItems(available_presets() or ["default"])
        self.preset_combo.setCurrentText("default")
        self.preset_combo.setToolTip("LoRA settings: default (fast), lit (paper), strong")
        self.learn_button = QPushButton(f"Learn from this frame ({LEARN_KEY})", self)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.auto_check = QCheckBox("automatic: learn when a stroke ends", self)
        self.progress = QProgressBar(self)
        self.progress.setFormat("idle")
        self.progress.setValue(0)
        self.plot = LossPlot(self)
        self.from_spin, self.to_spin = QSpinBox(self), QSpinBox(self)
        self.propose_button = QPushButton("Propose", self)
        self.accept_button = QPushButton(f"Accept ({ACCEPT_KEY})", self)
        self.reject_button = QPushButton(f"Reject ({REJECT_KEY})", self)
        self.save_button = QPushButton("Save adapters…", self)
        self.load_button = QPushButton("Load adapters…", self)
        self.status = QLabel("correct a frame in the masks layer, then Learn", self)
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("preset", self.preset_combo)
        form.addRow(_row(self.learn_button, self.cancel_button))
        form.addRow(self.auto_check)
        form.addRow(self.progress)
        form.addRow(self.plot)
        form.addRow("propose frames", _row(self.from_spin, QLabel("to", self), self.to_spin))
        form.addRow(_row(self.propose_button, self.accept_button, self.reject_button))
        form.addRow(_row(self.save_button, self.load_button))
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)

    def _connect(self) -> None:
        life, viewer = self.host._life, self.viewer
        self.preset_combo.currentTextChanged.connect(self._apply_preset)
        for button, action in (
            (self.learn_button, self.learn),
            (self.cancel_button, self.cancel),
            (self.propose_button, self.propose),
            (self.accept_button, self.accept),
            (self.reject_button, self.reject),
            (self.save_button, self.save_adapters),
            (self.load_button, self.load_adapters),
        ):
            button.clicked.connect(lambda *_, a=action: a())
        self.host.image_combo.currentIndexChanged.connect(self._reset_range)
        self.host.axis_spin.valueChanged.connect(self._reset_range)
        for emitter, callback in (
            (viewer.dims.events.current_step, self._reset_range),
            (viewer.layers.events.inserted, self._on_inserted),
        ):
            emitter.connect(callback)
            life.teardown.append(lambda e=emitter, c=callback: e.disconnect(c))
        for layer in viewer.layers:
            self._watch(layer)
        for key, action in ((LEARN_KEY, self.learn), (ACCEPT_KEY, self.accept)):
            self._bind(key, action)
        self._bind(REJECT_KEY, self.reject)

    def _bind(self, key: str, action: Any) -> None:
        def handler(_viewer: Any = None) -> None:
            if self.host._life.alive:
                action()

        viewer = self.viewer
        viewer.bind_key(key, handler, overwrite=True)
        self.host._life.teardown.append(lambda: viewer.bind_key(key, None))

    def _on_inserted(self, event: Any) -> None:
        if self.host._life.alive:
            self._watch(event.value)

    def _watch(self, layer: Any) -> None:
        if isinstance(layer, Labels):
            layer.events.paint.connect(self._on_paint)
            self.host._life.teardown.append(lambda: layer.events.paint.disconnect(self._on_paint))

    # -- public API --------------------------------------------------------------------------
    @property
    def learner(self) -> Any:
        """The learner of the current session (``None`` before the first action)."""
        return self.control.learner

    @property
    def busy(self) -> bool:
        """Whether a job (propagation or learning) is running."""
        return self.host.job is not None and self.host.job.is_running

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
        frame = args[2]
        self.plot.clear()
        self.progress.setRange(0, 0)  # busy until the first step
        self.progress.setValue(0)
        self.progress.setFormat(f"learning from frame {frame}…")
        self.status.setText(f"learning from frame {frame}…")
        self._start("learn", learn_job, *args)
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
        self._proposing = (ctx.image, ctx.source, first, last)
        self.status.setText(f"proposing frames {first}–{last}…")
        self._start("propose", propose_job, ctx.learner, list(range(first, last + 1)))
        return True

    def accept(self, layer: Any = None) -> bool:
        """Accept the selected candidate layer: one undo step, then SAM2 memory + replay."""
        if self._refuse_if_busy():
            return False
        layer = self.viewer.layers.selection.active if layer is None else layer
        try:
            learner, candidate, frames = self.control.accept(layer)
        except Exception as exc:
            self._error(exc)
            return False
        self.status.setText(f"accepted object {candidate.obj_id} on frames {frames} (undoable)")
        self._start("accept", accept_job, learner, candidate)
        return True

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
        if self.busy:
            self.host.job.cancel()
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

    # -- internals ---------------------------------------------------------------------------
    def _apply_preset(self, *_: Any) -> None:
        try:
            self.control.set_preset(self.preset_combo.currentText())
        except Exception as exc:
            self._error(exc)

    def _start(self, kind: str, fn: Any, *args: Any) -> None:
        self._kind = kind
        self.host._set_running(True)
        self._set_running(True)
        job = _threading.start_job(fn, *args, on_yield=self._on_yield, on_done=self._on_done)
        self.job = self.host.job = self.host._life.job = job

    def _set_running(self, running: bool) -> None:
        for widget in (
            self.preset_combo,
            self.learn_button,
            self.propose_button,
            self.accept_button,
            self.save_button,
            self.load_button,
        ):
            widget.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_yield(self, item: Any) -> None:
        if not self.host._life.alive:
            return
        step = getattr(item, "step", None)
        if step is not None and hasattr(step, "loss"):  # a LearnStep
            if self.progress.maximum() == 0:
                self.progress.setMaximum(self.control.learner.settings.max_steps_new)
            self.plot.add(step.loss, step.iou)
            self.progress.setMaximum(max(self.progress.maximum(), step.step))
            self.progress.setValue(step.step)
            self.progress.setFormat(
                f"object {item.obj_id} ({item.index}/{item.count}) step {step.step}: "
                f"loss {step.loss:.3f}, IoU {step.iou:.2f}"
            )
        elif hasattr(item, "trained"):  # the LearnReport
            self.report = item
            self.status.setText(describe_report(item))
        elif self._kind == "load":
            self.status.setText(f"loaded {len(item)} adapter(s): {', '.join(item)}")
        elif self._kind == "propose":
            image, source, first, last = self._proposing
            shown = self.control.show_candidates(image, source, item)
            self.status.setText(
                f"{shown} candidate layer(s); best: {item[0].name}. Accept ({ACCEPT_KEY}) or "
                f"Reject ({REJECT_KEY}) the selected one"
                if shown
                else f"no proposals for frames {first}–{last}: propagate over them first"
            )

    def _on_done(self, state: str) -> None:
        if not self.host._life.alive:
            return
        kind, job = self._kind, self.job
        self.host._set_running(False)
        self._set_running(False)
        if kind == "learn":  # leave the busy indicator
            self.progress.setRange(0, max(self.progress.maximum(), 1))
        if state == _threading.CANCELLED:
            self.status.setText(
                "learning cancelled: the adapter keeps its previous weights"
                if kind == "learn"
                else f"{kind} cancelled"
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

    def _on_paint(self, event: Any) -> None:
        if not self.host._life.alive or not self.auto_check.isChecked():
            return
        frame = self.control.painted_frame(event.source)
        if frame is not None:  # leave the paint event first
            QTimer.singleShot(0, lambda: self._auto_learn(frame))

    def _auto_learn(self, frame: int) -> None:
        if not self.host._life.alive:
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
        if quiet:
            self.status.setText(_threading.describe_error(exc))
        else:
            _threading.notify_error(exc)

    def _reset_range(self, *_: Any) -> None:
        if not self.host._life.alive:
            return
        count, current = self.control.frame_range()
        for spin in (self.from_spin, self.to_spin):
            spin.setRange(0, count - 1)
        self.from_spin.setValue(min(current + 1, count - 1))
        self.to_spin.setValue(count - 1)


def _row(*widgets: Any) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row
