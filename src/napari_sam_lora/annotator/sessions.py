"""The loaded model and the session of the dock's image, reused between jobs; what a
propagation asks for, read on the main thread; the dock's teardown (all Qt-free).

A request may name a :class:`Region` (a rectangle of every frame): its session is made on
the cropped stack ``frames[:, r0:r1, c0:c1]``, so small objects in big frames are seen at
full resolution; its prompts are in the region's coordinates (a prompt outside it is
refused before anything changes), and the masks layer shows the session's frames at the
region's offset (:class:`~napari_sam_lora.layers.masks_view.MasksView`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from napari_sam_lora.annotator.imports import prepare_engine, prepare_learning, thaw
from napari_sam_lora.engine.annotation.prompts import Prompt
from napari_sam_lora.engine.core.errors import PromptError, StackError
from napari_sam_lora.engine.core.jobs import relay
from napari_sam_lora.engine.core.validation import check_ids_fit
from napari_sam_lora.layers import (
    StackSource,
    box_prompts,
    mask_prompts,
    point_prompts,
    stack_from_image_layer,
)
from napari_sam_lora.layers.masks_view import Region
from napari_sam_lora.layers.prompts import prompts_in_region

__all__ = [
    "Lifecycle",
    "LoadProgress",
    "ModelReady",
    "PropagateRequest",
    "Region",
    "SessionCache",
    "build_request",
    "feature_megabytes",
]

#: SAM2's backbone features of one frame at its own input size (1024 px), in MB; they
#: scale with the square of the input size.
FEATURE_MB_AT_1024 = 16.0


def feature_megabytes(image_size: int | None) -> float:
    """The backbone features one frame costs at ``image_size`` (``None``: 1024), in MB."""
    size = image_size or 1024
    return FEATURE_MB_AT_1024 * (size / 1024) ** 2


@dataclass(frozen=True)
class LoadProgress:
    """Yielded while the model loads: ``stage`` is "download" or "build"."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class ModelReady:
    """Yielded once the session exists; ``label`` is the model as shown to users."""

    label: str


@dataclass(frozen=True)
class PropagateRequest:
    """Everything a propagation job needs, read on the main thread.

    ``assist`` asks for adapter-assisted propagation (used once an object has an
    adapter). The masks layer is not part of it: the user's edits reached the session's
    annotation model as they were painted. With a ``region`` the prompts are in the
    region's coordinates and the session sees only the region of each frame.
    """

    image_layer: Any
    source: StackSource
    prompts: list[Prompt]
    model: str
    device: str | None
    image_size: int | None
    direction: str
    frame_range: tuple[int, int] | None
    assist: bool = True
    region: Region | None = None

    @property
    def frames_to_track(self) -> Any:
        """The stack the session reads: the frames, or their region."""
        frames = self.source.frames
        return frames if self.region is None else self.region.crop(frames)

    @property
    def frames(self) -> list[int]:
        """The frames this request covers, ascending."""
        first, last = self.frame_range or (0, self.source.num_frames - 1)
        return list(range(first, last + 1))

    @property
    def session_key(self) -> tuple:
        """Sessions are reused while this is unchanged."""
        return (
            self.image_layer.unique_id,
            id(self.image_layer.data),
            self.source.stack_axis,
            tuple(sorted(self.source.fixed_indices.items())),
            self.model_key,
            self.region,
        )

    @property
    def model_key(self) -> tuple:
        """Loaded models are reused while this is unchanged."""
        return (self.model, self.device, self.image_size)


def build_request(
    image_layer: Any,
    *,
    stack_axis: int,
    dims_point: Sequence[float] | None,
    points_layer: Any,
    shapes_layer: Any,
    labels_layer: Any,
    default_obj_id: int,
    model: str,
    device: str | None,
    image_size: int | None,
    direction: str,
    frame_range: tuple[int, int] | None,
    assist: bool = True,
    masks_layer: Any = None,
    region: Region | None = None,
) -> PropagateRequest:
    """Read the stack and the prompts from the selected layers (main thread).

    ``masks_layer`` is the image's existing masks layer, if any: every prompt's object id
    must fit its dtype (id 300 does not fit a user's uint8 "<image> masks" layer), checked
    here, before any job starts. With a ``region`` the prompts are moved into its
    coordinates; one outside it is refused here.

    Raises
    ------
    StackError, PromptError
        With a message naming the layer and what to fix.
    """
    if image_layer is None:
        raise StackError("no image layer: open an image or a stack and select it under 'image'")
    source = stack_from_image_layer(image_layer, stack_axis, dims_point)
    prompts: list[Prompt] = []
    if points_layer is not None:
        prompts += point_prompts(points_layer, source, image_layer, default_obj_id)
    if shapes_layer is not None:
        prompts += box_prompts(shapes_layer, source, image_layer, default_obj_id)
    if labels_layer is not None:
        prompts += mask_prompts(labels_layer, source, image_layer)
    if not prompts:
        used = [f"'{layer.name}'" for layer in (points_layer, shapes_layer, labels_layer) if layer]
        head = f"no prompts in {' or '.join(used)}" if used else "no prompt layer is selected"
        raise PromptError(
            f"{head}: click points, draw a box or paint a mask on a frame of "
            f"'{image_layer.name}' first ('Add prompt layers' makes the layers)"
        )
    if masks_layer is not None:
        dtype = getattr(masks_layer.data, "dtype", None)
        if dtype is not None:
            check_ids_fit(
                max(int(p.obj_id) for p in prompts), dtype, where=f"of layer '{masks_layer.name}'"
            )
    if region is not None:
        region.check_fits(source.frame_shape, f"image '{image_layer.name}'")
        prompts = prompts_in_region(prompts, region)
    if frame_range is not None and frame_range == (0, source.num_frames - 1):
        frame_range = None
    return PropagateRequest(
        image_layer,
        source,
        prompts,
        model,
        device,
        image_size,
        direction,
        frame_range,
        assist,
        region,
    )


def _default_load(model: str, device: str | None, image_size: int | None) -> Generator:
    prepare_engine()  # torch and SAM2, without stalling the event loop (see _imports)
    from napari_sam_lora.engine.tracking.predictor import iter_load_model

    return iter_load_model(model, device, image_size)


def _default_session(stack: Any, loaded: Any) -> Any:
    from napari_sam_lora.engine.tracking.session import Session

    # Features also go to the user cache on disk: reopening the stack costs no encoding.
    return Session(stack, loaded, disk_cache=True)


class SessionCache:
    """The last loaded model and the last session, reused by later propagations.

    Parameters
    ----------
    load_model : callable, optional
        ``(model, device, image_size) -> generator`` yielding ``(stage, done, total)`` and
        returning a loaded model (default: the engine's ``iter_load_model``).
    make_session : callable, optional
        ``(stack, loaded_model) -> Session`` (default: the engine's ``Session``).
    warm_up : callable, optional
        Run once on the worker at the end of the first propagation that finishes: imports
        what learning needs, so the first Learn neither imports nor stalls (default: the
        engine's learning modules with the default ``load_model``, nothing with another).
    """

    def __init__(
        self,
        load_model: Callable[..., Generator] | None = None,
        make_session: Callable[[Any, Any], Any] | None = None,
        warm_up: Callable[[], Any] | None = None,
    ) -> None:
        self._load = load_model or _default_load
        self._make = make_session or _default_session
        self.warm_up = warm_up if warm_up is not None or load_model else prepare_learning
        self.warmed_up = False
        self._model_key: tuple | None = None
        self._model: Any = None
        self._key: tuple | None = None
        self._pinned: tuple = ()
        self.session: Any = None

    def session_for(self, request: PropagateRequest) -> Any:
        """The cached session if ``request`` can reuse it, else ``None``."""
        return self.session if request.session_key == self._key else None

    def session_matching(self, image_layer: Any, source: StackSource) -> Any:
        """The cached session of ``image_layer`` seen as ``source`` (any model), else ``None``.

        The learning panel uses it: it acts on whatever the last propagation of this image,
        stack axis and plane made.
        """
        key = self._key
        here = (
            image_layer.unique_id,
            id(image_layer.data),
            source.stack_axis,
            tuple(sorted(source.fixed_indices.items())),
        )
        return self.session if key is not None and tuple(key[:4]) == here else None

    @property
    def model(self) -> Any:
        """The loaded model (``None`` before the first propagation or after :meth:`release`)."""
        return self._model

    @property
    def region(self) -> Region | None:
        """The region the cached session annotates (``None``: whole frames, or no session)."""
        return None if self._key is None else self._key[-1]

    @property
    def image_size(self) -> int | None:
        """The input size of the cached session's model (``None``: no session, or the
        model's own)."""
        return None if self._key is None else self._key[4][2]

    def release(self) -> None:
        """Drop the session and the model (their memory is freed once nothing else holds
        them); the next propagation loads the model again."""
        self._key, self.session, self._pinned = None, None, ()
        self._model_key, self._model = None, None
        thaw()  # they may be frozen (see _imports): let the collector free them

    def forget_image(self, image_layer: Any) -> None:
        """Drop the session of a removed image layer (frees its memory)."""
        if self._key is not None and self._key[0] == image_layer.unique_id:
            self._key, self.session, self._pinned = None, None, ()
            thaw()

    def iter_session(self, request: PropagateRequest) -> Generator[LoadProgress, None, Any]:
        """Yield :class:`LoadProgress` while loading as needed; return the session."""
        session = self.session_for(request)
        if session is not None:
            return session
        if self.session is not None:
            thaw()
        self._key, self.session = None, None
        if request.model_key != self._model_key:
            self._model_key, self._model = None, None
            steps = self._load(request.model, request.device, request.image_size)
            loaded = yield from relay(steps, lambda p: LoadProgress(*p))
            self._model_key, self._model = request.model_key, loaded
        session = self._make(request.frames_to_track, self._model)
        self._key, self.session = request.session_key, session
        # hold the data so its id in the key cannot be reused while cached
        self._pinned = (request.image_layer.data,)
        return session


class Lifecycle:
    """Pure-Python teardown, safe to run after the Qt widget was deleted.

    Attributes
    ----------
    alive : bool
        False once :meth:`shutdown` ran: handlers still connected must do nothing.
    job : Job or None
        The running job, cancelled on shutdown.
    teardown : list of callable
        Run once on shutdown, in order (errors are ignored: the viewer may be half gone).
    """

    def __init__(self) -> None:
        self.alive = True
        self.job: Any = None  # a napari_sam_lora._qt.threading.Job
        self.teardown: list[Any] = []

    def connect(self, emitter: Any, callback: Callable[..., Any]) -> None:
        """Connect ``callback`` to a napari event emitter until shutdown."""
        emitter.connect(callback)
        self.teardown.append(lambda: emitter.disconnect(callback))

    def on_shutdown(self, undo: Callable[[], Any]) -> None:
        """Run ``undo`` on shutdown."""
        self.teardown.append(undo)

    def shutdown(self, *_: Any) -> None:
        if not self.alive:
            return
        self.alive = False
        if self.job is not None:
            self.job.cancel()
        for undo in self.teardown:
            with contextlib.suppress(Exception):  # the viewer may be half torn down
                undo()
        self.teardown.clear()
