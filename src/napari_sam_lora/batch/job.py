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

import glob
import hashlib
import json
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from napari_sam_lora import __version__
from napari_sam_lora.batch import cluster, outputs
from napari_sam_lora.batch.cluster import local_cluster_size
from napari_sam_lora.batch.stack import START_CHOICES, PointRow
from napari_sam_lora.engine.core.errors import ConfigError, PromptError, SamLoraError

__all__ = [
    "DIRECTIONS",
    "BatchResult",
    "BatchStep",
    "expand_inputs",
    "local_cluster_size",
    "segment",
    "segment_steps",
]

DIRECTIONS = ("forward", "backward", "both")
DEFAULT_MODEL = "sam2.1_hiera_tiny"
logger = logging.getLogger(__name__)


@dataclass
class BatchStep:
    """Progress of a batch: ``done`` of ``total`` stacks to run; the row just finished.

    The first step (``done == 0``) carries ``message`` (the dashboard address, how many
    stacks are skipped) and no row.
    """

    done: int
    total: int
    row: dict[str, Any] | None = None
    message: str | None = None
    dashboard: str | None = None


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


# --------------------------------------------------------------------------- checks


def _is_output(path: Path, output_dir: Path, searched: Path | None = None) -> bool:
    """Whether ``path`` is the output folder or something in it (so never an input).

    When the input pattern itself searches the output folder (``searched``, the pattern's
    folder, is the output folder or inside it: ``'data/*.tif' -o data``), only what the job
    writes there — labels outputs, ``summary.csv``, ``manifest.json``, temporary entries —
    is left out, not the stacks the user keeps beside them.
    """
    if path == output_dir:
        return True
    if output_dir not in path.parents:
        return False
    if searched is None or not (searched == output_dir or output_dir in searched.parents):
        return True
    relative = path.relative_to(output_dir)
    name = relative.parts[0]
    written = (outputs.SUMMARY_NAME, outputs.MANIFEST_NAME)
    return (
        name.startswith(".")
        or name in written
        or any(name.endswith(f"_labels{s}") for s in outputs.FORMATS.values())
    )


def _pattern_folder(pattern: str) -> Path:
    """The folder a glob pattern searches in: its parts before the first wildcard."""
    parts = Path(os.path.expanduser(pattern)).parts
    plain = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        plain.append(part)
    return Path(*plain).resolve() if plain else Path.cwd().resolve()


def expand_inputs(
    inputs: Sequence[str | os.PathLike[str]], exclude: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Paths and glob patterns → stack paths, in order, without duplicates.

    A folder is one stack (zarr / OME-Zarr or a folder of frames); to segment every stack
    in a folder, give a pattern (``"data/*.tif"``). ``exclude`` is the job's output folder:
    it and what it holds are never inputs (a pattern that matches them on a rerun skips
    them); where a pattern searches the output folder itself, only the job's own outputs
    are skipped.

    Raises
    ------
    ConfigError
        Listing every path that does not exist and every pattern that matched nothing, or
        an input given by name that is (inside) the output folder.
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    out = Path(exclude).expanduser().resolve() if exclude is not None else None
    found: list[Path] = []
    missing: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        if glob.has_magic(text):
            matches = sorted(glob.glob(os.path.expanduser(text)))
            matches = [m for m in matches if not Path(m).name.startswith(".")]
            if out is not None:
                searched = _pattern_folder(text)
                matches = [m for m in matches if not _is_output(Path(m).resolve(), out, searched)]
            if not matches:
                missing.append(f"{text} (matched nothing)")
            found.extend(Path(m) for m in matches)
        elif Path(text).expanduser().exists():
            path = Path(text).expanduser()
            if out is not None and _is_output(path.resolve(), out, path.resolve().parent):
                missing.append(f"{text} (the output folder or an output in it, not a stack)")
                continue
            found.append(path)
        else:
            missing.append(f"{text} (no such file or folder)")
    if missing:
        raise ConfigError("input stacks not found:\n  " + "\n  ".join(missing))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise ConfigError("no input stacks given")
    return unique


def _check_names(paths: Sequence[Path]) -> list[str]:
    from napari_sam_lora.data.readers import stack_name

    names = [stack_name(p) for p in paths]
    seen: dict[str, list[Path]] = {}
    for name, path in zip(names, paths, strict=True):
        seen.setdefault(name, []).append(path)
    clashes = {n: ps for n, ps in seen.items() if len(ps) > 1}
    if clashes:
        lines = [f"{n}: {', '.join(str(p) for p in ps)}" for n, ps in clashes.items()]
        raise ConfigError(
            "stacks with the same name would write the same output; rename or split the "
            "job:\n  " + "\n  ".join(lines)
        )
    return names


def _check_options(
    direction: str, start: str | int, output_format: str, axis: str, image_size: Any
) -> int | None:
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction {direction!r}: choose {', '.join(DIRECTIONS)}")
    text = str(start)
    if text not in START_CHOICES and not (text.isdigit()):
        raise ConfigError(f"start {start!r}: choose first, middle, last or a frame index ≥ 0")
    if output_format not in outputs.FORMATS:
        raise ConfigError(f"output format {output_format!r}: choose {', '.join(outputs.FORMATS)}")
    if axis not in ("t", "z"):
        raise ConfigError(f"axis {axis!r}: choose t (time-lapse) or z (z-stack)")
    if image_size is None:
        return None
    try:
        from napari_sam_lora.engine.core.validation import check_image_size
    except ImportError:
        size = int(image_size)
        if size % 32 or not 64 <= size <= 4096:
            raise ConfigError(
                f"image size {image_size}: SAM2 needs a multiple of 32 in 64–4096"
            ) from None
        return size
    return check_image_size(image_size)


def _check_output(out: Path) -> None:
    """The output folder exists or can be created, and files can be written in it.

    Nothing is created: the probe is a temporary file in the folder (or in its nearest
    existing parent), removed at once.

    Raises
    ------
    ConfigError
        Naming the folder and what is wrong with it.
    """
    hint = "choose another output folder (-o) or fix its permissions"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} is a file, not a folder; {hint}")
    existing = next(p for p in [out, *out.parents] if p.exists())
    if not existing.is_dir():
        raise ConfigError(
            f"output folder {out} cannot be created: {existing} is a file, not a folder; {hint}"
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".napari-sam-lora-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        what = "is not writable" if existing == out else f"cannot be created in {existing}"
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"output folder {out} {what} ({reason}); {hint}") from exc


def _check_adapters(adapters: Sequence[str | os.PathLike[str]], model: str) -> list[str]:
    """Adapter files exist and were trained on this model variant (the decoder checksum is
    checked on the workers, against the loaded model, before any stack runs)."""
    if not adapters:
        return []
    from napari_sam_lora.engine.learning.adapter_files import adapter_paths
    from napari_sam_lora.engine.learning.adapters import AdapterFileError
    from napari_sam_lora.engine.tracking.models import parse_model

    variant = parse_model(model).variant.name
    problems, paths = [], []
    for item in adapters:
        st_path, json_path = adapter_paths(item)
        if not (st_path.is_file() and json_path.is_file()):
            problems.append(f"{item}: needs {st_path.name} and {json_path.name}")
            continue
        try:
            doc = json.loads(json_path.read_text(encoding="utf-8"))
            recorded = str(doc["base"]["variant"])
            trained_on = recorded.removeprefix("untrained:")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{json_path}: not a readable adapter record ({exc!r})")
            continue
        if trained_on != variant:
            problems.append(
                f"{json_path} was trained on {recorded}, not on the model {model} "
                f"({variant}); use --model {recorded} or an adapter trained on {variant}"
            )
        paths.append(str(st_path.with_suffix("").resolve()))
    if problems:
        raise AdapterFileError(
            "adapter file(s) refused; nothing was run:\n  " + "\n  ".join(problems)
        )
    return paths


def _check_adapter_files(paths: Sequence[str], model: str, image_size: int | None) -> None:
    """Validate every adapter file in full against the model's decoder, here on the driver.

    The engine's own check (``engine.adapter_files.check_adapters``: decoder checksum,
    modules, every tensor's shape, dtype and finiteness) on the model loaded on the CPU,
    before any cluster starts, so a bad file is one error naming it, not a worker plugin's
    traceback. The workers check again against the model they load.

    Raises
    ------
    AdapterFileError
        Listing every refused file with the reason.
    """
    if not paths:
        return
    import gc

    from napari_sam_lora.engine.learning.adapter_files import adapter_paths, check_adapters
    from napari_sam_lora.engine.learning.adapters import AdapterFileError
    from napari_sam_lora.engine.tracking.predictor import load_model

    loaded = load_model(model, "cpu", image_size)
    problems = []
    try:
        decoder = loaded.predictor.sam_mask_decoder
        for path in paths:
            try:
                check_adapters(path, decoder)
            except AdapterFileError as exc:
                st_path = adapter_paths(path)[0]
                text = " ".join(str(exc).split())
                named = str(st_path.with_suffix("")) in text
                problems.append(text if named else f"{st_path}: {text}")
    finally:
        del loaded
        gc.collect()
    if problems:
        raise AdapterFileError(
            "adapter file(s) refused; nothing was run:\n  " + "\n  ".join(problems)
        )


def _geometry(paths: Sequence[Path], names: Sequence[str]) -> dict[str, Any]:
    from napari_sam_lora.data.readers import open_stack
    from napari_sam_lora.engine.tracking.frames import stack_geometry

    found: dict[str, Any] = {}
    for name, path in zip(names, paths, strict=True):
        try:
            num_frames, frame_shape, _ = stack_geometry(open_stack(path))
            found[name] = (num_frames, frame_shape)
        except SamLoraError:
            found[name] = None  # the stack fails on its own, in the summary
    return found


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

    size = _check_options(direction, start, output_format, axis, image_size)
    _check_output(output_dir)
    paths = expand_inputs(inputs, exclude=output_dir)
    names = _check_names(paths)
    spec = parse_model(model)
    adapter_paths = _check_adapters(adapters, model)
    if (seeds is None) == (points is None):
        raise PromptError("give the prompts: seed labels (--seeds) or a points table (--points)")
    seed_files: dict[str, Path] = {}
    clicks: dict[str, list[PointRow]] = {}
    if seeds is not None:
        seed_files = match_seeds(seeds, names)
    else:
        clicks = read_points_table(points, _geometry(paths, names))
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
        _check_adapter_files(adapter_paths, model, size)
    plan = _Plan(tasks, skipped, names, job, manifest["stacks"])
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
) -> Generator[BatchStep, None, BatchResult]:
    """The batch job as a generator: one :class:`BatchStep` per finished stack.

    Closing the generator cancels the stacks not yet finished (their outputs are never
    half-written; a later run with ``resume=True`` does only them). Parameters are those of
    :func:`segment`.
    """
    out = Path(output_dir).expanduser().resolve()
    cluster = {
        "client": client,
        "scheduler": scheduler,
        "workers": workers,
        "memory_limit": memory_limit,
        "torch_threads": torch_threads,
        "env": env,
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
    try:
        yield from _run(
            plan, state, adapter_paths, size, out, note, model=model, device=device, **cluster
        )
    finally:  # finished, cancelled (generator closed) or interrupted: record what is done
        if state.submitted:
            for task in plan.tasks:
                state.rows.setdefault(task.name, _cancelled(task))
            result = _record(plan, state, out)
    return result


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
    *,
    model: str,
    device: str | None,
    client: Any,
    scheduler: str | None,
    workers: int | None,
    memory_limit: str | float | None,
    torch_threads: int | None,
    env: dict[str, str] | None,
) -> Generator[BatchStep, None, None]:
    from distributed import as_completed

    from napari_sam_lora.batch.worker import PLUGIN_NAME, ModelPlugin, run_stack

    total = len(plan.tasks)
    with cluster.client(client, scheduler, total, workers, memory_limit, device, env) as (
        dask,
        threads,
    ):
        plugin = ModelPlugin(model, size, device, adapter_paths, torch_threads or threads)
        dask.register_plugin(plugin, name=PLUGIN_NAME)  # loads the model, checks adapters
        state.dashboard = _dashboard(dask)
        n_workers = len(dask.scheduler_info().get("workers", {}))
        out.mkdir(parents=True, exist_ok=True)
        outputs.remove_partials(out)
        yield BatchStep(
            0,
            total,
            message=f"{note}{total} stack(s) on {n_workers} worker(s); dashboard: "
            + (state.dashboard or "not available (dask's dashboard needs bokeh installed)"),
            dashboard=state.dashboard,
        )
        run_id = uuid.uuid4().hex[:8]
        state.submitted = True
        futures = {
            dask.submit(run_stack, task, key=f"napari-sam-lora-{task.name}-{run_id}"): task
            for task in plan.tasks
        }
        done = 0
        try:
            for future in as_completed(futures):
                task = futures[future]
                try:
                    row = future.result()
                except Exception as exc:
                    row = _failure(task, exc)
                state.rows[task.name] = row
                entry = {k: row.get(k) for k in outputs.SUMMARY_COLUMNS if k != "stack"}
                state.stacks[task.name] = {
                    **entry,
                    "fingerprint": task.fingerprint,
                    "finished": _now(),
                }
                outputs.write_manifest(out, plan.job, state.stacks)
                done += 1
                yield BatchStep(done, total, row)
        finally:
            pending = [f for f in futures if not f.done()]
            if pending:
                dask.cancel(pending)


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
    progress : bool
        Show a progress bar on stderr.
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

                bar = tqdm(total=step.total, unit="stack", file=sys.stderr)
            if bar is not None and step.row is not None:
                bar.set_postfix_str(f"{step.row['stack']}: {step.row.get('status')}")
                bar.update(1)
    finally:
        steps.close()
        if bar is not None:
            bar.close()
