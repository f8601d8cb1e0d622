"""Sample data for napari's *File > Open Sample* menu: small synthetic stacks.

Each function returns two napari layer-data tuples: the image ``(T, H, W)`` named
``"synthetic <kind>"`` and its ground truth ``(T, H, W)`` as a hidden ``labels`` layer named
``"synthetic <kind> ground truth"``. See :mod:`napari_sam_lora.synthetic`.
"""

from __future__ import annotations

from typing import Any

from napari_sam_lora.synthetic import KIND_DESCRIPTIONS, make_stack

__all__ = [
    "decoy",
    "deforming",
    "drift",
    "moving_decoy",
    "moving_disk",
    "noisy16",
    "occlusion",
    "sample_layers",
    "two_objects",
]

#: Size of the sample stacks: small enough to open instantly and segment on a CPU.
N_FRAMES = 8
SHAPE = (128, 128)

LayerDataTuple = tuple[Any, dict[str, Any], str]


def sample_layers(
    kind: str, n_frames: int = N_FRAMES, shape: tuple[int, int] = SHAPE, seed: int = 0
) -> list[LayerDataTuple]:
    """Image and ground-truth layer-data tuples for one synthetic ``kind``.

    Parameters
    ----------
    kind : str
        One of :data:`napari_sam_lora.synthetic.KINDS`.
    n_frames, shape, seed
        Passed to :func:`napari_sam_lora.synthetic.make_stack`.

    Returns
    -------
    list of tuple
        ``[(image, {"name": ...}, "image"), (labels, {"name": ..., "visible": False},
        "labels")]``.
    """
    image, labels = make_stack(kind, n_frames=n_frames, shape=shape, seed=seed)
    name = f"synthetic {kind}"
    info = {"napari_sam_lora": {"synthetic": kind, "description": KIND_DESCRIPTIONS[kind]}}
    return [
        (image, {"name": name, "metadata": info}, "image"),
        (
            labels,
            {
                "name": f"{name} ground truth",
                "visible": False,
                "metadata": {"napari_sam_lora": {**info["napari_sam_lora"], "ground_truth": True}},
            },
            "labels",
        ),
    ]


def moving_disk() -> list[LayerDataTuple]:
    """One bright disk moving across the frame."""
    return sample_layers("moving_disk")


def deforming() -> list[LayerDataTuple]:
    """A moving blob that grows and changes shape."""
    return sample_layers("deforming")


def decoy() -> list[LayerDataTuple]:
    """A moving disk and an equally bright static decoy (not labelled)."""
    return sample_layers("decoy")


def moving_decoy() -> list[LayerDataTuple]:
    """A moving disk and an equally bright moving decoy (not labelled)."""
    return sample_layers("moving_decoy")


def occlusion() -> list[LayerDataTuple]:
    """A disk that passes behind an opaque bar and reappears."""
    return sample_layers("occlusion")


def drift() -> list[LayerDataTuple]:
    """A moving disk with drifting brightness and background."""
    return sample_layers("drift")


def noisy16() -> list[LayerDataTuple]:
    """A uint16 stack with heavy noise, an offset and hot pixels."""
    return sample_layers("noisy16")


def two_objects() -> list[LayerDataTuple]:
    """Two objects, ids 1 and 2, moving in different directions."""
    return sample_layers("two_objects")
