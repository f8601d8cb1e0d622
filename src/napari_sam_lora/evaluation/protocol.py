"""The simulated user (LIT protocol); it lives in :mod:`napari_sam_lora.simulation.protocol`."""

from napari_sam_lora.simulation.protocol import (
    Action,
    CandidateMask,
    FrameRecord,
    ObjectResult,
    Tracker,
    UserSettings,
    run_object,
    scan_order,
    start_frame,
)

__all__ = [
    "Action",
    "CandidateMask",
    "FrameRecord",
    "ObjectResult",
    "Tracker",
    "UserSettings",
    "run_object",
    "scan_order",
    "start_frame",
]
