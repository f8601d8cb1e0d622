"""Image features cached on disk, so reopening a stack costs no image-encoder call.

Each frame's backbone features are one safetensors file in the user cache
(``<cache>/features/``), named by a SHA-256 over the model (variant, weights file, input
size) and the frame's *normalised* input tensor — so the same pixels seen by the same model
at the same size hit the cache, whichever file or session they come from, and anything
else misses. The folder is bounded (least recently used files go first) and can be
cleared with :func:`clear_feature_cache`. Nothing here is pickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from napari_sam_lora.engine.tracking.models import cache_dir

__all__ = [
    "FeatureDisk",
    "clear_feature_cache",
    "default_feature_folder",
    "features_problem",
    "model_key",
]

DEFAULT_BUDGET_MB = 4096.0
#: The dtypes a feature file may hold when the caller names none.
FLOAT_DTYPES = (torch.float32,)

_log = logging.getLogger(__name__)


def default_feature_folder() -> Path:
    """``<cache>/features`` (``NAPARI_SAM_LORA_CACHE`` moves the cache)."""
    return cache_dir() / "features"


def model_key(model: Any) -> str:
    """What identifies a loaded model's image encoder: variant, weights file, input size."""
    spec = model.spec
    weights = "untrained" if spec.untrained else "meta"
    if spec.path is not None:
        stat = Path(spec.path).stat()
        weights = f"{Path(spec.path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"{spec.variant.name}|{weights}|{model.image_size}"


class FeatureDisk:
    """A bounded folder of per-frame backbone features.

    Parameters
    ----------
    folder : Path
        Where the files go (created when first written).
    model : str
        :func:`model_key` of the model whose features these are.
    budget_mb : float
        Size bound of the folder; the least recently used files are removed beyond it.
    """

    def __init__(self, folder: Path, model: str, budget_mb: float = DEFAULT_BUDGET_MB) -> None:
        self.folder = Path(folder)
        self.model = model
        self.budget_bytes = float(budget_mb) * 2**20
        self.hits = 0
        self.writes = 0
        self._reported: set[Path] = set()  # damaged files already logged

    def key(self, image: torch.Tensor) -> str:
        """The file name stem for one normalised input frame."""
        digest = hashlib.sha256(self.model.encode())
        data = image.detach().to("cpu").contiguous()
        digest.update(f"{tuple(data.shape)}|{data.dtype}|".encode())
        digest.update(data.numpy().tobytes())
        return digest.hexdigest()

    def get(
        self,
        key: str,
        device: torch.device,
        shapes: Sequence[tuple[int, ...]] | None = None,
        dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
    ) -> list[torch.Tensor] | None:
        """The cached features (on ``device``), or ``None`` on a miss.

        A miss is a file that is absent, unreadable, or not what :meth:`put` writes for
        ``shapes`` (one shape per level) and ``dtypes``, or holding NaN/inf: a damaged or
        foreign file is removed and logged once, so the caller recomputes and puts them again.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self._path(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            self._discard(path, f"it cannot be read ({_first_line(exc)})")
            return None
        problem = features_problem(tensors, shapes, dtypes)
        if problem is not None:
            self._discard(path, problem)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used
        self.hits += 1
        return [tensors[f"level_{i}"].to(device) for i in range(len(tensors))]

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def _discard(self, path: Path, reason: str) -> None:
        """Remove a damaged or foreign file (best effort) and report it once."""
        if path not in self._reported:
            self._reported.add(path)
            _log.warning(
                "feature cache file %s is unusable: %s; its features are recomputed and the "
                "file replaced",
                path,
                reason,
            )
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)

    def put(self, key: str, features: list[torch.Tensor]) -> None:
        """Store features (best effort: a full or read-only disk only skips caching)."""
        from safetensors.torch import save

        from napari_sam_lora.engine.core.atomic import write_files
        from napari_sam_lora.engine.core.errors import WriteError

        blob = save(
            {f"level_{i}": t.detach().to("cpu").contiguous() for i, t in enumerate(features)}
        )
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_files({self._path(key): blob})
        except (OSError, WriteError):
            return
        self.writes += 1
        self.prune()

    def prune(self) -> int:
        """Remove least recently used files beyond the budget; returns bytes freed."""
        files = sorted(self.folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        freed = 0
        for path in files:
            if total - freed <= self.budget_bytes:
                break
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            freed += size
        return freed


def features_problem(
    tensors: dict[str, torch.Tensor],
    shapes: Sequence[tuple[int, ...]] | None,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
) -> str | None:
    """What makes ``tensors`` (read from a feature file) unusable, or ``None``.

    They must be exactly ``level_0 … level_{n-1}`` (``n = len(shapes)`` when given, else at
    least one), each of its expected shape and one of ``dtypes``, with finite values only.
    """
    count = len(shapes) if shapes is not None else len(tensors)
    names = [f"level_{i}" for i in range(count)]
    if not tensors or sorted(tensors) != sorted(names):
        found = ", ".join(sorted(tensors)[:6]) or "none"
        return f"it holds tensors {found}, not {', '.join(names) or 'level_0 …'}"
    for i, name in enumerate(names):
        tensor = tensors[name]
        if shapes is not None and tuple(tensor.shape) != tuple(shapes[i]):
            return f"{name} has shape {tuple(tensor.shape)}, not {tuple(shapes[i])}"
        if tensor.dtype not in dtypes:
            allowed = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
            return f"{name} has dtype {str(tensor.dtype).removeprefix('torch.')}, not {allowed}"
        if not bool(torch.isfinite(tensor).all()):
            return f"{name} holds NaN or infinite values"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 120 else line[:119] + "…"


def clear_feature_cache(folder: Path | None = None) -> int:
    """Delete every cached feature file; returns the bytes freed."""
    folder = Path(folder) if folder is not None else default_feature_folder()
    freed = 0
    for path in folder.glob("*.safetensors"):
        freed += path.stat().st_size
        path.unlink(missing_ok=True)
    return freed
