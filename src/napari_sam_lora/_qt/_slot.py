"""The dock's one job slot, shared by propagation and learning, and its activity entry.

One job runs at a time. Panels start their jobs through :class:`JobSlot` and listen to it
to enable or disable their own buttons (each panel enables only its own Cancel button), so
no panel touches another one's widgets.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from napari_sam_lora._qt import threading as _threading
from napari_sam_lora.engine.core.errors import PromptError

__all__ = ["Activity", "JobSlot"]


class Activity:
    """An entry in napari's activity dock (``napari.utils.progress``), main thread only.

    Parameters
    ----------
    desc : str
        What runs, e.g. ``"SAM2 propagation"``.
    total : int, optional
        Number of steps, when known (else an indeterminate bar until :meth:`update`).
    """

    def __init__(self, desc: str, total: int | None = None) -> None:
        from napari.utils import progress

        self._bar: Any = progress(total=total or 0, desc=desc)

    def update(self, done: int, total: int | None = None, desc: str | None = None) -> None:
        """Show ``done`` of ``total`` steps."""
        bar = self._bar
        if bar is None:
            return
        if total is not None and total != bar.total:
            bar.total = int(total)
        if desc is not None:
            bar.set_description(desc)
        bar.n = int(done)
        bar.refresh()

    def close(self) -> None:
        """Remove the entry (idempotent)."""
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()


class JobSlot:
    """At most one running job for the whole dock.

    Attributes
    ----------
    job : Job or None
        The running or last job.
    kind : str
        What the running or last job does (``"propagate"``, ``"learn"``, ``"propose"``,
        ``"accept"``, ``"load"``, ...).
    """

    def __init__(self) -> None:
        self.job: _threading.Job | None = None
        self.kind = ""
        self._listeners: list[Callable[[str, bool], None]] = []

    @property
    def busy(self) -> bool:
        """Whether a job is running."""
        return self.job is not None and self.job.is_running

    def add_listener(self, callback: Callable[[str, bool], None]) -> None:
        """Call ``callback(kind, running)`` when a job starts and when it ends."""
        self._listeners.append(callback)

    def start(
        self,
        kind: str,
        fn: Callable[..., Generator],
        *args: Any,
        on_yield: Callable[[Any], None] | None = None,
        on_done: Callable[[str], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> _threading.Job:
        """Start ``fn(*args)`` on the worker (see :func:`~._qt.threading.start_job`).

        Raises
        ------
        PromptError
            Another job is running.
        """
        if self.busy:
            raise PromptError(
                f"a {self.kind} job is running: wait for it or cancel it first (one job at a time)"
            )

        def done(state: str) -> None:
            for listener in list(self._listeners):
                listener(kind, False)
            if on_done is not None:
                on_done(state)

        self.kind = kind
        for listener in list(self._listeners):
            listener(kind, True)
        self.job = _threading.start_job(
            fn, *args, on_yield=on_yield, on_done=done, on_error=on_error
        )
        return self.job

    def cancel(self) -> bool:
        """Ask the running job to stop at its next step; returns whether one was running."""
        if not self.busy:
            return False
        self.job.cancel()
        return True


class PanelJobs:
    """Mixin for the dock's panels: start a job on the dock's one slot.

    The panel has ``slot`` (the dock's :class:`JobSlot`), ``life`` (its lifecycle),
    ``_on_yield``, ``_on_done`` and ``_error``; its :meth:`_start` records the job in
    ``job`` and the lifecycle (cancelled on shutdown), and reports a refused start
    (another job running) through ``_error``.
    """

    slot: JobSlot
    life: Any
    job: Any
    _kind: str

    def _start(self, kind: str, fn: Callable[..., Generator], *args: Any) -> bool:
        self._kind = kind
        try:
            self.job = self.slot.start(
                kind,
                fn,
                *args,
                on_yield=self._on_yield,  # type: ignore[attr-defined]
                on_done=self._on_done,  # type: ignore[attr-defined]
            )
        except Exception as exc:
            self._error(exc)  # type: ignore[attr-defined]
            return False
        self.life.job = self.job
        return True
