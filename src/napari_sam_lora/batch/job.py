"""The batch job: plan and check everything on the driver, then run stacks on dask.distributed.

:func:`segment` (eager, for scripts and the command line) and :func:`segment_steps` (a
generator for workers: one :class:`BatchStep` per finished stack, cancellable at every
yield) are the same job:

1. **Check** (nothing has run yet, no cluster is started): options, the output folder
   (creatable and writable), inputs (paths and globs; the output folder and what it holds
   are never inputs), the model name, adapter files (against the model variant, then in
   full — every tensor's shape — against the model's decoder loaded here), the prompts
   (every stack's seed file found, or the points table with every bad row listed). Any
   problem raises one error.
2. **Plan**: a fingerprint per stack (input file names/sizes/mtimes, its prompts, the job
   settings). With ``resume=True`` (the default) stacks the manifest lists as done with the
   same fingerprint and an existing output are skipped; temporary outputs of an interrupted
   run are removed; everything else is (re)done.
3. **Run** on a dask client: the one given, ``scheduler=ADDRESS``, dask's
   ``scheduler-address`` config, or a new ``LocalCluster`` sized to the machine. A worker
   plugin loads the model once per worker and checks every adapter against the loaded
   decoder (another base model is refused here, before any stack is submitted). Each stack
   is one task; a failing stack becomes a ``"failed"`` row and the others go on.
4. **Record**: ``manifest.json`` is rewritten (atomically) after every finished stack;
   ``summary.csv`` at the end (also when cancelled or interrupted).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from napari_sam_lora import __version__
from napari_sam_lora.batch import cluster, outputs
from napari_sam_lora.batch.checks import (
    DIRECTIONS,
    check_adapter_files,
    check_adapters,
    check_names,
    check_options,
    check_output,
    expand_inputs,
)
from napari_sam_lora.batch.cluster import local_cluster_size
from napari_sam_lora.batch.memory_limits import (
    PAUSE_TIMEOUT,
    PauseWatch,
    StackSize,
    memory_refusal,
    model_bytes,
    parse_memory_limit,
    paused_message,
    stack_sizes,
)
from napari_sam_lora.batch.stack import PointRow
from napari_sam_lora.engine.core import memory
from napari_sam_lora.engine.core.errors import PromptError

__all__ = [
    "DIRECTIONS",
    "BatchResult",
    "BatchStep",
    "expand_inputs",
    "local_cluster_size",
    "segment",
    "segment_steps",
]

DEFAULT_MODEL = "sam2.1_hiera_tiny"
logger = logging.getLogger(__name__)


@dataclass
class BatchStep:
    """Progress of a batch: ``done`` of ``total`` stacks to run; the row just finished.

    The first step (``done == 0``) carries ``message`` (the dashboard address, how many
    stacks are skipped) and no row. While stacks run, a step follows every frame a worker
    tracks (``stack`` names it, ``row`` is ``None``): ``frames_done`` of ``frames_total``
    frames of the stacks submitted (a finished stack counts all its frames; a stack's total
    is its frame count until its worker reports how many frames it tracks).
    """

    done: int
    total: int
    row: dict[str, Any] | None = None
    message: str | None = None
    dashboard: str | None = None
    frames_done: int = 0
    frames_total: int = 0
    stack: str | None = None


@dataclass
class BatchResult:
    """A finished (or cancelled) batch: one row per stack, and the files written.

    Attributes
    ----------
    rows : list of dict
        Summary rows in input order (``status``: ``done``, ``skipped``, ``failed`` or
        ``cancelled``); columns as in :data:`~napari_sam_lora.batch.outputs.SUMMARY_COLUMNS`.
    output_dir, summary, manifest : Path
    dashboard : str or None
        The dask dashboard address, when a cluster was used.
    """

    rows: list[dict[str, Any]]
    output_dir: Path
    summary: Path
    manifest: Path
    dashboard: str | None = None

    def with_status(self, status: str) -> list[dict[str, Any]]:
        """Rows with this status."""
        return [r for r in self.rows if r.get("status") == status]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Rows of stacks that failed."""
        return self.with_status("failed")

    @property
    def ok(self) -> bool:
        """Whether every stack is done or skipped (up to date)."""
        return all(r.get("status") in ("done", "skipped") for r in self.rows)


@dataclass
class _Plan:
    tasks: list[Any]
    skipped: list[dict[str, Any]]
    order: list[str]
    job: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, StackSize | None] = field(default_factory=dict)
    model_bytes: int = 0
    model: str = DEFAULT_MODEL


def _geometry(sizes: dict[str, StackSize | None]) -> dict[str, Any]:
    return {n: None if z is None else (z.frames, z.shape) for n, z in sizes.items()}


def _absolute(path: str | os.PathLike[str]) -> str:
    """``path`` (or a pattern) absolute from this process's folder, ``~`` expanded: workers
    started in another folder find it."""
    return str(Path(os.path.expanduser(os.fspath(path))).absolute())


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _plan(
    inputs: Sequence[str | os.PathLike[str]],
    output_dir: Path,
    *,
    seeds: str | os.PathLike[str] | None,
    points: str | os.PathLike[str] | None,
    model: str,
    image_size: int | None,
    adapters: Sequence[str | os.PathLike[str]],
    direction: str,
    start: str | int,
    output_format: str,
    axis: str,
    resume: bool,
) -> tuple[_Plan, tuple[str, ...], int | None]:
    from napari_sam_lora.batch.prompts import match_seeds, read_points_table
    from napari_sam_lora.batch.worker import StackTask
    from napari_sam_lora.engine.tracking.models import parse_model

    size = check_options(direction, start, output_format, axis, image_size)
    check_output(output_dir)
    paths = expand_inputs(inputs, exclude=output_dir)
    names = check_names(paths)
    spec = parse_model(model)
    if spec.path is not None:  # a checkpoint file: the workers get its absolute path
        model = str(Path(spec.path).expanduser().resolve())
    adapter_paths = check_adapters(adapters, model)
    if (seeds is None) == (points is None):
        raise PromptError("give the prompts: seed labels (--seeds) or a points table (--points)")
    seed_files: dict[str, Path] = {}
    clicks: dict[str, list[PointRow]] = {}
    sizes = stack_sizes(paths, names)
    if seeds is not None:
        seed_files = {n: p.resolve() for n, p in match_seeds(_absolute(seeds), names).items()}
    else:
        clicks = read_points_table(_absolute(points), _geometry(sizes))
    job = {
        "model": str(model),
        "variant": spec.variant.name,
        "untrained": spec.untrained,
        "image_size": size,
        "adapters": {p: outputs.fingerprint_bytes(f"{p}.safetensors") for p in adapter_paths},
        "direction": direction,
        "start": str(start),
        "format": output_format,
        "axis": axis,
        "version": __version__,
    }
    manifest = outputs.read_manifest(output_dir) if resume else {"job": {}, "stacks": {}}
    attrs = {"model": spec.label, "adapters": adapter_paths, "direction": direction}
    tasks, skipped = [], []
    for name, path in zip(names, paths, strict=True):
        rows = tuple(clicks.get(name, ()))
        prompt_fp = (
            outputs.fingerprint_path(seed_files[name]) if name in seed_files else _digest(rows)
        )
        fingerprint = _digest(job, outputs.fingerprint_path(path), prompt_fp)
        final = outputs.output_path(output_dir, name, output_format)
        entry = manifest["stacks"].get(name) or {}
        if (
            resume
            and entry.get("status") == "done"
            and entry.get("fingerprint") == fingerprint
            and final.exists()
        ):
            skipped.append({**entry, "stack": name, "status": "skipped", "error": ""})
            continue
        tasks.append(
            StackTask(
                name=name,
                path=str(path),
                output=str(final),
                fingerprint=fingerprint,
                output_format=output_format,
                seeds=str(seed_files[name]) if name in seed_files else None,
                points=rows,
                start=str(start),
                direction=direction,
                axis=axis,
                attrs=attrs,
            )
        )
    if tasks:  # before any cluster starts: one error naming the file, no worker traceback
        check_adapter_files(adapter_paths, model, size)
    plan = _Plan(
        tasks, skipped, names, job, manifest["stacks"], sizes, model_bytes(spec), str(model)
    )
    return plan, tuple(adapter_paths), size


# --------------------------------------------------------------------------- the job


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _dashboard(client: Any) -> str | None:
    """The dask dashboard address, or ``None`` where it cannot be served.

    A scheduler started in this process (a LocalCluster) serves it only with bokeh installed.
    """
    import importlib.util

    if getattr(client, "cluster", None) is not None and importlib.util.find_spec("bokeh") is None:
        return None
    try:
        return str(client.dashboard_link)
    except Exception:  # a scheduler without a dashboard service
        return None


def _failure(task: Any, exc: BaseException) -> dict[str, Any]:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    if type(exc).__name__ == "KilledWorker":
        text += " (the worker died: out of memory? raise --memory-limit or use fewer workers)"
    return {
        "stack": task.name,
        "input": task.path,
        "output": task.output,
        "status": "failed",
        "error": text,
    }


def segment_steps(
    inputs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    seeds: str | os.PathLike[str] | None = None,
    points: str | os.PathLike[str] | None = None,
    model: str = DEFAULT_MODEL,
    image_size: int | None = None,
    device: str | None = None,
    adapters: Sequence[str | os.PathLike[str]] = (),
    direction: str = "both",
    start: str | int = "middle",
    output_format: str = "ome-zarr",
    axis: str = "t",
    resume: bool = True,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    memory_limit: str | float | None = None,
    torch_threads: int | None = None,
    env: dict[str, str] | None = None,
    dashboard_address: str | None = None,
) -> Generator[BatchStep, None, BatchResult]:
    """The batch job as a generator: a :class:`BatchStep` per finished stack and per frame.

    A stack that a worker cannot hold (its pixels, label images and the model against
    ``memory_limit``, the workers' own limit, or this machine's free memory for a new
    LocalCluster) is a ``"failed"`` row saying what would fit, never submitted; when every
    worker stays paused at dask's memory threshold for :data:`PAUSE_TIMEOUT` seconds, the
    stacks not finished fail with a message naming the memory limit. Closing the generator
    cancels the stacks not yet finished (their outputs are never half-written; a later run
    with ``resume=True`` does only them). Parameters are those of
    :func:`segment`.
    """
    out = Path(output_dir).expanduser().resolve()
    limit = parse_memory_limit(memory_limit)
    cluster = {
        "client": client,
        "scheduler": scheduler,
        "workers": workers,
        "memory_limit": memory_limit,
        "torch_threads": torch_threads,
        "env": env,
        "dashboard_address": dashboard_address,
    }
    plan, adapter_paths, size = _plan(
        inputs,
        out,
        seeds=seeds,
        points=points,
        model=model,
        image_size=image_size,
        adapters=adapters,
        direction=direction,
        start=start,
        output_format=output_format,
        axis=axis,
        resume=resume,
    )
    state = _State(stacks=dict(plan.manifest), rows={r["stack"]: r for r in plan.skipped})
    note = f"{len(plan.skipped)} stack(s) up to date, skipped; " if plan.skipped else ""
    if not plan.tasks:
        yield BatchStep(0, 0, message=f"{note}nothing to do")
        return _record(plan, state, out)
    total = len(plan.tasks)
    # before any cluster starts: a stack no worker can hold is refused, nothing allocated
    source = "--memory-limit"
    if limit is None and client is None and not _scheduler_address(scheduler):
        limit, source = memory.available_bytes(), "the memory free on this machine"
    refused = _refuse(plan, state, limit, source)
    try:
        for done, row in enumerate(refused, 1):
            yield BatchStep(done, total, row, stack=row["stack"])
        if plan.tasks:
            yield from _run(
                plan,
                state,
                adapter_paths,
                size,
                out,
                note,
                len(refused),
                total,
                model=plan.model,
                device=device,
                **cluster,
            )
    finally:  # finished, cancelled (generator closed) or interrupted: record what is done
        if state.submitted:
            for task in plan.tasks:
                state.rows.setdefault(task.name, _cancelled(task))
            result = _record(plan, state, out)
    return result


def _scheduler_address(scheduler: str | None) -> str | None:
    import dask

    return scheduler or dask.config.get("scheduler-address", None)


def _refuse(plan: _Plan, state: _State, limit: float | None, source: str) -> list[dict[str, Any]]:
    """Take the stacks a worker with ``limit`` bytes cannot hold out of the plan: each one
    becomes a ``"failed"`` row (see :func:`memory_refusal`) and is never submitted."""
    keep, rows = [], []
    for task in plan.tasks:
        why = memory_refusal(task.name, plan.sizes.get(task.name), limit, source, plan.model_bytes)
        if why is None:
            keep.append(task)
            continue
        row = {
            "stack": task.name,
            "input": task.path,
            "output": task.output,
            "status": "failed",
            "error": why,
        }
        _finish(plan, state, task, row)
        rows.append(row)
    plan.tasks[:] = keep
    if rows:
        state.submitted = True  # rows to record
    return rows


def _finish(plan: _Plan, state: _State, task: Any, row: dict[str, Any]) -> None:
    state.rows[task.name] = row
    entry = {k: row.get(k) for k in outputs.SUMMARY_COLUMNS if k != "stack"}
    state.stacks[task.name] = {**entry, "fingerprint": task.fingerprint, "finished": _now()}


#: Seconds between looks at the workers' status.
WATCH_INTERVAL = 1.0
#: Seconds the driver waits for a frame or a finished stack before looking again.
POLL = 0.2


def _record(plan: _Plan, state: _State, out: Path) -> BatchResult:
    """Write the manifest and the summary (rows in input order); return the result."""
    ordered = [state.rows[name] for name in plan.order if name in state.rows]
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = outputs.write_manifest(out, plan.job, state.stacks)
    summary_path = outputs.write_summary(out, ordered)
    return BatchResult(ordered, out, summary_path, manifest_path, state.dashboard)


@dataclass
class _State:
    stacks: dict[str, Any]
    rows: dict[str, dict[str, Any]]
    submitted: bool = False
    dashboard: str | None = None


def _cancelled(task: Any) -> dict[str, Any]:
    return {"stack": task.name, "input": task.path, "status": "cancelled", "error": ""}


def _run(
    plan: _Plan,
    state: _State,
    adapter_paths: tuple[str, ...],
    size: int | None,
    out: Path,
    note: str,
    done: int,
    total: int,
    *,
    model: str,
    device: str | None,
    client: Any,
    scheduler: str | None,
    workers: int | None,
    memory_limit: str | float | None,
    torch_threads: int | None,
    env: dict[str, str] | None,
    dashboard_address: str | None,
) -> Generator[BatchStep, None, None]:
    import dataclasses
    import queue

    from distributed import as_completed

    from napari_sam_lora.batch.worker import PLUGIN_NAME, ModelPlugin, run_stack

    with cluster.client(
        client,
        scheduler,
        len(plan.tasks),
        workers,
        memory_limit,
        device,
        env,
        dashboard_address,
    ) as (dask, threads):
        plugin = ModelPlugin(model, size, device, adapter_paths, torch_threads or threads)
        dask.register_plugin(plugin, name=PLUGIN_NAME)  # loads the model, checks adapters
        state.dashboard = _dashboard(dask)
        info = dask.scheduler_info()
        n_workers = len(info.get("workers", {}))
        out.mkdir(parents=True, exist_ok=True)
        outputs.remove_partials(out)
        # the workers' own memory limit (a LocalCluster's share, a remote cluster's setting)
        limits = [w.get("memory_limit") for w in info.get("workers", {}).values()]
        limits = [float(x) for x in limits if x]
        source = "--memory-limit" if memory_limit else "the workers' memory_limit"
        refused = _refuse(plan, state, min(limits) if limits else None, source)
        frames = {t.name: [0, z.frames if (z := plan.sizes.get(t.name)) else 0] for t in plan.tasks}

        def counts() -> dict[str, int]:
            return {
                "frames_done": sum(f[0] for f in frames.values()),
                "frames_total": sum(f[1] for f in frames.values()),
            }

        yield BatchStep(
            done,
            total,
            message=f"{note}{total} stack(s) on {n_workers} worker(s); dashboard: "
            + (state.dashboard or "not available (dask's dashboard needs bokeh installed)"),
            dashboard=state.dashboard,
            **counts(),
        )
        for row in refused:
            done += 1
            yield BatchStep(done, total, row, stack=row["stack"], **counts())
        if not plan.tasks:
            return
        run_id = uuid.uuid4().hex[:8]
        topic = f"napari-sam-lora-progress-{run_id}"
        events: queue.Queue = queue.Queue()
        dask.subscribe_topic(topic, lambda event: events.put(event[1]))
        state.submitted = True
        futures = {
            dask.submit(
                run_stack,
                dataclasses.replace(task, progress_topic=topic),
                key=f"napari-sam-lora-{task.name}-{run_id}",
            ): task
            for task in plan.tasks
        }
        finished_names: set[str] = set()
        watch = PauseWatch(PAUSE_TIMEOUT)
        looked = 0.0
        pending = as_completed(list(futures))
        try:
            while futures:
                finished = pending.next_batch(block=False)
                while finished:
                    future = finished.pop()
                    task = futures.pop(future)
                    try:
                        row = future.result()
                    except Exception as exc:
                        row = _failure(task, exc)
                    # the result is recorded: release it now, so a worker lost later never
                    # recomputes a finished stack
                    future.release()
                    del future
                    _finish(plan, state, task, row)
                    outputs.write_manifest(out, plan.job, state.stacks)
                    finished_names.add(task.name)
                    frames[task.name][0] = frames[task.name][1] = max(frames[task.name])
                    done += 1
                    yield BatchStep(done, total, row, stack=task.name, **counts())
                if not futures:
                    break
                latest = _frame_events(events, frames, finished_names)
                if latest is not None:
                    yield BatchStep(done, total, stack=latest, **counts())
                now = watch.clock()
                if now - looked >= WATCH_INTERVAL:
                    looked = now
                    info = dask.scheduler_info()
                    paused = watch.update(info)
                    if paused is not None:
                        why = paused_message(paused, info, source)
                        stuck = list(futures.items())
                        dask.cancel([f for f, _ in stuck])
                        futures.clear()
                        for _, task in stuck:
                            row = {**_failure(task, RuntimeError(why)), "error": why}
                            _finish(plan, state, task, row)
                            done += 1
                            yield BatchStep(done, total, row, stack=task.name, **counts())
        finally:
            with contextlib.suppress(Exception):
                dask.unsubscribe_topic(topic)
            if futures:
                dask.cancel(list(futures))


def _frame_events(events: Any, frames: dict[str, list[int]], finished: set[str]) -> str | None:
    """Apply the workers' frame events (waiting up to :data:`POLL` for the first one);
    return the stack of the latest, or ``None`` when none came."""
    import queue

    latest = None
    try:
        message = events.get(timeout=POLL)
        while True:
            try:
                name, done, count = message
                done, count = int(done), int(count)
            except (TypeError, ValueError):  # not one of ours
                name = None
            if name in frames and name not in finished:
                frames[name][:] = [done, max(count, done)]
                latest = name
            message = events.get_nowait()
    except queue.Empty:
        pass
    return latest


def _show(bar: Any, step: BatchStep) -> None:
    """Move the progress bar to ``step``: frames tracked, stacks done, the last row."""
    if step.frames_total and bar.total != step.frames_total:
        bar.total = step.frames_total
    text = f"{step.done}/{step.total} stacks"
    if step.row is not None:
        text += f"; {step.row['stack']}: {step.row.get('status')}"
    bar.set_postfix_str(text, refresh=False)
    bar.update(step.frames_done - bar.n)


def segment(
    inputs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    seeds: str | os.PathLike[str] | None = None,
    points: str | os.PathLike[str] | None = None,
    model: str = DEFAULT_MODEL,
    image_size: int | None = None,
    device: str | None = None,
    adapters: Sequence[str | os.PathLike[str]] = (),
    direction: str = "both",
    start: str | int = "middle",
    output_format: str = "ome-zarr",
    axis: str = "t",
    resume: bool = True,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    memory_limit: str | float | None = None,
    torch_threads: int | None = None,
    env: dict[str, str] | None = None,
    dashboard_address: str | None = None,
    progress: bool = False,
    log: Any = None,
) -> BatchResult:
    """Segment many stacks with SAM2 (and saved adapters) on dask.distributed.

    Parameters
    ----------
    inputs : path, glob, or a sequence of them
        Stacks: TIFF, zarr / OME-Zarr, ``.npy``, folders of frames (read lazily).
    output_dir : path
        Receives ``<stack>_labels.ome.zarr`` (or ``.tif``), ``summary.csv``, ``manifest.json``.
    seeds : path or pattern, optional
        Seed labels per stack (see :func:`~napari_sam_lora.batch.prompts.match_seeds`).
    points : path, optional
        A points table (CSV/JSON; see :mod:`napari_sam_lora.batch.prompts`). Give exactly
        one of ``seeds`` and ``points``.
    model : str
        Model name, ``untrained:<variant>`` or a checkpoint path (readable by the workers).
    image_size : int, optional
        SAM2 input size (default the model's 1024).
    device : str, optional
        Workers' device (default: a GPU per worker when there are GPUs, else CPU).
    adapters : sequence of path
        Adapter files (``Learner.save``) for adapter-assisted propagation; checked against
        the model before any stack runs.
    direction : {"both", "forward", "backward"}
        Propagation from the seeded frames.
    start : {"middle", "first", "last"} or int
        Frame a single-frame (2D) seed image is placed on.
    output_format : {"ome-zarr", "tiff"}
    axis : {"t", "z"}
        Whether the stack axis is time or depth (OME-Zarr axes metadata).
    resume : bool
        Skip stacks done with the same inputs and settings (see ``manifest.json``).
    client : distributed.Client, optional
        Use this client (its cluster is left running).
    scheduler : str, optional
        Address of a running scheduler; default dask's ``scheduler-address`` config, else a
        new ``LocalCluster`` (processes, one per core or GPU, at most one per stack).
    workers : int, optional
        Workers of the new LocalCluster.
    memory_limit : str or float, optional
        Memory per worker of the new LocalCluster (``"4GB"``); default the machine's
        memory divided among the workers.
    torch_threads : int, optional
        torch threads per worker (default: the cores divided among the workers).
    env : dict, optional
        Environment variables for the new LocalCluster's worker processes.
    dashboard_address : str, optional
        Where the new LocalCluster serves its dashboard (default ``127.0.0.1:8787``, another
        free port when taken; its scheduler and workers listen on 127.0.0.1 only). Give
        ``0.0.0.0:8787`` to serve it on every interface.
    progress : bool
        Show a progress bar (frames tracked, stacks done) on stderr.
    log : callable, optional
        ``log(message)`` for the job's messages (the dashboard address, skipped stacks).

    Returns
    -------
    BatchResult

    Raises
    ------
    ConfigError, PromptError, ModelError, AdapterFileError
        Bad options, inputs, prompts (every bad row listed), model or adapters: raised
        before any stack runs or any output is written.
    """
    steps = segment_steps(
        inputs,
        output_dir,
        seeds=seeds,
        points=points,
        model=model,
        image_size=image_size,
        device=device,
        adapters=adapters,
        direction=direction,
        start=start,
        output_format=output_format,
        axis=axis,
        resume=resume,
        client=client,
        scheduler=scheduler,
        workers=workers,
        memory_limit=memory_limit,
        torch_threads=torch_threads,
        env=env,
        dashboard_address=dashboard_address,
    )
    bar = None
    try:
        while True:
            try:
                step = next(steps)
            except StopIteration as stop:
                return stop.value
            if log is not None and step.message:
                log(step.message)
            if progress and bar is None and step.total:
                from tqdm.auto import tqdm

                bar = tqdm(total=step.frames_total or None, unit="frame", file=sys.stderr)
            if bar is not None:
                _show(bar, step)
    finally:
        steps.close()
        if bar is not None:
            bar.close()
