"""Batch prompts: seed labels files matched to stacks, and points tables validated up front.

A **points table** (CSV with a header, or JSON: a list of objects or ``{"points": [...]}``)
has one click per row with the columns ``stack, frame, object, row, col, positive``:

- ``stack``: the stack's name (its file stem, see :func:`~napari_sam_lora.data.readers.stack_name`);
- ``frame``: frame index (0-based); ``object``: object id ≥ 1;
- ``row``, ``col``: the click in pixels (napari's ``(row, col)``);
- ``positive``: ``1``/``true``/``yes`` for a positive click, ``0``/``false``/``no`` for negative.

:func:`read_points_table` checks every row and raises one :class:`PromptError` that lists
every bad row (line numbers in the file), before anything runs.

A **seed labels** file per stack (masks on one or more frames; value = object id) is found
by :func:`match_seeds`: a folder holding a file with the stack's stem, a pattern with
``{name}`` (``seeds/{name}_masks.tif``), or one file for a single stack.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from napari_sam_lora.batch.stack import PointRow
from napari_sam_lora.data.readers import is_stack_path, is_zarr, stack_name
from napari_sam_lora.engine.core.errors import PromptError

__all__ = ["COLUMNS", "Geometry", "match_seeds", "read_points_table"]

COLUMNS = ("stack", "frame", "object", "row", "col", "positive")
_TRUE = {"1", "true", "yes", "y", "+", "positive", "pos"}
_FALSE = {"0", "false", "no", "n", "-", "negative", "neg"}
_MAX_LISTED = 50

#: ``{stack name: (num_frames, (height, width))}``, ``None`` for a stack that cannot be read.
Geometry = Mapping[str, "tuple[int, tuple[int, int]] | None"]


def _rows_of(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line or item number, record)`` pairs from a CSV or JSON table."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"cannot read the points table {path}: {exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise PromptError(f"{path} is not valid JSON: {exc}") from exc
        items = doc.get("points") if isinstance(doc, dict) else doc
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise PromptError(
                f"{path}: expected a list of points (objects with {', '.join(COLUMNS)}) or "
                '{"points": [...]}'
            )
        return list(enumerate(items, start=1))
    reader = csv.DictReader(text.splitlines())
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise PromptError(
            f"{path}: the header lacks column(s) {', '.join(missing)}; a points table needs "
            f"{', '.join(COLUMNS)}"
        )
    reader.fieldnames = header
    return [(reader.line_num, dict(r)) for r in reader]


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, not {value}")
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return number


def _integer(value: Any, what: str) -> int:
    number = _number(value, what)
    if not number.is_integer():
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(number)


def _sign(value: Any) -> bool:
    text = str(value).strip().lower()
    if isinstance(value, bool):
        return value
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"positive must be 1/0 (or true/false), got {str(value)[:40]!r}")


def _check_row(record: Mapping[str, Any], geometry: Geometry) -> tuple[str, PointRow]:
    missing = [c for c in COLUMNS if record.get(c) in (None, "")]
    if missing:
        raise ValueError(f"empty {', '.join(missing)}")
    name = str(record["stack"]).strip()
    if name not in geometry:
        known = ", ".join(sorted(geometry)[:5]) + (", ..." if len(geometry) > 5 else "")
        raise ValueError(f"unknown stack {name!r} (stacks: {known})")
    frame = _integer(record["frame"], "frame")
    obj_id = _integer(record["object"], "object")
    row = _number(record["row"], "row")
    col = _number(record["col"], "col")
    positive = _sign(record["positive"])
    if not 1 <= obj_id <= 2**31 - 1:
        raise ValueError(f"object {obj_id} is invalid: ids start at 1")
    shape = geometry[name]
    if shape is not None:
        num_frames, (height, width) = shape
        if not 0 <= frame < num_frames:
            raise ValueError(f"frame {frame} is outside {name} (frames 0–{num_frames - 1})")
        if not (0 <= row < height and 0 <= col < width):
            raise ValueError(
                f"click ({row:g}, {col:g}) is outside {name}'s {height}×{width} frames"
            )
    elif frame < 0:
        raise ValueError(f"frame {frame} is negative")
    return name, PointRow(frame, obj_id, row, col, positive)


def read_points_table(
    path: str | os.PathLike[str], geometry: Geometry
) -> dict[str, list[PointRow]]:
    """Read and check a points table; return the clicks per stack name.

    Parameters
    ----------
    path : path
        ``.csv`` (with a header) or ``.json``.
    geometry : mapping
        Every stack of the job: ``{name: (num_frames, (H, W))}`` (``None`` when the stack
        cannot be read: its clicks are checked without bounds; the stack fails on its own).

    Raises
    ------
    PromptError
        Listing every bad row (line number and reason), stacks without any click, and
        objects whose clicks on a frame are all negative.
    """
    path = Path(path)
    problems: list[str] = []
    clicks: dict[str, list[PointRow]] = {}
    unit = "item" if path.suffix.lower() == ".json" else "line"
    for number, record in _rows_of(path):
        record = {str(k).strip().lower(): v for k, v in record.items() if k is not None}
        try:
            name, row = _check_row(record, geometry)
        except ValueError as exc:
            problems.append(f"{unit} {number}: {exc}")
            continue
        clicks.setdefault(name, []).append(row)
    for name, rows in clicks.items():
        signs: dict[tuple[int, int], bool] = {}
        for r in rows:
            signs[(r.frame, r.obj_id)] = signs.get((r.frame, r.obj_id), False) or r.positive
        for (frame, obj_id), any_positive in sorted(signs.items()):
            if not any_positive:
                problems.append(
                    f"stack {name}, frame {frame}, object {obj_id}: only negative clicks "
                    "(add a positive click on the object)"
                )
    without = sorted(set(geometry) - set(clicks))
    if without:
        problems.append(f"no clicks for stack(s): {', '.join(without)}")
    if problems:
        listed = problems[:_MAX_LISTED]
        more = len(problems) - len(listed)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise PromptError(
            f"the points table {path} has {len(problems)} problem(s); nothing was run:\n  "
            + "\n  ".join(listed)
            + tail
        )
    return clicks


def match_seeds(seeds: str | os.PathLike[str], names: Sequence[str]) -> dict[str, Path]:
    """The seed labels file of each stack name.

    Parameters
    ----------
    seeds : path or pattern
        A folder of seed files (each named with its stack's stem, any readable format), a
        pattern containing ``{name}``, or one file or zarr (only for a single stack).
    names : sequence of str
        Stack names.

    Raises
    ------
    PromptError
        Listing every stack without a seed file (or with more than one).
    """
    text = os.fspath(seeds)
    found: dict[str, Path] = {}
    problems: list[str] = []
    if "{name}" in text:
        for name in names:
            path = Path(text.replace("{name}", name))
            if path.exists():
                found[name] = path
            else:
                problems.append(f"{name}: {path} does not exist")
    else:
        root = Path(text)
        if root.is_dir() and not is_zarr(root):
            candidates: dict[str, list[Path]] = {}
            for entry in sorted(root.iterdir()):
                if not entry.name.startswith(".") and is_stack_path(entry):
                    candidates.setdefault(stack_name(entry), []).append(entry)
            for name in names:
                options = candidates.get(name, [])
                if len(options) == 1:
                    found[name] = options[0]
                elif not options:
                    problems.append(f"{name}: no seed file named {name}.* in {root}")
                else:
                    listed = ", ".join(p.name for p in options)
                    problems.append(f"{name}: several seed files ({listed}); keep one")
        elif root.exists() and len(names) == 1:
            found[names[0]] = root
        elif root.exists():
            problems.append(
                f"{root} is one file but there are {len(names)} stacks; give a folder of seed "
                "files named like the stacks, or a pattern with {name}"
            )
        else:
            problems.append(f"{root} does not exist")
    if problems:
        raise PromptError(
            f"seed labels missing for {len(problems)} stack(s); nothing was run:\n  "
            + "\n  ".join(problems[:_MAX_LISTED])
        )
    return found
