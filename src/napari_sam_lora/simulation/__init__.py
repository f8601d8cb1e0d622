"""The simulated user, shared by ``evaluate`` and fine-tuning's example recording.

:mod:`.clicks` places clicks (LIT's rule), :mod:`.protocol` is the user's behaviour on any
tracker (LIT's protocol), :mod:`.tracker` is that tracker on a SAM2 session, with an
optional learner and optional recording of the decoder inputs.
"""

from napari_sam_lora.simulation.clicks import Click, iou, next_click
from napari_sam_lora.simulation.protocol import (
    CandidateMask,
    FrameRecord,
    ObjectResult,
    Tracker,
    UserSettings,
    run_object,
    scan_order,
    start_frame,
)
from napari_sam_lora.simulation.tracker import RecordSink, SessionTracker

__all__ = [
    "CandidateMask",
    "Click",
    "FrameRecord",
    "ObjectResult",
    "RecordSink",
    "SessionTracker",
    "Tracker",
    "UserSettings",
    "iou",
    "next_click",
    "run_object",
    "scan_order",
    "start_frame",
]
