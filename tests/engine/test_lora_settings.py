"""LoRA settings: presets, validation messages, target-module regexes on the real decoder."""

from __future__ import annotations

import re

import pytest

from lora_fixtures import fresh_decoder
from napari_sam_lora.engine.core.errors import SamLoraError
from napari_sam_lora.engine.learning.lora_settings import (
    LoraSettings,
    SettingsError,
    available_presets,
    load_settings,
)


def test_presets_load_and_lit_matches_the_paper():
    assert {"lit", "default", "strong"} <= set(available_presets())
    lit = load_settings("lit")
    assert (lit.rank, lit.alpha, lit.dropout) == (4, 4.0, 0.1)
    assert (lit.lr_new, lit.lr_finetune) == (1e-4, 5e-5)
    assert (lit.max_steps_new, lit.max_steps_finetune) == (100, 20)
    assert (lit.plateau_patience, lit.plateau_min_iou, lit.fail_iou, lit.fail_step) == (
        10,
        0.6,
        0.2,
        50,
    )
    assert (lit.focal_weight, lit.dice_weight, lit.loss_resolution) == (20.0, 1.0, "full")
    default = load_settings("default")
    assert (default.target_iou, default.patience, default.loss_resolution) == (0.95, 3, "low")
    assert default.max_seconds is None  # learning never depends on the machine's load
    assert load_settings("strong").rank == 16


def test_dataclass_defaults_are_the_default_preset():
    preset = load_settings("default").to_dict()
    defaults = LoraSettings().to_dict()
    preset.pop("description"), defaults.pop("description")
    assert preset == defaults


def test_unknown_key_lists_valid_keys():
    with pytest.raises(SettingsError) as info:
        LoraSettings.from_dict({"rank": 4, "learning_rate": 1e-3})
    message = str(info.value)
    assert "learning_rate" in message
    for key in ("rank", "lr_new", "target_modules", "loss_resolution"):
        assert key in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, SamLoraError)


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("rank", 0, ">= 1"),
        ("rank", "four", "int"),
        ("dropout", 1.0, "[0, 1)"),
        ("dropout", -0.1, "[0, 1)"),
        ("lr_new", 0.0, "> 0"),
        ("lr_finetune", -1e-4, "> 0"),
        ("loss_resolution", "medium", "'low', 'full'"),
        ("target_modules", "(", "regex"),
        ("max_seconds", -1, "null"),
        ("target_iou", 1.5, "(0, 1]"),
        ("restore_best", "yes", "bool"),
        ("replay_size", -1, ">= 0"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(key, value, hint):
    with pytest.raises(SettingsError) as info:
        LoraSettings.from_dict({key: value})
    message = str(info.value)
    assert key in message and repr(value) in message and hint in message


def test_no_mask_loss_is_rejected():
    with pytest.raises(SettingsError, match="no mask loss"):
        LoraSettings(focal_weight=0, dice_weight=0)


def test_replace_validates():
    assert LoraSettings().replace(rank=8).rank == 8
    with pytest.raises(SettingsError, match="rank"):
        LoraSettings().replace(rank=-2)


def test_load_from_path_and_yaml_quirks(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("rank: 8\nlr_new: 1e-4\nmax_seconds: null\n")  # YAML 1.1: 1e-4 is a str
    settings = load_settings(path)
    assert (settings.name, settings.rank, settings.lr_new, settings.max_seconds) == (
        "mine",
        8,
        1e-4,
        None,
    )
    (tmp_path / "bad.yaml").write_text("rank: 4\nranq: 3\n")
    with pytest.raises(SettingsError, match=r"bad\.yaml.*ranq.*Valid keys"):
        load_settings(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(str(tmp_path / "list.yaml"))
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")


def test_unknown_preset_lists_presets():
    with pytest.raises(SettingsError, match=r"Unknown LoRA preset 'fast'.*default.*lit.*strong"):
        load_settings("fast")


def _matches(regex: str) -> list[str]:
    return [n for n, _ in fresh_decoder().named_modules() if n and re.fullmatch(regex, n)]


def test_lit_regex_matches_exactly_the_21_qkv_projections():
    names = _matches(load_settings("lit").target_modules)
    assert len(names) == 21
    assert all(
        n.startswith("transformer.") and n.endswith(("q_proj", "k_proj", "v_proj")) for n in names
    )
    assert "transformer.final_attn_token_to_image.v_proj" in names
    assert load_settings("default").target_modules == load_settings("lit").target_modules


def test_strong_regex_adds_all_transformer_linears_and_hypernetworks():
    names = _matches(load_settings("strong").target_modules)
    assert len(names) == 44
    assert set(_matches(load_settings("lit").target_modules)) < set(names)
    assert "output_hypernetworks_mlps.3.layers.2" in names
    assert "transformer.layers.1.mlp.layers.0" in names
    assert not any(n.startswith(("conv_s0", "conv_s1", "iou_prediction_head")) for n in names)
