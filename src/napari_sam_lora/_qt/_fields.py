"""The *Whole fields* panel: many objects at once, divisions, tracks, and the instant preview.

- **Seed objects from a Labels layer**: every non-zero id of the layer's plane at the
  current frame becomes an object (ids kept, its mask its prompt) — one undo step.
- **Segment all on this frame**: sam2's automatic mask generator; its masks become new
  objects (one undo step). One long call on the worker: Cancel drops its result.
- **Split object at this frame**: *Start split* adds "<image> daughters" (one frame, the
  object's mask painted with label 1); paint one daughter with label 2 over it, then *Split*:
  two daughters with new ids, the lineage recorded (one undo step).
- **Instant preview** (:mod:`~napari_sam_lora._qt._preview`): a click or box of the current
  object shows SAM2's mask on that frame in "<image> preview" (decoder only, on the worker,
  debounced; no undo step, nothing changed); hidden when the frame changes and when
  Propagate runs.
- **Show tracks** (:mod:`~napari_sam_lora._qt._tracks_view`): "<image> tracks" follows the
  masks (centroids per frame, divisions as its graph), refreshed after each change on the
  main thread (only changed frames are re-read).

A thin view like the other panels: it takes the dock's
:class:`~napari_sam_lora.annotator.Annotator`, job slot and lifecycle; the jobs and their
typed results are in :mod:`napari_sam_lora.annotator.jobs`. Seeded objects' prompts live in
the session (no prompt layer holds them): Propagate keeps them
(:meth:`~napari_sam_lora.annotator.Annotator.keeps_prompt`). The panel keeps the job
plumbing (the preview's job is its job too) and routes the dock's events and the slot's to
its two helpers, :class:`~napari_sam_lora._qt._preview.InstantPreview` and
:class:`~napari_sam_lora._qt._tracks_view.TracksView`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam_lora._qt import threading as _threading
from napari_sam_lora._qt._layout import form, row
from napari_sam_lora._qt._preview import ROLE_KEY, InstantPreview, plane_transform
from napari_sam_lora._qt._slot import Activity, JobSlot, PanelJobs
from napari_sam_lora._qt._tracks_view import TracksView
from napari_sam_lora.annotator import (
    AnnotationChanged,
    Annotator,
    Lifecycle,
    LoadProgress,
    ModelReady,
    StackChanged,
)
from napari_sam_lora.annotator.jobs import (
    Divided,
    Previewed,
    Seeded,
    seed_job,
    segment_all_job,
    split_job,
)
from napari_sam_lora.engine.core.errors import PromptError, StackError
from napari_sam_lora.layers import is_candidate_layer, same_layer

__all__ = ["KINDS", "FieldsPanel"]

#: The job kinds this panel starts (its Cancel button is enabled for these only; a
#: ``preview`` is cancelled by the next click or by Propagate).
KINDS = ("seed", "segment_all", "split", "preview")


class FieldsPanel(PanelJobs, QWidget):
    """Seed objects from labels, Segment all, Split an object, instant preview, tracks.

    Parameters
    ----------
    annotator : Annotator
        The dock's model: the chosen stack, its session.
    slot : JobSlot
        The dock's one job slot.
    life : Lifecycle
        The dock's teardown.

    Attributes
    ----------
    job : Job or None
        The last job this panel started (a preview's too).
    last : Seeded or Divided or None
        The result of the last seed, segment-all or split that finished.
    instant_preview : InstantPreview
        The instant preview; its checkbox is also ``preview_check``.
    tracks_view : TracksView
        "<image> tracks"; its checkbox is also ``tracks_check``.
    """

    def __init__(self, annotator: Annotator, slot: JobSlot, life: Lifecycle) -> None:
        super().__init__()
        self.annotator, self.slot, self.life = annotator, slot, life
        self.viewer = annotator.viewer
        self.job: _threading.Job | None = None
        self.last: Any = None
        self._kind = ""
        self._result: Any = None
        self._activity: Activity | None = None
        self._seed_layers: list[Any] = []
        self._build_ui()
        self._connect()

    # -- UI ---------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.seed_combo = QComboBox(self)
        self.seed_combo.setToolTip(
            "A Labels layer of the image's shape or of one frame: each label is an object"
        )
        self.seed_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.seed_combo.setMinimumContentsLength(10)
        self.seed_button = QPushButton("Seed objects", self)
        self.seed_button.setToolTip(
            "Every label of the chosen layer on the current frame becomes an object (its id "
            "kept, its mask as prompt) — one undo step"
        )
        self.min_area_spin = QSpinBox(self)
        self.min_area_spin.setRange(1, 10_000_000)
        self.min_area_spin.setValue(20)
        self.min_area_spin.setToolTip("Smallest object kept, in pixels")
        self.max_overlap_spin = QDoubleSpinBox(self)
        self.max_overlap_spin.setRange(0.0, 1.0)
        self.max_overlap_spin.setSingleStep(0.05)
        self.max_overlap_spin.setValue(0.3)
        self.max_overlap_spin.setToolTip(
            "Largest share of a mask already taken by better masks or your objects"
        )
        self.overlap_label = QLabel("max overlap", self)
        self.segment_button = QPushButton("Segment all on this frame", self)
        self.segment_button.setToolTip(
            "SAM2's automatic mask generator on the current frame: each mask kept becomes a "
            "new object (one undo step); your objects keep their pixels"
        )
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Drop the result (Segment all is one call: it ends first)")
        self.start_split_button = QPushButton("Start split", self)
        self.start_split_button.setToolTip(
            "Add '<image> daughters' with the current object's mask as label 1: paint one "
            "daughter with label 2, then Split"
        )
        self.split_button = QPushButton("Split", self)
        self.split_button.setToolTip(
            "The current object divides on this frame into the two painted daughters (new "
            "ids, lineage recorded) — one undo step"
        )
        self.instant_preview = InstantPreview(
            self.annotator, self.slot, self.life, self._start_quietly, self._say, self
        )
        self.preview_check = self.instant_preview.check
        self.tracks_view = TracksView(self.annotator, self.life, self._say, self)
        self.tracks_check = self.tracks_view.check
        self.progress = QProgressBar(self)
        self.progress.setFormat("idle")
        self.progress.setValue(0)
        self.status = QLabel("seed objects from labels, or segment the whole frame", self)
        self.status.setWordWrap(True)
        content = form(
            ("labels", row(self.seed_combo, self.seed_button)),
            (
                "min area",
                row(self.min_area_spin, QLabel("max overlap", self), self.max_overlap_spin),
            ),
            row(self.segment_button, self.cancel_button),
            ("division", row(self.start_split_button, self.split_button)),
            row(self.preview_check, self.tracks_check),
            self.progress,
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(content)
        layout.addWidget(self.status)
        self.refresh_layers()

    def _connect(self) -> None:
        life = self.life
        for button, action in (
            (self.seed_button, self.seed),
            (self.segment_button, self.segment_all),
            (self.cancel_button, self.cancel),
            (self.start_split_button, self.start_split),
            (self.split_button, self.split),
        ):
            button.clicked.connect(lambda *_, a=action: a())
        self.annotator.events.connect(self._on_annotator_event)
        life.on_shutdown(lambda: self.annotator.events.disconnect(self._on_annotator_event))
        events = self.viewer.layers.events
        for emitter in (events.inserted, events.removed):
            life.connect(emitter, self.refresh_layers)
        self.slot.add_listener(self._on_slot)

    # -- public API --------------------------------------------------------------------------
    @property
    def seed_layer(self) -> Any:
        """The Labels layer chosen to seed from, or ``None``."""
        index = self.seed_combo.currentIndex()
        return self._seed_layers[index] if 0 <= index < len(self._seed_layers) else None

    def set_seed_layer(self, layer: Any) -> None:
        """Choose the Labels layer to seed from."""
        self.refresh_layers()
        for i, candidate in enumerate(self._seed_layers):
            if same_layer(candidate, layer):
                self.seed_combo.setCurrentIndex(i)

    def refresh_layers(self, *_: Any) -> None:
        """Re-read the Labels layers one can seed from: not the masks, candidate, preview
        or daughters layers."""
        if not self.life.alive:
            return
        current = self.seed_layer
        masks = {f"{x.name} masks" for x in self.viewer.layers if isinstance(x, Image)}
        layers = [
            x
            for x in self.viewer.layers
            if isinstance(x, Labels)
            and not is_candidate_layer(x)
            and ROLE_KEY not in (x.metadata or {})
            and not any(x.name == m or x.name.startswith(f"{m} [") for m in masks)
        ]
        names = [x.name for x in layers]
        if names == [self.seed_combo.itemText(i) for i in range(self.seed_combo.count())] and all(
            map(same_layer, layers, self._seed_layers)
        ):
            return
        self.seed_combo.blockSignals(True)
        try:
            self.seed_combo.clear()
            self._seed_layers = layers
            self.seed_combo.addItems(names)
            found = [i for i, x in enumerate(layers) if same_layer(x, current)]
            self.seed_combo.setCurrentIndex(found[0] if found else len(layers) - 1)
        finally:
            self.seed_combo.blockSignals(False)

    def seed(self, layer: Any = None) -> bool:
        """Seed objects from ``layer`` (default: the chosen one) on the current frame, on
        the worker (the session is made as Propagate makes it). Returns whether a job was
        started."""
        if self._refuse_if_busy():
            return False
        layer = self.seed_layer if layer is None else layer
        try:
            if layer is None:
                raise PromptError(
                    "no Labels layer to seed from: open or paint one (each label an object)"
                )
            request, frame = self._request()
            plane = self.annotator.seed_plane(layer)
            if not np.any(plane):
                raise PromptError(f"'{layer.name}' holds no label on frame {frame}")
        except Exception as exc:
            self._error(exc)
            return False
        self._prepare_masks(request)
        self.status.setText(f"seeding objects of '{layer.name}' on frame {frame}…")
        return self._run("seed", seed_job, self.annotator.sessions, request, frame, plane)

    def automatic_options(self) -> dict[str, Any]:
        """The options of *Segment all* set in the panel (an ``AutomaticOptions``'s
        fields)."""
        return {
            "min_area": int(self.min_area_spin.value()),
            "max_overlap": float(self.max_overlap_spin.value()),
        }

    def segment_all(self, options: dict[str, Any] | None = None) -> bool:
        """*Segment all* on the current frame on the worker; ``options`` (an
        ``AutomaticOptions``'s fields) default to the panel's min area and max overlap.
        Returns whether a job was started."""
        if self._refuse_if_busy():
            return False
        try:
            request, frame = self._request()
        except Exception as exc:
            self._error(exc)
            return False
        options = {**self.automatic_options(), **(options or {})}
        self._prepare_masks(request)
        self.status.setText(f"segmenting everything on frame {frame}… (one long call)")
        return self._run(
            "segment_all", segment_all_job, self.annotator.sessions, request, frame, options
        )

    def cancel(self) -> None:
        """Drop the running seed or segment-all (it ends its current call first)."""
        if self.slot.busy and self.slot.kind in ("seed", "segment_all"):
            self.slot.cancel()
            self.cancel_button.setEnabled(False)
            self.status.setText("cancelling… (its result is dropped when the call returns)")

    def daughters_layer(self) -> Any:
        """The "<image> daughters" layer, or ``None``."""
        image = self.annotator.selection.image
        if image is None:
            return None
        name = f"{image.name} daughters"
        return next(
            (x for x in self.viewer.layers if x.name == name and isinstance(x, Labels)), None
        )

    def start_split(self) -> Any:
        """Add (or reset) "<image> daughters": one frame holding the current object's mask
        as label 1, in paint mode with label 2; returns the layer."""
        try:
            session, obj_id, frame = self._split_target()
        except Exception as exc:
            self._error(exc)
            return None
        image = self.annotator.selection.image
        source = self.annotator.source()
        plane = np.zeros(source.frame_shape, np.uint8)
        region = self.annotator.sessions.region
        inner = plane if region is None else plane[region.slices]
        inner[np.asarray(session.labels[frame]) == obj_id] = 1
        layer = self.daughters_layer()
        if layer is None:
            layer = self.viewer.add_labels(
                plane,
                name=f"{image.name} daughters",
                metadata={ROLE_KEY: "daughters"},
                **plane_transform(image),
            )
        else:
            layer.data = plane
        layer.visible = True
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        layer.selected_label = 2
        self.status.setText(
            f"in '{layer.name}': object {obj_id} on frame {frame} is label 1; paint one "
            "daughter with label 2 (the rest of label 1 is the other), then Split"
        )
        return layer

    def split(self) -> bool:
        """Divide the current object on the current frame into the two daughters painted
        in "<image> daughters" (labels 1 and 2). Refused before anything changes unless
        there are exactly two non-empty daughters. Returns whether a job was started."""
        if self._refuse_if_busy():
            return False
        try:
            session, obj_id, frame = self._split_target()
            layer = self.daughters_layer()
            if layer is None:
                raise PromptError("no daughters layer: 'Start split' makes it; paint, then Split")
            plane = np.asarray(layer.data)
            if plane.shape != tuple(self.annotator.source().frame_shape):
                raise PromptError(
                    f"'{layer.name}' has shape {plane.shape}; it must be one frame "
                    f"{tuple(self.annotator.source().frame_shape)}: 'Start split' makes it again"
                )
            region = self.annotator.sessions.region
            if region is not None:
                outside = plane.copy()
                outside[region.slices] = 0
                if outside.any():
                    raise PromptError(
                        f"daughters painted outside the region ({region.describe()}): this "
                        "session sees only the region"
                    )
                plane = plane[region.slices]
            values = [int(v) for v in np.unique(plane) if v != 0]
            if len(values) != 2:
                raise PromptError(
                    f"a division needs exactly two painted daughters in '{layer.name}'; it "
                    f"holds {len(values)} label(s) ({', '.join(map(str, values)) or 'none'}): "
                    "paint one daughter with label 1 and the other with label 2"
                )
            masks = [plane == v for v in values]
        except Exception as exc:
            self._error(exc)
            return False
        self.status.setText(f"splitting object {obj_id} on frame {frame}…")
        return self._run("split", split_job, session, frame, obj_id, masks)

    # -- the instant preview and the tracks (their helpers) ----------------------------------
    def prompts_edited(self) -> None:
        """A click or box was added, moved or removed: preview after a short pause (a
        newer click supersedes an older preview)."""
        self.instant_preview.prompts_edited()

    def preview(self) -> bool:
        """Start the preview of the current object's clicks and box on the current frame
        (on the worker); returns whether it started. Problems show quietly in the panel."""
        return self.instant_preview.start()

    def preview_layer(self) -> Any:
        """The "<image> preview" layer, or ``None``."""
        return self.instant_preview.layer()

    def hide_preview(self) -> None:
        """Clear and hide the preview."""
        self.instant_preview.hide()

    def refresh_tracks(self, frames: Any = None) -> Any:
        """Add or update "<image> tracks" from the session's masks (only ``frames`` re-read;
        all for ``None``); returns the layer (``None`` without a session or tracks)."""
        return self.tracks_view.refresh(frames)

    # -- internals ---------------------------------------------------------------------------
    def _request(self) -> tuple[Any, int]:
        request = self.annotator.session_request()
        return request, int(request.source.current_frame)

    def _prepare_masks(self, request: Any) -> None:
        """The masks layer now, at the click (the job's masks then only write pixels)."""
        with contextlib.suppress(Exception):  # unsupported image: the job says why
            self.annotator.masks_layer(request.image_layer, request.source)

    def _split_target(self) -> tuple[Any, int, int]:
        session = self.annotator.session()
        if self.annotator.selection.image is None:
            raise StackError("no image layer: open an image or a stack first")
        obj_id = int(self.annotator.selection.obj_id)
        if session is None:
            raise PromptError("nothing to split yet: propagate or seed objects first")
        frame = int(self.annotator.current_frame())
        if obj_id not in [int(i) for i in session.object_ids]:
            raise PromptError(
                f"object {obj_id} does not exist: choose the dividing object under 'object id'"
            )
        if obj_id in session.annotation.parents().values():
            raise PromptError(f"object {obj_id} has already divided")
        if not np.any(np.asarray(session.labels[frame]) == obj_id):
            raise PromptError(
                f"object {obj_id} has no mask on frame {frame}: go to the frame where it "
                "divides (propagate first)"
            )
        return session, obj_id, frame

    def _run(self, kind: str, fn: Any, *args: Any) -> bool:
        self._result = None
        if not self._start(kind, fn, *args):
            return False
        self.progress.setRange(0, 0)
        self.progress.setFormat(f"{kind.replace('_', ' ')}…")
        titles = {"seed": "SAM2 seed objects", "segment_all": "SAM2 segment all"}
        self._activity = Activity(titles.get(kind, f"SAM2 {kind}"))
        return True

    def _on_yield(self, item: Any) -> None:
        if not self.life.alive:
            return
        if isinstance(item, LoadProgress):
            self.progress.setFormat("loading model…")
        elif isinstance(item, ModelReady):
            self.annotator.bind()  # the masks layer now shows this session's annotation
        elif isinstance(item, Previewed):
            self.instant_preview.show(item)
        elif isinstance(item, Seeded | Divided):
            self._result = item

    def _on_done(self, state: str) -> None:
        if self._activity is not None:
            self._activity.close()
            self._activity = None
        if not self.life.alive:
            return
        kind, result, self._result = self._kind, self._result, None
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if state == _threading.FINISHED else 0)
        self.progress.setFormat(state)
        self.annotator.apply_strokes()  # strokes painted while the job ran
        if state == _threading.FINISHED and result is not None:
            self.annotator.keep_prompts(list(result.prompts))
            self.last = result
        self.annotator.flush(kind.replace("_", " "))
        if state == _threading.CANCELLED:
            self.status.setText(f"{kind.replace('_', ' ')} cancelled: nothing changed")
        elif state == _threading.FAILED:
            error = self.job.error if self.job is not None else None
            text = _threading.describe_error(error) if error is not None else "unknown error"
            self.status.setText(f"{kind.replace('_', ' ')} failed: {text}")
        elif isinstance(result, Divided):
            layer = self.daughters_layer()
            if layer is not None:
                self.viewer.layers.remove(layer)
            a, b = result.daughters
            self.status.setText(
                f"object {result.parent} divided on frame {result.frame} into {a} and {b} "
                "(one undo step; Propagate tracks the daughters from this frame on)"
            )
        elif isinstance(result, Seeded):
            self.status.setText(_describe_seeded(result))
        self.tracks_view.refresh_now()

    def _on_annotator_event(self, event: Any) -> None:
        if not self.life.alive:
            return
        if isinstance(event, StackChanged):
            self.instant_preview.hide()
            self.tracks_view.forget()
        elif isinstance(event, AnnotationChanged):
            self.tracks_view.frames_changed(event.frames)

    def _on_slot(self, kind: str, running: bool) -> None:
        if not self.life.alive or kind == "preview":
            return
        if running and kind == "propagate":
            self.instant_preview.cancel_pending()
            self.instant_preview.hide()
        for widget in (
            self.seed_button,
            self.segment_button,
            self.start_split_button,
            self.split_button,
        ):
            widget.setEnabled(not running)
        self.cancel_button.setEnabled(running and kind in ("seed", "segment_all"))

    def _refuse_if_busy(self) -> bool:
        if not self.slot.busy:
            return False
        if self.slot.kind == "preview":
            return False  # a preview gives way: see _start
        self._error(PromptError(f"a {self.slot.kind} job is running: wait for it or cancel it"))
        return True

    def _start(self, kind: str, fn: Any, *args: Any) -> bool:
        """Start on the slot; a running preview gives way (it is cancelled and the job
        starts when it has ended)."""
        job = self.slot.job
        if self.slot.busy and self.slot.kind == "preview" and job is not None:
            self.instant_preview.cancel_pending()
            job.cancel()
            job.when_done(lambda _state: self._start(kind, fn, *args) if self.life.alive else None)
            return True
        return super()._start(kind, fn, *args)

    def _start_quietly(
        self, kind: str, fn: Callable[..., Generator], *args: Any, on_done: Callable[[str], None]
    ) -> bool:
        """Start on the slot as :meth:`_start` does (recorded in ``job``, its yields to
        :meth:`_on_yield`), but ended by ``on_done`` and silent when refused: the
        preview's start (it does not wait for another job)."""
        self._kind = kind
        try:
            self.job = self.slot.start(kind, fn, *args, on_yield=self._on_yield, on_done=on_done)
        except Exception:  # another job began meanwhile: no preview
            return False
        self.life.job = self.job
        return True

    def _say(self, text: str) -> None:
        """``text`` in this panel's status line (the helpers' messages)."""
        self.status.setText(text)

    def _error(self, exc: BaseException | str) -> None:
        """The error in full in this panel's status line, and as a notification."""
        text = exc if isinstance(exc, str) else _threading.describe_error(exc)
        self.status.setText(f"error: {text}")
        _threading.notify_error(exc)


def _describe_seeded(result: Seeded) -> str:
    n, frame = len(result.ids), result.frame
    if result.what == "segment all":
        if not n:
            return (
                f"Segment all found no object on frame {frame} to keep (nothing changed): "
                "an untrained or weak model often finds none; lower 'min area' or raise "
                "'max overlap', or seed from a Labels layer"
            )
        return (
            f"Segment all found {n} object(s) on frame {frame} (ids {result.ids[0]}–"
            f"{result.ids[-1]}; one undo step); Propagate tracks them"
        )
    first, last = (result.ids[0], result.ids[-1]) if n else (0, 0)
    return (
        f"seeded {n} object(s) on frame {frame} (ids {first}–{last} kept; one undo step); "
        "Propagate tracks them"
    )
