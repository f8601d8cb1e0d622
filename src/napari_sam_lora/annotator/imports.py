"""The engine's heavy imports (torch, SAM2, peft, triton) on a worker without stalling napari.

A worker thread importing torch stalls the event loop although it is not the main thread,
for two reasons measured with ``benchmarks/bench_responsiveness.py --stalls``:

- **The GIL held by native code.** Python loads an extension module (``dlopen`` and its
  static initialisers: libtorch_cpu registers thousands of operators, libtriton its LLVM)
  holding the GIL, for 0.2–0.6 s. Loading those libraries first through libc's ``dlopen``
  called with :mod:`ctypes` releases the GIL meanwhile; the import then finds them loaded.
- **Full garbage collections.** Imports allocate hundreds of thousands of objects, which
  trigger generation-2 collections; each scans the whole heap (napari, Qt wrappers, torch:
  0.2–0.8 s on a 2-core machine) holding the GIL, whichever thread triggered it. During
  :func:`import_modules` automatic collection is paused and afterwards every object that
  exists is moved to the permanent generation (:func:`gc.freeze`), so later collections do
  not scan the imported modules again.

Frozen objects are never collected: a napari layer that existed at the freeze and is
removed later would stay in memory. :func:`thaw` (the dock calls it when a layer is removed
and when it shuts down) gives them back to the collector; the next full collection frees
them, and the survivors of that collection are frozen again.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import sys
import threading
from collections.abc import Iterator

from napari_sam_lora.engine.core.native import package_file, preload_library, preload_triton

__all__ = [
    "ENGINE_MODULES",
    "LEARNING_MODULES",
    "PANEL_MODULES",
    "freezes",
    "import_modules",
    "panel_job",
    "paused_collection",
    "prepare_engine",
    "prepare_learning",
    "prepare_panel",
    "reset",
    "thaw",
]

#: What the first propagation needs (torch, SAM2, hydra).
ENGINE_MODULES = (
    "napari_sam_lora.engine.tracking.predictor",
    "napari_sam_lora.engine.tracking.session",
)
#: What napari needs for the prompt layers' features (imported at their first creation,
#: 0.2-0.5 s, on the main thread otherwise).
PANEL_MODULES = ("pandas",)
#: What the first Learn needs (peft, transformers, triton through torch._dynamo).
LEARNING_MODULES = ("napari_sam_lora.engine.learning.adapters",)

_LOCK = threading.RLock()  # one import window at a time (the main thread never waits on it)
_gc_window = {"thawed": False, "hooked": False, "freezes": 0, "thaws": 0}


def _preload_torch() -> None:
    if "torch" in sys.modules:
        return
    path = package_file("torch", "lib", "libtorch_cpu.so")
    if path is not None:
        preload_library(path)


def _freeze() -> None:
    gc.freeze()
    _gc_window["freezes"] += 1
    _gc_window["thawed"] = False


def _refreeze(phase: str, info: dict) -> None:
    """gc callback: after the first full collection since :func:`thaw`, freeze the
    survivors again (they are all reachable, so nothing collectable gets pinned)."""
    if phase == "stop" and info.get("generation") == 2 and _gc_window["thawed"]:
        _freeze()


def freezes() -> int:
    """How many times the heap was frozen so far: an object that existed when this was
    ``n`` is frozen (until :func:`thaw`) if it is now larger than ``n``."""
    return int(_gc_window["freezes"])


@contextlib.contextmanager
def paused_collection() -> Iterator[None]:
    """No automatic garbage collection inside; everything alive at the end is frozen
    (unless :func:`thaw` was called meanwhile: then the next full collection freezes)."""
    with _LOCK:
        if not _gc_window["hooked"]:
            gc.callbacks.append(_refreeze)
            _gc_window["hooked"] = True
        enabled, thaws = gc.isenabled(), _gc_window["thaws"]
        gc.disable()
        try:
            yield
        finally:
            if _gc_window["thaws"] == thaws:
                _freeze()
            if enabled:
                gc.enable()


def import_modules(*modules: str) -> None:
    """Import ``modules`` (on a worker) with collection paused, then freeze the heap."""
    missing = [m for m in modules if m not in sys.modules]
    if not missing:
        return
    with paused_collection():
        for name in missing:
            importlib.import_module(name)


def prepare_panel() -> None:
    """Import what the panel's first layers need (pandas); run on a worker at dock open."""
    import_modules(*PANEL_MODULES)


def panel_job() -> Iterator[None]:
    """:func:`prepare_panel` as a job for ``_qt.threading.start_job`` (yields nothing)."""
    prepare_panel()
    yield from ()


def prepare_engine() -> None:
    """Import what a propagation needs (torch, SAM2), without stalling the event loop."""
    _preload_torch()
    import_modules(*ENGINE_MODULES)


def prepare_learning() -> None:
    """Import what learning needs (triton, peft), without stalling the event loop.

    Run on a worker: after it, the learning panel's first Learn imports nothing.
    """
    prepare_engine()
    if all(m in sys.modules for m in LEARNING_MODULES):
        return
    with paused_collection():
        preload_triton()
        for name in LEARNING_MODULES:
            importlib.import_module(name)


def thaw() -> None:
    """Give every frozen object back to the collector (a layer or a session that existed
    at the last freeze was dropped: its memory must be freeable); the survivors of the
    next full collection are frozen again. Cheap; never waits for an import."""
    _gc_window["thaws"] += 1
    _gc_window["thawed"] = True
    if gc.get_freeze_count():
        gc.unfreeze()


def reset() -> None:
    """Unfreeze everything and freeze nothing later (until the next import window)."""
    _gc_window["thaws"] += 1
    _gc_window["thawed"] = False
    gc.unfreeze()
