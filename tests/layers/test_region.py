"""The region of a session: cropping, prompt translation, the masks view's offset."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.engine.annotation.prompts import BoxPrompt, MaskPrompt, PointPrompt
from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.layers.masks_view import Region
from napari_sam_lora.layers.prompts import prompts_in_region


def test_crop_is_the_region_of_every_frame():
    frames = np.arange(3 * 64 * 64).reshape(3, 64, 64)
    region = Region(8, 40, 16, 48)
    crop = region.crop(frames)
    assert crop.shape == (3, 32, 32) and len(crop) == 3
    np.testing.assert_array_equal(crop[1], frames[1, 8:40, 16:48])
    np.testing.assert_array_equal(np.asarray(crop), frames[:, 8:40, 16:48])


def test_prompts_move_into_the_region_and_outside_ones_are_refused():
    region = Region(8, 40, 16, 48)
    mask = np.zeros((64, 64), bool)
    mask[10:12, 20:22] = True
    moved = prompts_in_region(
        [
            PointPrompt(0, 1, np.array([[10.0, 20.0]]), np.array([1])),
            BoxPrompt(1, 2, np.array([9.0, 17.0, 30.0, 40.0])),
            MaskPrompt(2, 3, mask),
        ],
        region,
    )
    np.testing.assert_allclose(moved[0].points, [[2.0, 4.0]])
    np.testing.assert_allclose(moved[1].box, [1.0, 1.0, 22.0, 24.0])
    assert moved[2].mask.shape == (32, 32) and moved[2].mask[2:4, 4:6].all()
    with pytest.raises(PromptError, match="outside the region"):
        prompts_in_region([PointPrompt(0, 1, np.array([[50.0, 20.0]]), np.array([1]))], region)
    with pytest.raises(PromptError, match="not inside the region"):
        prompts_in_region([BoxPrompt(0, 1, np.array([0.0, 0.0, 20.0, 20.0]))], region)
    with pytest.raises(PromptError):
        Region(5, 5, 0, 10)
