"""peft adapters on the mask decoder: injection, switching, proposals, pools, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lora_fixtures
from lora_fixtures import example, fresh_decoder
from napari_sam_lora.engine.learning import adapter_pool
from napari_sam_lora.engine.learning import adapters as A
from napari_sam_lora.engine.learning.adapter_files import (
    decoder_checksum,
    load_adapters,
    save_adapters,
)
from napari_sam_lora.engine.learning.adapter_pool import AdapterPool
from napari_sam_lora.engine.learning.adapters import (
    AdapterError,
    AdapterFileError,
    Proposal,
    adapter_names,
    adapter_state,
    inject_adapter,
    propose,
    use_adapter,
)
from napari_sam_lora.engine.learning.lora_settings import load_settings

decoder = lora_fixtures.decoder  # fixtures shared with the other LoRA test modules
disk_example = lora_fixtures.disk_example
LIT = load_settings("lit")


def _randomise(decoder, name, seed=0):
    """Give adapter ``name`` non-trivial LoRA weights (peft starts lora_B at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in A.adapter_parameters(decoder, name):
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def _outputs(decoder, inputs):
    decoder.eval()
    with torch.no_grad():
        return decoder(**inputs.as_kwargs())


def test_inject_reports_modules_and_parameters(decoder):
    report = inject_adapter(decoder, "obj1_a0", LIT)
    assert len(report.modules) == 21 and report.n_params == 35_328
    assert adapter_names(decoder) == ["obj1_a0"]
    assert A.active_adapter(decoder) is None  # injection does not switch the decoder
    assert not any(p.requires_grad for p in decoder.parameters())
    strong = inject_adapter(decoder, "obj1_a1", load_settings("strong"))
    assert len(strong.modules) == 44 and strong.n_params > 10 * report.n_params


def test_freeze_except_leaves_only_that_adapters_lora_trainable(decoder):
    inject_adapter(decoder, "a", LIT)
    inject_adapter(decoder, "b", LIT)
    trainable = A.freeze_except(decoder, "a")
    names = {n for n, p in decoder.named_parameters() if p.requires_grad}
    assert len(trainable) == 42 and len(names) == 42
    assert all(".lora_A.a." in n or ".lora_B.a." in n for n in names)
    A.freeze_except(decoder, None)
    assert not any(p.requires_grad for p in decoder.parameters())


def test_regex_matching_nothing_fails_clearly(decoder):
    with pytest.raises(AdapterError, match=r"matches no module.*transformer\.layers\.0"):
        inject_adapter(decoder, "x", LIT.replace(target_modules=r"image_encoder\..*q_proj"))
    with pytest.raises(AdapterError, match="image encoder"):
        inject_adapter(decoder, "x", LIT.replace(target_modules=r"conv_s0"))
    with pytest.raises(AdapterError, match="only Linear"):
        inject_adapter(decoder, "x", LIT.replace(target_modules=r"output_upscaling\.0"))
    inject_adapter(decoder, "x", LIT)
    with pytest.raises(AdapterError, match="already exists"):
        inject_adapter(decoder, "x", LIT)
    with pytest.raises(AdapterError, match="letters, digits"):
        inject_adapter(decoder, "a.b", LIT)
    assert adapter_names(decoder) == ["x"]


def test_biases_kept_and_base_outputs_unchanged_with_adapters_disabled(decoder, disk_example):
    inputs, _ = disk_example
    pristine = fresh_decoder()
    q_bias = pristine.transformer.layers[0].self_attn.q_proj.bias.detach().clone()
    inject_adapter(decoder, "a", LIT)
    _randomise(decoder, "a")
    wrapped = decoder.transformer.layers[0].self_attn.q_proj
    assert wrapped.base_layer.bias is not None
    assert torch.equal(wrapped.base_layer.bias, q_bias)
    expected = _outputs(pristine, inputs)
    with use_adapter(decoder, None):
        base = _outputs(decoder, inputs)
    for e, b in zip(expected, base, strict=True):
        assert torch.equal(e, b)
    with use_adapter(decoder, "a"):
        adapted = _outputs(decoder, inputs)
    assert not torch.equal(adapted[0], expected[0])
    assert A.active_adapter(decoder) is None


def test_use_adapter_restores_previous_choice(decoder):
    inject_adapter(decoder, "a", LIT)
    inject_adapter(decoder, "b", LIT)
    A.activate(decoder, "a")
    with use_adapter(decoder, "b"):
        assert A.active_adapter(decoder) == "b"
        with use_adapter(decoder, None):
            assert A.active_adapter(decoder) is None
    assert A.active_adapter(decoder) == "a"
    with pytest.raises(AdapterError, match="No adapter named 'c'"):
        A.activate(decoder, "c")


def test_proposal_is_deterministic_in_eval_mode(decoder, disk_example):
    inputs, _ = disk_example
    inject_adapter(decoder, "a", LIT.replace(dropout=0.5))
    _randomise(decoder, "a")
    decoder.train()  # propose must switch dropout off and restore the mode
    first, second = propose(decoder, "a", inputs), propose(decoder, "a", inputs)
    assert decoder.training
    assert np.array_equal(first.logits, second.logits)
    assert first.logits.shape == inputs.low_res_size and first.logits.dtype == np.float32
    assert first.confidence == pytest.approx(first.iou_pred * first.object_score)
    assert 0 <= first.mask_index < 3


def test_proposal_applies_object_score_gating(decoder, disk_example):
    inputs, _ = disk_example
    with torch.no_grad():
        decoder.pred_obj_score_head.layers[-1].bias.fill_(-50.0)
    proposal = propose(decoder, None, inputs)
    assert np.all(proposal.logits == -1024.0) and not proposal.mask.any()
    assert proposal.object_score < 1e-6 and proposal.confidence < 1e-6


def _fake_proposals(monkeypatch, table):
    """Make ``propose`` return crafted proposals: ``{name: (logits, confidence)}``."""

    def fake(decoder, name, inputs):
        logits, confidence = table[name]
        return Proposal(name, logits, confidence, 1.0, confidence, 0)

    monkeypatch.setattr(adapter_pool, "propose", fake)


def _logits_with_iou(target, iou):
    """Logits whose mask has roughly ``iou`` with ``target`` (keeps that fraction of it)."""
    mask = np.zeros_like(target)
    rows = np.flatnonzero(target.any(axis=1))
    keep = rows[: round(iou * len(rows))]
    mask[keep] = target[keep]
    return np.where(mask, 10.0, -10.0).astype(np.float32)


def test_pool_rule_uses_confidence_not_ground_truth(monkeypatch, disk_example):
    inputs, target = disk_example
    settings = load_settings("default")
    pool = AdapterPool(1, settings)
    plan = pool.plan(None, inputs, target)
    assert (plan.is_new, plan.adapter_name, plan.reason) == (True, "obj1_a0", "first correction")
    pool.names = ["obj1_a0", "obj1_a1"]
    # a0 matches the correction best, but the model is more confident in a1: fine-tune a1.
    _fake_proposals(
        monkeypatch,
        {
            "obj1_a0": (_logits_with_iou(target, 0.9), 0.2),
            "obj1_a1": (_logits_with_iou(target, 0.6), 0.9),
        },
    )
    plan = pool.plan(None, inputs, target)
    assert plan.ious["obj1_a0"] > plan.ious["obj1_a1"] > 0.4
    assert (plan.is_new, plan.fine_tune, plan.adapter_name) == (False, True, "obj1_a1")
    # every adapter failed (IoU <= 0.4): a new adapter in the next free slot.
    _fake_proposals(
        monkeypatch,
        {
            "obj1_a0": (_logits_with_iou(target, 0.3), 0.2),
            "obj1_a1": (_logits_with_iou(target, 0.1), 0.9),
        },
    )
    plan = pool.plan(None, inputs, target)
    assert (plan.is_new, plan.fine_tune, plan.adapter_name) == (True, False, "obj1_a2")
    # pool full: fine-tune the most confident one instead.
    pool.names.append("obj1_a2")
    _fake_proposals(
        monkeypatch,
        {
            "obj1_a0": (_logits_with_iou(target, 0.3), 0.2),
            "obj1_a1": (_logits_with_iou(target, 0.1), 0.9),
            "obj1_a2": (_logits_with_iou(target, 0.2), 0.5),
        },
    )
    plan = pool.plan(None, inputs, target)
    assert (plan.is_new, plan.adapter_name) == (False, "obj1_a1") and "full" in plan.reason


def test_replay_buffer_is_bounded_and_per_adapter(decoder, disk_example, monkeypatch):
    inputs, target = disk_example
    pool = AdapterPool(2, load_settings("default").replace(replay_size=3))
    plan = pool.plan(decoder, inputs, target)
    pool.begin(decoder, plan)
    for _ in range(5):
        pool.commit(plan)
    assert len(pool.replay) == 3
    entry = pool.replay[-1]
    assert entry.inputs.image_embeddings.device.type == "cpu"
    assert not entry.inputs.image_embeddings.is_inference()
    _fake_proposals(monkeypatch, {"obj2_a0": (_logits_with_iou(target, 0.9), 0.5)})
    plan = pool.plan(decoder, inputs, target)
    assert plan.fine_tune and len(plan.examples) == 1 + 3
    assert plan.examples[0][0] is inputs  # the newest correction first


def test_abort_removes_a_new_adapter(decoder, disk_example):
    inputs, target = disk_example
    pool = AdapterPool(1, LIT)
    plan = pool.plan(decoder, inputs, target)
    report = pool.begin(decoder, plan)
    assert report.name == "obj1_a0" and adapter_names(decoder) == ["obj1_a0"]
    pool.abort(decoder, plan)
    assert adapter_names(decoder) == [] and pool.names == []


def test_checksum_ignores_lora_and_sees_base_changes(decoder):
    before = decoder_checksum(decoder)
    inject_adapter(decoder, "a", LIT)
    _randomise(decoder, "a")
    assert decoder_checksum(decoder) == before
    with torch.no_grad():
        decoder.iou_token.weight[0, 0] += 1
    assert decoder_checksum(decoder) != before


def _two_adapters(decoder):
    inject_adapter(decoder, "obj1_a0", LIT)
    inject_adapter(decoder, "obj2_a0", load_settings("strong"))
    _randomise(decoder, "obj1_a0", seed=1)
    _randomise(decoder, "obj2_a0", seed=2)


def test_save_load_reproduces_proposals_exactly(decoder, disk_example, tmp_path):
    inputs, _ = disk_example
    _two_adapters(decoder)
    expected = {n: propose(decoder, n, inputs) for n in ("obj1_a0", "obj2_a0")}
    st, js = save_adapters(
        tmp_path / "run1",
        decoder,
        ["obj1_a0", "obj2_a0"],
        {"note": "test", "frames": np.arange(3)},
        variant="tiny",
        settings=LIT,
        object_ids={"obj1_a0": 1, "obj2_a0": 2},
        reports={"obj1_a0": {"steps": 3}},
    )
    assert st.name == "run1.safetensors" and js.name == "run1.json"
    doc = json.loads(js.read_text())
    assert doc["base"] == {"variant": "tiny", "decoder_sha256": decoder_checksum(decoder)}
    assert [a["name"] for a in doc["adapters"]] == ["obj1_a0", "obj2_a0"]
    assert len(doc["adapters"][0]["modules"]) == 21

    other = fresh_decoder()
    loaded = load_adapters(tmp_path / "run1.json", other, decoder_checksum(other))
    assert loaded.names == ["obj1_a0", "obj2_a0"]
    assert loaded.object_ids == {"obj1_a0": 1, "obj2_a0": 2}
    assert loaded.settings == LIT and loaded.metadata == {"note": "test", "frames": [0, 1, 2]}
    assert A.active_adapter(other) is None
    for name, want in expected.items():
        got = propose(other, name, inputs)
        assert np.array_equal(got.logits, want.logits)
        assert (got.iou_pred, got.object_score) == (want.iou_pred, want.object_score)


def _snapshot(decoder):
    return (
        adapter_names(decoder),
        A.active_adapter(decoder),
        {k: v.clone() for k, v in decoder.state_dict().items()},
    )


def _assert_untouched(decoder, snapshot):
    names, active, state = snapshot
    assert adapter_names(decoder) == names and A.active_adapter(decoder) == active
    now = decoder.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], state[k]) for k in state)


def test_damaged_or_foreign_files_leave_existing_adapters_untouched(decoder, tmp_path):
    _two_adapters(decoder)
    save_adapters(tmp_path / "ok", decoder, ["obj1_a0", "obj2_a0"])
    target = fresh_decoder()
    inject_adapter(target, "mine", LIT)
    _randomise(target, "mine", seed=5)
    A.activate(target, "mine")
    snap = _snapshot(target)

    blob = bytearray((tmp_path / "ok.safetensors").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "flipped.safetensors").write_bytes(bytes(blob))
    (tmp_path / "flipped.json").write_text((tmp_path / "ok.json").read_text())
    with pytest.raises(AdapterFileError, match="damaged"):
        load_adapters(tmp_path / "flipped", target)
    _assert_untouched(target, snap)

    (tmp_path / "short.json").write_text((tmp_path / "ok.json").read_text()[:50])
    with pytest.raises(AdapterFileError, match="Cannot read"):
        load_adapters(tmp_path / "short", target)
    with pytest.raises(AdapterFileError, match="missing"):
        load_adapters(tmp_path / "nothing", target)
    with pytest.raises(AdapterFileError, match="another base model"):
        load_adapters(tmp_path / "ok", target, "0" * 64)
    foreign = fresh_decoder()
    with torch.no_grad():
        foreign.mask_tokens.weight.mul_(2)
    with pytest.raises(AdapterFileError, match="another base model"):
        load_adapters(tmp_path / "ok", foreign)
    _assert_untouched(target, snap)


def test_name_clash_fails_before_injecting_and_rename_works(decoder, tmp_path):
    _two_adapters(decoder)
    save_adapters(tmp_path / "ok", decoder, ["obj1_a0", "obj2_a0"])
    target = fresh_decoder()
    inject_adapter(target, "obj2_a0", LIT)
    snap = _snapshot(target)
    with pytest.raises(AdapterFileError, match="already has an adapter named 'obj2_a0'"):
        load_adapters(tmp_path / "ok", target)
    _assert_untouched(target, snap)
    loaded = load_adapters(tmp_path / "ok", target, rename={"obj2_a0": "obj2_a1"})
    assert loaded.names == ["obj1_a0", "obj2_a1"]
    assert adapter_names(target) == ["obj2_a0", "obj1_a0", "obj2_a1"]


def test_two_objects_adapters_are_independent(decoder):
    inputs, _ = example()
    _two_adapters(decoder)
    before = adapter_state(decoder, "obj1_a0")
    first = propose(decoder, "obj1_a0", inputs)
    _randomise(decoder, "obj2_a0", seed=9)
    assert all(torch.equal(v, adapter_state(decoder, "obj1_a0")[k]) for k, v in before.items())
    assert np.array_equal(first.logits, propose(decoder, "obj1_a0", inputs).logits)
    assert not np.array_equal(first.logits, propose(decoder, "obj2_a0", inputs).logits)


def test_deleting_the_last_active_adapter(decoder):
    inject_adapter(decoder, "only", load_settings("default"))
    A.activate(decoder, "only")
    A.delete_adapter(decoder, "only")
    assert adapter_names(decoder) == [] and A.active_adapter(decoder) is None
