"""Tracks of the masks: centroids per frame and id, the lineage graph, the layer (no Qt)."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_sam_lora.layers.tracks import (
    TrackCache,
    show_tracks,
    tracks_data,
    tracks_graph,
)


def _stack() -> np.ndarray:
    """3 frames 20×30: object 1 a 2×2 square moving right, object 5 a 3×1 bar on frames
    1–2 only."""
    labels = np.zeros((3, 20, 30), np.int32)
    for t in range(3):
        labels[t, 4:6, 2 + 3 * t : 4 + 3 * t] = 1
    labels[1:, 10:13, 20] = 5
    return labels


def test_tracks_data_are_the_centroids_per_frame_and_id():
    data = tracks_data(_stack())
    expected = np.array(
        [
            [1, 0, 4.5, 2.5],
            [1, 1, 4.5, 5.5],
            [1, 2, 4.5, 8.5],
            [5, 1, 11.0, 20.0],
            [5, 2, 11.0, 20.0],
        ],
        float,
    )
    np.testing.assert_allclose(data, expected)
    assert tracks_data(np.zeros((2, 4, 4), np.uint8)).shape == (0, 4)
    np.testing.assert_allclose(tracks_data(_stack(), frames=[2]), expected[[2, 4]])


def test_tracks_data_reads_frame_by_frame():
    class Frames:  # like LabelFrames: only labels[t]
        def __init__(self, stack):
            self.stack, self.read = stack, []

        def __len__(self):
            return len(self.stack)

        def __getitem__(self, t):
            assert isinstance(t, int)
            self.read.append(t)
            return self.stack[t]

    frames = Frames(_stack())
    assert tracks_data(frames).shape == (5, 4)
    assert frames.read == [0, 1, 2]


def test_track_cache_rereads_only_the_changed_frames():
    labels, key = _stack(), object()
    cache = TrackCache()
    np.testing.assert_allclose(cache.update(labels, key), tracks_data(labels))
    labels[2] = 0
    stale = cache.update(labels, key, frames=[])
    assert len(stale) == 5  # frame 2 not re-read
    np.testing.assert_allclose(cache.update(labels, key, frames=[2]), tracks_data(labels))
    assert len(cache.update(labels, object(), frames=[])) == 3  # a new key re-reads all


def test_tracks_graph_is_daughter_to_parent():
    assert tracks_graph({7: 3, 6: 3}) == {6: [3], 7: [3]}
    assert tracks_graph({}) == {}


def test_show_tracks_adds_then_updates_the_layer_with_its_graph():
    viewer = ViewerModel()
    image = viewer.add_image(np.zeros((3, 20, 30)), name="img", scale=(1, 2, 2))
    labels = _stack()
    layer = show_tracks(viewer, image, tracks_data(labels))
    assert layer.name == "img tracks" and tuple(layer.scale) == (1, 2, 2)
    # object 1 divides at frame 2 into 8 and 9
    labels[2][labels[2] == 1] = 0
    labels[2, 4:6, 8] = 8
    labels[2, 4:6, 9] = 9
    again = show_tracks(viewer, image, tracks_data(labels), {8: 1, 9: 1, 42: 1}, offset=(1, 2))
    assert again is layer and len(viewer.layers) == 2
    assert layer.graph == {8: [1], 9: [1]}  # 42 has no track: left out
    assert layer.data[0, 2] == pytest.approx(5.5)  # the offset of a region
    assert show_tracks(viewer, image, np.zeros((0, 4))) is None
    assert "img tracks" not in [x.name for x in viewer.layers]
