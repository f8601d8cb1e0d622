"""The one place that runs plugin work off the main thread (wraps napari's ``thread_worker``).

Jobs are generator functions: each ``yield`` reports progress to the main thread (through
``on_yield``) and is the point where a cancel takes effect. Errors become napari
notifications: a :class:`SamLoraError` shows its message (it already says what to fix),
anything else shows its type and message and logs the traceback. Nothing is printed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error
from superqt.utils import GeneratorWorker

from napari_sam_lora.engine.core.errors import SamLoraError

__all__ = ["Job", "describe_error", "notify_error", "start_job"]

logger = logging.getLogger(__name__)

FINISHED = "finished"
CANCELLED = "cancelled"
FAILED = "failed"


def describe_error(exc: BaseException) -> str:
    """The message shown to users: a SamLoraError's own text, else ``Type: message``."""
    if isinstance(exc, SamLoraError):
        return str(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def notify_error(exc_or_message: BaseException | str) -> None:
    """Show an error as a napari notification (no dialog, no traceback for our errors).

    Parameters
    ----------
    exc_or_message : Exception or str
        Unexpected exceptions (not :class:`SamLoraError`) also get their traceback logged.
    """
    if isinstance(exc_or_message, BaseException):
        exc = exc_or_message
        if not isinstance(exc, SamLoraError):
            logger.error(
                "unexpected error in napari-sam-lora", exc_info=(type(exc), exc, exc.__traceback__)
            )
        show_error(describe_error(exc))
    else:
        show_error(str(exc_or_message))


class _Relayed(Exception):
    """Carries an exception that must not reach superqt as itself."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class Job:
    """A running generator job; created by :func:`start_job`.

    Attributes
    ----------
    state : str or None
        ``None`` while running, then ``"finished"``, ``"cancelled"`` or ``"failed"``.
    error : Exception or None
        The exception that ended a failed job.
    """

    def __init__(self) -> None:
        self.state: str | None = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()
        self._inner: Generator | None = None
        self._when_done: list[Callable[[str], Any]] = []
        self.worker: Any = None

    def when_done(self, callback: Callable[[str], Any]) -> None:
        """Call ``callback(state)`` on the main thread once the job has ended (at once if
        it has): e.g. release what the job still uses after its dock closed."""
        if self.state is not None:
            callback(self.state)
        else:
            self._when_done.append(callback)

    @property
    def is_running(self) -> bool:
        """Whether the job has not ended yet."""
        return self.state is None

    @property
    def cancel_requested(self) -> bool:
        """Whether :meth:`cancel` was called (or napari asked the worker to quit)."""
        return self._cancel.is_set() or bool(
            self.worker is not None and self.worker.abort_requested
        )

    def cancel(self) -> None:
        """Stop at the next ``yield``; values yielded after this are dropped, not delivered."""
        self._cancel.set()

    def _close_inner(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            try:
                inner.close()
            except Exception as exc:  # cleanup must not mask the job's own outcome
                logger.warning("error while closing a cancelled job: %r", exc)


def start_job(
    generator_fn: Callable[..., Generator],
    *args: Any,
    on_yield: Callable[[Any], None] | None = None,
    on_done: Callable[[str], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    progress_total: int | None = None,
    progress_desc: str = "",
) -> Job:
    """Run ``generator_fn(*args)`` on a worker thread.

    Parameters
    ----------
    generator_fn : callable
        A generator function. Create heavy objects (models, sessions) inside it, so they are
        built on the worker thread.
    *args
        Passed to ``generator_fn``.
    on_yield : callable, optional
        Called on the main thread with each yielded value, unless the job was cancelled.
    on_done : callable, optional
        Called on the main thread once, when the job ends, with ``"finished"``,
        ``"cancelled"`` or ``"failed"`` (after ``on_error``).
    on_error : callable, optional
        Called on the main thread with the exception, after it was shown with
        :func:`notify_error`.
    progress_total : int, optional
        Number of yields expected: shows a progress bar in napari's activity dock.
    progress_desc : str
        Description of that progress bar.

    Returns
    -------
    Job
    """
    job = Job()

    def _guarded(*a: Any) -> Generator:
        inner = generator_fn(*a)
        job._inner = inner
        try:
            for value in inner:
                if job._cancel.is_set():
                    return
                yield value
                if job._cancel.is_set():
                    return
        except RuntimeError as exc:
            # superqt reads a RuntimeError escaping a worker as "worker deleted" and never
            # emits `finished`; torch raises RuntimeError for real failures (OOM, dtypes).
            raise _Relayed(exc) from exc
        finally:
            job._inner = None
            inner.close()

    progress: dict[str, Any] | bool = False
    if progress_total is not None:
        progress = {"total": int(progress_total), "desc": progress_desc or "napari-sam-lora"}
    # superqt's GeneratorWorker, not napari's: napari's also relays errors to its own
    # notification manager (with a traceback), and we report them ourselves.
    worker = thread_worker(
        _guarded,
        progress=progress,
        worker_class=GeneratorWorker,
        ignore_errors=True,
        start_thread=False,
    )(*args)
    job.worker = worker

    def _yielded(value: Any) -> None:
        if job.state is None and not job.cancel_requested and on_yield is not None:
            on_yield(value)

    def _errored(exc: BaseException) -> None:
        exc = exc.original if isinstance(exc, _Relayed) else exc
        job.error = exc
        notify_error(exc)
        if on_error is not None:
            on_error(exc)

    def _finished() -> None:
        if job.state is not None:
            return
        if job._inner is not None:  # aborted by napari (worker.quit): close it here
            job._close_inner()
        if job.error is not None:
            job.state = FAILED
        elif job.cancel_requested:
            job.state = CANCELLED
        else:
            job.state = FINISHED
        if on_done is not None:
            on_done(job.state)
        callbacks, job._when_done = job._when_done, []
        for callback in callbacks:
            callback(job.state)

    def _warned(args: tuple) -> None:
        message, category = args[0], args[1]
        logger.warning("%s: %s", getattr(category, "__name__", category), message)

    worker.yielded.connect(_yielded)
    worker.warned.connect(_warned)
    worker.errored.connect(_errored)
    worker.finished.connect(_finished)
    worker.start()
    return job
