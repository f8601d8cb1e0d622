"""Recorded examples on disk: safetensors shards plus an ``index.json``, read lazily.

Each shard holds up to :data:`SHARD_SIZE` examples (decoder inputs in ``float16`` or
``float32``, the target mask as ``uint8``) and the positional encoding they share. The index
carries a key: a cache is reused only by a run whose data, split, model and example settings
give the same key, and only once it is complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import safe_open

from napari_sam_lora.engine.core.atomic import write_files
from napari_sam_lora.engine.tracking.features import DecoderInputs

__all__ = ["SHARD_SIZE", "ExampleInfo", "ExampleSet", "ExampleWriter"]

SHARD_SIZE = 32
_FIELDS = ("emb", "sparse", "dense", "hr0", "hr1")


@dataclass(frozen=True)
class ExampleInfo:
    """Where one example is stored and what it is."""

    shard: str
    index: int
    stack: str
    frame: int
    obj_id: int
    kind: str
    split: str
    multimask: bool
    tokens: int


class ExampleSet:
    """Recorded examples read lazily from their shards.

    Parameters
    ----------
    folder : Path
        The cache folder.
    infos : sequence of ExampleInfo
        The examples in this set.
    key : str
        The cache key they were recorded under (see ``examples.cache_key``).
    """

    def __init__(self, folder: Path, infos: Sequence[ExampleInfo], key: str = "") -> None:
        self.folder = Path(folder)
        self.infos = list(infos)
        self.key = key
        self._files: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.infos)

    @classmethod
    def open(cls, folder: str | Path, key: str | None = None) -> ExampleSet | None:
        """The cached set in ``folder``; ``None`` when missing, incomplete or of another key."""
        folder = Path(folder)
        try:
            doc = json.loads((folder / "index.json").read_text(encoding="utf-8"))
            infos = [ExampleInfo(**e) for e in doc["examples"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not doc.get("complete") or (key is not None and doc.get("key") != key):
            return None
        return cls(folder, infos, str(doc.get("key", "")))

    def subset(self, split: str) -> ExampleSet:
        """The examples of one split (``"train"`` or ``"val"``)."""
        return ExampleSet(self.folder, [i for i in self.infos if i.split == split], self.key)

    def counts(self) -> dict[str, int]:
        """Examples per kind."""
        out: dict[str, int] = {}
        for info in self.infos:
            out[info.kind] = out.get(info.kind, 0) + 1
        return out

    def group_key(self, i: int) -> tuple[int, bool]:
        """Examples with equal keys can share a batch."""
        return (self.infos[i].tokens, self.infos[i].multimask)

    def _file(self, shard: str) -> Any:
        if shard not in self._files:
            self._files[shard] = safe_open(str(self.folder / shard), framework="pt")
        return self._files[shard]

    def get(self, i: int) -> tuple[DecoderInputs, np.ndarray]:
        """Example ``i``: float32 decoder inputs on the CPU and its ``(H, W)`` bool target."""
        info = self.infos[i]
        f = self._file(info.shard)
        t = {name: f.get_tensor(f"{info.index}.{name}").float() for name in _FIELDS}
        inputs = DecoderInputs(
            frame=info.frame,
            obj_id=info.obj_id,
            image_embeddings=t["emb"],
            image_pe=f.get_tensor("pe").float(),
            sparse_prompt_embeddings=t["sparse"],
            dense_prompt_embeddings=t["dense"],
            high_res_features=(t["hr0"], t["hr1"]),
            multimask_output=info.multimask,
        )
        return inputs, f.get_tensor(f"{info.index}.target").numpy().astype(bool)


class ExampleWriter:
    """Accumulates examples and writes them in shards, then the index."""

    def __init__(self, folder: Path, key: str, dtype: str) -> None:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        self.folder, self.key = folder, key
        self.dtype = getattr(torch, dtype)
        self.infos: list[ExampleInfo] = []
        self._tensors: dict[str, torch.Tensor] = {}
        self._pending: list[ExampleInfo] = []
        self._shard = 0

    def add(self, inputs: DecoderInputs, target: np.ndarray, **meta: Any) -> None:
        name = f"shard_{self._shard:05d}.safetensors"
        index = len(self._pending)
        values = (
            inputs.image_embeddings,
            inputs.sparse_prompt_embeddings,
            inputs.dense_prompt_embeddings,
            *inputs.high_res_features,
        )
        for field_name, value in zip(_FIELDS, values, strict=True):
            self._tensors[f"{index}.{field_name}"] = _cpu(value, self.dtype)
        self._tensors[f"{index}.target"] = torch.from_numpy(np.asarray(target, np.uint8).copy())
        self._tensors.setdefault("pe", _cpu(inputs.image_pe, self.dtype))
        self._pending.append(
            ExampleInfo(
                shard=name,
                index=index,
                multimask=bool(inputs.multimask_output),
                tokens=int(inputs.sparse_prompt_embeddings.shape[1]),
                **meta,
            )
        )
        if len(self._pending) >= SHARD_SIZE:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        tensors, shard = self._tensors, self.folder / self._pending[0].shard
        write_files({shard: lambda p: safetensors.torch.save_file(tensors, p)})
        self.infos += self._pending
        self._tensors, self._pending = {}, []
        self._shard += 1

    def finish(self) -> ExampleSet:
        self.flush()
        doc = {"key": self.key, "complete": True, "examples": [asdict(i) for i in self.infos]}
        write_files({self.folder / "index.json": json.dumps(doc)})
        return ExampleSet(self.folder, self.infos, self.key)


def _cpu(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False):
        return t.detach().to("cpu", dtype).contiguous().clone()
