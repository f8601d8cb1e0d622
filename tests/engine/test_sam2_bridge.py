"""The SAM2-private API the engine relies on, checked against the installed sam2."""

from __future__ import annotations

import pytest


def test_installed_sam2_has_the_private_api_we_use(session):
    from napari_sam_lora.engine.tracking import sam2_bridge

    sam2_bridge.check_private_api(session.state)


def test_a_changed_private_api_is_reported_clearly(monkeypatch):
    from sam2 import sam2_video_predictor as svp

    from napari_sam_lora.engine.tracking import sam2_bridge

    def changed(self, inference_state, frame_index):  # a renamed parameter
        return None

    monkeypatch.setattr(svp.SAM2VideoPredictor, "_get_image_feature", changed)
    with pytest.raises(sam2_bridge.Sam2ApiError, match=r"_get_image_feature lost parameter"):
        sam2_bridge.check_private_api()
    with pytest.raises(sam2_bridge.Sam2ApiError, match="lacks 'obj_id_to_idx'"):
        sam2_bridge.check_private_api({"obj_ids": []})


def test_no_module_outside_the_engine_reaches_into_sam2_or_engine_privates():
    import re
    from pathlib import Path

    import napari_sam_lora

    root = Path(napari_sam_lora.__file__).parent
    pattern = re.compile(
        r'state\["|\._(get_image_feature|capturing|job|condition_on|track_to_record|'
        r"session_key|run_single_frame_inference)"
    )
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for path in root.rglob("*.py")
        if "engine" not in path.relative_to(root).parts
        for n, line in enumerate(path.read_text("utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_every_sam2_private_call_of_the_engine_is_in_the_bridge():
    import re
    from pathlib import Path

    import napari_sam_lora.engine as engine

    root = Path(engine.__file__).parent
    private = re.compile(
        r"\._(run_single_frame_inference|get_orig_video_res_output|get_image_feature|"
        r"run_memory_encoder|consolidate_temp_output_across_obj)\("
    )
    found = {path.name for path in root.rglob("*.py") if private.search(path.read_text("utf-8"))}
    assert found <= {"sam2_bridge.py"}
