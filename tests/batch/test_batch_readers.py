"""Lazy stack readers: TIFF, zarr / OME-Zarr, .npy, folders of frames; labels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.data.readers import (
    FrameStack,
    is_stack_path,
    open_stack,
    read_labels,
    stack_name,
)
from napari_sam_lora.engine.core.errors import StackError

tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")


@pytest.fixture
def data() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 4000, size=(4, 24, 32)).astype(np.uint16)


def test_uncompressed_tiff_is_a_memory_map(tmp_path, data):
    tifffile.imwrite(tmp_path / "a.tif", data, photometric="minisblack")
    stack = open_stack(tmp_path / "a.tif")
    assert isinstance(stack, np.memmap)
    assert stack.shape == data.shape and np.array_equal(stack[2], data[2])


def test_compressed_tiff_reads_through_zarr_lazily(tmp_path, data):
    tifffile.imwrite(tmp_path / "b.tif", data, compression="zlib", photometric="minisblack")
    stack = open_stack(tmp_path / "b.tif")
    assert not isinstance(stack, np.ndarray)  # a zarr view, not the whole file in memory
    assert stack.shape == data.shape and stack.dtype == data.dtype
    assert np.array_equal(np.asarray(stack[3]), data[3])


def test_npy_is_memory_mapped_and_pickles_refused(tmp_path, data):
    np.save(tmp_path / "c.npy", data)
    stack = open_stack(tmp_path / "c.npy")
    assert isinstance(stack, np.memmap) and np.array_equal(stack[1], data[1])
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(StackError, match="pickles are refused"):
        open_stack(tmp_path / "obj.npy")


def test_folder_of_frames_in_natural_order_and_mismatch_named(tmp_path, data):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(4):  # frame10 must come after frame2
        tifffile.imwrite(folder / f"frame{[1, 2, 10, 11][t]}.tif", data[t])
    stack = open_stack(folder)
    assert isinstance(stack, FrameStack) and stack.shape == data.shape
    assert np.array_equal(stack[2], data[2]) and np.array_equal(np.asarray(stack), data)
    assert np.array_equal(stack[1:3, 5], data[1:3, 5])
    tifffile.imwrite(folder / "frame12.tif", data[0, :10])
    odd = open_stack(folder)
    with pytest.raises(StackError, match=r"frame12\.tif.*every frame must match"):
        odd[4]


def test_ome_zarr_group_and_singleton_axes(tmp_path, data):
    group = zarr.open_group(str(tmp_path / "d.ome.zarr"), mode="w", zarr_format=2)
    array = group.create_array("0", shape=(1, 4, 1, 24, 32), dtype=data.dtype)
    array[...] = data[None, :, None]
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": ["t", "c", "z", "y", "x"], "datasets": [{"path": "0"}]}
    ]
    stack = open_stack(tmp_path / "d.ome.zarr")
    assert stack.shape == (4, 24, 32) and stack.ndim == 3
    assert np.array_equal(stack[2], data[2]) and np.array_equal(np.asarray(stack), data)
    assert stack_name(tmp_path / "d.ome.zarr") == "d" and is_stack_path(tmp_path / "d.ome.zarr")


def test_zarr_array_opens_as_is(tmp_path, data):
    array = zarr.open_array(str(tmp_path / "e.zarr"), mode="w", shape=data.shape, dtype="u2")
    array[...] = data
    assert np.array_equal(open_stack(tmp_path / "e.zarr")[3], data[3])


def test_damaged_missing_and_unknown_files_are_stack_errors(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(StackError, match=r"bad\.tif: cannot read the stack"):
        open_stack(tmp_path / "bad.tif")
    with pytest.raises(StackError, match="no such file"):
        open_stack(tmp_path / "missing.tif")
    (tmp_path / "x.mp4").write_bytes(b"")
    with pytest.raises(StackError, match="unknown stack format"):
        open_stack(tmp_path / "x.mp4")


def test_read_labels_refuses_fractions_and_negatives(tmp_path):
    np.save(tmp_path / "ok.npy", np.array([[0, 1], [2, 2]], dtype=np.float32))
    assert read_labels(tmp_path / "ok.npy").dtype.kind == "i"
    np.save(tmp_path / "frac.npy", np.array([[0, 1.5]]))
    with pytest.raises(StackError, match="whole numbers"):
        read_labels(tmp_path / "frac.npy")
    np.save(tmp_path / "neg.npy", np.array([[0, -1]], dtype=np.int16))
    with pytest.raises(StackError, match="≥ 0"):
        read_labels(tmp_path / "neg.npy")
