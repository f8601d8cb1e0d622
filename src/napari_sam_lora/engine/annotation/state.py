"""Who made each mask: the annotation state of a session, per (frame, object).

Every (frame, object) a session has a mask for has a *source*:

``prompt``
    The user prompted the object on that frame (clicks, a box or a painted mask).
``correction``
    The user corrected the model's mask on that frame.
``accepted`` / ``auto_accepted``
    The user accepted an adapter's candidate there (by hand, or by the auto-accept rule
    the user switched on).
``sam2`` / ``adapter``
    Model-made: SAM2 tracked it, or an adapter's mask replaced SAM2's while tracking.

The first four are *confirmed*: the session keeps their masks exactly as confirmed, keeps
them as SAM2 conditioning frames, and nothing the plugin does rewrites them unless the
user explicitly resets the object. Model-made masks are rewritten by every propagation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.engine.core.validation import check_frame, check_object_id, unpack_mask

Source = Literal["prompt", "correction", "accepted", "auto_accepted", "sam2", "adapter"]
SOURCES: tuple[str, ...] = ("prompt", "correction", "accepted", "auto_accepted", "sam2", "adapter")
CONFIRMED_SOURCES = frozenset({"prompt", "correction", "accepted", "auto_accepted"})
MODEL_SOURCES = frozenset({"sam2", "adapter"})


@dataclass
class Entry:
    """One (frame, object): its source, its mask when confirmed, the adapter that made it,
    and (for a correction) whether an adapter learned from it."""

    source: str
    mask: np.ndarray | None = None
    adapter: str | None = None
    order: int = 0
    learned: bool = False

    @property
    def confirmed(self) -> bool:
        """Whether the user confirmed this mask."""
        return self.source in CONFIRMED_SOURCES


class AnnotationState:
    """The source of every (frame, object) mask of a session; confirmed masks kept exactly."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int], Entry] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- writing ---------------------------------------------------------------------------
    def make_entry(self, source: str, mask: np.ndarray | None, adapter: str | None = None) -> Entry:
        """A new entry, ordered after every entry made so far (not stored)."""
        self._counter += 1
        return Entry(source, mask, adapter, self._counter)

    def put(self, key: tuple[int, int], entry: Entry | None) -> None:
        """Store ``entry`` for ``key`` as it is (``None`` removes it): what the annotation
        model's history uses to undo and redo."""
        key = (int(key[0]), int(key[1]))
        if entry is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = entry
            self._counter = max(self._counter, entry.order)

    def confirm(
        self, frame: int, obj_id: int, source: str, mask: np.ndarray, adapter: str | None = None
    ) -> None:
        """Record a confirmed mask (the user's), replacing whatever was recorded."""
        if source not in CONFIRMED_SOURCES:
            raise ValueError(f"{source!r} is not a confirmed source: {sorted(CONFIRMED_SOURCES)}")
        self._counter += 1
        key = (int(frame), int(obj_id))
        self._entries[key] = Entry(source, np.asarray(mask, bool).copy(), adapter, self._counter)

    def model_made(self, frame: int, obj_id: int, source: str, adapter: str | None = None) -> bool:
        """Record a model-made mask unless the (frame, object) is confirmed; says if it was."""
        if source not in MODEL_SOURCES:
            raise ValueError(f"{source!r} is not a model source: {sorted(MODEL_SOURCES)}")
        key = (int(frame), int(obj_id))
        if key in self._entries and self._entries[key].confirmed:
            return False
        self._entries[key] = Entry(source, None, adapter)
        return True

    # -- reading ---------------------------------------------------------------------------
    def keys_in_order(self) -> list[tuple[int, int]]:
        """Every ``(frame, obj_id)`` with an entry, in the order the entries were made."""
        return sorted(self._entries, key=lambda k: self._entries[k].order)

    def entry(self, frame: int, obj_id: int) -> Entry | None:
        """The entry of one (frame, object), or ``None``."""
        return self._entries.get((int(frame), int(obj_id)))

    def source(self, frame: int, obj_id: int) -> str | None:
        """The source of the mask of ``obj_id`` on ``frame`` (``None``: no mask yet)."""
        entry = self.entry(frame, obj_id)
        return entry.source if entry else None

    def is_confirmed(self, frame: int, obj_id: int) -> bool:
        """Whether the user confirmed the mask of ``obj_id`` on ``frame``."""
        entry = self.entry(frame, obj_id)
        return bool(entry and entry.confirmed)

    def kept_by_accepts(self, frame: int, obj_id: int) -> bool:
        """Whether an accept leaves the mask of ``obj_id`` on ``frame`` alone: the user
        confirmed it (an automatic accept does not count; a better candidate may replace it)."""
        entry = self.entry(frame, obj_id)
        return bool(entry and entry.confirmed and entry.source != "auto_accepted")

    def confirmed_mask(self, frame: int, obj_id: int) -> np.ndarray | None:
        """The confirmed mask (``None`` when not confirmed)."""
        entry = self.entry(frame, obj_id)
        return entry.mask if entry and entry.confirmed else None

    def confirmed(self, obj_id: int | None = None, frame: int | None = None) -> list[tuple]:
        """Confirmed ``(frame, obj_id)`` pairs in the order they were confirmed."""
        keys = [
            k
            for k, e in self._entries.items()
            if e.confirmed
            and (obj_id is None or k[1] == int(obj_id))
            and (frame is None or k[0] == int(frame))
        ]
        return sorted(keys, key=lambda k: self._entries[k].order)

    def confirmed_frames(self, obj_id: int | None = None) -> list[int]:
        """Frames with at least one confirmed mask (of ``obj_id``, if given), ascending."""
        return sorted({f for f, _ in self.confirmed(obj_id)})

    def frame_sources(self, frame: int) -> dict[int, str]:
        """``{obj_id: source}`` for every object with a mask on ``frame``."""
        return {o: e.source for (f, o), e in sorted(self._entries.items()) if f == int(frame)}

    def frames_with(self, source: str, obj_id: int | None = None) -> list[int]:
        """Frames whose mask (of ``obj_id``, if given) has ``source``, ascending."""
        return sorted(
            {
                f
                for (f, o), e in self._entries.items()
                if e.source == source and (obj_id is None or o == int(obj_id))
            }
        )

    def objects(self) -> list[int]:
        """Object ids with at least one entry, ascending."""
        return sorted({o for _, o in self._entries})

    def counts(self, obj_id: int | None = None) -> dict[str, int]:
        """How many (frame, object)s have each source."""
        counts = dict.fromkeys(SOURCES, 0)
        for (_, o), entry in self._entries.items():
            if obj_id is None or o == int(obj_id):
                counts[entry.source] += 1
        return counts

    # -- files -----------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A JSON-able description and the confirmed masks (``mask_<frame>_<obj>``)."""
        entries, masks = [], {}
        for (frame, obj_id), entry in sorted(self._entries.items(), key=lambda kv: kv[1].order):
            entries.append(
                {
                    "frame": frame,
                    "obj_id": obj_id,
                    "source": entry.source,
                    "adapter": entry.adapter,
                    "learned": entry.learned,
                }
            )
            if entry.mask is not None:
                masks[f"mask_{frame}_{obj_id}"] = np.packbits(entry.mask, axis=None)
        return {"entries": entries}, masks

    @classmethod
    def from_arrays(
        cls,
        doc: dict[str, Any],
        masks: dict[str, np.ndarray],
        frame_shape: tuple[int, int],
        num_frames: int | None = None,
    ) -> AnnotationState:
        """Rebuild a state written by :meth:`to_arrays` for frames of ``frame_shape``
        (and, given ``num_frames``, a stack of that many frames), every record checked.

        Raises
        ------
        PromptError
            A record with a frame out of range, an invalid object id, an unknown source or
            a mask of the wrong size.
        KeyError, TypeError, ValueError
            A record that lacks a field or its mask.
        """
        state = cls()
        for item in doc["entries"]:
            frame, obj_id = item["frame"], check_object_id(item["obj_id"])
            frame = check_frame(frame, num_frames) if num_frames is not None else int(frame)
            source = str(item["source"])
            if source not in SOURCES:
                raise PromptError(f"a record of frame {frame} has the unknown source {source!r}")
            if source in CONFIRMED_SOURCES:
                where = f"the mask of object {obj_id} on frame {frame}"
                mask = unpack_mask(masks[f"mask_{frame}_{obj_id}"], frame_shape, where)
                state.confirm(frame, obj_id, source, mask, item.get("adapter"))
                if item.get("learned"):
                    state.put((frame, obj_id), replace(state.entry(frame, obj_id), learned=True))
            else:
                state.model_made(frame, obj_id, source, item.get("adapter"))
        return state


def overlay_confirmed(
    labels: np.ndarray, state: AnnotationState, frame: int, obj_ids: Iterable[int] | None = None
) -> np.ndarray:
    """Paint the confirmed masks of ``frame`` over ``labels`` (in confirmation order)."""
    wanted = None if obj_ids is None else {int(i) for i in obj_ids}
    for f, obj_id in state.confirmed(frame=frame):
        if wanted is not None and obj_id not in wanted:
            continue
        mask = state.confirmed_mask(f, obj_id)
        labels[labels == obj_id] = 0
        labels[mask] = obj_id
    return labels
