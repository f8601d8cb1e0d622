"""The simulated user's clicks; they live in :mod:`napari_sam_lora.simulation.clicks`."""

from napari_sam_lora.simulation.clicks import Click, iou, next_click

__all__ = ["Click", "iou", "next_click"]
