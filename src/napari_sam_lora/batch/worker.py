"""What runs on a dask worker: the model held by a worker plugin, and one task per stack.

:class:`ModelPlugin` loads the model once per worker process (in its ``setup``, off the
worker's event loop), sets torch's thread count, picks the worker's GPU, and checks every
adapter file against the loaded decoder (a full trial load), so an adapter from another
base model is refused when the plugin is registered — before any stack is submitted.

:func:`run_stack` reads one stack lazily, turns its seeds into prompts, segments it with
:func:`~napari_sam_lora.batch.stack.segment_stack` and writes the labels atomically. It
never raises: a failure becomes a ``"failed"`` row with the error, so one bad stack never
stops the batch.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from distributed import WorkerPlugin

from napari_sam_lora.batch.stack import PointRow

__all__ = [
    "PLUGIN_NAME",
    "ModelPlugin",
    "StackTask",
    "frame_reporter",
    "peak_memory_mb",
    "relax_malloc_trim",
    "run_stack",
]

PLUGIN_NAME = "napari-sam-lora-model"
logger = logging.getLogger(__name__)

#: One loaded model per worker process, kept across jobs with the same settings.
_CACHE: dict[tuple, Any] = {}

#: glibc's ``mallopt`` parameters, and the largest thresholds its dynamic rule reaches on
#: 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``; trim = 2 × mmap), i.e. where a plain process that
#: allocates torch tensors ends up.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
_MALLOC_RELAXED = False


def relax_malloc_trim() -> bool:
    """Undo dask's ``MALLOC_TRIM_THRESHOLD_`` in this worker process (glibc only).

    dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``
    (``distributed.nanny.pre-spawn-environ``). Setting it switches off glibc's dynamic mmap
    threshold, so every allocation over 128 KiB — most of SAM2's activations — is a fresh
    ``mmap`` and page-faults in, and every free returns it to the system: measured 12×
    the page faults and 1.9× the time per stack (hiera-tiny, CPU). This sets the mmap and
    trim thresholds to where glibc's dynamic rule would put them. It does nothing when the
    variable is not set (clusters started by :func:`~napari_sam_lora.batch.segment` unset
    it), when ``MALLOC_MMAP_THRESHOLD_`` is set too (someone tuned malloc on purpose), or
    off glibc. Idempotent (``mallopt`` is per process).

    Returns
    -------
    bool
        Whether the thresholds were changed (now or by an earlier call).
    """
    global _MALLOC_RELAXED
    if _MALLOC_RELAXED:
        return True
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    _MALLOC_RELAXED = ok
    if ok:
        logger.info("MALLOC_TRIM_THRESHOLD_ is set on this worker; malloc thresholds relaxed")
    return ok


@dataclass(frozen=True)
class StackTask:
    """Everything a worker needs for one stack (small and picklable)."""

    name: str
    path: str
    output: str
    fingerprint: str
    output_format: str = "ome-zarr"
    seeds: str | None = None
    points: tuple[PointRow, ...] = ()
    start: str = "middle"
    direction: str = "both"
    axis: str = "t"
    attrs: dict[str, Any] = field(default_factory=dict)
    #: dask event topic the worker posts ``[name, frames done, frames total]`` to per frame.
    progress_topic: str | None = None


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def worker_device(device: str | None, worker_name: Any) -> str | None:
    """The device for one worker: with several GPUs, worker ``i`` gets ``cuda:i % n``.

    An explicit index (``cuda:1``) or a non-CUDA device is kept. On clusters whose job
    system sets ``CUDA_VISIBLE_DEVICES`` per worker, each worker sees one GPU and gets it.
    """
    wanted = (device or "auto").lower()
    if wanted not in ("auto", "cuda"):
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count <= 1:
        return device
    try:
        index = int(str(worker_name).rsplit("-", 1)[-1])
    except ValueError:
        index = abs(hash(str(worker_name)))
    return f"cuda:{index % count}"


class ModelPlugin(WorkerPlugin):
    """A dask ``WorkerPlugin`` holding the loaded model (and checked adapters) per worker.

    Parameters
    ----------
    model : str
        Model name or checkpoint path (on the workers' file system).
    image_size : int, optional
        SAM2 input size.
    device : str, optional
        ``"auto"``/``None``, ``"cuda"``, ``"cpu"``...; several GPUs are shared round-robin.
    adapters : tuple of str
        Adapter files to check now and use for every stack.
    torch_threads : int, optional
        ``torch.set_num_threads`` on the worker (default: cores / workers on this host).
    """

    name = PLUGIN_NAME

    def __init__(
        self,
        model: str,
        image_size: int | None = None,
        device: str | None = None,
        adapters: tuple[str, ...] = (),
        torch_threads: int | None = None,
    ) -> None:
        self.model_name = model
        self.image_size = image_size
        self.device = device
        self.adapters = tuple(adapters)
        self.torch_threads = torch_threads
        self.model: Any = None
        self.memory_limit: float | None = None

    async def setup(self, worker: Any) -> None:
        """Load the model and check the adapters, on a thread (the event loop stays free).

        The thread is a new one that ends when loading is done, not the event loop's
        executor: torch's first parallel op gives the thread that runs it an OpenMP team of
        its own, which a long-lived loader thread would keep. libgomp counts the threads of
        every team, and with more than there are cores it spins only 100 times before it
        sleeps between parallel regions (instead of 300,000), which slowed the task thread
        that runs the stacks (many small ops) to about 1.4× the direct loop's wall time.
        """
        self.memory_limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
        loop = asyncio.get_running_loop()
        loader = ThreadPoolExecutor(1, thread_name_prefix="napari-sam-lora-load")
        try:
            await loop.run_in_executor(loader, self._load, worker.name)
        finally:
            loader.shutdown(wait=True)  # the thread (and its OpenMP team) ends here

    def teardown(self, worker: Any) -> None:
        """Drop this plugin's reference (the per-process cache keeps the model for reuse)."""
        self.model = None

    def _load(self, worker_name: Any) -> None:
        import torch

        from napari_sam_lora.engine.tracking.predictor import load_model

        relax_malloc_trim()  # before the model's tensors are allocated
        if self.torch_threads:
            torch.set_num_threads(int(self.torch_threads))
        device = worker_device(self.device, worker_name)
        key = (self.model_name, self.image_size, device)
        if key not in _CACHE:
            _CACHE.clear()
            gc.collect()
            _CACHE[key] = load_model(self.model_name, device, self.image_size)
        self.model = _CACHE[key]
        for path in self.adapters:
            check_adapter(path, self.model)

    @property
    def feature_cache_mb(self) -> float:
        """Image-feature budget per stack: a quarter of the worker's memory, at most 2 GiB."""
        if not self.memory_limit:
            return 2048.0
        return float(min(2048.0, self.memory_limit / 2**20 / 4))


def check_adapter(path: str, model: Any) -> None:
    """Validate an adapter file against ``model``'s decoder, as loading would (no injection).

    Raises
    ------
    AdapterFileError
        Damaged file, another base model (decoder checksum), tensors that do not fit.
    """
    from napari_sam_lora.engine.learning.adapter_files import adapter_paths, check_adapters
    from napari_sam_lora.engine.learning.adapters import AdapterFileError

    try:
        check_adapters(path, model.predictor.sam_mask_decoder)
    except AdapterFileError as exc:  # name the file: the engine's message may not
        st_path = adapter_paths(path)[0]
        if str(st_path.with_suffix("")) in str(exc):
            raise
        raise AdapterFileError(f"{st_path}: {exc}") from exc


def _plugin() -> ModelPlugin:
    from distributed import get_worker

    plugin = get_worker().plugins.get(PLUGIN_NAME)
    if plugin is None or plugin.model is None:
        raise RuntimeError("the napari-sam-lora model plugin is not set up on this worker")
    return plugin


def stack_prompts(task: StackTask, stack: Any) -> list[Any]:
    """The task's prompts for ``stack``: its seed labels file or its clicks."""
    from napari_sam_lora.batch.stack import point_prompts, seed_prompts
    from napari_sam_lora.data.readers import read_labels
    from napari_sam_lora.engine.tracking.frames import stack_geometry

    num_frames, frame_shape, _ = stack_geometry(stack)
    if task.seeds is not None:
        return seed_prompts(read_labels(task.seeds), num_frames, frame_shape, task.start)
    return point_prompts(task.points)


def process_stack(
    task: StackTask,
    model: Any,
    adapters: tuple[str, ...],
    cache_mb: float,
    progress: Any = None,
) -> dict:
    """Segment and write one stack; return its summary row (``"failed"`` with the error).

    ``progress(done, total)`` is called after every tracked frame.
    """
    from napari_sam_lora.batch.outputs import write_labels
    from napari_sam_lora.batch.stack import segment_stack
    from napari_sam_lora.data.readers import open_stack

    start = time.perf_counter()
    row: dict[str, Any] = {
        "stack": task.name,
        "input": task.path,
        "output": task.output,
        "fingerprint": task.fingerprint,
    }
    try:
        stack = open_stack(task.path)
        prompts = stack_prompts(task, stack)
        result = segment_stack(
            stack,
            prompts,
            model,
            adapters=adapters,
            direction=task.direction,
            feature_cache_mb=cache_mb,
            progress=progress,
        )
        attrs = {**task.attrs, "objects": result.object_ids}
        write_labels(result.labels, task.output, task.output_format, axis=task.axis, attrs=attrs)
        row.update(
            status="done",
            objects=len(result.object_ids),
            frames=int(result.labels.shape[0]),
            adapter_frames=len(result.adapter_frames),
            error="",
        )
    except Exception as exc:  # reported in the summary; the batch goes on
        logger.warning("stack %s failed: %s", task.name, exc)
        logger.debug("stack %s failed", task.name, exc_info=True)
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}".replace("\n", " "))
    finally:
        gc.collect()
    row["seconds"] = round(time.perf_counter() - start, 3)
    row["peak_mb"] = round(peak_memory_mb(), 1)
    return row


def run_stack(task: StackTask) -> dict:
    """The dask task: :func:`process_stack` with the worker plugin's model."""
    try:
        plugin = _plugin()
    except Exception as exc:
        return {"stack": task.name, "input": task.path, "status": "failed", "error": str(exc)}
    if plugin.torch_threads:  # per task thread: OpenMP/MKL settings are per thread
        import torch

        torch.set_num_threads(int(plugin.torch_threads))
    progress = frame_reporter(task)
    row = process_stack(task, plugin.model, plugin.adapters, plugin.feature_cache_mb, progress)
    row["worker"] = str(os.getpid())
    return row


def frame_reporter(task: StackTask) -> Any:
    """``progress(done, total)`` posting ``[name, done, total]`` to the task's dask topic.

    ``None`` when the task has no topic or runs outside a worker. Posting never fails the
    stack: progress is a courtesy, the row is the result.
    """
    if not task.progress_topic:
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:  # not on a dask worker
        return None
    topic = task.progress_topic

    def progress(done: int, total: int) -> None:
        try:
            worker.log_event(topic, [task.name, int(done), int(total)])
        except Exception:  # a closing worker: the stack goes on
            logger.debug("progress of %s not posted", task.name, exc_info=True)

    return progress
