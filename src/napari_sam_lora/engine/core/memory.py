"""What a stack needs in memory, checked before anything is allocated (no torch)."""

from __future__ import annotations

import os

from napari_sam_lora.engine.core.errors import StackError

__all__ = [
    "available_bytes",
    "check_stack_fits",
    "frame_bytes",
    "limit_heap_growth",
    "stack_bytes",
]

#: Share of the free memory one stack may plan to use.
USABLE_SHARE = 0.8
_GB = 1e9


#: Allocations from this size on get their own pages, given back to the system when freed.
MMAP_THRESHOLD = 4 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_heap_limited = False


def limit_heap_growth() -> bool:
    """Keep the C heap from growing with a long stack (Linux, glibc; once per process).

    A session allocates and frees tensors of many megabytes per frame (features, records,
    SAM2's outputs). glibc raises its mmap threshold each time such a block is freed, so
    later ones come from the heap, where freed space is fragmented and never returned: the
    resident memory then creeps up frame after frame although the budgets hold. A fixed
    threshold (:data:`MMAP_THRESHOLD`) keeps large blocks in their own pages. Nothing is
    changed where ``MALLOC_MMAP_THRESHOLD_`` is set (the user's choice) or off glibc.
    Returns whether the setting was made.
    """
    global _heap_limited
    if _heap_limited or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        _heap_limited = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not Linux/glibc
        return False
    return _heap_limited


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


#: Label images are kept compressed (``engine.annotation.label_frames``): a budget of
#: bytes per pixel for them, generous for masks (typically well under 0.02).
COMPRESSED_LABEL_BYTES = 0.05
#: Decoded ``(H, W)`` int32 label frames alive at once: the kept ones and the working
#: copies of a write (old, new, the stroke's or the composition's).
DECODED_LABEL_FRAMES = 8
#: Float32 copies of one frame while it is normalised for SAM2.
NORMALISING_COPIES = 4


def frame_bytes(frame_shape: tuple[int, int], channels: int = 1) -> int:
    """Working memory of one frame: its decoded label frames (int32) and the float32
    copies made while it is normalised."""
    height, width = (int(s) for s in frame_shape)
    labels = DECODED_LABEL_FRAMES * height * width * 4
    normalising = NORMALISING_COPIES * height * width * max(int(channels), 1) * 4
    return labels + normalising


def stack_bytes(num_frames: int, frame_shape: tuple[int, int], channels: int = 1) -> int:
    """Bytes a session over the stack needs besides the model and its bounded caches: the
    compressed label images of every frame and one frame's working memory
    (:func:`frame_bytes`)."""
    height, width = (int(s) for s in frame_shape)
    labels = int(COMPRESSED_LABEL_BYTES * int(num_frames) * height * width)
    return labels + frame_bytes(frame_shape, channels)


def _size(nbytes: float) -> str:
    return f"{nbytes / _GB:.1f} GB" if nbytes >= 0.1 * _GB else f"{nbytes / 1e6:.0f} MB"


def check_stack_fits(
    num_frames: int,
    frame_shape: tuple[int, int],
    channels: int = 1,
    available: int | None = None,
) -> None:
    """Refuse a stack whose session cannot fit in the free memory, saying what would
    (:func:`stack_bytes`: the caches have budgets of their own).

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
    per_frame = COMPRESSED_LABEL_BYTES * height * width
    fit_frames = int((usable - frame_bytes(frame_shape, channels)) // per_frame)
    per_pixel = (
        COMPRESSED_LABEL_BYTES * num_frames
        + DECODED_LABEL_FRAMES * 4
        + NORMALISING_COPIES * max(channels, 1) * 4
    )
    side = int((usable / per_pixel) ** 0.5)
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
