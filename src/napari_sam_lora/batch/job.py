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
from napari_sam_lora.engine.core import memory
from napari_sam_lora.engine.core.errors import ConfigError, PromptError

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


@dataclass(frozen=True)
class _Size:
    """What a stack holds: frames, frame shape, channels, and its pixel data's bytes."""

    frames: int
    shape: tuple[int, int]
    channels: int
    pixels: int

    def needs(self, model_bytes: int) -> int:
        """Bytes one worker needs for this stack: its pixels as read, the session's label
        images and working frames (:func:`~napari_sam_lora.engine.core.memory.stack_bytes`),
        and the model."""
        from napari_sam_lora.engine.core.memory import stack_bytes

        return stack_bytes(self.frames, self.shape, self.channels) + self.pixels + model_bytes


@dataclass
class _Plan:
    tasks: list[Any]
    skipped: list[dict[str, Any]]
    order: list[str]
    job: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, _Size | None] = field(default_factory=dict)
    model_bytes: int = 0
    model: str = DEFAULT_MODEL


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


def _sizes(paths: Sequence[Path], names: Sequence[str]) -> dict[str, _Size | None]:
    """Each stack's geometry and pixel bytes, read lazily (no pixel is read)."""
    import numpy as np

    from napari_sam_lora.data.readers import open_stack
    from napari_sam_lora.engine.tracking.frames import stack_geometry

    found: dict[str, _Size | None] = {}
    for name, path in zip(names, paths, strict=True):
        try:
            stack = open_stack(path)
            num_frames, frame_shape, rgb = stack_geometry(stack)
            channels = int(stack.shape[-1]) if rgb else 1
            pixels = int(np.prod([int(n) for n in stack.shape])) * np.dtype(stack.dtype).itemsize
            found[name] = _Size(int(num_frames), tuple(frame_shape), channels, pixels)
        except Exception:  # the stack fails on its own, in the summary
            found[name] = None
    return found


def _geometry(sizes: dict[str, _Size | None]) -> dict[str, Any]:
    return {n: None if z is None else (z.frames, z.shape) for n, z in sizes.items()}


#: What a worker needs for the model besides twice its weights (weights and their working
#: copies): torch, SAM2's activations, dask itself (measured: 1.1 GB peak per worker with
#: hiera-tiny, 149 MB of weights).
MODEL_BASE_BYTES = 800_000_000


def model_bytes(model: Any) -> int:
    """A worker's memory allowance for ``model`` (its weights, activations, the runtime).

    ``model`` is a model name, ``untrained:<variant>``, a checkpoint path, or an already
    parsed ``ModelSpec`` (no checkpoint is read again).
    """
    from napari_sam_lora.engine.tracking.models import parse_model

    spec = model if hasattr(model, "variant") else parse_model(model)
    return int(MODEL_BASE_BYTES + 2 * spec.variant.size_mb * 1_000_000)


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.0f} MB"


def _pause_fraction() -> float:
    """dask's ``distributed.worker.memory.pause`` (0.8): where a worker stops running tasks."""
    import dask

    value = dask.config.get("distributed.worker.memory.pause", 0.8)
    return float(value) if value else 1.0


def memory_refusal(
    name: str, size: _Size | None, limit: float | None, source: str, model: int
) -> str | None:
    """Why stack ``name`` cannot run on a worker with ``limit`` bytes; ``None`` if it can.

    First the engine's own check (:func:`~napari_sam_lora.engine.core.memory.check_stack_fits`,
    which says what would fit), then the whole need — the stack's pixels, its label images
    and the model (``model`` bytes) — against the share of ``limit`` where dask pauses a
    worker (``distributed.worker.memory.pause``, 80 %): a worker that reaches it stops
    running tasks and the stack would never finish.

    Parameters
    ----------
    name : str
        The stack's name (for the message).
    size : _Size or None
        The stack's geometry (``None``: unknown, never refused here).
    limit : float or None
        Bytes one worker may use (``None``: unknown, nothing is refused).
    source : str
        Where ``limit`` comes from, as the user knows it (``--memory-limit``).
    model : int
        The model's allowance (:func:`model_bytes`).
    """
    from napari_sam_lora.engine.core.errors import StackError
    from napari_sam_lora.engine.core.memory import check_stack_fits

    if size is None or not limit:
        return None
    hint = (
        "raise --memory-limit, use fewer workers (more memory each), a region of interest "
        "or a downsampled copy"
    )
    try:
        check_stack_fits(size.frames, size.shape, size.channels, available=int(limit))
    except StackError as exc:
        return f"stack {name}: {exc} (a worker has {_gb(limit)}, {source}); {hint}"
    needed = size.needs(model)
    labels = size.frames * size.shape[0] * size.shape[1] * 4
    fraction = _pause_fraction()
    if needed <= fraction * limit:
        return None
    return (
        f"stack {name} needs about {_gb(needed)}, a worker has {_gb(limit)} ({source}): "
        f"dask pauses a worker at {fraction:.0%} of it, so the stack would never finish; "
        f"{hint} (pixels {_gb(size.pixels)}, labels {_gb(labels)}, model about {_gb(model)})"
    )


def _limit_of(memory_limit: str | float | None) -> float | None:
    """``--memory-limit`` in bytes (``"4GB"``, ``4e9``); ``None`` when not given or ``auto``."""
    if memory_limit in (None, "", "auto"):
        return None
    from dask.utils import parse_bytes

    try:
        value = (
            float(memory_limit)
            if isinstance(memory_limit, int | float)
            else float(parse_bytes(str(memory_limit)))
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"memory limit {memory_limit!r}: give a size such as 4GB or 8000MB"
        ) from exc
    if value <= 0:
        raise ConfigError(f"memory limit {memory_limit!r}: give a size such as 4GB or 8000MB")
    return value


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

    size = _check_options(direction, start, output_format, axis, image_size)
    _check_output(output_dir)
    paths = expand_inputs(inputs, exclude=output_dir)
    names = _check_names(paths)
    spec = parse_model(model)
    if spec.path is not None:  # a checkpoint file: the workers get its absolute path
        model = str(Path(spec.path).expanduser().resolve())
    adapter_paths = _check_adapters(adapters, model)
    if (seeds is None) == (points is None):
        raise PromptError("give the prompts: seed labels (--seeds) or a points table (--points)")
    seed_files: dict[str, Path] = {}
    clicks: dict[str, list[PointRow]] = {}
    sizes = _sizes(paths, names)
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
        _check_adapter_files(adapter_paths, model, size)
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
    limit = _limit_of(memory_limit)
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


#: Seconds every worker may stay paused (over dask's memory pause threshold) before the
#: job gives up on the stacks not finished instead of waiting forever.
PAUSE_TIMEOUT = 30.0
#: Seconds between looks at the workers' status.
WATCH_INTERVAL = 1.0
#: Seconds the driver waits for a frame or a finished stack before looking again.
POLL = 0.2


def _all_paused(info: dict[str, Any]) -> bool:
    """Whether every worker of the scheduler ``info`` is paused (or over dask's pause share
    of its memory limit); ``False`` without workers."""
    workers = list((info or {}).get("workers", {}).values())
    if not workers:
        return False
    fraction = _pause_fraction()
    for worker in workers:
        limit = worker.get("memory_limit") or 0
        used = (worker.get("metrics") or {}).get("memory") or 0
        over = bool(limit) and used >= fraction * limit
        if worker.get("status") != "paused" and not over:
            return False
    return True


class PauseWatch:
    """Notices that every worker has stayed paused for ``timeout`` seconds.

    dask pauses a worker at 80 % of its memory limit (``distributed.worker.memory.pause``):
    it stops running tasks, and a job whose every worker is paused would wait forever.

    Parameters
    ----------
    timeout : float
        Seconds all workers may stay paused.
    clock : callable
        Seconds now (``time.monotonic``; tests pass their own).
    """

    def __init__(self, timeout: float = PAUSE_TIMEOUT, clock: Any = None) -> None:
        import time

        self.timeout = float(timeout)
        self.clock = clock or time.monotonic
        self.since: float | None = None

    def update(self, info: dict[str, Any]) -> float | None:
        """Look at the scheduler's ``info``; the seconds paused once past the timeout."""
        now = self.clock()
        if not _all_paused(info):
            self.since = None
            return None
        if self.since is None:
            self.since = now
        paused = now - self.since
        return paused if paused >= self.timeout else None


def _paused_message(seconds: float, info: dict[str, Any], source: str) -> str:
    limits = [w.get("memory_limit") for w in info.get("workers", {}).values()]
    limits = [x for x in limits if x]
    limit = f"{_gb(min(limits))}, {source}" if limits else source
    return (
        f"every worker has been paused for {seconds:.0f} s: it reached "
        f"{_pause_fraction():.0%} of its memory limit ({limit}) and dask stopped running "
        "tasks on it; the stack needs more memory than a worker has: raise --memory-limit, "
        "use fewer workers (more memory each), a region of interest or a downsampled copy"
    )


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
                        why = _paused_message(paused, info, source)
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
