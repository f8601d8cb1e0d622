"""The interactive annotation application, Qt-free: the dock's model.

:class:`Annotator` holds what the user chose, the session of the chosen stack (with its
annotation model and learner) and the masks layer bound to it as a view; :mod:`.jobs` holds
the worker job of every dock action and the typed results they yield; :mod:`.sessions` the
reuse of the loaded model and session. The Qt widgets in ``napari_sam_lora._qt`` are thin
views over these.
"""

from napari_sam_lora.annotator.annotator import (
    AnnotationChanged,
    Annotator,
    Painted,
    PromptLayersChosen,
    Selection,
    StackChanged,
)
from napari_sam_lora.annotator.learning import AcceptPlan, LearningControl, describe_report
from napari_sam_lora.annotator.sessions import (
    Lifecycle,
    LoadProgress,
    ModelReady,
    PropagateRequest,
    SessionCache,
    build_request,
)

__all__ = [
    "AcceptPlan",
    "AnnotationChanged",
    "Annotator",
    "LearningControl",
    "Lifecycle",
    "LoadProgress",
    "ModelReady",
    "Painted",
    "PromptLayersChosen",
    "PropagateRequest",
    "Selection",
    "SessionCache",
    "StackChanged",
    "build_request",
    "describe_report",
]
