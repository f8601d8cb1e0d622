"""The batch job's checks on the driver, before any cluster starts: options, the output
folder, the inputs (paths and globs), the model's adapter files.

Each check raises one error that lists every problem it found; nothing has run yet.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_sam_lora.batch import outputs
from napari_sam_lora.batch.stack import START_CHOICES
from napari_sam_lora.engine.core.errors import ConfigError
from napari_sam_lora.engine.core.validation import check_image_size

__all__ = [
    "DIRECTIONS",
    "check_adapter_files",
    "check_adapters",
    "check_names",
    "check_options",
    "check_output",
    "expand_inputs",
]


DIRECTIONS = ("forward", "backward", "both")


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


def check_names(paths: Sequence[Path]) -> list[str]:
    """Each stack's name (its output's name); refused when two stacks share one.

    Raises
    ------
    ConfigError
        Listing every name given by more than one stack, with their paths.
    """
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


def check_options(
    direction: str, start: str | int, output_format: str, axis: str, image_size: Any
) -> int | None:
    """The job's options; returns the image size (``None``: the model's own).

    Raises
    ------
    ConfigError
        Naming the first option that is not one of its choices, or an output format whose
        package is not installed.
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction {direction!r}: choose {', '.join(DIRECTIONS)}")
    text = str(start)
    if text not in START_CHOICES and not (text.isdigit()):
        raise ConfigError(f"start {start!r}: choose first, middle, last or a frame index ≥ 0")
    if output_format not in outputs.FORMATS:
        raise ConfigError(f"output format {output_format!r}: choose {', '.join(outputs.FORMATS)}")
    if output_format == "ome-zarr" and importlib.util.find_spec("ome_zarr") is None:
        raise ConfigError(
            "output format ome-zarr needs the ome-zarr package: "
            "pip install 'napari-sam-lora[batch]', or choose --format tiff"
        )
    if axis not in ("t", "z"):
        raise ConfigError(f"axis {axis!r}: choose t (time-lapse) or z (z-stack)")
    if image_size is None:
        return None
    return check_image_size(image_size)


def check_output(out: Path) -> None:
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


def check_adapters(adapters: Sequence[str | os.PathLike[str]], model: str) -> list[str]:
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


def check_adapter_files(paths: Sequence[str], model: str, image_size: int | None) -> None:
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
