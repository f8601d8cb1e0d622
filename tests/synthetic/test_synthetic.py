"""The synthetic stacks: shapes, dtypes, seeding, decoys, and the TIFF suite."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam_lora.synthetic import (
    KIND_DESCRIPTIONS,
    KINDS,
    make_stack,
    object_ids,
    write_suite,
)

SMALL = {"n_frames": 4, "shape": (40, 48)}


def test_kinds_cover_the_scenarios():
    assert set(KINDS) == set(KIND_DESCRIPTIONS)
    for kind in ("moving_disk", "deforming", "decoy", "moving_decoy", "occlusion", "drift"):
        assert kind in KINDS
    assert {"noisy16", "two_objects"} <= set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_dtypes_and_ids(kind):
    image, labels = make_stack(kind, **SMALL)
    assert image.shape == labels.shape == (4, 40, 48)
    assert image.dtype == (np.uint16 if kind == "noisy16" else np.uint8)
    assert labels.dtype == np.int32
    present = set(np.unique(labels).tolist()) - {0}
    assert present == set(object_ids(kind))
    # the object is visible on the first frame, and darker background exists
    assert (labels[0] > 0).any()
    assert image[0][labels[0] > 0].mean() > image[0][labels[0] == 0].mean()


@pytest.mark.parametrize("kind", ["decoy", "noisy16"])
def test_seeding_is_reproducible(kind):
    a_image, a_labels = make_stack(kind, seed=3, **SMALL)
    b_image, b_labels = make_stack(kind, seed=3, **SMALL)
    np.testing.assert_array_equal(a_image, b_image)
    np.testing.assert_array_equal(a_labels, b_labels)
    c_image, _ = make_stack(kind, seed=4, **SMALL)
    assert not np.array_equal(a_image, c_image)


@pytest.mark.parametrize("kind", ["decoy", "moving_decoy"])
def test_decoy_is_as_bright_and_not_labelled(kind):
    image, labels = make_stack(kind)
    bright = image > 120
    for frame in range(image.shape[0]):
        object_area = int((labels[frame] == 1).sum())
        decoy = bright[frame] & (labels[frame] == 0)
        # a second object of about the same size, with no label
        assert 0.7 * object_area < decoy.sum() < 1.3 * object_area
        assert abs(image[frame][decoy].mean() - image[frame][labels[frame] == 1].mean()) < 10


def test_decoy_is_static_or_moving():
    def decoy_centre(kind, frame):
        image, labels = make_stack(kind)
        rows, cols = np.nonzero((image[frame] > 120) & (labels[frame] == 0))
        return np.array([rows.mean(), cols.mean()])

    static = decoy_centre("decoy", 0) - decoy_centre("decoy", 7)
    moving = decoy_centre("moving_decoy", 0) - decoy_centre("moving_decoy", 7)
    assert np.abs(static).max() < 1.0
    assert np.abs(moving).max() > 10.0


def test_occlusion_disappears_and_reappears():
    _, labels = make_stack("occlusion")
    area = (labels > 0).sum(axis=(1, 2))
    assert area[0] > 0 and area[-1] > 0
    assert (area == 0).any()


def test_deforming_changes_shape():
    _, labels = make_stack("deforming")
    area = (labels > 0).sum(axis=(1, 2))
    assert area.max() > 1.5 * area.min()


def test_noisy16_uses_16_bits():
    image, _ = make_stack("noisy16")
    assert image.max() > 255 * 4
    assert np.percentile(image, 99.5) < image.max()  # hot pixels are outliers


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "nope"}, "valid kinds are: moving_disk"),
        ({"kind": "decoy", "n_frames": 0}, "n_frames"),
        ({"kind": "decoy", "shape": (8, 64)}, "at least"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_stack(**kwargs)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_moving_disk_starts_where_the_readme_clicks(seed):
    _, labels = make_stack("moving_disk", seed=seed)
    assert labels[0, 64, 40] == 1


def test_single_frame():
    image, labels = make_stack("moving_disk", n_frames=1, shape=(32, 32))
    assert image.shape == labels.shape == (1, 32, 32)


def test_write_and_load_suite(tmp_path):
    kinds = ["decoy", "noisy16", "two_objects"]
    suite = write_suite(tmp_path / "suite", kinds=kinds, seed=2, **SMALL)
    folder = tmp_path / "suite"
    on_disk = json.loads((folder / "suite.json").read_text())
    assert on_disk == suite
    assert [item["kind"] for item in suite["stacks"]] == kinds
    for item in suite["stacks"]:
        assert (folder / item["image"]).is_file()
        assert (folder / item["labels"]).is_file()
    assert (folder / "decoy_image.tif").is_file() and (folder / "decoy_labels.tif").is_file()

    import tifffile

    with tifffile.TiffFile(folder / "noisy16_image.tif") as tif:
        assert tif.series[0].axes == "TYX"
        assert tif.series[0].shape == (4, 40, 48)
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK

    from napari_sam_lora.data.stacks import read_images, read_labels
    from napari_sam_lora.data.suite import read_suite

    loaded = {}
    for stack in read_suite(folder):  # the one suite.json reader
        image, stems = read_images(stack.image)
        labels, _annotated = read_labels(stack.labels, image.shape[:3], stems)
        loaded[stack.kind] = (image, labels)
    for kind in kinds:
        image, labels = make_stack(kind, seed=2, **SMALL)
        np.testing.assert_array_equal(loaded[kind][0], image)
        np.testing.assert_array_equal(loaded[kind][1], labels)
        assert loaded[kind][0].dtype == image.dtype
        assert loaded[kind][1].dtype == np.int32


def test_write_suite_rejects_unknown_kind_before_writing(tmp_path):
    with pytest.raises(ValueError, match="valid kinds"):
        write_suite(tmp_path / "out", kinds=["decoy", "bogus"])
    assert not (tmp_path / "out").exists()


def test_synthetic_module_is_light():
    import subprocess
    import sys

    code = (
        "import sys, napari_sam_lora.synthetic, napari_sam_lora.sample_data;"
        "bad = {'torch', 'napari', 'qtpy', 'sam2'} & set(sys.modules);"
        "sys.exit(sorted(bad) or 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
