"""The dock's model: what the user chose, the session of the chosen stack, and the masks layer
bound to that session's annotation model (Qt-free).

:class:`Annotator` is the one place that turns the chosen image into a stack, the stack into
its session and learner, and keeps the "<image> masks" layer a view of the session's
annotation (:class:`~napari_sam_lora.layers.masks_view.MasksView`). Every dock panel takes the
annotator (and the dock's job slot) instead of the dock widget; the widgets only write the
user's choices into :attr:`Annotator.selection` and show what :attr:`Annotator.events`
reports.

Scripts can drive the same object without Qt::

    annotator = Annotator(viewer)
    annotator.selection.image = viewer.layers["cells"]
    annotator.undo()                       # what Ctrl+Z on the masks layer does
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_sam_lora.annotator.learning import LearningControl
from napari_sam_lora.annotator.sessions import (
    PropagateRequest,
    Region,
    SessionCache,
    build_request,
)
from napari_sam_lora.engine.annotation.history import Signal
from napari_sam_lora.engine.annotation.prompts import Prompt, prompt_key
from napari_sam_lora.engine.core.errors import PromptError, StackError
from napari_sam_lora.layers import (
    MasksView,
    StackSource,
    find_output_layer,
    frame_labels,
    output_labels_layer,
    plane_index,
    prompt_items,
    prompt_layer_state,
    prompt_object_ids,
    remove_prompt_items,
    same_layer,
    set_prompt_layer_state,
    stack_from_image_layer,
    style_prompt_layers,
    write_frame,
)
from napari_sam_lora.layers.masks_view import Stroke
from napari_sam_lora.layers.prompts import region_from_shapes, region_layer_name

__all__ = [
    "AnnotationChanged",
    "Annotator",
    "Painted",
    "PromptLayersChosen",
    "RegionChosen",
    "Selection",
    "StackChanged",
]


@dataclass
class Selection:
    """What the user chose in the dock (the widgets keep it current).

    ``first``/``last`` are the frame range of Propagate (and of the re-propagation after
    Learn and Accept); ``None`` means the whole stack. ``only_region``: the next session is
    made on the rectangle drawn in "<image> region" (:meth:`Annotator.region`).
    """

    image: Any = None
    stack_axis: int = 0
    points: Any = None
    shapes: Any = None
    mask: Any = None
    obj_id: int = 1
    model: str = ""
    device: str | None = None
    image_size: int | None = None
    direction: str = "both"
    first: int | None = None
    last: int | None = None
    assist: bool = True
    only_region: bool = False


@dataclass(frozen=True)
class AnnotationChanged:
    """Emitted on the main thread after the annotation changed and the layer shows it."""

    frames: tuple[int, ...]
    name: str = ""


@dataclass(frozen=True)
class StackChanged:
    """Emitted when another image or stack axis was chosen."""

    frames: int


@dataclass(frozen=True)
class PromptLayersChosen:
    """Emitted when an action chose the prompt layers (the dock shows them chosen)."""

    points: Any
    shapes: Any
    mask: Any


@dataclass(frozen=True)
class RegionChosen:
    """Emitted when an action chose the region (a restore on a region): the dock ticks
    *only this region* (``None``: whole frames, unticked)."""

    region: Region | None


@dataclass(frozen=True)
class Painted:
    """Emitted after the user's strokes reached the annotation (frames they touched)."""

    frames: tuple[int, ...]


class Annotator:
    """The chosen stack, its session and learner, and the masks layer as their view.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    sessions : SessionCache, optional
        Reuses the loaded model and the session between jobs.

    Attributes
    ----------
    selection : Selection
        The user's choices.
    learning : LearningControl
        The learner of the session and the checks before each learning action.
    events : Signal
        Emits :class:`AnnotationChanged`, :class:`Painted`, :class:`StackChanged`,
        :class:`PromptLayersChosen`, :class:`RegionChosen` and status texts (``str``).
    is_busy : callable
        ``() -> bool``: whether a job is running (the dock sets it to its job slot's).
    """

    def __init__(self, viewer: Any, sessions: SessionCache | None = None) -> None:
        self.viewer = viewer
        self.selection = Selection()
        self.sessions = sessions or SessionCache()
        self.learning = LearningControl(self)
        self.events = Signal()
        self.is_busy: Any = lambda: False
        self._view: MasksView | None = None
        self._queued: list[Stroke] = []
        self._kept: set[tuple] = set()  # prompt keys of seeded objects (no prompt layer)

    # -- lookup: image -> stack -> session -----------------------------------------------
    def source(self) -> StackSource:
        """The chosen image as a stack, at the viewer's current position.

        Raises
        ------
        StackError
            No image chosen, or one that is no stack.
        """
        image = self.selection.image
        if image is None:
            raise StackError("no image layer: open an image or a stack and select it under 'image'")
        axis = self.selection.stack_axis if image.ndim >= 4 else 0
        return stack_from_image_layer(image, axis, tuple(self.viewer.dims.point))

    def try_source(self) -> StackSource | None:
        """:meth:`source`, or ``None`` where there is none."""
        try:
            return self.source()
        except Exception:  # no or unsupported image: the actions say why
            return None

    def session(self) -> Any:
        """The session of the chosen stack (``None`` before its first propagation)."""
        return self._session_of(self.try_source())

    def output(self) -> Any:
        """The chosen image's masks layer, or ``None``."""
        return self._output_of(self.try_source())

    def _session_of(self, source: StackSource | None) -> Any:
        if source is None:
            return None
        return self.sessions.session_matching(self.selection.image, source)

    def _output_of(self, source: StackSource | None) -> Any:
        if source is None:
            return None
        return find_output_layer(self.viewer, self.selection.image, source)

    def masks_layer(self, image: Any, source: StackSource) -> Any:
        """The masks layer of ``image`` (made if missing, below the prompt layers so it
        does not tint them)."""
        viewer, chosen = self.viewer, self.selection
        existed = find_output_layer(viewer, image, source) is not None
        output = output_labels_layer(viewer, image, source)
        if not existed:
            layers = viewer.layers
            prompts = [
                layers.index(x)
                for x in layers
                if any(same_layer(x, p) for p in (chosen.points, chosen.shapes))
            ]
            here = layers.index(output)
            if prompts and min(prompts) < here:
                layers.move(here, min(prompts))
            style_prompt_layers(chosen.points, chosen.shapes, output)
        return output

    def frame_count(self) -> int:
        """Frames of the chosen stack (1 without one)."""
        source = self.try_source()
        return 1 if source is None else source.num_frames

    def current_frame(self) -> int:
        """The frame the viewer shows (0 without a stack)."""
        source = self.try_source()
        return 0 if source is None else source.current_frame

    def propagate_request(self) -> PropagateRequest:
        """What Propagate asks for: the chosen stack, the prompts in the chosen layers,
        model, direction and frame range (read now, on the main thread).

        Raises
        ------
        StackError, PromptError
            With a message naming the layer and what to fix; e.g. an object id that the
            image's existing masks layer cannot hold (id 300 in a uint8 layer).
        """
        chosen = self.selection
        if not self._layer_prompts() and self._session_keeps_prompts():
            # seeded objects only (their prompts live in the session): propagate them
            request = replace(
                self.session_request(),
                direction=chosen.direction,
                frame_range=self.frame_range(),
                assist=chosen.assist,
            )
            return request
        request = build_request(
            chosen.image,
            stack_axis=chosen.stack_axis,
            dims_point=tuple(self.viewer.dims.point),
            points_layer=chosen.points,
            shapes_layer=chosen.shapes,
            labels_layer=chosen.mask,
            default_obj_id=chosen.obj_id,
            model=chosen.model,
            device=chosen.device,
            image_size=chosen.image_size,
            direction=chosen.direction,
            frame_range=self.frame_range(),
            assist=chosen.assist,
            masks_layer=self.output(),
            region=self.region(),
        )
        self.check_keeps_annotation(request.image_size, request.region)
        return request

    def session_request(self) -> PropagateRequest:
        """What getting the session asks for, without prompts: the chosen stack, model,
        size and region (Seed, Segment all and the preview make the session the way
        Propagate does, through the same :class:`SessionCache`).

        Raises
        ------
        StackError, PromptError
            No image, a region that is not one rectangle, or a size or region the current
            annotation was not made with.
        """
        chosen = self.selection
        source = self.source()
        region = self.region()
        if region is not None:
            region.check_fits(source.frame_shape, f"image '{chosen.image.name}'")
        request = PropagateRequest(
            chosen.image,
            source,
            [],
            chosen.model,
            chosen.device,
            chosen.image_size,
            chosen.direction,
            None,
            chosen.assist,
            region,
        )
        self.check_keeps_annotation(request.image_size, request.region)
        return request

    def seed_plane(self, layer: Any) -> np.ndarray:
        """The plane of a Labels layer at the current frame, as the session's frames see
        it (cropped to the region): a 2D layer is one frame, a layer of the image's shape
        or of the stack ``(T, H, W)`` gives its plane at the current frame.

        Raises
        ------
        PromptError
            A layer of another shape.
        """
        source = self.source()
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        shape = tuple(int(s) for s in data.shape)
        if shape == tuple(source.frame_shape):
            plane = np.asarray(data)
        else:
            try:
                plane = np.asarray(data[plane_index(layer, source, source.current_frame)])
            except ValueError as exc:
                raise PromptError(
                    f"{exc}, or one frame {tuple(source.frame_shape)}: seed from a Labels "
                    "layer of the image's shape or of one frame"
                ) from exc
        region = self.region()
        return plane[region.slices] if region is not None else plane

    def choose_region(self, region: Region | None) -> None:
        """Choose the region (a restore on a region) and tell the dock, which ticks
        *only this region* (unticks it for ``None``)."""
        self.selection.only_region = region is not None
        self.events.emit(RegionChosen(region))

    def keep_prompts(self, prompts: list[Prompt]) -> None:
        """Keep ``prompts`` (seeded objects' masks: in the session, in no prompt layer)
        at each Propagate (:meth:`keeps_prompt`)."""
        self._kept |= {prompt_key(p) for p in prompts}

    def keeps_prompt(self, prompt: Prompt) -> bool:
        """Whether Propagate keeps the session's ``prompt`` though no prompt layer holds
        it: the mask of an object seeded from a Labels layer, by *Segment all* or by a
        split. Undo removes it from the session (and Redo brings it back), Reset too."""
        return prompt_key(prompt) in self._kept

    def _session_keeps_prompts(self) -> bool:
        session = self.session()
        return session is not None and any(self.keeps_prompt(p) for p in session.prompts)

    def _layer_prompts(self) -> bool:
        """Whether the chosen prompt layers hold anything."""
        chosen = self.selection
        for layer in (chosen.points, chosen.shapes):
            if layer is not None and len(layer.data):
                return True
        mask = chosen.mask
        return mask is not None and bool(np.any(np.asarray(mask.data)))

    def region(self) -> Region | None:
        """The chosen region (``None`` unless *only this region* is ticked): the one
        rectangle of the "<image> region" Shapes layer, in frame pixels.

        Raises
        ------
        PromptError
            Ticked, but no region layer or not one rectangle in it.
        """
        chosen = self.selection
        if not chosen.only_region or chosen.image is None:
            return None
        name = region_layer_name(chosen.image)
        layer = next((x for x in self.viewer.layers if x.name == name), None)
        if layer is None or not hasattr(layer, "shape_type"):
            raise PromptError(
                f"'only this region' is ticked but there is no Shapes layer '{name}': "
                "'Draw region' makes it; draw one rectangle in it"
            )
        return region_from_shapes(layer, self.source(), chosen.image)

    def check_keeps_annotation(self, image_size: int | None, region: Region | None) -> None:
        """Refuse a new image size or region while the session of the chosen stack holds
        an annotation: a session sees one size and one region, and a new one would
        start over without the user's work.

        Raises
        ------
        PromptError
            Naming what the annotation was made with and how to change it.
        """
        session, cache = self.session(), self.sessions
        if session is None or not _holds_work(session):
            return
        now, new = cache.image_size or 1024, image_size or 1024
        name = getattr(self.selection.image, "name", "the image")
        work = f"'{name}' has an annotation"
        how = "save it (Save session…) and Reset all first to start a new session"
        if new != now:
            raise PromptError(
                f"image size stays {now} px: {work} made at {now} px and a session sees one "
                f"size; {how} at {new} px (or choose {now} px again)"
            )
        if region != cache.region:
            was = "the whole frames" if cache.region is None else cache.region.describe()
            raise PromptError(
                f"the region stays {was}: {work} made there and a session sees one region; "
                f"{how}, or put the region back as it was"
            )

    def frame_range(self) -> tuple[int, int] | None:
        """The chosen frame range, ``None`` for the whole stack."""
        first, last, count = self.selection.first, self.selection.last, self.frame_count()
        if first is None or last is None or (first, last) == (0, count - 1):
            return None
        return int(first), int(last)

    def stack_changed(self) -> None:
        """The dock chose another image or stack axis: tell the panels (and view the new
        stack's masks layer from the next job on)."""
        self.unbind()
        self.events.emit(StackChanged(self.frame_count()))

    def choose_prompt_layers(self, points: Any, shapes: Any, mask: Any) -> None:
        """Choose the prompt layers (a restore made them) and tell the dock."""
        self.selection.points, self.selection.shapes, self.selection.mask = points, shapes, mask
        self.events.emit(PromptLayersChosen(points, shapes, mask))

    # -- the masks layer as a view --------------------------------------------------------
    def bind(self) -> MasksView | None:
        """Bind the masks layer to the session's annotation model (a new binding when the
        session or the layer changed). Main thread."""
        source = self.try_source()
        session, output = self._session_of(source), self._output_of(source)
        view = self._view
        if session is None or output is None or source is None:
            return view if view is not None and not view.closed else None
        region = self.sessions.region
        if view is not None and view.shows(session.annotation, output, region):
            return view
        if view is not None:
            view.close()
        self._view = MasksView(
            session.annotation,
            output,
            source,
            self.on_strokes,
            self.undo,
            self.redo,
            region=region,
            on_outside=self._painted_outside,
        )
        return self._view

    def _painted_outside(self, pixels: int) -> None:
        region = self.sessions.region
        where = region.describe() if region is not None else "the region"
        self.events.emit(
            f"error: {pixels} pixel(s) painted outside the region ({where}) were put back: "
            "this session sees only the region"
        )

    def unbind(self) -> None:
        """Stop viewing (the dock closes, or the image went)."""
        if self._view is not None:
            self._view.close()
            self._view = None

    def flush(self, name: str = "") -> list[int]:
        """Show every change of the annotation in the masks layer; returns the frames
        written and tells the listeners (:class:`AnnotationChanged`). Main thread."""
        view = self.bind()
        frames = view.flush() if view is not None else []
        self.events.emit(AnnotationChanged(tuple(frames), name))
        return frames

    def show_step(self, frame: int, labels: Any) -> bool:
        """Show one frame a running job just made (before its action is finished)."""
        view = self.bind()
        return view.show(frame, labels) if view is not None else False

    # -- resets --------------------------------------------------------------------------
    def prompt_ids(self) -> list[int]:
        """Object ids in the chosen prompt layers."""
        return prompt_object_ids(self.selection.points, self.selection.shapes)

    def clear_prompts(self, obj_id: int) -> int:
        """Remove ``obj_id``'s clicks and boxes on the current frame; returns how many.

        Raises
        ------
        StackError
            No image chosen.
        """
        source = self.source()
        removed = 0
        for layer in self._prompt_layers():
            drop = [
                i
                for i, (obj, frame) in enumerate(self._items(layer, source))
                if obj == int(obj_id) and frame == source.current_frame
            ]
            remove_prompt_items(layer, drop)
            removed += len(drop)
        return removed

    def reset(self, obj_ids: list[int] | None) -> str:
        """Start objects over (all with ``None``): their clicks and boxes, their annotation
        and SAM2's memory of them — ONE undo step that brings all of it back. Returns what
        was reset.

        Raises
        ------
        PromptError
            A job is running.
        StackError
            No image chosen.
        """
        what = "everything" if obj_ids is None else f"object {obj_ids[0]}"
        if self.is_busy():
            raise PromptError(f"a job is running: cancel it before resetting {what}")
        source = self.source()
        session = self._session_of(source)
        if session is None:  # no annotation yet: the layers are all there is
            self._clear_prompt_items(source, obj_ids)
            output = self._output_of(source)
            if output is not None:
                with output.block_history():
                    for t in range(source.num_frames):
                        plane = frame_labels(output, source, t)
                        keep = obj_ids is not None
                        new = np.where(np.isin(plane, obj_ids), 0, plane) if keep else 0 * plane
                        write_frame(output, source, t, new)
            return what
        with session.annotation.action(f"reset {what}") as action:
            action.also(*self._clear_prompt_items(source, obj_ids))
            if obj_ids is None:
                session.reset()
            else:
                for obj in obj_ids:
                    session.reset_object(obj)
        self.flush(f"reset {what}")
        return what

    def _prompt_layers(self) -> list[Any]:
        chosen = self.selection
        return [x for x in (chosen.points, chosen.shapes) if x is not None and len(x.data)]

    def _items(self, layer: Any, source: StackSource) -> list[tuple[int, int]]:
        return prompt_items(layer, self.selection.image, source, self.selection.obj_id)

    def _clear_prompt_items(
        self, source: StackSource, obj_ids: list[int] | None
    ) -> tuple[Any, Any]:
        """Remove the objects' clicks and boxes (all with ``None``); returns ``(undo,
        redo)`` that put the prompt layers back as they were and as they are now."""
        before, after = [], []
        for layer in self._prompt_layers():
            items = self._items(layer, source)
            drop = [i for i, (obj, _) in enumerate(items) if obj_ids is None or obj in obj_ids]
            if drop:
                before.append((layer, prompt_layer_state(layer)))
                remove_prompt_items(layer, drop)
                after.append((layer, prompt_layer_state(layer)))

        def put(states: list) -> Any:
            return lambda: [set_prompt_layer_state(layer, state) for layer, state in states]

        return put(before), put(after)

    # -- the user's edits and history -----------------------------------------------------
    def on_strokes(self, strokes: list[Stroke]) -> None:
        """The user painted, filled or erased in the masks layer: each stroke becomes one
        annotation action (queued while a job runs, applied when it ends)."""
        self._queued.extend(strokes)
        if not self.is_busy():
            self.apply_strokes()

    def apply_strokes(self) -> list[int]:
        """Apply the queued strokes to the annotation; returns the frames they touched."""
        strokes, self._queued = self._queued, []
        session = self.session()
        if not strokes:
            return []
        if session is None:
            self.events.emit(
                "strokes in the masks layer count once the stack has been propagated (the "
                "first Propagate shows its masks there); to prompt with a painted mask, "
                "choose a Labels layer under 'mask'"
            )
            return []
        frames = []
        for frame, rows, cols, values in strokes:
            try:
                if session.paint(frame, (rows, cols), values):
                    frames.append(int(frame))
            except Exception as exc:  # an id the layer accepts but the model does not
                self.events.emit(f"error: {exc}")
        self.flush("paint")
        if frames:
            self.events.emit(Painted(tuple(sorted(set(frames)))))
        return frames

    def undo(self) -> str:
        """Undo the last action on the annotation (Ctrl+Z on the masks layer); returns
        what happened, for the status line."""
        return self._history("undo")

    def redo(self) -> str:
        """Redo the last undone action (Ctrl+Shift+Z on the masks layer)."""
        return self._history("redo")

    def _history(self, kind: str) -> str:
        session = self.session()
        if self.is_busy():
            text = f"cannot {kind} while a job runs: wait for it or cancel it first"
        elif session is None:
            text = f"nothing to {kind}: no annotation of this image yet"
        else:
            try:
                change = session.undo() if kind == "undo" else session.redo()
            except PromptError as exc:
                change, text = None, str(exc)
            else:
                text = f"{kind}: {change.name}" if change else f"nothing to {kind}"
            if change is not None:
                self.flush(change.name)
        self.events.emit(text)
        return text

    def release(self) -> None:
        """Unbind the view, close the learner, drop the session and the model."""
        self.unbind()
        self.learning.release()
        self.sessions.release()
        self._kept.clear()


def _holds_work(session: Any) -> bool:
    """Whether a session's annotation holds anything of the user's: a prompt, a confirmed
    frame or a mask."""
    return bool(
        list(session.prompts)
        or session.annotations.confirmed()
        or np.any(np.asarray(session.labels))
    )
