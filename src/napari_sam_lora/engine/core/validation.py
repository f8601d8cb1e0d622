"""The one validation choke point: ids, frames, points, boxes, masks, label images, sizes.

Every check here runs *before* SAM2's state (or a user's layer, or a file) is touched, and
raises one of the package's errors (:mod:`.errors`) with a message that names the value, the
place it came from and what is allowed. Values shown in messages are bounded
(:func:`short_repr`), so a huge or hostile value never floods a message or memory.

Used by the prompt records (:mod:`.prompts`), :func:`~.tracking.validate_prompts`, the
corrections diff (:mod:`.corrections`), stacks (:mod:`.frames`), settings and configs,
the evaluation/fine-tuning data readers and the viewer's output layer.
"""

from __future__ import annotations

import numbers
import reprlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from napari_sam_lora.engine.core.errors import ConfigError, PromptError, SamLoraError

__all__ = [
    "MAX_IMAGE_SIZE",
    "MAX_OBJECT_ID",
    "MIN_IMAGE_SIZE",
    "check_box",
    "check_frame",
    "check_frames",
    "check_ids_fit",
    "check_image_size",
    "check_label_image",
    "check_mask",
    "check_object_id",
    "check_points",
    "finite_number",
    "integer_value",
    "short_repr",
]

#: Object ids are label values SAM2 and napari keep as int32: 1 … 2³¹ − 1.
MAX_OBJECT_ID = 2**31 - 1
#: SAM2's Hiera trunk downsamples by 32: other input sizes fail inside the model.
IMAGE_SIZE_MULTIPLE = 32
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 4096
MESSAGE_VALUE_CHARS = 80

_repr = reprlib.Repr()
_repr.maxstring = MESSAGE_VALUE_CHARS - 10
_repr.maxother = MESSAGE_VALUE_CHARS - 10
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6
_repr.maxlevel = 3


def short_repr(value: Any, limit: int = MESSAGE_VALUE_CHARS) -> str:
    """``repr(value)`` bounded to ``limit`` characters (safe for huge or nested values).

    Numpy arrays are shown by shape and dtype, never element by element.
    """
    if isinstance(value, np.ndarray):
        text = f"array of shape {value.shape} and dtype {value.dtype}"
    else:
        try:
            text = _repr.repr(value)
        except Exception:  # a hostile __repr__
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip(text: str, limit: int = MESSAGE_VALUE_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis when cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype}"
    return {list: "a list", tuple: "a tuple", str: "a string", dict: "a mapping"}.get(
        type(value), f"a {type(value).__name__}"
    )


def integer_value(value: Any, what: str, error: type[SamLoraError] = PromptError) -> int:
    """``value`` as a Python ``int``: integers and whole-number floats only.

    Refuses booleans, fractions (``1.5`` is never truncated to ``1``), NaN/inf, strings and
    anything else with ``error`` naming ``what``.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, bool | np.bool_):
        raise error(f"{what} must be an integer, not the boolean {value}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if np.isfinite(number) and number.is_integer():
            return int(number)
        raise error(f"{what} must be a whole number, got {short_repr(value)}")
    raise error(f"{what} must be an integer, got {_kind(value)}: {short_repr(value)}")


def check_object_id(value: Any, *, dtype: Any = None, where: str = "") -> int:
    """An object id as ``int``: a whole number in 1 … 2³¹ − 1 (and within ``dtype``).

    Parameters
    ----------
    value
        The id (a label value, a prompt's ``obj_id``...).
    dtype : numpy dtype, optional
        The dtype it must fit, e.g. a user's uint8 masks layer.
    where : str
        Where the id is going, shown in the message (``"layer 'cells masks'"``).

    Raises
    ------
    PromptError
    """
    obj_id = integer_value(value, "an object id")
    if not 1 <= obj_id <= MAX_OBJECT_ID:
        raise PromptError(
            f"object id {short_repr(obj_id)} is invalid: ids start at 1 and go up to "
            f"{MAX_OBJECT_ID} (2³¹ − 1)"
        )
    if dtype is not None:
        check_ids_fit(obj_id, dtype, where=where)
    return obj_id


def check_ids_fit(max_id: int, dtype: Any, *, where: str = "") -> None:
    """Raise :class:`PromptError` when label value ``max_id`` does not fit ``dtype``.

    Integer dtypes hold their ``iinfo`` range; floats hold every int32 id exactly up to
    their mantissa (2²⁴ for float32); booleans hold only 1.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        limit = int(np.iinfo(dtype).max)
    elif dtype.kind == "f":
        limit = 2 ** (np.finfo(dtype).nmant + 1)
    elif dtype.kind == "b":
        limit = 1
    else:
        raise PromptError(f"{where or 'the layer'} has dtype {dtype}; label values need integers")
    if int(max_id) > limit:
        target = f" {where}" if where else ""
        raise PromptError(
            f"object id {int(max_id)} does not fit the {dtype} labels{target} (largest value "
            f"{limit}); use a smaller id, or convert the layer to int32"
        )


def check_frame(value: Any, num_frames: int) -> int:
    """A frame index as ``int``: a whole number in ``0 … num_frames − 1``.

    Raises
    ------
    PromptError
    """
    frame = integer_value(value, "a frame index")
    if not 0 <= frame < num_frames:
        raise PromptError(
            f"frame {short_repr(frame)} is out of range: the stack has {num_frames} frame(s) "
            f"(0–{num_frames - 1})"
        )
    return frame


def check_frames(values: Any, num_frames: int) -> list[int]:
    """Frame indices (any iterable of them) as sorted distinct integers, each checked by
    :func:`check_frame`; a single number or a string is not a list of frames.

    Raises
    ------
    PromptError
    """
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise PromptError(
            f"frames must be a list of frame indices, got {_kind(values)}: {short_repr(values)}"
        )
    return sorted({check_frame(value, num_frames) for value in values})


def finite_number(value: Any, what: str, error: type[SamLoraError] = ConfigError) -> float:
    """``value`` as a finite ``float``: a real number, never a boolean, string or NaN/inf.

    Raises
    ------
    ConfigError
        (or ``error``) naming ``what`` and the value.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise error(f"{what} must be a number, got {_kind(value)}: {short_repr(value)}")
    number = float(value)
    if not np.isfinite(number):
        raise error(f"{what} must be a finite number, got {short_repr(value)}")
    return number


def _numbers(value: Any, what: str) -> np.ndarray:
    """A float64 array of finite real numbers, or :class:`PromptError` naming ``what``."""
    if value is None:
        raise PromptError(f"{what} are missing (got None)")
    if isinstance(value, str | bytes):
        raise PromptError(f"{what} must be numbers, got a string: {short_repr(value)}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise PromptError(f"{what} must be an array of numbers: {short_repr(value)}") from exc
    if array.dtype.kind == "c":
        raise PromptError(f"{what} must be real numbers, not complex")
    if array.dtype.kind not in "biuf":
        raise PromptError(f"{what} must be numbers, got {_kind(array)}: {short_repr(value)}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise PromptError(f"{what} contain NaN or infinite values")
    return array


def check_points(points: Any, labels: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 2)`` float32 ``(row, col)`` points and ``(N,)`` int32 labels (default all 1).

    A single ``(row, col)`` pair of shape ``(2,)`` is one point. The points may be empty
    here (:func:`~.tracking.validate_prompts` refuses an empty prompt).

    Raises
    ------
    PromptError
        Non-numeric, complex, NaN/inf, not ``(N, 2)``, or labels not ``(N,)`` whole numbers.
    """
    array = _numbers(points, "points")
    if array.ndim == 1 and array.size == 2:
        array = array[None]
    if array.ndim == 1 and array.size == 0:
        array = array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2:
        raise PromptError(
            f"points must have shape (N, 2) — one (row, col) per click — not {array.shape}"
        )
    if labels is None:
        point_labels = np.ones(len(array), dtype=np.int32)
    else:
        raw = _numbers(labels, "point labels").reshape(-1)
        if not np.all(raw == np.round(raw)):
            raise PromptError("point labels must be 1 (positive) or 0 (negative), not fractions")
        point_labels = raw.astype(np.int32)
    return array.astype(np.float32), point_labels


def check_box(box: Any) -> np.ndarray:
    """A box as four float32 numbers ``(row0, col0, row1, col1)``, corners sorted.

    Raises
    ------
    PromptError
        Not four finite real numbers.
    """
    values = _numbers(box, "box coordinates").reshape(-1)
    if values.size != 4:
        raise PromptError(f"a box needs four numbers: (row0, col0, row1, col1), got {values.size}")
    r0, c0, r1, c1 = values
    return np.array([min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1)], dtype=np.float32)


def check_mask(mask: Any) -> np.ndarray:
    """A 2D boolean mask from a bool or numeric array (non-zero = inside).

    Raises
    ------
    PromptError
        Missing, non-numeric, complex, NaN/inf, or not 2D.
    """
    if isinstance(mask, np.ndarray) and mask.dtype == bool:
        array = mask
    else:
        array = _numbers(mask, "mask values") != 0
    if array.ndim != 2:
        raise PromptError(f"a mask must be a 2D (H, W) array, not of shape {array.shape}")
    return array


def check_label_image(labels: Any, where: str = "the labels") -> np.ndarray:
    """An integer label image (0 = background, ids 1 … 2³¹ − 1) as an int64 array.

    Accepts bool, integer and whole-number float arrays; refuses NaN/inf, fractions,
    negative values and ids beyond int32, naming the first bad value and where it is.

    Raises
    ------
    PromptError
    """
    array = np.asarray(labels)
    if array.dtype == bool:
        return array.astype(np.int64)
    if array.dtype.kind not in "uif":
        raise PromptError(f"{where} have dtype {array.dtype}; label values must be integer ids")
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            count = int(array.size - np.count_nonzero(finite))
            raise PromptError(f"{where} hold {count} NaN or infinite value(s); ids are integers")
        fractional = array != np.round(array)
        if fractional.any():
            value = array[fractional].flat[0]
            raise PromptError(
                f"{where} hold the fractional value {value:g}; label values must be whole "
                "numbers (object ids)"
            )
    if array.size:
        low, high = array.min(), array.max()
        if low < 0:
            raise PromptError(
                f"{where} hold the negative value {low:g}; 0 is background and object ids "
                "start at 1"
            )
        if high > MAX_OBJECT_ID:
            raise PromptError(
                f"{where} hold the id {high:.0f}, beyond the largest object id {MAX_OBJECT_ID}"
            )
    return array.astype(np.int64)


def unpack_mask(bits: Any, shape: tuple[int, int], where: str = "the mask") -> np.ndarray:
    """A bool ``shape`` mask from ``np.packbits`` output, which must hold exactly the bits
    of that shape (a shorter record would be padded with zeros without a word).

    Raises
    ------
    PromptError
    """
    array = np.asarray(bits)
    size = int(np.prod(shape))
    expected = (size + 7) // 8
    if array.dtype != np.uint8 or array.ndim != 1 or array.size != expected:
        raise PromptError(
            f"{where} holds {array.size} {array.dtype} value(s) of shape {array.shape}; a "
            f"{shape[0]}×{shape[1]} mask needs {expected} packed bytes"
        )
    return np.unpackbits(array, count=size).astype(bool).reshape(shape)


def check_image_size(value: Any, error: type[SamLoraError] = ConfigError) -> int:
    """SAM2's input side: a multiple of 32 in 64 … 4096 (what SAM2's image encoder accepts).

    Raises
    ------
    ConfigError
        (or ``error``) naming the value and the nearest valid sizes.
    """
    size = integer_value(value, "image_size", error)
    if size % IMAGE_SIZE_MULTIPLE or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        low = max(MIN_IMAGE_SIZE, min(MAX_IMAGE_SIZE, size // 32 * 32))
        hint = f"e.g. {low} or {min(MAX_IMAGE_SIZE, low + 32)}" if size > 0 else "e.g. 256"
        raise error(
            f"image size {short_repr(size)} is not allowed: SAM2 needs a multiple of "
            f"{IMAGE_SIZE_MULTIPLE} between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} ({hint}; "
            "1024 is the model's own)"
        )
    return size


# --------------------------------------------------------------------------- config values


def kind_of(value: Any) -> str:
    """A short name of ``value``'s type for messages (``list``, ``mapping``, ``string``...)."""
    return {list: "list", dict: "mapping", str: "string"}.get(type(value), type(value).__name__)


def check_keys(
    where: str,
    raw: Any,
    valid: tuple[str, ...] | list[str],
    error: type[SamLoraError] = ConfigError,
) -> None:
    """Raise ``error`` listing the valid keys when ``raw`` has a key outside ``valid``."""
    unknown = sorted(clip(str(k), 40) for k in raw if k not in valid)
    if unknown:
        raise error(
            f"unknown key(s) {', '.join(map(repr, unknown[:10]))} in {where}; valid keys: "
            f"{', '.join(valid)}"
        )


def to_int(value: Any) -> int | None:
    """An ``int`` from an integer or whole-number float, else ``None`` (never a bool)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, float) and value.is_integer() else None


def to_float(value: Any) -> float | None:
    """A finite float from a number or numeric string (YAML 1.1 reads ``1e-4`` as a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, str) and len(value) > 64:
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if np.isfinite(number) else None


def _to_str_tuple(value: Any) -> tuple[str, ...] | None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        return None
    return tuple(items)


def _to_str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    return str(value) if type(value).__name__.endswith("Path") else None


_CONVERT: dict[str, Any] = {
    "int": to_int,
    "float": to_float,
    "bool": lambda v: v if isinstance(v, bool) else None,
    "str": _to_str,
    "tuple[str, ...]": _to_str_tuple,
}
_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean (true or false)",
    "str": "a string",
    "tuple[str, ...]": "a list of strings",
}


def coerce_value(
    key: str, value: Any, annotation: str, error: type[SamLoraError] = ConfigError
) -> Any:
    """``value`` checked and converted to the type named by ``annotation`` (``'int | None'``).

    The one converter of settings and config values: ``None`` only where the annotation
    allows it, integers from whole-number floats, floats from numeric strings, no booleans
    as numbers. The message shows the value bounded (:func:`short_repr`).
    """
    kind = annotation.replace(" | None", "")
    if value is None:
        if annotation.endswith("| None"):
            return None
        raise error(f"{key}=None is not allowed: expected {_NAMES.get(kind, kind)}")
    converted = _CONVERT.get(kind, lambda v: v)(value)
    if converted is None:
        raise error(f"{key}={short_repr(value)} is not allowed: expected {_NAMES.get(kind, kind)}")
    return converted


def check_rule(
    key: str, value: Any, rule: Any, error: type[SamLoraError] = ConfigError, shown: Any = None
) -> None:
    """Raise ``error`` unless ``rule = (predicate, description)`` accepts ``value``."""
    if rule is not None and value is not None and not rule[0](value):
        shown = value if shown is None else shown
        raise error(f"{key}={short_repr(shown)} is not allowed: expected {rule[1]}")


# --------------------------------------------------------------------------- YAML files

#: Largest settings/config file read (a real one is a few kB).
MAX_YAML_BYTES = 1 << 20


def read_yaml(path: Any, what: str = "config", error: type[SamLoraError] = ConfigError) -> Any:
    """Parse a small YAML file safely: no aliases or anchors, bounded size, UTF-8 named.

    A YAML alias lets a 400-byte file expand into gigabytes (a "billion laughs"); settings
    never need one, so any anchor or alias is refused before anything is expanded.

    Raises
    ------
    ConfigError
        (or ``error``) naming the file: missing, a folder, too large, not UTF-8, invalid
        YAML, or using anchors/aliases.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise error(f"{what} {path} is a folder, not a YAML file")
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise error(
                f"{what} {path} is {size} bytes; a settings file is at most {MAX_YAML_BYTES}"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {path} is not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}); "
            "save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        message = message if len(message) <= 200 else message[:199] + "…"
        raise error(f"cannot read {what} {path}: {message}") from None


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors (``&a``) and aliases (``*a``)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML anchors and aliases (&name, *name) are not allowed in settings files",
                event.start_mark,
            )
        return super().compose_node(parent, index)
