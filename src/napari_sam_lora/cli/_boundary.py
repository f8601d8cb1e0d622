"""The one CLI error boundary: every expected failure is one line and exit code 1.

:func:`run_command` runs a command's handler. Expected failures — the package's own errors
(:class:`~napari_sam_lora.engine.core.errors.SamLoraError` and its family, and a ``ValueError``
this package raises on purpose), operating-system
errors on a file, torch's out-of-memory and tensor-shape ``RuntimeError``\\ s, a
``MemoryError`` — print ``napari-sam-lora <command>: error: <what and what to do>`` on one
line. A message too long for one line (a points table's every bad row, say) is written in
full to a file, and its first lines are printed with the file's path: no listed problem is
cut. Ctrl-C is one line too (``interrupted…``, exit code 130). Anything else is a bug: the
traceback is printed, followed by a line saying so. ``--debug`` re-raises everything.
"""

from __future__ import annotations

import errno
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROG = "napari-sam-lora"
ISSUES = "https://github.com/napari-sam-lora/napari-sam-lora/issues"

__all__ = ["PROG", "CliError", "describe", "run_command"]


class CliError(Exception):
    """An expected error of the command line itself: its message is printed as is."""


_MEMORY = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")
_SHAPE = ("must match the size of tensor", "size mismatch", "shapes cannot be multiplied")


#: Messages longer than this (as one line) are printed as lines and written to a file.
ONE_LINE = 400
#: How many lines of a long message are printed (the file holds all of them).
PRINTED_LINES = 20


def _one_line(text: str, limit: int = ONE_LINE) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _os_error(exc: OSError) -> str:
    name = exc.filename
    if name is None:
        return _one_line(str(exc))
    path = Path(str(name))
    code = exc.errno
    if code == errno.ENOENT:
        return f"{path} does not exist; check the path"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: permission denied; choose another path or fix its permissions"
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"{path}: the disk is full; free some space and run again"
    if code == errno.EISDIR:
        return f"{path} is a folder, not a file"
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a folder; remove it or choose another path"
    return f"{path}: {exc.strerror or exc}"


def _raised_by_us(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc`` is this package's code (a deliberate raise)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = Path(tb.tb_frame.f_code.co_filename).as_posix()
    return "/napari_sam_lora/" in filename


def describe(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or ``None`` for a bug."""
    return _describe(exc, full=False)


def _describe(exc: BaseException, full: bool) -> str | None:
    """The message for an expected failure (``full``: the whole text, lines kept)."""
    text = _text(exc, full)
    if text is not None:
        return text
    return _describe_other(exc)


def _text(exc: BaseException, full: bool) -> str | None:
    """The message of an error whose own text is the message, or ``None``."""
    errors = sys.modules.get("napari_sam_lora.engine.core.errors")
    own = isinstance(exc, CliError) or (errors is not None and isinstance(exc, errors.SamLoraError))
    if own or (isinstance(exc, ValueError) and not isinstance(exc, OSError) and _raised_by_us(exc)):
        return str(exc).strip() if full else _one_line(str(exc))
    return None


def _describe_other(exc: BaseException) -> str | None:
    if isinstance(exc, OSError):
        return _os_error(exc)
    if isinstance(exc, MemoryError):
        return (
            "out of memory: use a smaller --image-size, fewer or smaller frames, or a smaller "
            "LoRA rank / batch size"
        )
    if isinstance(exc, RuntimeError):
        text = str(exc)
        low = text.lower()
        if any(m in low for m in _MEMORY) or type(exc).__name__ == "OutOfMemoryError":
            return (
                f"out of memory ({_one_line(_first_line(text), 120)}): use a smaller "
                "--image-size, fewer or smaller frames, a smaller LoRA rank or batch size, or "
                "another --device"
            )
        if any(m in low for m in _SHAPE):
            return (
                f"the model cannot process this input ({_one_line(_first_line(text), 120)}): "
                "--image-size must be a multiple of 32 (e.g. 256, 512, 1024) and checkpoints "
                "and adapters must belong to the chosen model"
            )
    import pickle

    if isinstance(exc, pickle.UnpicklingError):
        return "a file holds Python objects other than tensors, which are never unpickled"
    return None


def run_command(
    command: str, handler: Callable[[Any], int | None], args: Any, debug: bool = False
) -> int:
    """Run ``handler(args)`` inside the boundary; return the exit code.

    Returns ``0`` (or the handler's code), ``1`` for any failure, ``130`` when interrupted.
    """
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG} {command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        message = _describe(exc, full=True)
        if message is not None:
            _print_error(command, message)
            return 1
        traceback.print_exc()
        from napari_sam_lora import __version__

        print(
            f"{PROG} {command}: internal error {type(exc).__name__}: "
            f"{_one_line(str(exc), 200)}. This is a bug in napari-sam-lora {__version__}; "
            f"please report it with the traceback above at {ISSUES}",
            file=sys.stderr,
        )
        return 1


def _print_error(command: str, message: str) -> None:
    """Print an expected failure: one line, or — when long — its first lines and the file
    that holds all of it (nothing is ever cut without saying where the rest is)."""
    head = f"{PROG} {command}: error: "
    if len(_one_line(message, 10**9)) <= ONE_LINE:
        print(head + _one_line(message), file=sys.stderr)
        return
    lines = [line.rstrip() for line in message.splitlines() if line.strip()]
    if len(lines) == 1:  # one long line: printed whole, still one line
        print(head + lines[0].strip(), file=sys.stderr)
        return
    where = _write_full_message(command, message)
    shown = lines[:PRINTED_LINES]
    print(head + shown[0], file=sys.stderr)
    for line in shown[1:]:
        print(line, file=sys.stderr)
    rest = len(lines) - len(shown)
    more = f"{rest} more line(s); " if rest > 0 else ""
    if where is not None:
        print(f"({more}the full message is in {where})", file=sys.stderr)
    elif rest > 0:  # no file could be written: print everything rather than cut it
        for line in lines[PRINTED_LINES:]:
            print(line, file=sys.stderr)


def _write_full_message(command: str, message: str) -> Path | None:
    """Write ``message`` to a new file in the temporary folder; its path, or ``None``."""
    try:
        handle, name = tempfile.mkstemp(prefix=f"{PROG}-{command}-message-", suffix=".txt")
        with open(handle, "w", encoding="utf-8") as stream:
            stream.write(message.rstrip() + "\n")
    except OSError:
        return None
    return Path(name)
