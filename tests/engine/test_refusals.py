"""Refused before anything is read or built: a stack that cannot fit in memory, a checkpoint
that does not fit its model (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.engine.core import memory
from napari_sam_lora.engine.core.errors import StackError


def test_the_estimate_counts_compressed_labels_and_one_frames_working_copies():
    # labels compressed (0.05 B/px over the stack); 8 decoded int32 frames and 4 float32
    # copies of one frame at work
    assert memory.stack_bytes(3, (100, 200)) == int(0.05 * 3 * 100 * 200) + (8 + 4) * 4 * 20000
    assert memory.stack_bytes(1, (10, 10), channels=3) == 5 + 8 * 400 + 4 * 1200
    # a long stack costs little more than a short one
    assert memory.stack_bytes(300, (1024, 1024)) < 1.5 * memory.stack_bytes(20, (1024, 1024))
    memory.check_stack_fits(3, (100, 200), available=10**9)  # fits: no error


def test_a_huge_stack_is_refused_saying_what_would_fit():
    with pytest.raises(StackError) as caught:
        memory.check_stack_fits(3, (20000, 20000), available=4 * 10**9)
    text = str(caught.value)
    assert "3 frame(s) of 20000×20000 need about 19.3 GB" in text and "4.0 GB are free" in text
    assert "no frame of this size" in text and "region of interest" in text
    with pytest.raises(StackError, match=r"40 MB are free: what fits is no frame of this size"):
        memory.check_stack_fits(40, (1000, 1000), available=40 * 10**6)
    with pytest.raises(StackError, match=r"what fits is 5040 frame\(s\) of this size"):
        memory.check_stack_fits(10**5, (1000, 1000), available=int(300e6 / 0.8))


def test_a_session_refuses_before_reading_a_frame(monkeypatch, tiny_model):
    from napari_sam_lora.engine.tracking.session import Session

    class Unreadable(np.ndarray):  # any frame read would fail the test
        def __getitem__(self, key):
            raise AssertionError("a frame was read")

    stack = np.zeros((6, 64, 64), np.uint8).view(Unreadable)
    monkeypatch.setattr(memory, "available_bytes", lambda: 10_000)
    with pytest.raises(StackError, match="need about"):
        Session(stack, model=tiny_model)


def test_a_checkpoint_that_does_not_fit_names_its_keys_and_shapes():
    import torch

    from napari_sam_lora.engine.tracking.predictor import state_dict_mismatch

    expected = {"a.weight": torch.zeros(2, 3), "b.bias": torch.zeros(4)}
    assert state_dict_mismatch(expected, dict(expected)) == ""
    found = {"a.weight": torch.zeros(3, 3), "b.bias": torch.zeros(4), "extra.x": torch.zeros(1)}
    text = state_dict_mismatch(expected, found)
    assert "unexpected extra.x" in text
    assert "a.weight is (3, 3), not (2, 3)" in text
    assert "missing b.bias" in state_dict_mismatch(expected, {"a.weight": torch.zeros(2, 3)})


def test_loading_a_checkpoint_with_an_extra_key_names_it(tmp_path):
    import torch

    from napari_sam_lora.engine.core.errors import CheckpointError
    from napari_sam_lora.engine.tracking.predictor import load_model

    fresh = load_model("untrained:sam2.1_hiera_tiny", "cpu", 256)  # no adapter ever on it
    state = {k: v.clone() for k, v in fresh.predictor.state_dict().items()}
    state["surplus.weight"] = torch.zeros(3)
    path = tmp_path / "sam2.1_hiera_tiny_plus.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"unexpected surplus\.weight"):
        load_model(str(path), "cpu", 256)
