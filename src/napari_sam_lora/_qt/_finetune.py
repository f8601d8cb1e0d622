"""The fine-tuning dock widget: pick a config, check the data, train on the worker thread.

Runs the same engine as ``napari-sam-lora check-data`` / ``train`` (:mod:`napari_sam_lora.
finetune`) through :func:`napari_sam_lora._qt.threading.start_job`: a progress bar per stage,
the per-epoch loss and IoU in a table, a Cancel button (the best adapter so far and a
checkpoint are kept; training again resumes), and the diagnosis summary at the end.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_sam_lora._qt import threading as _threading

__all__ = ["FineTuneWidget", "check_job", "example_job", "train_job"]

COLUMNS = ("epoch", "train loss", "val loss", "train IoU", "val IoU")
FILTER = "Fine-tuning config (*.yaml *.yml);;All files (*)"


def check_job(path: str) -> Generator[Any, None, None]:
    """Worker: read the config and check the data; yields the :class:`DataReport`."""
    from napari_sam_lora.finetune.config import load_config
    from napari_sam_lora.finetune.data_check import check_data

    yield check_data(load_config(path))


def example_job(folder: str | None = None) -> Generator[Any, None, None]:
    """Worker: write the example config and the synthetic stacks it trains on; yields the
    config's path.

    The packaged ``configs/finetune/example.yaml`` points at ``../../synthetic_suite`` (a
    repository checkout); the copy written here points at the stacks written beside it, so
    *Check data* passes out of the box. ``folder`` defaults to the user cache.
    """
    import re

    from napari_sam_lora.engine.tracking.models import cache_dir
    from napari_sam_lora.synthetic import write_suite

    out = Path(folder) if folder else cache_dir() / "finetune-example"
    text = (Path(__file__).parents[1] / "configs" / "finetune" / "example.yaml").read_text(
        encoding="utf-8"
    )
    kinds = sorted(set(re.findall(r"synthetic_suite/(\w+)_image\.tif", text)))
    write_suite(out / "synthetic_suite", kinds=kinds)
    config = out / "example.yaml"
    config.write_text(text.replace("../../synthetic_suite", "synthetic_suite"), encoding="utf-8")
    yield str(config)


def train_job(path: str, restart: bool = False) -> Generator[Any, None, None]:
    """Worker: train from the config; yields progress, then the :class:`FineTuneResult`."""
    from napari_sam_lora.finetune.config import load_config
    from napari_sam_lora.finetune.trainer import train

    config = load_config(path, resume=False if restart else None)
    result = yield from train(config)
    yield result


class FineTuneWidget(QWidget):
    """Fine-tune a LoRA adapter from a config file (see ``configs/finetune/example.yaml``).

    Parameters
    ----------
    napari_viewer : napari.Viewer, optional
        The viewer (the widget does not change its layers).

    Attributes
    ----------
    job : Job or None
        The running or last job.
    result : FineTuneResult or None
        The last finished training.
    """

    def __init__(self, napari_viewer: Any = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job: _threading.Job | None = None
        self.result: Any = None
        self.report: Any = None
        self._build_ui()

    def _build_ui(self) -> None:
        self.path_edit = QLineEdit(self)
        self.path_edit.setPlaceholderText("fine-tuning config (.yaml)")
        self.browse_button = QPushButton("Browse…", self)
        self.example_button = QPushButton("Example", self)
        self.example_button.setToolTip(
            "Write the example config and the synthetic stacks it trains on (user cache) and use it"
        )
        self.check_button = QPushButton("Check data", self)
        self.train_button = QPushButton("Train", self)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.restart_check = QCheckBox("start over (ignore the checkpoint)", self)
        self.progress = QProgressBar(self)
        self.progress.setFormat("idle")
        self.table = QTableWidget(0, len(COLUMNS), self)
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.Stretch)  # every column readable, no sideways cut
        header.setMinimumSectionSize(40)
        self.table.setMinimumHeight(90)
        self.text = QPlainTextEdit(self)
        self.text.setReadOnly(True)
        self.text.setMinimumHeight(60)
        self.text.setLineWrapMode(QPlainTextEdit.WidgetWidth)
        self.status = QLabel("choose a config, check the data, then train", self)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        content = QWidget(self)
        inner = QVBoxLayout(content)
        inner.setContentsMargins(2, 2, 2, 2)
        for row in (
            (self.path_edit, self.browse_button, self.example_button),
            (self.check_button, self.train_button, self.cancel_button),
        ):
            line = QHBoxLayout()
            for w in row:
                line.addWidget(w)
            inner.addLayout(line)
        for w in (self.restart_check, self.progress, self.table, self.text):
            inner.addWidget(w)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.status)
        self.browse_button.clicked.connect(lambda *_: self.browse())
        self.example_button.clicked.connect(lambda *_: self.use_example())
        self.check_button.clicked.connect(lambda *_: self.check())
        self.train_button.clicked.connect(lambda *_: self.train())
        self.cancel_button.clicked.connect(lambda *_: self.cancel())

    # -- actions --------------------------------------------------------------------------
    def browse(self) -> None:
        """Pick the config file."""
        path, _ = QFileDialog.getOpenFileName(self, "Fine-tuning config", "", FILTER)
        if path:
            self.path_edit.setText(path)

    def use_example(self, folder: str | None = None) -> bool:
        """Write the example config and its data (on the worker), then select it."""
        if self._busy():
            return False
        self.status.setText("writing the example config and its synthetic stacks…")
        self._start(example_job, folder)
        return True

    def set_config(self, path: str | Path) -> None:
        """Use ``path`` as the config."""
        self.path_edit.setText(str(path))

    def _path(self) -> str | None:
        path = self.path_edit.text().strip()
        if not path:
            self.status.setText("choose a config file first")
            return None
        return path

    def check(self) -> bool:
        """Check the data on the worker; the report appears in the text box."""
        path = self._path()
        if path is None or self._busy():
            return False
        self.status.setText("checking the data…")
        self._start(check_job, path)
        return True

    def train(self) -> bool:
        """Train on the worker (resumes from a checkpoint unless "start over" is ticked)."""
        path = self._path()
        if path is None or self._busy():
            return False
        self.table.setRowCount(0)
        self.text.clear()
        self.result = None
        self.status.setText("training…")
        self._start(train_job, path, self.restart_check.isChecked())
        return True

    def cancel(self) -> None:
        """Stop at the next step; the best adapter so far and a checkpoint are kept."""
        if self.job is not None and self.job.is_running:
            self.job.cancel()
            self.status.setText("cancelling…")

    # -- job plumbing -----------------------------------------------------------------------
    def _busy(self) -> bool:
        if self.job is not None and self.job.is_running:
            self.status.setText("busy: wait for the running job or cancel it")
            return True
        return False

    def _start(self, fn: Any, *args: Any) -> None:
        self._set_running(True)
        self.job = _threading.start_job(
            fn, *args, on_yield=self._on_yield, on_done=self._on_done, on_error=self._on_error
        )

    def _set_running(self, running: bool) -> None:
        for w in (
            self.check_button,
            self.train_button,
            self.browse_button,
            self.example_button,
            self.path_edit,
        ):
            w.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_yield(self, item: Any) -> None:
        from napari_sam_lora.finetune.data_check import DataReport
        from napari_sam_lora.finetune.events import Progress

        if isinstance(item, str):  # example_job: the config written
            self.set_config(item)
            self.status.setText(f"example config: {item}; Check data, then Train")
        elif isinstance(item, Progress):
            self._show_progress(item)
        elif isinstance(item, DataReport):
            self.report = item
            self.text.setPlainText(item.format())
            n = len(item.all_problems())
            self.status.setText("data OK: ready to train" if item.ok else f"{n} data problem(s)")
        else:
            self._show_result(item)

    def _show_progress(self, p: Any) -> None:
        self.progress.setMaximum(max(int(p.total), 1))
        self.progress.setValue(int(p.done))
        self.progress.setFormat(f"{p.stage} %v/%m")
        if p.stage == "inject":
            self.text.appendPlainText(p.message)
        if p.epoch is not None:
            self._add_epoch(p.epoch)
        self.status.setText(p.message)

    def _add_epoch(self, e: Any) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        values = (e.epoch, e.train_loss, e.val_loss, e.train_iou, e.val_iou)
        for col, value in enumerate(values):
            text = str(value) if col == 0 else ("–" if math.isnan(value) else f"{value:.4f}")
            if col == 0 and e.best:
                text += " *"
            self.table.setItem(row, col, QTableWidgetItem(text))
        self.table.scrollToBottom()

    def _show_result(self, result: Any) -> None:
        self.result = result
        lines = [f"stopped: {result.stop_reason} after {result.steps} steps"]
        if result.adapter_path is not None:
            lines.append(f"adapter (best epoch {result.best_epoch}): {result.adapter_path}")
        if result.diagnosis is not None:
            lines.append(result.diagnosis.summary().splitlines()[0])
        lines += [f"WARNING: {w}" for w in result.warnings]
        self.text.appendPlainText("\n".join(lines))

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText(f"failed: {_threading.describe_error(exc)}")

    def _on_done(self, state: str) -> None:
        self._set_running(False)
        if state == _threading.CANCELLED:
            self.progress.setFormat("cancelled")
            self.status.setText(
                "cancelled: the best adapter so far and a checkpoint are kept; Train resumes"
            )
        elif state == _threading.FINISHED:
            self.progress.setFormat("done")
            if self.result is not None:
                self.status.setText(f"done: {self.result.output}")
