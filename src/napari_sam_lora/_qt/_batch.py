"""*Segment a folder…*: a small dock that runs the batch job on a local dask cluster.

The same job as ``napari-sam-lora segment`` (:func:`napari_sam_lora.batch.segment_steps`),
started through the one threading module (:func:`napari_sam_lora._qt.threading.start_job`):
a progress bar per finished stack, a Cancel button (finished stacks are kept; running again
resumes), the dashboard address and a per-stack status list. Errors in the inputs (no
stacks, seeds missing, an adapter of another base model) are shown before anything runs.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam_lora._qt import threading as _threading

__all__ = ["BatchOptions", "BatchWidget", "batch_job"]

DEFAULT_PATTERN = "*.tif"


@dataclass
class BatchOptions:
    """What the dock submits (the arguments of :func:`~napari_sam_lora.batch.segment`)."""

    inputs: str
    output: str
    seeds: str
    model: str = "sam2.1_hiera_tiny"
    image_size: int | None = None
    adapter: str = ""
    direction: str = "both"
    start: str = "middle"
    workers: int | None = None


def batch_job(options: BatchOptions) -> Generator[Any, None, Any]:
    """The job run on the worker thread: :func:`segment_steps` with the dock's options."""
    from napari_sam_lora.batch import segment_steps

    return (
        yield from segment_steps(
            options.inputs,
            options.output,
            seeds=options.seeds,
            model=options.model,
            image_size=options.image_size,
            adapters=[options.adapter] if options.adapter else [],
            direction=options.direction,
            start=options.start,
            workers=options.workers,
        )
    )


class BatchWidget(QWidget):
    """Dock: stacks (a folder + pattern), seeds folder, output folder, model → Run / Cancel.

    Parameters
    ----------
    viewer : napari.Viewer, optional
        Unused except to live as a napari dock (the outputs are files).
    """

    def __init__(self, viewer: Any = None) -> None:
        super().__init__()
        self.viewer = viewer
        self.job: _threading.Job | None = None
        self.inputs = QLineEdit()
        self.inputs.setPlaceholderText(f"folder/{DEFAULT_PATTERN} or a pattern")
        self.seeds = QLineEdit()
        self.seeds.setPlaceholderText("folder of seed labels named like the stacks")
        self.output = QLineEdit()
        self.model = QLineEdit("sam2.1_hiera_tiny")
        self.image_size = QSpinBox()
        self.image_size.setRange(0, 4096)
        self.image_size.setSingleStep(32)
        self.image_size.setSpecialValueText("model default")
        self.adapter = QLineEdit()
        self.adapter.setPlaceholderText("optional adapter file (.safetensors)")
        self.direction = QComboBox()
        self.direction.addItems(["both", "forward", "backward"])
        self.start = QComboBox()
        self.start.addItems(["middle", "first", "last"])
        self.workers = QSpinBox()
        self.workers.setRange(0, 256)
        self.workers.setSpecialValueText("auto")
        self.run_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.rows = QListWidget()

        form = QFormLayout()
        form.addRow("Stacks", self._with_browse(self.inputs, folder=True, pattern=True))
        form.addRow("Seeds", self._with_browse(self.seeds, folder=True))
        form.addRow("Output", self._with_browse(self.output, folder=True))
        form.addRow("Model", self.model)
        form.addRow("Image size", self.image_size)
        form.addRow("Adapter", self._with_browse(self.adapter, folder=False))
        form.addRow("Direction", self.direction)
        form.addRow("Seed frame", self.start)
        form.addRow("Workers", self.workers)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.rows)
        self.run_button.clicked.connect(self.start_batch)
        self.cancel_button.clicked.connect(self.cancel)

    def _with_browse(self, edit: QLineEdit, folder: bool, pattern: bool = False) -> QWidget:
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit)
        button = QPushButton("…")
        button.setMaximumWidth(28)

        def browse() -> None:
            if folder:
                chosen = QFileDialog.getExistingDirectory(self, "Choose a folder")
                if chosen and pattern:
                    chosen = str(Path(chosen) / DEFAULT_PATTERN)
            else:
                chosen, _ = QFileDialog.getOpenFileName(
                    self, "Adapter file", "", "Adapters (*.safetensors *.json)"
                )
            if chosen:
                edit.setText(chosen)

        button.clicked.connect(browse)
        row.addWidget(button)
        return box

    def options(self) -> BatchOptions:
        """The options as entered (a folder alone means every ``*.tif`` in it)."""
        inputs = self.inputs.text().strip()
        if inputs and Path(inputs).is_dir() and not inputs.endswith((".zarr", ".zarr/")):
            inputs = str(Path(inputs) / DEFAULT_PATTERN)
        return BatchOptions(
            inputs=inputs,
            output=self.output.text().strip(),
            seeds=self.seeds.text().strip(),
            model=self.model.text().strip() or "sam2.1_hiera_tiny",
            image_size=self.image_size.value() or None,
            adapter=self.adapter.text().strip(),
            direction=self.direction.currentText(),
            start=self.start.currentText(),
            workers=self.workers.value() or None,
        )

    def start_batch(self) -> _threading.Job | None:
        """Start the job on the worker thread (missing fields are reported, nothing starts)."""
        options = self.options()
        missing = [
            n
            for n, v in (
                ("stacks", options.inputs),
                ("seeds", options.seeds),
                ("output", options.output),
            )
            if not v
        ]
        if missing:
            _threading.notify_error(f"Segment a folder: choose the {', '.join(missing)} first")
            return None
        self.rows.clear()
        self.progress.setRange(0, 0)  # busy until the cluster is up
        self.status.setText("starting a local dask cluster and loading the model…")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.job = _threading.start_job(
            batch_job, options, on_yield=self._on_step, on_done=self._on_done
        )
        return self.job

    def cancel(self) -> None:
        """Cancel: stacks not finished are dropped (a later run resumes)."""
        if self.job is not None:
            self.status.setText("cancelling…")
            self.job.cancel()

    def _on_step(self, step: Any) -> None:
        self.progress.setRange(0, max(1, step.total))
        self.progress.setValue(step.done)
        if step.message:
            self.status.setText(step.message)
        if step.row is not None:
            row = step.row
            text = f"{row['stack']}: {row.get('status')}"
            if row.get("error"):
                text += f" — {row['error']}"
            self.rows.addItem(text)

    def _on_done(self, state: str) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        failed = sum(1 for i in range(self.rows.count()) if ": failed" in self.rows.item(i).text())
        self.status.setText(
            {
                "finished": f"done ({failed} failed); summary.csv in the output folder",
                "cancelled": "cancelled; finished stacks are kept — run again to resume",
                "failed": "not started: see the error",
            }.get(state, state)
        )
