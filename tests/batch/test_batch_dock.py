"""The *Segment a folder…* dock: the batch job on a new local cluster, via the threading module."""

from __future__ import annotations

import numpy as np
import pytest

from untrained import TEST_IMAGE_SIZE, TEST_MODEL

pytest.importorskip("distributed")
pytest.importorskip("qtpy")
tifffile = pytest.importorskip("tifffile")


def test_missing_fields_are_reported_and_nothing_starts(qtbot, notes, tmp_path):
    from napari_sam_lora._qt._batch import BatchWidget

    widget = BatchWidget()
    qtbot.addWidget(widget)
    widget.inputs.setText(str(tmp_path))
    assert widget.start_batch() is None
    assert notes == ["Segment a folder: choose the seeds, output first"]
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


@pytest.mark.slow
def test_dock_segments_a_folder_on_a_local_cluster(qtbot, notes, tmp_path):
    from napari_sam_lora._qt._batch import BatchWidget
    from napari_sam_lora.data.readers import open_stack
    from napari_sam_lora.synthetic import make_stack

    data = tmp_path / "data"
    (data / "seeds").mkdir(parents=True)
    image, truth = make_stack("moving_disk", n_frames=4, shape=(64, 64), seed=0)
    tifffile.imwrite(data / "s0.tif", image, photometric="minisblack")
    tifffile.imwrite(data / "seeds" / "s0.tif", truth[2])
    widget = BatchWidget()
    qtbot.addWidget(widget)
    widget.inputs.setText(str(data))  # a folder means every *.tif in it
    widget.seeds.setText(str(data / "seeds"))
    widget.output.setText(str(tmp_path / "out"))
    widget.model.setText(TEST_MODEL)
    widget.image_size.setValue(TEST_IMAGE_SIZE)
    widget.workers.setValue(1)
    job = widget.start_batch()
    assert job is not None and not widget.run_button.isEnabled()
    qtbot.waitUntil(lambda: job.state is not None, timeout=180_000)
    assert job.state == "finished", notes
    assert [widget.rows.item(i).text() for i in range(widget.rows.count())] == ["s0: done"]
    assert widget.progress.value() == widget.progress.maximum() == 1
    assert "dashboard" not in widget.status.text() and widget.run_button.isEnabled()
    labels = np.asarray(open_stack(tmp_path / "out" / "s0_labels.ome.zarr")[...])
    assert labels.shape == truth.shape and labels.max() == 1
    assert (tmp_path / "out" / "summary.csv").exists()
