"""The one atomic file-set writer: every file set the project writes goes through here.

Adapters (``.safetensors`` + ``.json``), evaluation reports (``.json``/``.md``/``.png``),
fine-tuning checkpoints and metrics, manifests and label outputs are written the same way:

1. every file of the set is written to a temporary file *in its target folder* (same file
   system, so the final rename is atomic), flushed and ``fsync``-ed;
2. only when every temporary file is complete are they renamed over the targets, and the
   folders are ``fsync``-ed; until then the previous set is untouched;
3. on any failure every temporary file is removed and a :class:`~.errors.WriteError` names
   the file and what to do (disk full, read-only folder, a file where a folder should be).

A target may also be a **folder** (a zarr / OME-Zarr store): its writer fills a temporary
folder beside the target, every file in it is ``fsync``-ed, and it is renamed into place.
``rename`` cannot replace a non-empty folder, so an existing one is first moved aside and
removed once the whole set is in place; a process killed between those two renames leaves
the old folder under a temporary name (removed by :func:`remove_temps`) — or, with
``keep_previous=True``, as :func:`previous_path` — and no target.

With ``keep_previous=True`` — and always for a set of more than one file — each existing
target file is first hard-linked to :func:`previous_path` and those links are removed once
the whole new set is in place: a process killed *between* two renames leaves, for every
file, either the new version or the old one beside it, so a reader that checks the set's
consistency (the adapter loader checks the JSON's safetensors digest, the session reader
the set id both files carry) can always fall back to the complete old set. When *every*
existing target already has a previous version (a save killed between its renames), those
are the last complete set and are kept as they are until this set is complete; a partial
set of previous versions (a kill while linking or while removing them) is replaced, since
the targets themselves are then complete. A save interrupted in-process (Ctrl-C) stops
where a kill would but removes its temporary files, and every completed save removes the
temporary files a killed save of the same targets left behind.

A writer that fails with a ``RuntimeError`` (``torch.save`` reports a full disk that way)
raises a :class:`~.errors.WriteError` that names the file — it is also a ``RuntimeError``.

>>> write_files({out / "report.json": text, out / "report.png": lambda p: fig.savefig(p)})
>>> with FileSet() as files:          # the same, for writers that need a path
...     torch.save(state, files.path(out / "checkpoint.pt"))
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Union

from napari_sam_lora.engine.core.errors import WriteError

__all__ = [
    "Content",
    "FileSet",
    "WriterError",
    "atomic_files",
    "previous_path",
    "remove_temps",
    "temp_paths",
    "write_files",
]

#: What a file of the set holds: bytes, text (UTF-8), or a callable writing the given path
#: (a file, or a folder such as a zarr store).
Content = Union[bytes, str, Callable[[Path], object]]  # noqa: UP007 (runtime alias)

_TEMP_MARK = ".tmp-"
_TOKEN = 4  # bytes of a temporary name's random part
#: Less free space than this when a writer fails: the disk is full.
_FULL_BYTES = 1 << 20


def previous_path(path: str | os.PathLike[str]) -> Path:
    """Where :func:`write_files` keeps the old version of ``path`` during a replacement."""
    path = Path(path)
    return path.with_name(f".{path.name}.prev")


def temp_paths(folder: str | os.PathLike[str]) -> list[Path]:
    """Temporary files and folders of this module left in ``folder`` (by a killed process)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and _TEMP_MARK in p.name)


def remove_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete :func:`temp_paths` of ``folder`` (files and folders); return what was removed.

    Only for folders no other process is writing to at the same time: a temporary entry of
    a write in progress elsewhere would be removed too.
    """
    found = temp_paths(folder)
    for path in found:
        _remove(path)
    return found


class WriterError(WriteError, RuntimeError):
    """A file's writer failed with a ``RuntimeError`` (``torch.save`` on a full disk)."""


def writer_error(path: Path, exc: RuntimeError) -> WriterError:
    """A :class:`WriterError` naming ``path``; says when its disk is full or read-only."""
    folder = path.parent
    try:
        stats = os.statvfs(folder)
        full = stats.f_bavail * stats.f_frsize < _FULL_BYTES
    except (OSError, AttributeError):  # no statvfs on Windows
        full = False
    if full:
        advice = (
            f"the disk holding {folder} is full: free some space (or choose another output "
            "folder) and run again"
        )
    elif not os.access(folder, os.W_OK):
        advice = f"{folder} is not writable: choose another output folder or fix its permissions"
    else:
        text = " ".join(str(exc).split()) or type(exc).__name__
        advice = f"{text[:300]} (is the disk full or the folder not writable?)"
    kept = " (the previous version is unchanged)" if path.exists() else ""
    return WriterError(f"could not write {path}: {advice}{kept}")


def write_error(path: Path, exc: OSError) -> WriteError:
    """A :class:`WriteError` that names ``path`` and says what to do about ``exc``."""
    folder = path.parent
    code = exc.errno
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", None):
        advice = (
            f"the disk holding {folder} is full: free some space (or choose another output "
            "folder) and run again"
        )
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = f"{folder} is not writable: choose another output folder or fix its permissions"
    elif code in (errno.ENOTDIR, errno.EEXIST) or (folder.exists() and not folder.is_dir()):
        blocker = next((p for p in [folder, *folder.parents] if p.exists()), folder)
        advice = f"{blocker} is a file, not a folder: remove it or choose another output folder"
    else:
        advice = exc.strerror or str(exc)
    kept = " (the previous version is unchanged)" if path.exists() else ""
    return WriteError(f"could not write {path}: {advice}{kept}")


class FileSet:
    """A set of files written all-or-nothing (see the module docstring).

    Stage files with :meth:`add` (content) or :meth:`path` (a temporary path for writers
    that need one), then :meth:`commit`; :meth:`discard` (or leaving the ``with`` block on
    an exception) removes every temporary file and leaves the targets untouched.

    Parameters
    ----------
    keep_previous : bool
        Keep each replaced target as :func:`previous_path` until the whole set is in place.
    """

    def __init__(self, keep_previous: bool = False) -> None:
        self.keep_previous = keep_previous
        self._staged: dict[Path, Path] = {}

    def __enter__(self) -> FileSet:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()

    def path(self, target: str | os.PathLike[str]) -> Path:
        """A temporary path in ``target``'s folder (same suffix) that becomes ``target``."""
        target = Path(target)
        if target in self._staged:
            return self._staged[target]
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.discard()
            raise write_error(target, exc) from exc
        token = secrets.token_hex(_TOKEN)
        temp = target.with_name(f".{target.stem}{_TEMP_MARK}{token}{target.suffix}")
        self._staged[target] = temp
        return temp

    def drop(self, target: str | os.PathLike[str]) -> None:
        """Leave ``target`` out of the set (its temporary file or folder is removed)."""
        temp = self._staged.pop(Path(target), None)
        if temp is not None:
            _remove(temp)

    def add(self, target: str | os.PathLike[str], content: Content) -> None:
        """Write ``content`` to ``target``'s temporary file now (fsync-ed)."""
        temp = self.path(target)
        try:
            if callable(content):
                content(temp)
                if not (temp.is_file() or temp.is_dir()):
                    raise WriteError(f"the writer for {target} wrote nothing")
                _fsync_tree(temp)
            else:
                data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
                with open(temp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
        except OSError as exc:
            self.discard()
            if isinstance(exc, WriteError):
                raise
            raise write_error(Path(target), exc) from exc
        except RuntimeError as exc:
            self.discard()
            if isinstance(exc, (NotImplementedError, RecursionError)):
                raise
            raise writer_error(Path(target), exc) from exc
        except BaseException:
            self.discard()
            raise

    def commit(self) -> list[Path]:
        """Rename every staged file (or folder) over its target; return the targets."""
        targets = list(self._staged)
        # every multi-file set keeps its previous version until the new one is complete
        keep = self.keep_previous or len(targets) > 1
        kept: dict[Path, Path] = {}  # target -> its old version, until the set is in place
        held: list[Path] = []  # an interrupted save's previous versions: the last complete set
        replaced: list[Path] = []
        try:
            for target, temp in self._staged.items():
                if not (temp.is_file() or temp.is_dir()):
                    raise WriteError(f"nothing was written for {target}")
                if target.exists() and _is_folder(target) != temp.is_dir():
                    what = "a folder" if _is_folder(target) else "a file"
                    raise WriteError(
                        f"could not write {target}: it is {what} of another kind than the "
                        "output; remove it or choose another path (nothing was replaced)"
                    )
                _fsync_tree(temp)
            if keep:
                previous = [previous_path(t) for t in targets if t.is_file()]
                if previous and all(p.is_file() for p in previous):
                    held = previous
            for target in targets:
                if _is_folder(target):  # a rename cannot replace a non-empty folder
                    kept[target] = self._move_aside(target)
                elif keep and target.is_file() and not held:
                    kept[target] = _link_previous(target)
            for target, temp in self._staged.items():
                os.replace(temp, target)
                replaced.append(target)
        except OSError as exc:
            for target in replaced:  # put the old set back where we can
                if target in kept:
                    if _is_folder(target):
                        _remove(target)
                    os.replace(kept.pop(target), target)
            for target, old in kept.items():
                if _is_folder(old) and not target.exists():
                    os.replace(old, target)  # a folder moved aside and not yet replaced
                else:
                    _remove(old)
            failed = next((t for t, tmp in self._staged.items() if tmp.exists()), targets[0])
            self.discard()
            if isinstance(exc, WriteError):
                raise
            raise write_error(failed, exc) from exc
        except BaseException:
            # interrupted (Ctrl-C): stop where a kill would — the previous versions stay
            # beside the targets — but leave no temporary file (a folder is left for
            # remove_temps / previous_path, as a kill leaves it)
            for target, temp in self._staged.items():
                if target not in replaced and not temp.is_dir():
                    with suppress(OSError):
                        temp.unlink(missing_ok=True)
            self._staged.clear()
            raise
        for folder in {t.parent for t in targets}:
            _fsync_dir(folder)
        for old in [*kept.values(), *held]:
            _remove(old)
        for target in targets:  # left by a killed save of the same targets
            for stale in _stale_temps(target):
                with suppress(OSError):
                    _remove(stale)
        self._staged.clear()
        return targets

    def _move_aside(self, target: Path) -> Path:
        """Rename the folder ``target`` out of the way (see the module docstring)."""
        if self.keep_previous:
            aside = previous_path(target)
            _remove(aside)
        else:
            aside = target.with_name(f".{target.name}{_TEMP_MARK}old-{secrets.token_hex(_TOKEN)}")
        os.replace(target, aside)
        return aside

    def discard(self) -> None:
        """Remove every temporary file; the targets stay as they were."""
        for temp in self._staged.values():
            with suppress(OSError):
                _remove(temp)
        self._staged.clear()


def write_files(
    files: Mapping[str | os.PathLike[str], Content], *, keep_previous: bool = False
) -> list[Path]:
    """Write a set of files all-or-nothing.

    Parameters
    ----------
    files : mapping
        ``{target path: bytes | str | callable(temp_path)}``, written in this order and
        renamed in this order.
    keep_previous : bool
        See :class:`FileSet`.

    Returns
    -------
    list of Path
        The targets written.

    Raises
    ------
    WriteError
        Naming the file that could not be written and what to do; no target changed and
        no temporary file is left.
    """
    fileset = FileSet(keep_previous=keep_previous)
    for target, content in files.items():
        fileset.add(target, content)
    return fileset.commit()


@contextmanager
def atomic_files(keep_previous: bool = False) -> Iterator[FileSet]:
    """``with atomic_files() as files: files.add(...); files.path(...)`` — commit on success."""
    fileset = FileSet(keep_previous=keep_previous)
    with fileset:
        yield fileset


def _link_previous(target: Path) -> Path:
    backup = previous_path(target)
    backup.unlink(missing_ok=True)
    try:
        os.link(target, backup)
    except OSError:  # no hard links on this file system
        shutil.copy2(target, backup)
    return backup


def _stale_temps(target: Path) -> list[Path]:
    """Temporary files and folders of earlier writes of ``target`` (see :func:`temp_paths`)."""
    token = f"[0-9a-f]{{{2 * _TOKEN}}}"
    pattern = re.compile(
        rf"\.{re.escape(target.stem)}{re.escape(_TEMP_MARK)}{token}{re.escape(target.suffix)}"
        rf"|\.{re.escape(target.name)}{re.escape(_TEMP_MARK)}old-{token}"
    )
    return [p for p in temp_paths(target.parent) if pattern.fullmatch(p.name)]


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_tree(path: Path) -> None:
    """``fsync`` a file, or every file and folder of a folder (deepest first)."""
    if not path.is_dir():
        _fsync_file(path)
        return
    for root, _, names in os.walk(path, topdown=False):
        for name in names:
            file = Path(root, name)
            if file.is_file() and not file.is_symlink():
                _fsync_file(file)
        _fsync_dir(Path(root))


def _is_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _remove(path: Path) -> None:
    if _is_folder(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
