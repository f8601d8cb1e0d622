"""The panel's *Save and restore* section: annotation state and adapters next to the labels.

**Save session…** writes the session's state (``<base>.session.json`` + ``.session.npz``:
prompts, confirmed frames and their sources, which adapter made which frame, labels) and,
when there are adapters, the adapters beside it (``<base>.safetensors`` + ``<base>.json``).
**Restore session…** checks that the files were saved for the current image stack (a
clear message, nothing changed, if not), loads the adapters, restores the session (ONE undo
step of the annotation: Undo brings back what was there before) and rebuilds the prompt
layers; the masks layer shows the restored annotation.

**A region.** A session made on a region (*only this region*) has frames of the region's
shape; its files say only that shape. Saving also writes the dock's own
``<base>.dock.json``: where the region lies (``null``: whole frames), tagged with the state
file's checksum. Restoring such a file restores it on that same region: the session is
made on it, the masks land at its place, the prompt layers get the prompts at their image
position, and "<image> region" holds its rectangle. It is refused, before anything
changes, when the region is not recorded (no ``.dock.json`` of this save), does not lie in
the image, or the current annotation was made on another region or size (a session sees
one: save it and *Reset all* first).

The heavy work (loading the model, re-conditioning SAM2, loading adapters, writing files)
runs on the worker through the dock's job slot; the file dialogs only ask for a path
(:meth:`AnnotationFilesPanel.save_session` and :meth:`~AnnotationFilesPanel.restore_session`
take one directly). The panel takes the dock's :class:`~napari_sam_lora.annotator.Annotator`,
job slot and lifecycle, never the dock widget; the jobs are in
:mod:`napari_sam_lora.annotator.jobs`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_sam_lora._qt import threading as _threading
from napari_sam_lora._qt._slot import JobSlot, PanelJobs
from napari_sam_lora.annotator import Annotator, Lifecycle, LoadProgress, PropagateRequest
from napari_sam_lora.annotator.jobs import (
    Prepared,
    Restored,
    Saved,
    restore_apply_job,
    restore_prepare_job,
    save_job,
    saved_adapters,
    session_base,
)
from napari_sam_lora.annotator.sessions import Region
from napari_sam_lora.engine.annotation.prompts import BoxPrompt, MaskPrompt, PointPrompt
from napari_sam_lora.engine.core.atomic import write_files
from napari_sam_lora.engine.core.errors import PromptError, StackError
from napari_sam_lora.engine.core.file_paths import state_paths
from napari_sam_lora.engine.tracking.models import file_sha256
from napari_sam_lora.engine.tracking.session_files import SessionFileError, check_state
from napari_sam_lora.layers import (
    find_output_layer,
    make_prompt_layers,
    same_layer,
    style_prompt_layers,
)
from napari_sam_lora.layers.prompts import region_from_shapes, region_layer_name

__all__ = ["AnnotationFilesPanel"]

FILTER = "napari-sam-lora session (*.session.json);;All files (*)"
#: The job kinds this section starts (``restore_session`` prepares: it can be cancelled;
#: ``restore_apply`` changes the session and the layers: it runs to its end).
KINDS = ("save_session", "restore_session", "restore_apply")
#: The dock's own file beside a saved session: ``<base>.dock.json``.
DOCK_SUFFIX = ".dock.json"
DOCK_FORMAT = "napari-sam-lora-dock"


@dataclass
class _Restore:
    """The restore in progress (main thread)."""

    image: Any
    source: Any
    base: Path
    done: Restored | None = None
    created: list[Any] = field(default_factory=list)
    adapters: Path | None = None
    session: Any = None
    region: Region | None = None


class AnnotationFilesPanel(PanelJobs, QWidget):
    """Save the annotation state and adapters; restore them on the same stack.

    Parameters
    ----------
    annotator : Annotator
        The dock's model: the chosen image and prompt layers, its session and learner.
    slot : JobSlot
        The dock's one job slot.
    life : Lifecycle
        The dock's teardown.

    Attributes
    ----------
    job : Job or None
        The last job this section started.
    """

    def __init__(self, annotator: Annotator, slot: JobSlot, life: Lifecycle) -> None:
        super().__init__()
        self.annotator, self.slot, self.life = annotator, slot, life
        self.viewer = annotator.viewer
        self.job: _threading.Job | None = None
        self._kind = ""
        self._restore: _Restore | None = None
        self._saved: Saved | None = None
        self._note = ""
        self.save_button = QPushButton("Save session…", self)
        self.save_button.setToolTip(
            "Save prompts, confirmed frames (and who made each frame), masks and adapters "
            "next to the image, to continue later"
        )
        self.restore_button = QPushButton("Restore session…", self)
        self.restore_button.setToolTip(
            "Continue a saved session on this image: prompts, confirmed frames, masks (one "
            "undo step) and adapters come back"
        )
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop a restore while it loads the model (nothing changes)")
        self.status = QLabel("save your work to continue it later", self)
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.setContentsMargins(4, 2, 4, 2)
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.restore_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        self.save_button.clicked.connect(lambda *_: self.save_session())
        self.restore_button.clicked.connect(lambda *_: self.restore_session())
        self.cancel_button.clicked.connect(lambda *_: self.cancel())
        slot.add_listener(self._on_slot)

    # -- public API --------------------------------------------------------------------------
    def default_path(self) -> str:
        """Where the dialogs start: next to the image's file (its name), else the cwd."""
        image = self.annotator.selection.image
        source = getattr(getattr(image, "source", None), "path", None)
        if source:
            path = Path(source)
            stem = path.name.split(".")[0] or "session"
            return str(path.parent / f"{stem}.session.json")
        name = image.name if image is not None else "session"
        return str(Path.cwd() / f"{name}.session.json")

    def save_session(self, path: str | os.PathLike[str] | None = None) -> bool:
        """Save the session (and its adapters) under a base path (a dialog asks for it
        when not given). Returns whether a job was started."""
        if self._refuse_if_busy():
            return False
        control = self.annotator.learning
        try:
            ctx = control.context()  # fails before asking for a file
            if path is None:
                path = QFileDialog.getSaveFileName(
                    self, "Save session", self.default_path(), FILTER
                )[0]
                if not path:
                    return False
            base = session_base(path)
        except Exception as exc:
            self._error(exc)
            return False
        learner = control.learner_of(ctx.session)
        self.status.setText(f"saving to {base}…")
        return self._start(
            "save_session", _save_session_job, ctx.session, learner, base, ctx.region
        )

    def restore_session(self, path: str | os.PathLike[str] | None = None) -> bool:
        """Restore a session saved for the current image (a dialog asks for the file when
        not given). Returns whether a job was started; a file of another stack is refused
        before anything changes."""
        if self._refuse_if_busy():
            return False
        chosen = self.annotator.selection
        try:
            image = chosen.image
            if image is None:
                raise StackError("no image layer: open the stack the session was saved for")
            source = self.annotator.source()
            if path is None:
                path = QFileDialog.getOpenFileName(
                    self, "Restore session", self.default_path(), FILTER
                )[0]
                if not path:
                    return False
            base = session_base(path)
            region = saved_region(base, source, image.name)
            frames = source.frames if region is None else region.crop(source.frames)
            check_state(base, frames, pixels=False)  # instant; the worker reads pixels
            self._check_keeps_annotation(base, chosen.image_size, region)
            adapters, self._note = saved_adapters(base)
        except Exception as exc:
            self._error(exc)
            return False
        request = PropagateRequest(
            image,
            source,
            [],
            chosen.model,
            chosen.device,
            chosen.image_size,
            "both",
            None,
            region=region,
        )
        # the layers now, at the click (creating a napari layer takes the main thread
        # 0.1-0.3 s); removed again if the restore is refused
        created = self._prompt_layers(image)
        if find_output_layer(self.viewer, image, source) is None:
            created.append(self.annotator.masks_layer(image, source))
        self._restore = _Restore(
            image, source, base, created=created, adapters=adapters, region=region
        )
        self.status.setText(f"restoring {base}: checking the stack, loading the model…")
        sessions = self.annotator.sessions
        return self._start("restore_session", restore_prepare_job, sessions, request, base)

    def cancel(self) -> None:
        """Stop a restore that is still checking or loading the model (nothing changed)."""
        if self.slot.busy and self.slot.kind == "restore_session":
            self.slot.cancel()
            self.cancel_button.setEnabled(False)
            self.status.setText("cancelling the restore…")

    # -- internals ---------------------------------------------------------------------------
    def _check_keeps_annotation(
        self, base: Path, image_size: int | None, region: Region | None
    ) -> None:
        """Refuse a file of another region while the current annotation was made on this
        one (a session sees one region and one size; restoring would start a new one)."""
        try:
            self.annotator.check_keeps_annotation(image_size, region)
        except PromptError as exc:
            where = "whole frames" if region is None else f"the region {region.describe()}"
            name = state_paths(base)[0].name
            raise PromptError(f"cannot restore {name} (saved on {where}): {exc}") from exc

    def _show_region(self, image: Any, source: Any, region: Region | None) -> tuple[str, str]:
        """Put the restored session's region into "<image> region" (one rectangle);
        returns where the session is and what the next Propagate does there (the dock
        ticks 'only this region' on :class:`~napari_sam_lora.annotator.annotator.RegionChosen`),
        for the status line."""
        ticked = self.annotator.selection.only_region
        if region is None:
            todo = "; untick 'only this region' to go on with whole frames" if ticked else ""
            return "", todo
        name = region_layer_name(image)
        layer = next((x for x in self.viewer.layers if x.name == name), None)
        try:
            same = layer is not None and region_from_shapes(layer, source, image) == region
        except Exception:  # no rectangle or several: drawn again below
            same = False
        if not same:
            before = list(self.viewer.layers.selection)
            layer = _region_layer(self.viewer, image, source, region)
            self.viewer.layers.selection.clear()
            self.viewer.layers.selection.update(before)
        todo = (
            ""
            if ticked
            else "; 'only this region' is now ticked: Propagate goes on in it (to leave it, "
            "save, Reset all, then untick 'only this region')"
        )
        return f" on the region {region.describe()} ('{name}')", todo

    def _prompt_layers(self, image: Any) -> list[Any]:
        """Select the image's prompt layers, making them if needed; returns those made."""
        chosen = self.annotator.selection
        if chosen.points is not None and chosen.shapes is not None:
            return []
        before = list(self.viewer.layers)
        points, shapes = make_prompt_layers(self.viewer, image, chosen.obj_id)
        self.annotator.choose_prompt_layers(points, shapes, chosen.mask)  # the dock shows them
        return [x for x in (points, shapes) if not any(same_layer(x, y) for y in before)]

    def _on_slot(self, kind: str, running: bool) -> None:
        if self.life.alive:
            self.save_button.setEnabled(not running)
            self.restore_button.setEnabled(not running)
            self.cancel_button.setEnabled(running and kind == "restore_session")

    def _on_yield(self, item: Any) -> None:
        if not self.life.alive:
            return
        if isinstance(item, Saved):
            self._saved = item
        elif isinstance(item, LoadProgress):
            self.status.setText("loading the model…")
        elif isinstance(item, Prepared) and self._restore is not None:
            self._restore.session = item.session
        elif isinstance(item, Restored) and self._restore is not None:
            self._restore.done = item

    def _on_done(self, state: str) -> None:
        run, self._restore = self._restore, None
        if (
            self._kind == "restore_session"
            and state == _threading.FINISHED
            and run is not None
            and run.session is not None
            and self.life.alive
        ):  # the files fit: now restore (not cancellable: it changes the session)
            self._restore = run
            self.status.setText(f"restoring {run.base}…")
            control = self.annotator.learning
            if self._start(
                "restore_apply", restore_apply_job, run.session, control, run.base, run.adapters
            ):
                return
            self._restore, state = None, _threading.FAILED
        if run is not None and state != _threading.FINISHED:
            for layer in run.created:  # refused: leave the viewer as it was
                for existing in list(self.viewer.layers):
                    if same_layer(existing, layer) and _empty(existing):
                        self.viewer.layers.remove(existing)
        if not self.life.alive:
            return
        self.annotator.apply_strokes()  # strokes painted while the job ran
        kind, job = self._kind, self.job
        if state == _threading.FAILED:
            error = job.error if job is not None else None
            text = _threading.describe_error(error) if error is not None else "unknown error"
            what = "save" if kind == "save_session" else "restore"
            if job is None or job.error is None:
                text = "could not start"
            self.status.setText(f"{what} failed: {text}")
        elif state == _threading.CANCELLED:
            self.status.setText(f"{kind.replace('_', ' ')} cancelled")
        elif kind == "save_session" and self._saved is not None:
            saved, self._saved = self._saved, None
            files = [p.name for p in saved.paths + saved.adapters]
            self.status.setText(f"saved {', '.join(files)} in {saved.paths[0].parent}")
        elif kind == "restore_apply" and run is not None and run.done is not None:
            output = self.annotator.masks_layer(run.image, run.source)
            self._rebuild_prompts(run.image, run.source, run.done.prompts, output, run.region)
            where, todo = self._show_region(run.image, run.source, run.region)
            if run.region is not None:  # the dock ticks 'only this region'
                self.annotator.choose_region(run.region)
            done = run.done
            adapters = f", {len(done.adapters)} adapter(s)" if done.adapters else ""
            note = f"; {self._note}" if self._note else ""
            self.status.setText(
                f"restored {run.base.name}{where}: {len(done.prompts)} prompt(s), "
                f"{done.confirmed} confirmed (frame, object)s{adapters} (Undo brings back "
                f"what was there before){todo}{note}"
            )
        self.annotator.flush("restore session")

    def _rebuild_prompts(
        self,
        image: Any,
        source: Any,
        prompts: list[Any],
        output: Any,
        region: Region | None = None,
    ) -> None:
        """Make the prompt layers hold exactly ``prompts`` (clicks, boxes, masks); with a
        ``region`` they are in its coordinates and go back to their place in the image."""
        import pandas as pd

        dr, dc = (0, 0) if region is None else (region.r0, region.c0)

        chosen = self.annotator.selection
        self._prompt_layers(image)  # made at the start; again if removed since
        points_layer, shapes_layer = chosen.points, chosen.shapes
        coords, labels, point_ids = [], [], []
        boxes, box_ids = [], []
        masks = np.zeros(source.layer_shape, np.int32)
        has_masks = False
        for prompt in prompts:
            if isinstance(prompt, PointPrompt):
                for (row, col), label in zip(prompt.points, prompt.labels, strict=True):
                    coords.append(
                        _layer_coords(points_layer, image, source, prompt.frame, row + dr, col + dc)
                    )
                    labels.append(int(label))
                    point_ids.append(int(prompt.obj_id))
            elif isinstance(prompt, BoxPrompt):
                r0, c0, r1, c1 = (float(v) for v in prompt.box)
                r0, r1, c0, c1 = r0 + dr, r1 + dr, c0 + dc, c1 + dc
                corners = ((r0, c0), (r0, c1), (r1, c1), (r1, c0))
                boxes.append(
                    np.array(
                        [
                            _layer_coords(shapes_layer, image, source, prompt.frame, r, c)
                            for r, c in corners
                        ]
                    )
                )
                box_ids.append(int(prompt.obj_id))
            elif isinstance(prompt, MaskPrompt):
                has_masks = True
                plane = masks[source.frame_index(prompt.frame)]  # a view
                plane = plane if region is None else plane[region.slices]
                plane[np.asarray(prompt.mask, bool)] = int(prompt.obj_id)
        ndim = points_layer.ndim
        points_layer.data = np.array(coords, float).reshape(-1, ndim)
        points_layer.features = pd.DataFrame(
            {
                "label": pd.Series(labels, dtype="int64"),
                "obj_id": pd.Series(point_ids, dtype="int64"),
            }
        )
        if len(shapes_layer.data):
            shapes_layer.selected_data = set(range(len(shapes_layer.data)))
            shapes_layer.remove_selected()
        if boxes:
            shapes_layer.add_rectangles(boxes)
        shapes_layer.features = pd.DataFrame({"obj_id": pd.Series(box_ids, dtype="int64")})
        mask_layer = chosen.mask
        if has_masks:
            name = f"{image.name} prompt masks"
            existing = [x for x in self.viewer.layers if x.name == name]
            if existing and existing[0].data.shape == masks.shape:
                existing[0].data = masks
                mask_layer = existing[0]
            else:
                mask_layer = self.viewer.add_labels(
                    masks,
                    name=name,
                    scale=tuple(image.scale),
                    translate=tuple(image.translate),
                    rotate=np.asarray(image.rotate),
                    shear=np.asarray(image.shear),
                    affine=np.asarray(image.affine.affine_matrix),
                )
        else:
            mask_layer = None  # a chosen mask layer's masks are not prompts of this session
        self.annotator.choose_prompt_layers(points_layer, shapes_layer, mask_layer)
        style_prompt_layers(points_layer, shapes_layer, output)

    def _refuse_if_busy(self) -> bool:
        if not self.slot.busy:
            return False
        self._error(PromptError("a job is running: wait for it or cancel it first"))
        return True

    def _error(self, exc: BaseException) -> None:
        """The error in full in this section's status line, and as a notification."""
        self.status.setText(f"error: {_threading.describe_error(exc)}")
        _threading.notify_error(exc)


def dock_path(base: Path) -> Path:
    """The dock's own file of the session saved at ``base``: ``<base>.dock.json``."""
    json_path, _ = state_paths(base)
    return json_path.with_name(json_path.name[: -len(".session.json")] + DOCK_SUFFIX)


def write_dock_file(base: Path, region: Region | None) -> Path:
    """Write ``<base>.dock.json``: the session's region (``null``: whole frames), tagged
    with the checksum of the state file it goes with (written just before)."""
    json_path, _ = state_paths(base)
    doc = {
        "format": DOCK_FORMAT,
        "format_version": 1,
        "session": json_path.name,
        "session_sha256": file_sha256(json_path),
        "region": None
        if region is None
        else {"rows": [region.r0, region.r1], "cols": [region.c0, region.c1]},
    }
    path = dock_path(base)
    write_files({path: json.dumps(doc, indent=1)})
    return path


def saved_region(base: Path, source: Any, image_name: str) -> Region | None:
    """The region the session at ``base`` was saved on (``None``: whole frames), from its
    ``<base>.dock.json``; a state file without one (saved before regions) is whole frames
    when its frames have the image's size.

    Raises
    ------
    SessionFileError
        A state file saved on a region whose place is not recorded, or a region that does
        not lie inside the image (nothing is changed).
    """
    json_path, _ = state_paths(base)
    try:
        doc = json.loads(json_path.read_text("utf-8"))
        shape = tuple(int(s) for s in doc.get("frame_shape") or ())
    except Exception:  # missing or damaged: check_state says so
        return None
    path, dock = dock_path(base), None
    try:
        dock = json.loads(path.read_text("utf-8"))
        ok = dock.get("format") == DOCK_FORMAT and dock.get("session_sha256") == file_sha256(
            json_path
        )
    except Exception:  # missing, damaged or not ours: as if not there
        ok = False
    if not ok:
        h, w = source.frame_shape
        if len(shape) == 2 and shape != (h, w) and shape[0] <= h and shape[1] <= w:
            why = "belongs to an earlier save" if dock is not None else "is missing"
            raise SessionFileError(
                f"{json_path.name} was saved on a region of {shape[0]}×{shape[1]} px of its "
                f"stack, but where that region lies is not recorded ({path.name} {why}): it "
                f"cannot be restored on image '{image_name}' ({h}×{w} px)"
            )
        return None  # whole frames (or another stack: check_state says so)
    entry = dock.get("region")
    if entry is None:
        return None
    try:
        region = Region(*(int(v) for v in (*entry["rows"], *entry["cols"])))
    except Exception as exc:
        raise SessionFileError(f"{path.name} names no valid region: {entry!r}") from exc
    try:
        region.check_fits(source.frame_shape, f"image '{image_name}'")
    except PromptError as exc:
        raise SessionFileError(
            f"{json_path.name} was saved on the region {region.describe()}, which {exc}"
        ) from exc
    return region


def _save_session_job(session: Any, learner: Any, base: Path, region: Region | None) -> Generator:
    """:func:`~napari_sam_lora.annotator.jobs.save_job`, then the dock's own file (the
    session's region) beside the state file; yields :class:`Saved` naming it too."""
    for item in save_job(session, learner, base):
        if isinstance(item, Saved):
            item = Saved([*item.paths, write_dock_file(base, region)], item.adapters)
        yield item


def _region_layer(viewer: Any, image: Any, source: Any, region: Region) -> Any:
    """The "<image> region" layer holding exactly the rectangle of ``region`` (pixel centres of
    its corners, as a user draws it), not in drawing mode."""
    from napari_sam_lora.layers.prompts import make_region_layer

    layer = make_region_layer(viewer, image)
    layer.mode = "pan_zoom"
    if len(layer.data):
        layer.selected_data = set(range(len(layer.data)))
        layer.remove_selected()
    corners = []
    for row, col in ((region.r0, region.c0), (region.r1 - 1, region.c1 - 1)):
        data = source.to_data_coords(source.current_frame, float(row), float(col))
        world = np.asarray(image.data_to_world(data), float)[-layer.ndim :]
        corners.append(np.asarray(layer.world_to_data(world), float))
    layer.add_rectangles(np.array(corners))
    return layer


def _empty(layer: Any) -> bool:
    """Whether a layer holds nothing (no point or shape; a Labels layer of zeros)."""
    if isinstance(layer, Labels):
        return not np.any(np.asarray(layer.data))
    return not len(layer.data)


def _layer_coords(
    layer: Any, image: Any, source: Any, frame: int, row: float, col: float
) -> np.ndarray:
    """``(frame, row, col)`` of the stack as data coordinates of ``layer`` (via world)."""
    data = source.to_data_coords(int(frame), float(row), float(col))
    world = np.asarray(image.data_to_world(data), float)
    return np.asarray(layer.world_to_data(world), float)
