"""The nuclei kinds: many small look-alike nuclei, exact labels, one division."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.synthetic import KINDS, make_stack, object_ids, write_suite

NUCLEI = ("nuclei", "nuclei_dividing")


@pytest.mark.parametrize("kind", NUCLEI)
def test_registered_and_seeded(kind):
    assert kind in KINDS
    a = make_stack(kind, n_frames=4, shape=(64, 64), seed=2)
    b = make_stack(kind, n_frames=4, shape=(64, 64), seed=2)
    c = make_stack(kind, n_frames=4, shape=(64, 64), seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("kind", NUCLEI)
@pytest.mark.parametrize("shape", [(16, 16), (48, 40), (256, 256)])
def test_every_nucleus_visible_small_and_bright(kind, shape):
    image, labels = make_stack(kind, n_frames=4, shape=shape, seed=1)
    assert image.dtype == np.uint8 and labels.dtype == np.int32
    assert set(np.unique(labels).tolist()) - {0} == set(object_ids(kind))
    ids = [i for i in object_ids(kind) if (labels[0] == i).any()]
    assert len(ids) == 24  # every first-frame nucleus is visible
    if shape == (256, 256):
        areas = np.array([(labels[0] == i).sum() for i in ids])
        # 10-25 px wide ellipses (partly hidden by touching neighbours)
        assert areas.max() < np.pi * 16.0**2 and np.median(areas) > np.pi * 4.0**2
        inside = image[0][labels[0] > 0].mean()
        assert inside > image[0][labels[0] == 0].mean() + 80


def test_nuclei_touch_and_move():
    _, labels = make_stack("nuclei", n_frames=6, shape=(256, 256), seed=0)
    frame = labels[0]
    # neighbouring pixels with two different nonzero ids: touching nuclei
    right = (frame[:, 1:] > 0) & (frame[:, :-1] > 0) & (frame[:, 1:] != frame[:, :-1])
    down = (frame[1:] > 0) & (frame[:-1] > 0) & (frame[1:] != frame[:-1])
    assert right.sum() + down.sum() > 0
    moved = [
        np.hypot(*(np.argwhere(labels[-1] == i).mean(0) - np.argwhere(labels[0] == i).mean(0)))
        for i in object_ids("nuclei")
    ]
    assert 0.2 < np.median(moved) < 15.0


def test_division_has_consistent_ids():
    n_frames = 8
    _, labels = make_stack("nuclei_dividing", n_frames=n_frames, shape=(128, 128), seed=4)
    present = [set(np.unique(f).tolist()) - {0} for f in labels]
    split = n_frames // 2
    mothers = set(range(1, 25)) - present[split]
    assert len(mothers) == 1
    (mother,) = mothers
    for f, ids in enumerate(present):
        if f < split:
            assert mother in ids and not {25, 26} & ids
        else:
            assert mother not in ids and {25, 26} <= ids
    # the daughters appear where the mother was
    before = np.argwhere(labels[split - 1] == mother).mean(0)
    after = np.argwhere(np.isin(labels[split], [25, 26])).mean(0)
    assert np.hypot(*(before - after)) < 6.0


def test_existing_kinds_unchanged_by_the_new_ones():
    # a kind's random stream depends only on its name: adding kinds changes nothing
    image, labels = make_stack("moving_disk", n_frames=3, shape=(32, 32), seed=0)
    assert int(labels.sum()) > 0 and image.dtype == np.uint8
    assert KINDS[:8] == (
        "moving_disk",
        "deforming",
        "decoy",
        "moving_decoy",
        "occlusion",
        "drift",
        "noisy16",
        "two_objects",
    )


def test_suite_with_nuclei(tmp_path):
    suite = write_suite(tmp_path, kinds=["nuclei_dividing"], n_frames=3, shape=(64, 64))
    (entry,) = suite["stacks"]
    assert entry["object_ids"] == list(range(1, 27))
