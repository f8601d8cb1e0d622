"""train's Ctrl-C message says only what really exists (issue 11, WEAK)."""

from __future__ import annotations

from napari_sam_lora.cli.train import _left_behind


def test_interrupt_message_names_only_what_exists(tmp_path):
    assert "nothing was saved yet" in _left_behind(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert "a checkpoint is in" in _left_behind(tmp_path)
    assert "adapter" not in _left_behind(tmp_path).split("(")[0]
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    assert "the best adapter so far and a checkpoint" in _left_behind(tmp_path)
