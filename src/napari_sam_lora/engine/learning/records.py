"""What learning reports, torch-free (a GUI can import it without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from napari_sam_lora.engine.annotation.corrections import Correction

if TYPE_CHECKING:
    from napari_sam_lora.engine.learning.training import TrainingReport, TrainStep

__all__ = ["LearnReport", "LearnStep"]


@dataclass(frozen=True)
class LearnStep:
    """Progress of :meth:`Learner.learn_steps`: one training step of one object's adapter."""

    obj_id: int
    adapter_name: str
    index: int
    count: int
    step: TrainStep


@dataclass
class LearnReport:
    """What one :meth:`Learner.learn` call did."""

    frame: int
    corrections: list[Correction]
    trained: list[TrainingReport] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)
