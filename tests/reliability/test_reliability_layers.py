"""Output layer writes refuse ids the user's layer dtype cannot hold (issue 11, FAIL 10)."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_sam_lora.engine.core.errors import PromptError
from napari_sam_lora.layers import stack_from_image_layer, write_frame


def test_id_300_is_refused_by_a_uint8_layer_and_nothing_is_written():
    source = stack_from_image_layer(Image(np.random.default_rng(0).random((3, 16, 16))))
    layer = Labels(np.zeros((3, 16, 16), np.uint8), name="cells masks")
    labels = np.zeros((16, 16), np.int32)
    labels[2:5, 2:5] = 300
    with pytest.raises(PromptError, match="object id 300 does not fit the uint8 labels of layer"):
        write_frame(layer, source, 1, labels)
    assert not layer.data.any()  # no silent wrap to 44
    labels[2:5, 2:5] = 255
    assert write_frame(layer, source, 1, labels)
    assert int(layer.data[1, 3, 3]) == 255
