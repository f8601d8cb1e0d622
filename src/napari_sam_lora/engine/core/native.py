"""Native-library hygiene for the engine (no Qt, no napari).

:func:`preload_library` loads a shared library through libc's ``dlopen`` (with the GIL
released meanwhile, so a worker loading torch or triton does not stall a GUI's main
thread); :func:`preload_triton` loads triton's library with ``RTLD_DEEPBIND`` that way,
without touching the process-wide dlopen flags, so it is safe on any thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import os
import sys

__all__ = ["package_file", "preload_library", "preload_triton"]

_handles: list[int] = []  # loaded libraries stay loaded (never dlclose'd)


def package_file(package: str, *parts: str) -> str | None:
    """A file inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = os.path.join(os.path.dirname(spec.origin), *parts)
    return path if os.path.exists(path) else None


def preload_library(path: str, flags: int | None = None) -> bool:
    """``dlopen`` a shared library through libc, with the GIL released meanwhile.

    Parameters
    ----------
    path : str
        The library file.
    flags : int, optional
        ``dlopen`` flags (default ``RTLD_NOW``).

    Returns
    -------
    bool
        Whether it is loaded (``False`` off Linux or where libc's ``dlopen`` is missing).
    """
    if not sys.platform.startswith("linux"):
        return False  # macOS and Windows: import as usual (no measured stall there)
    try:
        libc = ctypes.CDLL(None)
        dlopen = libc.dlopen
    except (OSError, AttributeError):
        return False
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    handle = dlopen(os.fsencode(path), os.RTLD_NOW if flags is None else flags)
    if handle:
        _handles.append(handle)
    return bool(handle)


def preload_triton() -> None:
    """Import ``triton`` (if installed) so that it cannot crash a running viewer.

    The learning engine imports peft → transformers → ``torch._dynamo`` → ``triton``, whose
    library bundles its own LLVM. Loaded after an OpenGL driver that uses LLVM (Mesa's
    llvmpipe, e.g. under Xvfb or in a VM; radeonsi), its LLVM symbols bind to the driver's
    and the process segfaults. Loaded with ``RTLD_DEEPBIND`` it keeps its own symbols: its
    library is opened that way through :func:`preload_library` (no process-wide flag
    changes, the GIL released), then imported. Safe on any thread.
    """
    deepbind = getattr(os, "RTLD_DEEPBIND", 0)
    if not deepbind or "triton" in sys.modules:
        return
    path = package_file("triton", "_C", "libtriton.so")
    preloaded = path is not None and preload_library(path, os.RTLD_NOW | deepbind)
    flags = sys.getdlopenflags()
    if not preloaded:  # no libc dlopen here: the process-wide flags, briefly
        sys.setdlopenflags(flags | deepbind)
    try:
        with contextlib.suppress(Exception):  # unusable triton: torch copes without it
            importlib.import_module("triton")
    finally:
        sys.setdlopenflags(flags)
