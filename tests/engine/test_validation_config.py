"""Settings and config files: safe YAML, bounded values and messages (issue 11, FAIL 4, 11)."""

from __future__ import annotations

import time

import pytest

from napari_sam_lora.engine.core.errors import ConfigError
from napari_sam_lora.engine.core.validation import read_yaml
from napari_sam_lora.engine.learning.lora_settings import LoraSettings, SettingsError, load_settings
from napari_sam_lora.finetune.config import load_config

LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
    "rank: [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
)


def test_billion_laughs_in_a_known_key_is_refused_fast(tmp_path):  # FAIL 4
    path = tmp_path / "bomb.yaml"
    path.write_text(LAUGHS)
    start = time.perf_counter()
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert time.perf_counter() - start < 2
    message = str(info.value)
    assert "anchors and aliases" in message and "bomb.yaml" in message and len(message) < 400


def test_billion_laughs_in_a_finetune_config(tmp_path):  # FAIL 4 (check-data / train)
    path = tmp_path / "ft.yaml"
    path.write_text(LAUGHS.replace("rank:", "lora:\n  x:"))
    with pytest.raises(ConfigError, match="anchors and aliases"):
        load_config(path)


def test_non_utf8_settings_file_is_named(tmp_path):  # WEAK: UnicodeDecodeError, no name
    path = tmp_path / "latin.yaml"
    path.write_bytes("description: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SettingsError, match=r"latin\.yaml is not UTF-8 text .*save it as UTF-8"):
        load_settings(path)
    with pytest.raises(ConfigError, match=r"latin\.yaml is not UTF-8"):
        load_config(path)


def test_oversized_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("description: " + "x" * (2 << 20) + "\n")
    with pytest.raises(SettingsError, match="bytes; a settings file is at most"):
        load_settings(path)


def test_a_folder_is_not_a_settings_file(tmp_path):
    (tmp_path / "d.yaml").mkdir()
    with pytest.raises(SettingsError, match="is a folder"):
        read_yaml(tmp_path / "d.yaml", error=SettingsError)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rank", 100_000_000),  # FAIL 11: 100 GB allocation
        ("max_steps_new", 10**9),
        ("replay_size", 10**7),
        ("max_adapters_per_object", 10**6),
    ],
)
def test_upper_bounds(key, value):
    with pytest.raises(SettingsError, match=rf"{key}={value} is not allowed: expected .*<= \d+"):
        LoraSettings.from_dict({key: value})


def test_values_in_messages_are_bounded():
    with pytest.raises(SettingsError) as info:
        LoraSettings.from_dict({"description": ["x" * 10**6] * 1000})
    assert len(str(info.value)) < 200
    with pytest.raises(SettingsError) as info:
        LoraSettings.from_dict({"y" * 10**5: 1})
    assert len(str(info.value)) < 1000


def test_finetune_image_size_must_suit_sam2(tmp_path):  # FAIL 11 --image-size 100 in a config
    path = tmp_path / "c.yaml"
    path.write_text("data: {folder: x}\nmodel: {image_size: 100}\n")
    with pytest.raises(ConfigError, match=r"model.image_size=100 .* multiple of 32"):
        load_config(path)
    path.write_text("data: {folder: x}\nlora: {rank: 100000000}\n")
    with pytest.raises(ConfigError, match=r"rank=100000000 is not allowed"):
        load_config(path)
