"""Stack geometry, intensity normalisation and lazy frames."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.engine.core.errors import StackError
from napari_sam_lora.engine.tracking.frames import NormalisedFrames, intensity_range, stack_geometry


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((32, 40), (1, (32, 40), False)),
        ((5, 32, 40), (5, (32, 40), False)),
        ((5, 32, 40, 3), (5, (32, 40), True)),
        ((5, 32, 40, 4), (5, (32, 40), True)),
    ],
)
def test_geometry(shape, expected):
    assert stack_geometry(np.zeros(shape)) == expected


@pytest.mark.parametrize("shape", [(10,), (2, 3, 32, 40), (2, 2, 3, 32, 40)])
def test_unsupported_shapes(shape):
    with pytest.raises(StackError, match="cannot segment an array of shape"):
        stack_geometry(np.zeros(shape))


def test_nan_and_constant_are_rejected():
    data = np.ones((3, 16, 16), np.float32)
    with pytest.raises(StackError, match="constant"):
        NormalisedFrames(data, 64)
    data[1, 3, 3] = np.nan
    with pytest.raises(StackError, match="NaN"):
        NormalisedFrames(data, 64)
    data[1, 3, 3] = np.inf
    with pytest.raises(StackError, match="infinite"):
        NormalisedFrames(data, 64)


def test_sixteen_bit_range_is_kept():
    """Values far above 255 stay distinct after normalisation (no 8-bit clipping)."""
    data = np.zeros((2, 64, 64), np.uint16)
    data[:, :, :32] = 20000
    data[:, :, 32:] = 40000
    data[:, :8, :8] = 0
    data[:, -8:, -8:] = 65000
    low, high = intensity_range(data, 2)
    assert low < 20000 < 40000 < high
    frame = NormalisedFrames(data, 64)[0]
    assert frame.shape == (3, 64, 64)
    left, right = frame[0, 32, 8].item(), frame[0, 32, 56].item()
    assert right > left + 1.0  # in ImageNet-std units: clearly separated


def test_uint8_uses_full_range():
    data = np.zeros((1, 8, 8), np.uint8)
    data[0, 0, 0] = 10
    assert intensity_range(data, 1) == (0.0, 255.0)


def test_rgb_and_grey_give_three_channels():
    grey = NormalisedFrames(np.random.default_rng(0).random((2, 20, 30)), 32)[1]
    rgba = NormalisedFrames(np.random.default_rng(0).random((2, 20, 30, 4)), 32)[1]
    assert grey.shape == rgba.shape == (3, 32, 32)
    assert np.allclose(grey[0] * 0.229 + 0.485, grey[1] * 0.224 + 0.456, atol=1e-5)


def test_frames_are_read_lazily():
    class Counting:
        def __init__(self, data):
            self.data, self.reads = data, []
            self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

        def __getitem__(self, index):
            self.reads.append(index)
            return self.data[index]

    source = Counting(np.random.default_rng(1).random((40, 16, 16)).astype(np.float32))
    frames = NormalisedFrames(source, 32)
    first_reads = len(source.reads)
    assert first_reads <= 16  # the intensity estimate samples, it does not read all
    frames[39]
    assert source.reads[-1] == 39 and len(source.reads) == first_reads + 1


def test_dask_stack():
    da = pytest.importorskip("dask.array")
    data = da.from_array(np.random.default_rng(2).random((6, 24, 24)), chunks=(1, 24, 24))
    frames = NormalisedFrames(data, 32)
    assert len(frames) == 6 and frames[5].shape == (3, 32, 32)
