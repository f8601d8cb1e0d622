"""The one ``suite.json`` reader (a suite written by ``napari-sam-lora synthetic``).

``suite.json`` lists the suite's stacks: ``{"stacks": [{"kind", "image", "labels", ...}]}``
with file names relative to the suite folder. Evaluation (``evaluate SUITE``) and
fine-tuning (``data.folder: SUITE``) both read it here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from napari_sam_lora.engine.core.errors import DataError
from napari_sam_lora.engine.core.validation import short_repr

__all__ = ["SUITE_FILE", "SuiteStack", "is_suite", "read_suite"]

SUITE_FILE = "suite.json"
_MAX_BYTES = 1 << 22


@dataclass(frozen=True)
class SuiteStack:
    """One stack of a suite: its kind (name) and the paths of its image and labels."""

    kind: str
    image: Path
    labels: Path


def is_suite(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a suite folder (holds ``suite.json``)."""
    return (Path(path) / SUITE_FILE).is_file()


def read_suite(folder: str | os.PathLike[str]) -> list[SuiteStack]:
    """The stacks ``folder/suite.json`` lists, with paths resolved against ``folder``.

    Raises
    ------
    DataError
        ``suite.json`` is missing, unreadable, too large, not JSON, lists no stacks, or an
        entry lacks ``kind``/``image``/``labels`` strings or points outside the folder.
    """
    folder = Path(folder)
    path = folder / SUITE_FILE
    try:
        if path.stat().st_size > _MAX_BYTES:
            raise DataError(f"{path} is larger than {_MAX_BYTES} bytes; is it a suite index?")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{folder} is not a suite folder: it has no {SUITE_FILE}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    entries = doc.get("stacks") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise DataError(f"cannot read {path}: it has no 'stacks' list")
    if not entries:
        raise DataError(f"{path} lists no stacks")
    stacks = []
    for i, entry in enumerate(entries):
        fields = [
            entry.get(k) if isinstance(entry, dict) else None for k in ("kind", "image", "labels")
        ]
        if not all(isinstance(f, str) and f for f in fields):
            raise DataError(
                f"cannot read {path}: stacks[{i}] = {short_repr(entry)} needs kind, image and "
                "labels (file names)"
            )
        kind, image, labels = fields
        for name in (image, labels):
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise DataError(f"{path}: stacks[{i}] names {name!r} outside the suite folder")
        stacks.append(SuiteStack(kind, folder / image, folder / labels))
    return stacks
