"""One data reader for evaluation and fine-tuning (issue 8) with the engine's checks (issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_sam_lora.data.stacks import read_images, read_labels
from napari_sam_lora.data.suite import read_suite
from napari_sam_lora.engine.core.errors import DataError, SamLoraError
from napari_sam_lora.evaluation.data import DataError as EvalDataError
from napari_sam_lora.evaluation.data import load_suite
from napari_sam_lora.finetune.pairs import DataError as FinetuneDataError
from napari_sam_lora.synthetic import write_suite


def test_one_data_error_class():
    assert EvalDataError is DataError is FinetuneDataError
    assert issubclass(DataError, SamLoraError) and issubclass(DataError, ValueError)


def test_finetune_reads_data_without_evaluation():
    code = (
        "import sys, napari_sam_lora.finetune.pairs, napari_sam_lora.finetune.data_check; "
        "print(sorted(m for m in sys.modules if m.startswith('napari_sam_lora.evaluation')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture
def suite(tmp_path):
    write_suite(tmp_path / "s", kinds=["moving_disk", "drift"], n_frames=3, shape=(32, 32))
    return tmp_path / "s"


def test_the_suite_reader_resolves_paths(suite):
    stacks = read_suite(suite)
    assert [s.kind for s in stacks] == ["moving_disk", "drift"]
    assert stacks[0].image == suite / "moving_disk_image.tif" and stacks[0].image.is_file()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"stacks": []}, "lists no stacks"),
        ({"stacks": [{"kind": "a", "image": "a.tif"}]}, "needs kind, image and labels"),
        ({"stacks": [{"kind": "a", "image": "../x.tif", "labels": "l.tif"}]}, "outside the"),
        ([1, 2], "no 'stacks' list"),
    ],
)
def test_evaluation_and_finetune_give_the_same_suite_error(suite, tmp_path, doc, message):
    from napari_sam_lora.finetune.config import config_from_dict
    from napari_sam_lora.finetune.pairs import find_pairs

    (suite / "suite.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message) as from_eval:
        load_suite(suite)
    config = config_from_dict({"data": {"folder": str(suite)}}, base_dir=tmp_path)
    with pytest.raises(DataError, match=message) as from_finetune:
        find_pairs(config)
    assert str(from_eval.value) == str(from_finetune.value)


def test_stacks_follow_the_engine_check(tmp_path):  # FAIL 9: consistent with the Session
    np.save(tmp_path / "c.npy", np.ones((3, 8, 8), np.complex64))
    with pytest.raises(DataError, match="complex-valued"):
        read_images(tmp_path / "c.npy")
    np.save(tmp_path / "h.npy", np.arange(3 * 8 * 8, dtype=np.float16).reshape(3, 8, 8))
    assert read_images(tmp_path / "h.npy")[0].dtype == np.float16  # the Session reads it too
    np.save(tmp_path / "e.npy", np.zeros((0,)))
    with pytest.raises(DataError, match=r"holds no pixels \(shape \(0,\)\)"):  # WEAK
        read_images(tmp_path / "e.npy")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.nan, "NaN or infinite"),  # WEAK: reported as "fractional values"
        (1.5, "fractional value 1.5"),
        (-2, "negative value -2"),
        (2.0**33, "beyond the largest object id"),
    ],
)
def test_label_values_follow_the_engine_rules(tmp_path, value, message):
    labels = np.zeros((3, 8, 8), np.float64)
    labels[1, 2, 2] = value
    np.save(tmp_path / "l.npy", labels)
    with pytest.raises(DataError, match=message):
        read_labels(tmp_path / "l.npy", (3, 8, 8), None)
