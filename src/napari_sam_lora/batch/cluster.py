"""The dask cluster of a batch job: sized to this machine, spawned so its workers run as
fast as the direct loop and ignore Ctrl-C, shut down quietly; or a client given or found."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

__all__ = [
    "CONNECT_TIMEOUT",
    "DASHBOARD_ADDRESS",
    "client",
    "cores",
    "gpus",
    "local_cluster_size",
    "quiet_logs",
    "sigint_ignored",
]

#: Seconds to wait for a ``--scheduler`` (or dask's ``scheduler-address``) to answer.
CONNECT_TIMEOUT = 5.0
#: Where a LocalCluster started here serves its dashboard: this machine only (another free
#: port when 8787 is taken). ``":8787"`` or ``"0.0.0.0:8787"`` serve it on every interface.
DASHBOARD_ADDRESS = "127.0.0.1:8787"


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def gpus() -> int:
    """CUDA devices torch sees (0 without torch or CUDA)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def local_cluster_size(
    n_stacks: int, workers: int | None = None, device: str | None = None
) -> tuple[int, int]:
    """``(n_workers, torch threads per worker)`` for a LocalCluster on this machine.

    One worker per GPU when there are GPUs (and the device is not ``cpu``), otherwise one
    per core; never more workers than stacks; the cores are shared among the workers so
    torch does not oversubscribe them.
    """
    n_cores = cores()
    n_gpus = 0 if (device or "auto").lower().startswith(("cpu", "mps")) else gpus()
    n = workers or (n_gpus or n_cores)
    n = max(1, min(int(n), max(1, n_stacks)))
    return n, max(1, n_cores // n)


@contextmanager
def spawn_environment() -> Iterator[None]:
    """Spawn the workers of a LocalCluster without dask's ``MALLOC_TRIM_THRESHOLD_``.

    dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``
    (``distributed.nanny.pre-spawn-environ``) and leaves it in *this* process's environment
    too, where later clusters inherit it. glibc then maps (and page-faults in) every
    allocation over 128 KiB: 12x the page faults and 1.9x the time per stack on CPU. Spawned
    without it, workers allocate as the direct loop does. The nanny reads its environment
    when created; a worker it restarts later inherits this process's environment again, and
    :func:`~napari_sam_lora.batch.worker.relax_malloc_trim` repairs that at setup. Set
    ``MALLOC_MMAP_THRESHOLD_`` as well to keep a ``MALLOC_TRIM_THRESHOLD_`` of your own.
    """
    import dask

    key = "MALLOC_TRIM_THRESHOLD_"
    saved = None if "MALLOC_MMAP_THRESHOLD_" in os.environ else os.environ.pop(key, None)
    try:
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{key}": None}):
            yield
    finally:
        if saved is not None:
            os.environ[key] = saved


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C (SIGINT) in this process for the block (main thread only).

    Around spawning a LocalCluster's worker processes: a process started with SIGINT
    ignored keeps it ignored (Python installs its ``KeyboardInterrupt`` handler only where
    SIGINT has its default action), so a Ctrl-C in the terminal interrupts the driver
    alone — which cancels the stacks and shuts the cluster down — instead of printing a
    ``KeyboardInterrupt`` traceback from every worker, killed in the middle of a stack
    (and leaking its semaphores). Around the shutdown: a second Ctrl-C does not cut it
    short.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def quiet_logs(name: str = "distributed") -> Iterator[None]:
    """Silence dask's loggers for the block (a shutdown after an interruption)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def connect(address: str, timeout: float | None = None, from_config: bool = False) -> Any:
    """A ``distributed.Client`` connected to the scheduler at ``address``.

    Parameters
    ----------
    address : str
        The scheduler's address (``tcp://host:8786``).
    timeout : float, optional
        Seconds to wait for it (default :data:`CONNECT_TIMEOUT`).
    from_config : bool
        Whether the address came from dask's ``scheduler-address`` config (for the hint).

    Raises
    ------
    ConfigError
        Nothing answers at ``address`` within the timeout.
    """
    from distributed import Client

    from napari_sam_lora.engine.core.errors import ConfigError

    wait = CONNECT_TIMEOUT if timeout is None else float(timeout)
    try:
        with quiet_logs():  # dask logs every failed try; the error below says it once
            return Client(address, timeout=wait)
    except (OSError, TimeoutError) as exc:
        where = "unset dask's scheduler-address config" if from_config else "leave out --scheduler"
        raise ConfigError(
            f"no dask scheduler answers at {address} (waited {wait:g} s): start one with "
            f"`dask scheduler` or {where}"
        ) from exc


@contextmanager
def client(
    client: Any,
    scheduler: str | None,
    n_tasks: int,
    workers: int | None,
    memory_limit: str | float | None,
    device: str | None,
    env: dict[str, str] | None,
    dashboard_address: str | None = None,
) -> Iterator[tuple[Any, int | None]]:
    """A dask client (and torch threads per worker, for clusters started here).

    The client given; else a connection to ``scheduler`` (or dask's ``scheduler-address``
    config), refused within :data:`CONNECT_TIMEOUT` seconds when nothing answers there;
    else a new ``LocalCluster`` whose scheduler, workers and dashboard listen on
    127.0.0.1 only (the dashboard on ``dashboard_address``, default
    :data:`DASHBOARD_ADDRESS`).

    Raises
    ------
    ConfigError
        No scheduler answers at the address.
    """
    if client is not None:
        yield client, None
        return
    import dask
    from distributed import Client, LocalCluster

    address = scheduler or dask.config.get("scheduler-address", None)
    if address:
        own = connect(address, from_config=not scheduler)
        try:
            yield own, None
        finally:
            own.close()
        return
    n_workers, threads = local_cluster_size(n_tasks, workers, device)
    with spawn_environment(), sigint_ignored():
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=dashboard_address or DASHBOARD_ADDRESS,
            memory_limit=memory_limit or "auto",
            silence_logs=logging.ERROR,
            # dask's nanny sets OMP/MKL threads to 1 in workers; give each worker its share
            env={
                "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads),
                "OPENBLAS_NUM_THREADS": str(threads),
                **(env or {}),
            },
        )
    own = Client(cluster)
    interrupted = False
    try:
        yield own, threads
    except BaseException:  # Ctrl-C, a cancelled job, an error: stop the cluster quietly
        interrupted = True
        raise
    finally:
        with sigint_ignored(), quiet_logs() if interrupted else nullcontext():
            own.close()
            cluster.close()
