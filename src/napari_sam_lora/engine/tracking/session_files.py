"""A session's annotation state on disk: stop today, continue tomorrow.

``<path>.session.json`` holds the format, the stack's geometry and fingerprint, the model,
the prompts and the source of every (frame, object); ``<path>.session.npz`` holds the label
images, the prompts' arrays and the confirmed masks (bit-packed). Both are written as one
atomic set; nothing is pickled (``allow_pickle=False`` on reading). Adapters are saved
beside them by :meth:`Learner.save`.

Both files carry the same random set id (``set_id`` in the JSON, ``session_set_id`` in the
NPZ). The set is written with ``keep_previous``, so a save killed between its two renames
leaves the previous pair as :func:`~..core.atomic.previous_path` of each file; reading picks
the newest pair whose ids agree — the current pair, or the previous complete one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import secrets
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam_lora.engine.annotation.prompts import BoxPrompt, MaskPrompt, PointPrompt, Prompt
from napari_sam_lora.engine.annotation.state import AnnotationState
from napari_sam_lora.engine.core.errors import PromptError, SamLoraError
from napari_sam_lora.engine.core.file_paths import state_paths
from napari_sam_lora.engine.core.validation import (
    check_frame,
    check_label_image,
    check_object_id,
    unpack_mask,
)

if TYPE_CHECKING:
    from napari_sam_lora.engine.tracking.session import Session

logger = logging.getLogger(__name__)

FORMAT = "napari-sam-lora-session"
VERSION = 1
#: The NPZ array holding the set id that the JSON's ``set_id`` names.
SET_KEY = "session_set_id"

__all__ = [
    "SessionFileError",
    "check_state",
    "read_saved_labels",
    "read_state",
    "stack_fingerprint",
    "state_paths",
    "write_state",
]


class SessionFileError(SamLoraError):
    """A session file is missing, damaged, or belongs to another stack."""


def stack_fingerprint(stack: Any) -> str:
    """SHA-256 over a ``(T, H, W[, C])`` stack's geometry and a sample of its pixels (first,
    middle, last frame); reads nothing else of a lazy stack."""
    from napari_sam_lora.engine.tracking.frames import frame_at  # torch: not at import (GUI thread)

    num_frames, frame_shape = int(np.shape(stack)[0]), tuple(int(s) for s in np.shape(stack)[1:3])
    digest = hashlib.sha256(f"{num_frames}|{frame_shape}".encode())
    for t in sorted({0, num_frames // 2, num_frames - 1}):
        frame = np.ascontiguousarray(np.asarray(frame_at(stack, t, num_frames)))
        digest.update(frame.tobytes())
    return digest.hexdigest()


def _size(shape: Any) -> str:
    return "×".join(str(s) for s in shape)


def check_state(path: str | os.PathLike[str], stack: Any, pixels: bool = True) -> dict[str, Any]:
    """Read a session file's header and check that it was saved for ``stack``.

    Only the JSON header and (with ``pixels``) three frames of the stack are read; no
    session is needed. Without ``pixels`` only the geometry is checked (instant, for a
    GUI's main thread).

    Returns
    -------
    dict
        The session file's JSON document.

    Raises
    ------
    SessionFileError
        Missing or unreadable files, another format, or another stack (geometry or pixels).
    """
    return _check(*_complete_pair(path), stack, pixels)


def read_saved_labels(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """The label stack and JSON document of the session saved at ``path``, without a
    model or the image (for exports); after an interrupted save, the previous complete pair.

    Returns
    -------
    tuple
        ``(labels, doc)``: ``(T, H, W)`` int32 labels (checked ids) and the JSON document
        (its ``lineage``: daughter → parent, ``division_frames``: daughter → frame).

    Raises
    ------
    SessionFileError
        Missing, unreadable or damaged files, or not a session file.
    """
    json_path, npz_path = _complete_pair(path)
    doc = _document(json_path, npz_path)
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            labels = npz["labels"]
    except KeyError:
        raise SessionFileError(f"{npz_path.name} holds no labels") from None
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise SessionFileError(f"{npz_path.name} cannot be read: {exc}") from exc
    try:
        labels = check_label_image(labels, f"{npz_path.name}'s labels")
    except SamLoraError as exc:
        raise SessionFileError(str(exc)) from exc
    if labels.ndim != 3:
        raise SessionFileError(f"{npz_path.name}'s labels have shape {labels.shape}, not (T, H, W)")
    return labels.astype(np.int32), doc


def _document(json_path: Path, npz_path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(json_path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise SessionFileError(f"no saved session at {exc.filename}") from exc
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise SessionFileError(f"{json_path.name} cannot be read: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SessionFileError(f"{json_path} is not a napari-sam-lora session file")
    if not npz_path.is_file():
        raise SessionFileError(f"no saved session at {npz_path} (it goes with {json_path.name})")
    return doc


def _check(json_path: Path, npz_path: Path, stack: Any, pixels: bool = True) -> dict[str, Any]:
    doc = _document(json_path, npz_path)
    frames, shape = int(np.shape(stack)[0]), tuple(int(s) for s in np.shape(stack)[1:3])
    saved = (doc.get("frames"), tuple(doc.get("frame_shape") or ()))
    if saved != (frames, shape):
        raise SessionFileError(
            f"{json_path.name} was saved for another stack: {saved[0]} frames of "
            f"{_size(saved[1])}, this image has {frames} frames of {_size(shape)}; open the "
            "stack it was saved with"
        )
    if pixels and doc.get("stack_sha256") != stack_fingerprint(stack):
        raise SessionFileError(
            f"{json_path.name} was saved for another stack of {frames} frames of "
            f"{_size(shape)} (its pixels differ); open the stack it was saved with"
        )
    return doc


def write_state(session: Session, path: str | os.PathLike[str]) -> list[Path]:
    """Write the session's prompts, annotation state and labels; returns the paths."""
    from napari_sam_lora.engine.core.atomic import write_files

    json_path, npz_path = state_paths(path)
    set_id = secrets.token_hex(16)  # both files name the set they belong to
    arrays: dict[str, np.ndarray] = {"labels": session.labels, SET_KEY: np.array(set_id)}
    prompts = []
    for i, prompt in enumerate(session.prompts):
        entry: dict[str, Any] = {"frame": int(prompt.frame), "obj_id": int(prompt.obj_id)}
        if isinstance(prompt, PointPrompt):
            entry["kind"] = "points"
            arrays[f"prompt_{i}_points"], arrays[f"prompt_{i}_labels"] = (
                prompt.points,
                prompt.labels,
            )
        elif isinstance(prompt, BoxPrompt):
            entry["kind"] = "box"
            arrays[f"prompt_{i}_box"] = prompt.box
        else:
            entry["kind"] = "mask"
            arrays[f"prompt_{i}_mask"] = np.packbits(np.asarray(prompt.mask, bool))
        prompts.append(entry)
    annotations, masks = session.annotations.to_arrays()
    arrays.update(masks)
    doc = {
        "format": FORMAT,
        "format_version": VERSION,
        "model": session.model_label,
        "frames": session.num_frames,
        "frame_shape": list(session.frame_shape),
        "stack_sha256": stack_fingerprint(session.frames.stack),
        "prompts": prompts,
        "annotations": annotations,
        # divisions: daughter -> parent (what tracking formats call the lineage), and the
        # frame each daughter begins on
        "lineage": {str(d): p for d, p in session.annotation.parents().items()},
        "division_frames": {str(d): f for d, (_, f) in session.annotation.lineage.items()},
        "set_id": set_id,
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_files(
        {json_path: json.dumps(doc, indent=1), npz_path: buffer.getvalue()}, keep_previous=True
    )
    return [json_path, npz_path]


def read_state(session: Session, path: str | os.PathLike[str]) -> None:
    """Give a fresh session on the same stack the state saved at ``path``.

    Everything is read and checked before the session is touched.

    Raises
    ------
    SessionFileError
        Missing or damaged files, another format, or another stack.
    """
    json_path, npz_path = _complete_pair(path)
    doc = _check(json_path, npz_path, session.frames.stack)
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError as exc:
        raise SessionFileError(f"no saved session at {exc.filename}") from exc
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise SessionFileError(f"{npz_path.name} cannot be read: {exc}") from exc
    shape, frames = session.frame_shape, session.num_frames
    try:  # every record is checked before the open session changes
        prompts = [_prompt(entry, i, arrays, shape) for i, entry in enumerate(doc["prompts"])]
        session.validate_prompts(prompts)
        state = AnnotationState.from_arrays(doc["annotations"], arrays, shape, frames)
        labels = check_label_image(arrays["labels"], f"{npz_path.name}'s labels")
        if labels.shape != session.labels.shape:
            raise PromptError(f"labels of shape {labels.shape}, not {session.labels.shape}")
        known = {o for _, o in state.keys_in_order()} | {int(p.obj_id) for p in prompts}
        unknown = sorted(set(np.unique(labels).tolist()) - known - {0})
        if unknown:
            raise PromptError(f"labels hold object(s) {unknown[:5]} that no record names")
        lineage = _lineage(doc, known, frames)
    except (KeyError, TypeError, ValueError, SamLoraError) as exc:
        raise SessionFileError(f"{json_path.name} has invalid records: {exc}") from exc
    session.restore(prompts, state, labels.astype(np.int32), lineage)


def _lineage(doc: dict, known: set[int], frames: int) -> dict[int, tuple[int, int]]:
    """The divisions a session file records (none in files of older versions), checked."""
    parents, begins = doc.get("lineage", {}), doc.get("division_frames", {})
    if not isinstance(parents, dict) or not isinstance(begins, dict):
        raise PromptError("'lineage' and 'division_frames' must be mappings")
    if set(parents) != set(begins):
        raise PromptError("'lineage' and 'division_frames' name different daughters")
    lineage = {}
    for key, parent in parents.items():
        daughter = check_object_id(int(key) if str(key).isdigit() else key, where="lineage")
        parent = check_object_id(parent, where="lineage")
        frame = check_frame(begins[key], frames)
        if daughter not in known or parent not in known:
            raise PromptError(f"the division {parent} → {daughter} names an unknown object")
        lineage[daughter] = (parent, frame)
    return lineage


def _complete_pair(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The newest (JSON, NPZ) pair at ``path`` whose set ids agree.

    The current pair, or — after a save killed between its two renames — the previous
    pair the save kept (or a mix of the two). A file without a set id (saved by an older
    version) gives the current pair; when no pair agrees, the current pair too (reading
    it then says what is wrong).
    """
    from napari_sam_lora.engine.core.atomic import previous_path

    json_path, npz_path = state_paths(path)
    json_ids = {p: _json_set_id(p) for p in (json_path, previous_path(json_path))}
    if json_ids[json_path] == "":
        return json_path, npz_path
    npz_ids: dict[Path, str | None] = {}
    for json_file in json_ids:
        for npz_file in (npz_path, previous_path(npz_path)):
            if json_ids[json_file] is None:
                break
            if npz_file not in npz_ids:
                npz_ids[npz_file] = _npz_set_id(npz_file)
            if npz_ids[npz_file] == json_ids[json_file]:
                if (json_file, npz_file) != (json_path, npz_path):
                    logger.warning(
                        "%s: an interrupted save left the previous session; reading it",
                        json_path,
                    )
                return json_file, npz_file
    return json_path, npz_path


def _json_set_id(path: Path) -> str | None:
    """The set id a session JSON names; ``""`` when it names none; ``None`` if unreadable."""
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None
    set_id = doc.get("set_id", "")
    return set_id if isinstance(set_id, str) else None


def _npz_set_id(path: Path) -> str | None:
    """The set id a session NPZ holds; ``None`` when it holds none or cannot be read."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if SET_KEY not in npz.files:
                return None
            value = npz[SET_KEY]
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError):
        return None
    return str(value.item()) if value.ndim == 0 and value.dtype.kind == "U" else None


def _prompt(entry: dict, i: int, arrays: dict[str, np.ndarray], shape: tuple[int, int]) -> Prompt:
    frame, obj_id, kind = int(entry["frame"]), int(entry["obj_id"]), entry["kind"]
    if kind == "points":
        return PointPrompt(
            frame, obj_id, arrays[f"prompt_{i}_points"], arrays[f"prompt_{i}_labels"]
        )
    if kind == "box":
        return BoxPrompt(frame, obj_id, arrays[f"prompt_{i}_box"])
    if kind == "mask":
        mask = unpack_mask(arrays[f"prompt_{i}_mask"], shape, f"the mask of prompt {i}")
        return MaskPrompt(frame, obj_id, mask)
    raise ValueError(f"unknown prompt kind {kind!r}")
