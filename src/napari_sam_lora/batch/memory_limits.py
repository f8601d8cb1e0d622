"""What a batch stack needs of a worker's memory, and what dask does when a worker runs out.

A stack a worker cannot hold is refused before it is submitted (:func:`memory_refusal`);
a job whose every worker stays paused at dask's memory threshold is noticed
(:class:`PauseWatch`) instead of waiting forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_sam_lora.engine.core.errors import ConfigError

__all__ = [
    "MODEL_BASE_BYTES",
    "PAUSE_TIMEOUT",
    "PauseWatch",
    "StackSize",
    "all_paused",
    "format_bytes",
    "memory_refusal",
    "model_bytes",
    "parse_memory_limit",
    "pause_fraction",
    "paused_message",
    "stack_sizes",
]


@dataclass(frozen=True)
class StackSize:
    """What a stack holds: frames, frame shape, channels, and its pixel data's bytes."""

    frames: int
    shape: tuple[int, int]
    channels: int
    pixels: int

    def needs(self, model_bytes: int) -> int:
        """Bytes one worker needs for this stack: its pixels as read, the session's label
        images and working frames (:func:`~napari_sam_lora.engine.core.memory.stack_bytes`),
        and the model."""
        from napari_sam_lora.engine.core.memory import stack_bytes

        return stack_bytes(self.frames, self.shape, self.channels) + self.pixels + model_bytes


def stack_sizes(paths: Sequence[Path], names: Sequence[str]) -> dict[str, StackSize | None]:
    """Each stack's geometry and pixel bytes, read lazily (no pixel is read)."""
    import numpy as np

    from napari_sam_lora.data.readers import open_stack
    from napari_sam_lora.engine.tracking.frames import stack_geometry

    found: dict[str, StackSize | None] = {}
    for name, path in zip(names, paths, strict=True):
        try:
            stack = open_stack(path)
            num_frames, frame_shape, rgb = stack_geometry(stack)
            channels = int(stack.shape[-1]) if rgb else 1
            pixels = int(np.prod([int(n) for n in stack.shape])) * np.dtype(stack.dtype).itemsize
            found[name] = StackSize(int(num_frames), tuple(frame_shape), channels, pixels)
        except Exception:  # the stack fails on its own, in the summary
            found[name] = None
    return found


#: What a worker needs for the model besides twice its weights (weights and their working
#: copies): torch, SAM2's activations, dask itself (measured: 1.1 GB peak per worker with
#: hiera-tiny, 149 MB of weights).
MODEL_BASE_BYTES = 800_000_000


def model_bytes(model: Any) -> int:
    """A worker's memory allowance for ``model`` (its weights, activations, the runtime).

    ``model`` is a model name, ``untrained:<variant>``, a checkpoint path, or an already
    parsed ``ModelSpec`` (no checkpoint is read again).
    """
    from napari_sam_lora.engine.tracking.models import parse_model

    spec = model if hasattr(model, "variant") else parse_model(model)
    return int(MODEL_BASE_BYTES + 2 * spec.variant.size_mb * 1_000_000)


def format_bytes(nbytes: float) -> str:
    """``nbytes`` for a message: ``"1.4 GB"``, or ``"300 MB"`` below 0.1 GB."""
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.0f} MB"


def pause_fraction() -> float:
    """dask's ``distributed.worker.memory.pause`` (0.8): where a worker stops running tasks."""
    import dask

    value = dask.config.get("distributed.worker.memory.pause", 0.8)
    return float(value) if value else 1.0


def memory_refusal(
    name: str, size: StackSize | None, limit: float | None, source: str, model: int
) -> str | None:
    """Why stack ``name`` cannot run on a worker with ``limit`` bytes; ``None`` if it can.

    First the engine's own check (:func:`~napari_sam_lora.engine.core.memory.check_stack_fits`,
    which says what would fit), then the whole need — the stack's pixels, its compressed
    label images with one frame's working copies, and the model (``model`` bytes) — against
    the share of ``limit`` where dask pauses a worker (``distributed.worker.memory.pause``,
    80 %): a worker that reaches it stops running tasks and the stack would never finish.

    Parameters
    ----------
    name : str
        The stack's name (for the message).
    size : StackSize or None
        The stack's geometry (``None``: unknown, never refused here).
    limit : float or None
        Bytes one worker may use (``None``: unknown, nothing is refused).
    source : str
        Where ``limit`` comes from, as the user knows it (``--memory-limit``).
    model : int
        The model's allowance (:func:`model_bytes`).
    """
    from napari_sam_lora.engine.core.errors import StackError
    from napari_sam_lora.engine.core.memory import check_stack_fits, stack_bytes

    if size is None or not limit:
        return None
    hint = (
        "raise --memory-limit, use fewer workers (more memory each), a region of interest "
        "or a downsampled copy"
    )
    try:
        check_stack_fits(size.frames, size.shape, size.channels, available=int(limit))
    except StackError as exc:
        return f"stack {name}: {exc} (a worker has {format_bytes(limit)}, {source}); {hint}"
    needed = size.needs(model)
    session = stack_bytes(size.frames, size.shape, size.channels)
    fraction = pause_fraction()
    if needed <= fraction * limit:
        return None
    return (
        f"stack {name} needs about {format_bytes(needed)}, a worker has "
        f"{format_bytes(limit)} ({source}): dask pauses a worker at {fraction:.0%} of it, so "
        f"the stack would never finish; {hint} (pixels {format_bytes(size.pixels)}, "
        f"compressed labels and one frame's working copies {format_bytes(session)}, model "
        f"about {format_bytes(model)})"
    )


def parse_memory_limit(memory_limit: str | float | None) -> float | None:
    """``--memory-limit`` in bytes (``"4GB"``, ``4e9``); ``None`` when not given or ``auto``."""
    if memory_limit in (None, "", "auto"):
        return None
    from dask.utils import parse_bytes

    try:
        value = (
            float(memory_limit)
            if isinstance(memory_limit, int | float)
            else float(parse_bytes(str(memory_limit)))
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"memory limit {memory_limit!r}: give a size such as 4GB or 8000MB"
        ) from exc
    if value <= 0:
        raise ConfigError(f"memory limit {memory_limit!r}: give a size such as 4GB or 8000MB")
    return value


#: Seconds every worker may stay paused (over dask's memory pause threshold) before the
#: job gives up on the stacks not finished instead of waiting forever.
PAUSE_TIMEOUT = 30.0


def all_paused(info: dict[str, Any]) -> bool:
    """Whether every worker of the scheduler ``info`` is paused (or over dask's pause share
    of its memory limit); ``False`` without workers."""
    workers = list((info or {}).get("workers", {}).values())
    if not workers:
        return False
    fraction = pause_fraction()
    for worker in workers:
        limit = worker.get("memory_limit") or 0
        used = (worker.get("metrics") or {}).get("memory") or 0
        over = bool(limit) and used >= fraction * limit
        if worker.get("status") != "paused" and not over:
            return False
    return True


class PauseWatch:
    """Notices that every worker has stayed paused for ``timeout`` seconds.

    dask pauses a worker at 80 % of its memory limit (``distributed.worker.memory.pause``):
    it stops running tasks, and a job whose every worker is paused would wait forever.

    Parameters
    ----------
    timeout : float
        Seconds all workers may stay paused.
    clock : callable
        Seconds now (``time.monotonic``; tests pass their own).
    """

    def __init__(self, timeout: float = PAUSE_TIMEOUT, clock: Any = None) -> None:
        import time

        self.timeout = float(timeout)
        self.clock = clock or time.monotonic
        self.since: float | None = None

    def update(self, info: dict[str, Any]) -> float | None:
        """Look at the scheduler's ``info``; the seconds paused once past the timeout."""
        now = self.clock()
        if not all_paused(info):
            self.since = None
            return None
        if self.since is None:
            self.since = now
        paused = now - self.since
        return paused if paused >= self.timeout else None


def paused_message(seconds: float, info: dict[str, Any], source: str) -> str:
    limits = [w.get("memory_limit") for w in info.get("workers", {}).values()]
    limits = [x for x in limits if x]
    limit = f"{format_bytes(min(limits))}, {source}" if limits else source
    return (
        f"every worker has been paused for {seconds:.0f} s: it reached "
        f"{pause_fraction():.0%} of its memory limit ({limit}) and dask stopped running "
        "tasks on it; the stack needs more memory than a worker has: raise --memory-limit, "
        "use fewer workers (more memory each), a region of interest or a downsampled copy"
    )
