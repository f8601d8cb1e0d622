"""Feature stores: the backbone feature cache and the decoder-input records.

A :class:`BoundedStore` keeps SAM2's image-encoder output for visited frames, bounded by a
memory budget, so re-propagation makes no image-encoder call for a cached frame (an evicted
frame comes back from the disk cache or is encoded again). ``DecoderInputs`` is what SAM2's
mask decoder received while *tracking* one object on one frame: the memory-conditioned
pixel features and friends that LoRA training needs ("fresh features").

What is *stored* per (frame, object) is a :class:`RecordedInputs`: only what is particular
to that (frame, object) — the memory-conditioned embeddings and the prompt tokens. The
high-resolution features are the frame's backbone features (read from the feature cache
when the record is used, so a record never keeps evicted features alive) and the dense
positional encoding is one tensor shared by every record. Records are counted at the bytes
they really hold.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors in ``value`` (nested lists/tuples/dicts allowed; an object
    with an ``nbytes`` attribute, as :class:`RecordedInputs`, counts that)."""
    import torch

    if isinstance(value, RecordedInputs):
        return value.nbytes
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v) for v in value)
    return 0


class BoundedStore:
    """An LRU mapping whose values are evicted once their tensors exceed ``budget_bytes``."""

    def __init__(self, budget_bytes: float) -> None:
        self.budget_bytes = float(budget_bytes)
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self.nbytes = 0

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._items))

    def keys(self) -> list[Any]:
        """Keys from least to most recently used."""
        return list(self._items)

    def get(self, key: Any, default: Any = None) -> Any:
        """Value for ``key`` (marked as recently used), or ``default``."""
        if key not in self._items:
            return default
        self._items.move_to_end(key)
        return self._items[key][0]

    def put(self, key: Any, value: Any) -> None:
        """Store ``value``; evict least recently used entries beyond the budget."""
        self.pop(key)
        size = tensor_bytes(value)
        self._items[key] = (value, size)
        self.nbytes += size
        while self.nbytes > self.budget_bytes and len(self._items) > 1:
            _, (_, old_size) = self._items.popitem(last=False)
            self.nbytes -= old_size

    def pop(self, key: Any) -> Any:
        """Remove ``key`` and return its value (``None`` when absent)."""
        item = self._items.pop(key, None)
        if item is None:
            return None
        self.nbytes -= item[1]
        return item[0]

    def clear(self) -> None:
        """Drop everything."""
        self._items.clear()
        self.nbytes = 0


@dataclass
class DecoderInputs:
    """The mask decoder's inputs for one object on one tracked frame.

    Attributes
    ----------
    frame : int
        Frame index the inputs were recorded on.
    obj_id : int
        Object id (label value) they belong to.
    image_embeddings : torch.Tensor
        ``(1, 256, h, w)`` memory-conditioned pixel features.
    image_pe : torch.Tensor
        ``(1, 256, h, w)`` dense positional encoding.
    sparse_prompt_embeddings : torch.Tensor
        ``(1, n, 256)`` prompt tokens (an empty prompt while tracking).
    dense_prompt_embeddings : torch.Tensor
        ``(1, 256, h, w)`` dense prompt embedding (no-mask embedding while tracking).
    high_res_features : tuple of torch.Tensor
        ``(1, 32, 4h, 4w)`` and ``(1, 64, 2h, 2w)`` high-resolution features.
    multimask_output : bool
        Whether SAM2 asked for three masks (it does while tracking).
    """

    frame: int
    obj_id: int
    image_embeddings: torch.Tensor
    image_pe: torch.Tensor
    sparse_prompt_embeddings: torch.Tensor
    dense_prompt_embeddings: torch.Tensor
    high_res_features: tuple[torch.Tensor, torch.Tensor]
    multimask_output: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``sam_mask_decoder(**kwargs)``."""
        return {
            "image_embeddings": self.image_embeddings,
            "image_pe": self.image_pe,
            "sparse_prompt_embeddings": self.sparse_prompt_embeddings,
            "dense_prompt_embeddings": self.dense_prompt_embeddings,
            "multimask_output": self.multimask_output,
            "repeat_image": False,
            "high_res_features": list(self.high_res_features),
        }

    @property
    def low_res_size(self) -> tuple[int, int]:
        """``(4h, 4w)``: the size of the decoder's mask logits."""
        h, w = self.image_embeddings.shape[-2:]
        return (4 * h, 4 * w)

    def to(self, device: Any) -> DecoderInputs:
        """A copy with every tensor moved to ``device``."""
        return DecoderInputs(
            frame=self.frame,
            obj_id=self.obj_id,
            image_embeddings=self.image_embeddings.to(device),
            image_pe=self.image_pe.to(device),
            sparse_prompt_embeddings=self.sparse_prompt_embeddings.to(device),
            dense_prompt_embeddings=self.dense_prompt_embeddings.to(device),
            high_res_features=tuple(f.to(device) for f in self.high_res_features),
            multimask_output=self.multimask_output,
            extra=dict(self.extra),
        )


def storage_bytes(tensor: torch.Tensor | None) -> int:
    """Bytes of the memory ``tensor`` views (an expanded tensor holds only its source)."""
    return 0 if tensor is None else int(tensor.untyped_storage().nbytes())


@dataclass
class RecordedInputs:
    """What is stored of one (frame, object)'s decoder inputs (see the module docstring).

    Attributes
    ----------
    frame, obj_id : int
        Where they were recorded.
    image_embeddings : torch.Tensor
        ``(1, 256, h, w)`` memory-conditioned pixel features.
    sparse_prompt_embeddings, dense_prompt_embeddings : torch.Tensor
        The prompt encoder's output (while tracking: no prompt; the dense one is the
        no-mask embedding expanded, a few bytes).
    image_pe : torch.Tensor
        The dense positional encoding: the tensor shared by every record of the session.
    multimask_output : bool
        Whether SAM2 asked for three masks.
    nbytes : int
        Bytes this record holds of its own (the shared encoding excluded).
    """

    frame: int
    obj_id: int
    image_embeddings: torch.Tensor
    sparse_prompt_embeddings: torch.Tensor
    dense_prompt_embeddings: torch.Tensor
    image_pe: torch.Tensor
    multimask_output: bool
    nbytes: int = 0

    def inputs(self, high_res_features: tuple[torch.Tensor, ...]) -> DecoderInputs:
        """The full :class:`DecoderInputs`, given the frame's high-resolution features."""
        return DecoderInputs(
            frame=self.frame,
            obj_id=self.obj_id,
            image_embeddings=self.image_embeddings,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=self.sparse_prompt_embeddings,
            dense_prompt_embeddings=self.dense_prompt_embeddings,
            high_res_features=tuple(high_res_features),
            multimask_output=self.multimask_output,
        )
