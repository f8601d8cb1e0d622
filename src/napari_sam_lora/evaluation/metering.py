"""Metering for the benchmark runs: seconds per phase and peak memory."""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PHASES = ("encode", "track", "train", "propose")


class PhaseTimer:
    """Seconds per phase; image-encoder time is moved out of the phase it happened in.

    Parameters
    ----------
    device : torch.device, optional
        On CUDA, the clock waits for queued kernels.
    encoder_seconds : callable, optional
        Returns the image encoder's running total of seconds (``Session.encoder_seconds``);
        what it grows by inside a phase is counted as ``encode`` instead.
    """

    def __init__(
        self, device: Any = None, encoder_seconds: Callable[[], float] | None = None
    ) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._cuda = getattr(device, "type", None) == "cuda"
        self._encoder_seconds = encoder_seconds or (lambda: 0.0)

    def _now(self) -> float:
        if self._cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the block's wall time (minus encoder time inside it) to ``name``."""
        start, encoder = self._now(), self._encoder_seconds()
        try:
            yield
        finally:
            inner = self._encoder_seconds() - encoder
            self.seconds["encode"] += inner
            self.seconds[name] += self._now() - start - inner


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class PeakMemory:
    """Peak resident memory of the process while the block runs (sampled every 20 ms).

    Where ``/proc`` is missing, falls back to ``ru_maxrss`` (the peak since the process
    started). On CUDA, ``gpu_mb`` is torch's peak allocated memory.
    """

    def __init__(self, device: Any = None) -> None:
        self.peak_mb = 0.0
        self.gpu_mb: float | None = None
        self._cuda = getattr(device, "type", None) == "cuda"
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            rss = _rss_bytes()
            if rss is not None:
                self.peak_mb = max(self.peak_mb, rss / 2**20)

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Sample memory while the block runs."""
        import torch

        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        self._stop.clear()
        rss = _rss_bytes()
        if rss is None:  # no /proc: the process-wide peak is the best we have
            scale = 1 if sys.platform == "darwin" else 1024
            self.peak_mb = max(
                self.peak_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
            )
        else:
            self.peak_mb = max(self.peak_mb, rss / 2**20)
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()
            rss = _rss_bytes()
            if rss is not None:
                self.peak_mb = max(self.peak_mb, rss / 2**20)
            if self._cuda:
                peak = torch.cuda.max_memory_allocated() / 2**20
                self.gpu_mb = max(self.gpu_mb or 0.0, peak)
