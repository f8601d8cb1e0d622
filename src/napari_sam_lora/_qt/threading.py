"""The one place that runs plugin work off the main thread (wraps napari's ``thread_worker``).

Jobs are generator functions: each ``yield`` reports progress to the main thread (through
``on_yield``) and is the point where a cancel takes effect. Errors become napari
notifications: a :class:`SamLoraError` shows its message (it already says what to fix),
anything else shows its type and message and logs the traceback. Nothing is printed.

Workers never emit to what is gone: a running job (and so its worker and the worker's
signals) is kept alive until it has ended; the callbacks connected to its signals do nothing
once their job ended, and an error in one (e.g. a deleted widget) is logged, not raised into
Qt. A worker whose signals' Qt object is deleted (the process is exiting) emits nothing
instead of raising in its thread (which aborts the process); at exit every running job is
cancelled and the workers get a few seconds to end (:func:`wait_for_jobs`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QThreadPool
from superqt.utils import GeneratorWorker

from napari_sam_lora.engine.core.errors import SamLoraError

__all__ = ["Job", "describe_error", "notify_error", "running_jobs", "start_job", "wait_for_jobs"]

logger = logging.getLogger(__name__)

FINISHED = "finished"
CANCELLED = "cancelled"
FAILED = "failed"

#: Seconds the workers get to end when the process exits.
EXIT_WAIT_S = 10.0

#: Jobs that have not ended: they keep their worker (and its signals) alive until then.
_RUNNING: set[Job] = set()


class _SilentSignal:
    """What a worker emits to once its signals' Qt object is deleted: nothing."""

    def emit(self, *_: Any) -> None:
        pass

    def connect(self, *_: Any) -> None:
        pass

    def disconnect(self, *_: Any) -> None:
        pass


_SILENT = _SilentSignal()


class _Worker(GeneratorWorker):
    """superqt's GeneratorWorker whose signals fall silent once their Qt object is deleted.

    superqt emits through ``worker.<signal>``; when the process exits while the worker runs,
    Qt deletes the signals object and that emit raises ``RuntimeError: wrapped C/C++ object
    ... has been deleted`` in the worker thread, which aborts the process.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except RuntimeError:  # the signals' C++ object is gone: nobody is listening
            return _SILENT


def running_jobs() -> list[Job]:
    """The jobs started by :func:`start_job` that have not ended (main-thread view)."""
    return [job for job in list(_RUNNING) if job.is_running]


def wait_for_jobs(timeout_s: float = EXIT_WAIT_S) -> bool:
    """Cancel every running job and wait up to ``timeout_s`` for the worker threads to end.

    Blocks the calling thread (no events are processed: the jobs' results are dropped).
    Run at exit, so no worker is still running, and emitting, while Qt and Python tear
    down. Returns whether every worker ended in time.
    """
    jobs = list(_RUNNING)
    for job in jobs:
        job.cancel()
    if not jobs:
        return True
    try:
        return bool(QThreadPool.globalInstance().waitForDone(int(timeout_s * 1000)))
    except RuntimeError:  # the pool is gone already
        return True


def _at_exit() -> None:
    if _RUNNING and not wait_for_jobs():
        logger.warning("napari-sam-lora: a worker was still running at exit")


# atexit runs the last registered first: this one (Qt was imported before) runs before
# Qt's and Python's teardown
atexit.register(_at_exit)


def _guard(job: Job, callback: Callable[..., Any], what: str) -> Callable[..., Any]:
    """``callback`` for a Qt signal of ``job``'s worker: an exception is never raised into
    Qt (PyQt6 may abort on it), e.g. a dock widget deleted under a late callback; the
    job's first such error is shown (:func:`notify_error`), every one logged."""

    def guarded(*args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:
            if job._callback_failed:
                logger.error("napari-sam-lora: error in a job's %s callback: %r", what, exc)
                return
            job._callback_failed = True
            with contextlib.suppress(Exception):  # no notification manager any more
                notify_error(exc)

    return guarded


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
        self._callback_failed = False
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
        worker_class=_Worker,
        ignore_errors=True,
        start_thread=False,
    )(*args)
    job.worker = worker

    def _yielded(value: Any) -> None:
        if job.state is None and not job.cancel_requested and on_yield is not None:
            on_yield(value)

    def _errored(exc: BaseException) -> None:
        if job.state is not None:
            return
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
        _RUNNING.discard(job)  # the worker emits nothing more that anyone needs
        if on_done is not None:
            _guard(job, on_done, "done")(job.state)
        callbacks, job._when_done = job._when_done, []
        for callback in callbacks:
            _guard(job, callback, "when-done")(job.state)

    def _warned(args: tuple) -> None:
        message, category = args[0], args[1]
        logger.warning("%s: %s", getattr(category, "__name__", category), message)

    worker.yielded.connect(_guard(job, _yielded, "yield"))
    worker.warned.connect(_guard(job, _warned, "warning"))
    worker.errored.connect(_guard(job, _errored, "error"))
    worker.finished.connect(_guard(job, _finished, "done"))
    _RUNNING.add(job)
    worker.start()
    return job
