"""Image features cached on disk, so reopening a stack costs no image-encoder call.

Each frame's backbone features are one safetensors file in the user cache
(``<cache>/features/``), named by a SHA-256 over the model (variant, weights file, input
size) and the frame's *normalised* input tensor — so the same pixels seen by the same model
at the same size hit the cache, whichever file or session they come from, and anything
else misses. The folder is bounded (least recently used files go first) and can be
cleared with :func:`clear_feature_cache`. Nothing here is pickled.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from napari_sam_lora.engine.tracking.models import cache_dir

__all__ = ["FeatureDisk", "clear_feature_cache", "default_feature_folder", "model_key"]

DEFAULT_BUDGET_MB = 4096.0


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

    def key(self, image: torch.Tensor) -> str:
        """The file name stem for one normalised input frame."""
        digest = hashlib.sha256(self.model.encode())
        data = image.detach().to("cpu").contiguous()
        digest.update(f"{tuple(data.shape)}|{data.dtype}|".encode())
        digest.update(data.numpy().tobytes())
        return digest.hexdigest()

    def get(self, key: str, device: torch.device) -> list[torch.Tensor] | None:
        """The cached features (on ``device``), or ``None`` when absent or unreadable."""
        from safetensors.torch import load_file

        path = self.folder / f"{key}.safetensors"
        try:
            tensors = load_file(str(path))
            os.utime(path)  # recently used
        except (OSError, ValueError, RuntimeError):
            return None
        levels = sorted(tensors, key=lambda name: int(name.split("_")[1]))
        self.hits += 1
        return [tensors[name].to(device) for name in levels]

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
            write_files({self.folder / f"{key}.safetensors": blob})
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


def clear_feature_cache(folder: Path | None = None) -> int:
    """Delete every cached feature file; returns the bytes freed."""
    folder = Path(folder) if folder is not None else default_feature_folder()
    freed = 0
    for path in folder.glob("*.safetensors"):
        freed += path.stat().st_size
        path.unlink(missing_ok=True)
    return freed
