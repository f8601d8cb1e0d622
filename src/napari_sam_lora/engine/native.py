"""Native-library hygiene for the engine (no Qt, no napari)."""

from __future__ import annotations

import os
import sys


def preload_triton() -> None:
    """Import ``triton`` (if installed) so that it cannot crash a running viewer.

    The learning engine imports peft → transformers → ``torch._dynamo`` → ``triton``, whose
    library bundles its own LLVM. Loaded after an OpenGL driver that uses LLVM (Mesa's
    llvmpipe, e.g. under Xvfb or in a VM; radeonsi), its LLVM symbols bind to the driver's
    and the process segfaults. Loaded with ``RTLD_DEEPBIND`` it keeps its own symbols. Call
    on the main thread (the dlopen flags are process-wide); it takes a fraction of a second.
    """
    deepbind = getattr(os, "RTLD_DEEPBIND", 0)
    if not deepbind or "triton" in sys.modules:
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import triton  # noqa: F401
    except Exception:  # not installed or unusable: torch copes without it
        pass
    finally:
        sys.setdlopenflags(flags)
