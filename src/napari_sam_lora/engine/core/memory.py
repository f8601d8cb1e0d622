"""What a stack needs in memory, checked before anything is allocated (no torch)."""

from __future__ import annotations

import os

from napari_sam_lora.engine.core.errors import StackError

__all__ = ["available_bytes", "check_stack_fits", "stack_bytes"]

#: Share of the free memory one stack may plan to use.
USABLE_SHARE = 0.8
_GB = 1e9


def available_bytes() -> int | None:
    """Memory free for new allocations now (``None`` where it cannot be known)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or failing: ask the OS
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def stack_bytes(num_frames: int, frame_shape: tuple[int, int], channels: int = 1) -> int:
    """Bytes a session over the stack needs besides the model: the label images (int32,
    one per frame) and the working copies of one frame while it is normalised (float32)."""
    height, width = (int(s) for s in frame_shape)
    labels = int(num_frames) * height * width * 4
    frame = height * width * max(int(channels), 1) * 4
    return labels + 4 * frame


def _size(nbytes: float) -> str:
    return f"{nbytes / _GB:.1f} GB" if nbytes >= 0.1 * _GB else f"{nbytes / 1e6:.0f} MB"


def check_stack_fits(
    num_frames: int,
    frame_shape: tuple[int, int],
    channels: int = 1,
    available: int | None = None,
) -> None:
    """Refuse a stack whose session cannot fit in the free memory, saying what would.

    Raises
    ------
    StackError
        With the memory needed, the memory free, and how many frames or what frame size
        would fit (or a region of interest).
    """
    free = available_bytes() if available is None else int(available)
    if free is None:
        return
    needed = stack_bytes(num_frames, frame_shape, channels)
    usable = USABLE_SHARE * free
    if needed <= usable:
        return
    height, width = (int(s) for s in frame_shape)
    per_frame = height * width * 4
    fit_frames = int((usable - 4 * height * width * max(channels, 1) * 4) // per_frame)
    side = int((usable / (4 * (num_frames + 4 * max(channels, 1)))) ** 0.5)
    frames_hint = (
        f"{fit_frames} frame(s) of this size (a frame range)"
        if fit_frames >= 1
        else "no frame of this size"
    )
    raise StackError(
        f"{num_frames} frame(s) of {height}×{width} need about {_size(needed)} for the "
        f"annotation and {_size(free)} are free: what fits is {frames_hint}, or "
        f"frames of about {side}×{side} (a region of interest or a downsampled copy)"
    )
