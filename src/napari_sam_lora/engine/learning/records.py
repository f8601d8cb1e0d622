"""What learning reports, torch-free (a GUI can import it without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from napari_sam_lora.engine.annotation.corrections import Correction
from napari_sam_lora.engine.core.errors import SamLoraError
from napari_sam_lora.engine.core.validation import check_rule
from napari_sam_lora.engine.learning.lora_settings import SettingsError

if TYPE_CHECKING:
    from napari_sam_lora.engine.learning.training import TrainingReport, TrainStep

__all__ = ["SCOPES", "SCOPE_DESCRIPTIONS", "LearnReport", "LearnStep", "check_scope"]

#: What a learner's adapters learn from and serve: each object its own pool (``"object"``,
#: LIT's rule per object), or one pool shared by every object of the stack (``"class"``:
#: a correction on one nucleus teaches its look-alikes).
SCOPES = ("object", "class")
#: One line per scope, for a choice in a GUI.
SCOPE_DESCRIPTIONS = {
    "object": "each object learns only from its own corrections",
    "class": "one shared set of adapters learns from every object's corrections and "
    "proposes for every object, also for those never corrected",
}


def check_scope(value: object, error: type[SamLoraError] = SettingsError) -> str:
    """``value`` when it is one of :data:`SCOPES`.

    Raises
    ------
    SettingsError
        (or ``error``) naming the value and the allowed scopes.
    """
    allowed = f"one of {', '.join(map(repr, SCOPES))}"
    if value is None:  # check_rule lets None through
        raise error(f"scope=None is not allowed: expected {allowed}")
    check_rule("scope", value, (lambda v: isinstance(v, str) and v in SCOPES, allowed), error)
    return str(value)


@dataclass(frozen=True)
class LearnStep:
    """Progress of :meth:`Learner.learn_steps`: one training step of the adapter a
    correction of ``obj_id`` trains (the object's own, or with ``scope="class"`` one of
    the shared adapters)."""

    obj_id: int
    adapter_name: str
    index: int
    count: int
    step: TrainStep
    scope: str = "object"


@dataclass
class LearnReport:
    """What one :meth:`Learner.learn` call did; ``scope`` is the learner's (see
    :data:`SCOPES`): with ``"class"`` the adapters trained are shared by every object."""

    frame: int
    corrections: list[Correction]
    trained: list[TrainingReport] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)
    scope: str = "object"

    @property
    def scope_note(self) -> str:
        """``"class scope: shared adapters"`` or ``"object scope: per-object adapters"``."""
        if self.scope == "class":
            return "class scope: shared adapters"
        return "object scope: per-object adapters"
