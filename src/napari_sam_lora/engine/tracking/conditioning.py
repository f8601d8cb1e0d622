"""SAM2 follows the annotation: what SAM2's tracking state is conditioned on, kept equal to
the annotation model's prompts and confirmed masks (the session holds the job).

SAM2 holds the model's prompts (in order) and every confirmed mask as a conditioning frame.
Additions are sent as they are; anything SAM2 holds that the model no longer has (an undo, a
reset, another prompt) restarts SAM2's state and sends everything again — cached image
features are kept. Which confirmed entry each (frame, object) is conditioned on is tracked by
identity: entries are never changed in place (an edit or an undo puts another entry object
there), so nothing is compared pixel by pixel at each job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from napari_sam_lora.engine.annotation.prompts import Prompt, prompt_key
from napari_sam_lora.engine.annotation.state import Entry
from napari_sam_lora.engine.tracking.plans import send_prompts

__all__ = ["Conditioning"]

Key = tuple[int, int]


class Conditioning:
    """What one SAM2 inference state is conditioned on.

    Parameters
    ----------
    predictor
        The session's SAM2 predictor.
    state : dict
        Its inference state.
    """

    def __init__(self, predictor: Any, state: dict) -> None:
        self._predictor, self._state = predictor, state
        self._prompts: list[tuple] = []  # keys of the prompts sent, in order
        self._masks: dict[Key, Entry] = {}  # the confirmed entry each (frame, object) holds

    def restart(self) -> None:
        """Empty SAM2's tracking state; :meth:`follow` refills it."""
        self._predictor.reset_state(self._state)
        self._prompts, self._masks = [], {}

    def sent(self, prompts: Sequence[Prompt], entries: dict[Key, Entry]) -> None:
        """Record prompts the session just gave SAM2 and the entries their answers made."""
        self._prompts.extend(prompt_key(p) for p in prompts)
        self._masks.update(entries)

    def follow(self, annotation: Any, answer: Callable[[int, int], np.ndarray]) -> None:
        """Make SAM2's conditioning equal to ``annotation`` (an ``AnnotationModel``);
        ``answer(frame, obj_id)`` reads SAM2's mask after a prompt was sent again."""
        entries = annotation.entries
        confirmed = {key: entries.entry(*key) for key in entries.confirmed()}
        wanted = [prompt_key(p) for p in annotation.prompts]
        if wanted[: len(self._prompts)] != self._prompts or any(
            confirmed.get(key) is None for key in self._masks
        ):
            self.restart()
        missing = annotation.prompts[len(self._prompts) :]
        if missing:
            send_prompts(self._predictor, self._state, missing)
            self._prompts.extend(prompt_key(p) for p in missing)
            for frame, obj_id in sorted({(int(p.frame), int(p.obj_id)) for p in missing}):
                entry = confirmed.get((frame, obj_id))
                if entry is not None and np.array_equal(answer(frame, obj_id), entry.mask):
                    self._masks[(frame, obj_id)] = entry  # SAM2's answer is the mask kept
        for key, entry in confirmed.items():
            if self._masks.get(key) is not entry:
                frame, obj_id = key
                self._predictor.add_new_mask(
                    self._state, frame_idx=frame, obj_id=obj_id, mask=entry.mask
                )
                self._masks[key] = entry
