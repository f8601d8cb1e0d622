"""Adapter files: crash-safe re-saves and whole-file validation before injection (issue 11)."""

from __future__ import annotations

import errno
import json
import os

import pytest
import safetensors.torch
import torch

import lora_fixtures
from lora_fixtures import fresh_decoder
from napari_sam_lora.engine.core import atomic
from napari_sam_lora.engine.core.atomic import temp_paths
from napari_sam_lora.engine.core.errors import WriteError
from napari_sam_lora.engine.learning import adapters as A
from napari_sam_lora.engine.learning.adapter_files import (
    check_adapters,
    load_adapters,
    save_adapters,
)
from napari_sam_lora.engine.learning.adapters import AdapterFileError, adapter_names, inject_adapter
from napari_sam_lora.engine.learning.lora_settings import load_settings

decoder = lora_fixtures.decoder
LIT = load_settings("lit")


def _adapters(decoder, *names):
    for seed, name in enumerate(names):
        inject_adapter(decoder, name, LIT)
        with torch.no_grad():
            for p in A.adapter_parameters(decoder, name):
                p.copy_(0.01 * (seed + 1) * torch.ones_like(p))


def test_resave_killed_between_the_renames_keeps_the_old_pair(decoder, tmp_path, monkeypatch):
    _adapters(decoder, "obj1_a0", "obj2_a0")  # FAIL 1
    save_adapters(tmp_path / "run", decoder, ["obj1_a0"], object_ids={"obj1_a0": 1})
    real_replace = os.replace
    calls = []

    def killed(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # safetensors renamed, JSON not yet
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_adapters(tmp_path / "run", decoder, ["obj1_a0", "obj2_a0"])
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    target = fresh_decoder()
    loaded = load_adapters(tmp_path / "run", target)  # the old pair, complete
    assert loaded.names == ["obj1_a0"] and loaded.object_ids == {"obj1_a0": 1}
    save_adapters(tmp_path / "run", decoder, ["obj1_a0", "obj2_a0"])  # the next save completes
    assert load_adapters(tmp_path / "run", fresh_decoder()).names == ["obj1_a0", "obj2_a0"]


def test_save_on_a_full_disk_keeps_the_old_pair_and_no_temp(decoder, tmp_path, monkeypatch):
    _adapters(decoder, "obj1_a0")  # WEAK: raw OSError, .tmp left behind
    save_adapters(tmp_path / "run", decoder, ["obj1_a0"])
    before = (tmp_path / "run.json").read_text()

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(WriteError, match=r"could not write .*run\.safetensors: the disk .* full"):
        save_adapters(tmp_path / "run", decoder, ["obj1_a0"], metadata={"x": 1})
    assert (tmp_path / "run.json").read_text() == before
    assert temp_paths(tmp_path) == []


def _edit(tmp_path, change):
    doc = json.loads((tmp_path / "ok.json").read_text())
    change(doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "ok.safetensors").read_bytes())
    return tmp_path / "bad"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["adapters"][0].update(object_id="one"), "object id must be an integer"),
        (lambda d: d["adapters"][0].update(object_id=2**31), "ids start at 1"),
        (lambda d: d["adapters"][0].update(object_id=1.5), "whole number"),
        (lambda d: d["adapters"][0].update(target_modules="("), "not a valid regex"),
        (lambda d: d["adapters"][0].update(r="4"), "not a rank"),
        (lambda d: d["adapters"][0].update(r=10**8), "outside 1"),
        (lambda d: d["adapters"][0].pop("modules"), "has no 'modules'"),
        (lambda d: d.update(adapters={}), "non-empty list"),
        (lambda d: d["adapters"].append("x"), "not a mapping"),
    ],
)
def test_bad_records_are_refused_before_anything_is_injected(decoder, tmp_path, change, message):
    _adapters(decoder, "obj1_a0")  # FAIL 2, WEAK: invalid regex -> re.error
    save_adapters(tmp_path / "ok", decoder, ["obj1_a0"], object_ids={"obj1_a0": 1})
    bad = _edit(tmp_path, change)
    target = fresh_decoder()
    with pytest.raises(AdapterFileError, match=message):
        load_adapters(bad, target)
    with pytest.raises(AdapterFileError, match=message):
        check_adapters(bad, target)
    assert adapter_names(target) == []
    assert load_adapters(tmp_path / "ok", target).names == ["obj1_a0"]  # a good file still loads


def test_nan_weights_are_refused(decoder, tmp_path):
    _adapters(decoder, "obj1_a0")  # WEAK: NaN weights give empty masks silently
    st, js = save_adapters(tmp_path / "ok", decoder, ["obj1_a0"])
    tensors = safetensors.torch.load(st.read_bytes())
    key = next(iter(tensors))
    tensors[key][0, 0] = float("nan")
    blob = safetensors.torch.save(tensors)
    doc = json.loads(js.read_text())
    import hashlib

    doc["safetensors_sha256"] = hashlib.sha256(blob).hexdigest()
    (tmp_path / "nan.safetensors").write_bytes(blob)
    (tmp_path / "nan.json").write_text(json.dumps(doc))
    target = fresh_decoder()
    with pytest.raises(AdapterFileError, match="not finite"):
        load_adapters(tmp_path / "nan", target)
    assert adapter_names(target) == []


def test_check_adapters_validates_without_injecting(decoder, tmp_path):
    _adapters(decoder, "obj1_a0")
    save_adapters(tmp_path / "ok", decoder, ["obj1_a0"], object_ids={"obj1_a0": 3})
    target = fresh_decoder()
    report = check_adapters(tmp_path / "ok", target)
    assert report.names == ["obj1_a0"] and report.object_ids == {"obj1_a0": 3}
    assert adapter_names(target) == []
    with pytest.raises(AdapterFileError, match="another base model"):
        check_adapters(tmp_path / "ok", target, "0" * 64)
