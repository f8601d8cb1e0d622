"""A damaged disk feature cache is a miss, and bad Session/Learner arguments fail clearly."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_sam_lora.engine.core.errors import ModelError, PromptError, SamLoraError
from napari_sam_lora.engine.tracking.session import Session

LOGGER = "napari_sam_lora.engine.tracking.feature_disk"


def _levels(path: Path) -> list[torch.Tensor]:
    tensors = load_file(str(path))
    return [tensors[f"level_{i}"] for i in range(len(tensors))]


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(range(256)) * 4)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _other_names(path: Path) -> None:
    save_file({f"feat{i}": t for i, t in enumerate(_levels(path))}, str(path))


def _unnumbered_names(path: Path) -> None:
    save_file({f"level_{chr(97 + i)}": t for i, t in enumerate(_levels(path))}, str(path))


def _fewer_levels(path: Path) -> None:
    save_file({f"level_{i}": t for i, t in enumerate(_levels(path)[:-1])}, str(path))


def _other_size(path: Path) -> None:
    small = [t[..., ::2, ::2].contiguous() for t in _levels(path)]
    save_file({f"level_{i}": t for i, t in enumerate(small)}, str(path))


def _other_dtype(path: Path) -> None:
    save_file({f"level_{i}": t.half() for i, t in enumerate(_levels(path))}, str(path))


def _nan(path: Path) -> None:
    levels = [torch.full_like(t, np.nan) for t in _levels(path)]
    save_file({f"level_{i}": t for i, t in enumerate(levels)}, str(path))


def _inf(path: Path) -> None:
    levels = _levels(path)
    levels[-1][0, 0, 0, 0] = np.inf
    save_file({f"level_{i}": t for i, t in enumerate(levels)}, str(path))


DAMAGE = {
    "truncated": _truncated,
    "garbage": _garbage,
    "empty": _empty,
    "other_names": _other_names,
    "unnumbered_names": _unnumbered_names,
    "fewer_levels": _fewer_levels,
    "other_size": _other_size,
    "other_dtype": _other_dtype,
    "nan": _nan,
    "inf": _inf,
}


@pytest.fixture
def tiny_stack(stack) -> np.ndarray:
    return stack[:2].copy()


def _track(session: Session) -> np.ndarray:
    session.add_points(0, 1, [[32, 20]])
    return session.propagate_all("forward")


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_or_foreign_feature_file_is_a_miss_recomputed_and_replaced(
    damage, tiny_model, tiny_stack, tmp_path, caplog, capsys
):
    folder = tmp_path / "features"
    expected = _track(Session(tiny_stack, model=tiny_model, disk_cache=folder))
    files = sorted(folder.glob("*.safetensors"))
    assert len(files) == len(tiny_stack)
    bad = files[0]
    DAMAGE[damage](bad)

    calls = tiny_model.predictor.encoder_calls
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        labels = _track(Session(tiny_stack.copy(), model=tiny_model, disk_cache=folder))
    assert np.array_equal(labels, expected)  # the same masks as with a good cache
    assert tiny_model.predictor.encoder_calls == calls + 1  # only the bad frame recomputed
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert bad.name in warnings[0].getMessage()
    assert capsys.readouterr().out == ""

    # The bad file was replaced: the next opening reads every frame from disk, silently.
    caplog.clear()
    calls = tiny_model.predictor.encoder_calls
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = _track(Session(tiny_stack.copy(), model=tiny_model, disk_cache=folder))
    assert tiny_model.predictor.encoder_calls == calls
    assert np.array_equal(again, expected)
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_expected_feature_layout_matches_what_the_encoder_writes(tiny_model, tiny_stack, tmp_path):
    from napari_sam_lora.engine.tracking import sam2_bridge as bridge

    folder = tmp_path / "features"
    Session(tiny_stack, model=tiny_model, disk_cache=folder).encode([0])
    (written,) = folder.glob("*.safetensors")
    shapes = [tuple(t.shape) for t in _levels(written)]
    assert bridge.feature_shapes(tiny_model.predictor) == shapes


def test_an_unreadable_cache_file_that_cannot_be_removed_is_reported_once(
    tiny_model, tiny_stack, tmp_path, caplog
):
    from napari_sam_lora.engine.tracking.feature_disk import FeatureDisk

    disk = FeatureDisk(tmp_path, "model")
    (tmp_path / "k.safetensors").write_bytes(b"garbage")
    shapes = [(1, 2, 4, 4)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert disk.get("k", torch.device("cpu"), shapes=shapes) is None
        (tmp_path / "k.safetensors").write_bytes(b"garbage again")
        assert disk.get("k", torch.device("cpu"), shapes=shapes) is None
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1
    assert disk.hits == 0


# --------------------------------------------------------------------------- arguments


def test_encode_refuses_a_frame_outside_the_stack_before_any_work(session):
    calls = session.encoder_calls
    with pytest.raises(PromptError, match=r"frame 99 .*4 frame\(s\) \(0–3\)"):
        session.encode([0, 99])
    with pytest.raises(PromptError, match="frame"):
        session.encode(2)  # not a list of frames
    with pytest.raises(PromptError, match="frame"):
        session.encode(["1"])
    assert session.encoder_calls == calls
    assert len(session.feature_cache) == 0


@pytest.mark.parametrize("model", [42, 1.5, None, b"sam2.1_hiera_tiny", ["tiny"]])
def test_session_refuses_a_model_that_is_no_name_path_or_loaded_model(model, stack):
    with pytest.raises(ModelError, match="model must be"):
        Session(stack, model=model)


@pytest.mark.parametrize("margin", ["x", None, float("nan"), True, [0.1]])
def test_learner_refuses_a_bad_assist_margin_before_anything_is_created(
    margin, session, monkeypatch
):
    from napari_sam_lora.engine.learning import learner as learner_module
    from napari_sam_lora.engine.learning import namespaces

    decoder = session.model.predictor.sam_mask_decoder
    before = dict(namespaces._NAMESPACES.get(decoder, {}))

    def never(*args, **kwargs):
        raise AssertionError("settings were loaded before assist_margin was checked")

    monkeypatch.setattr(learner_module, "load_settings", never)
    with pytest.raises(SamLoraError, match="assist_margin") as info:
        learner_module.Learner(session, "default", assist_margin=margin)
    assert type(info.value).__name__ == "SettingsError"
    assert dict(namespaces._NAMESPACES.get(decoder, {})) == before
