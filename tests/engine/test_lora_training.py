"""Training LoRA adapters: losses, stop rules, learning, cancelling, replay, threads."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch

import lora_fixtures
from lora_fixtures import example
from napari_sam_lora.engine.core.jobs import drain
from napari_sam_lora.engine.learning import adapters as A
from napari_sam_lora.engine.learning.adapters import adapter_state, inject_adapter, propose
from napari_sam_lora.engine.learning.lora_settings import load_settings
from napari_sam_lora.engine.learning.losses import (
    binary_iou,
    dice_loss,
    logits_iou,
    multimask_loss,
    resize_mask,
    sigmoid_focal_loss,
)
from napari_sam_lora.engine.learning.training import (
    TrainStep,
    _Stopper,
    escalated_settings,
    escalation_iou,
    train_adapter,
)

decoder = lora_fixtures.decoder  # fixtures shared with the other LoRA test modules
disk_example = lora_fixtures.disk_example
DEFAULT = load_settings("default")
FAST = DEFAULT.replace(max_seconds=None)


# --------------------------------------------------------------------------- losses


def test_focal_and_dice_are_small_for_confident_correct_logits():
    target = torch.zeros(1, 8, 8)
    target[:, 2:6, 2:6] = 1
    good, bad = (target * 2 - 1) * 10, -(target * 2 - 1) * 10
    assert sigmoid_focal_loss(good, target) < 1e-4 < sigmoid_focal_loss(bad, target)
    assert dice_loss(good, target) < 1e-3 and dice_loss(bad, target) > 0.9
    assert binary_iou(torch.zeros(4, 4, dtype=bool), torch.zeros(4, 4, dtype=bool)) == 1


def test_multimask_loss_trains_best_mask_and_reports_sams_pick():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    right = (target[0, 0] * 2 - 1) * 10
    masks = torch.stack([-right, right, -right])[None]
    # SAM2 would pick mask 0 (highest predicted IoU), which is wrong: chosen IoU 0.
    out = multimask_loss(masks, torch.tensor([[0.9, 0.1, 0.2]]), torch.tensor([[5.0]]), target)
    assert out.chosen_iou.item() == 0.0
    assert out.mask_loss < 1e-3  # min over masks: mask 1 is perfect
    assert out.iou_loss > 0.3  # predicted IoUs are far from the actual (0, 1, 0)
    picked = multimask_loss(masks, torch.tensor([[0.1, 0.9, 0.2]]), torch.tensor([[5.0]]), target)
    assert picked.chosen_iou.item() == 1.0 and picked.loss < out.loss
    gated = multimask_loss(masks, torch.tensor([[0.1, 0.9, 0.2]]), torch.tensor([[-5.0]]), target)
    assert gated.chosen_iou.item() == 0.0 and gated.object_loss > 4
    empty = multimask_loss(
        masks, torch.tensor([[0.1, 0.9, 0.2]]), torch.tensor([[-5.0]]), 0 * target
    )
    assert empty.object_loss < 0.01 and empty.chosen_iou.item() == 1.0


def test_resize_and_logits_iou():
    mask = np.zeros((100, 60), bool)
    mask[20:80, 10:50] = True
    small = resize_mask(mask, (32, 32))
    assert small.shape == (32, 32) and 0.3 < small.mean() < 0.5
    logits = np.where(small.numpy() > 0, 5.0, -5.0)
    assert logits_iou(logits, mask) > 0.9


# --------------------------------------------------------------------------- stop rules


def _stop(settings, ious, max_steps=100, seconds=0.0):
    stopper = _Stopper(settings, max_steps)
    for step, iou in enumerate(ious, 1):
        reason = stopper.update(step, iou, seconds)
        if reason:
            return step, reason
    return None


def test_stop_rules():
    assert _stop(DEFAULT, [0.5, 0.96, 0.97, 0.90, 0.96, 0.96, 0.96]) == (7, "target_reached")
    lit = load_settings("lit")
    assert _stop(lit, [0.1] * 60) == (50, "failed")
    assert _stop(lit, [0.1] * 5 + [0.7] + [0.69] * 20) == (16, "plateau")
    assert _stop(lit, [0.3] * 30 + [0.5] * 30, max_steps=100) is None  # never > 0.6
    assert _stop(lit, [0.3] * 20, max_steps=20) == (20, "max_steps")
    assert _stop(DEFAULT, [0.5, 0.6], seconds=1e6) is None  # no time cap by default
    capped = DEFAULT.replace(max_seconds=20.0)
    assert _stop(capped, [0.5, 0.6], seconds=100.0) == (1, "max_seconds")
    plateau = DEFAULT.replace(target_iou=None, fail_iou=None)
    assert _stop(plateau, [0.5, 0.502, 0.503, *[0.504] * 8]) == (11, "plateau")


def test_a_fit_that_has_not_started_is_no_plateau():
    # a hard correction at 1024 (a real CHO nucleus) sits at IoU 0.02 for tens of steps
    # before it fits: only the fail rule or the step cap may end it, never the plateau rule
    for name in ("default", "strong"):
        settings = load_settings(name)
        stalled = [0.02] * 200
        assert _stop(settings, stalled) == (settings.fail_step, "failed")
        assert _stop(settings, stalled, max_steps=30) == (30, "max_steps")
        started = [0.02] * 30 + [0.5] + [0.5] * 60
        assert _stop(settings, started) == (31 + settings.plateau_patience, "plateau")
    assert _stop(DEFAULT.replace(fail_iou=None), [0.02] * 200, max_steps=60) == (60, "max_steps")


# --------------------------------------------------------------------------- training


def test_training_raises_chosen_mask_iou_far_above_base(decoder, disk_example):
    inputs, target = disk_example
    assert inputs.image_embeddings.is_inference()  # like the tracker's captured tensors
    base = logits_iou(propose(decoder, None, inputs).logits, target)
    inject_adapter(decoder, "obj1_a0", FAST)
    steps = []
    gen = train_adapter(decoder, "obj1_a0", [(inputs, target)], FAST)
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            report = stop.value
            break
    assert all(isinstance(s, TrainStep) for s in steps)
    assert [s.step for s in steps] == list(range(1, report.steps + 1))
    assert all(b.seconds >= a.seconds for a, b in itertools.pairwise(steps))
    assert report.steps <= FAST.max_steps_new and report.history == steps
    after = logits_iou(propose(decoder, "obj1_a0", inputs).logits, target)
    assert base < 0.2 and after > 0.85 and report.final_iou > 0.85
    assert report.stop_reason in ("target_reached", "plateau")
    assert report.to_dict()["history"][0]["step"] == 1
    assert not any(p.requires_grad for p in decoder.parameters())
    assert A.active_adapter(decoder) is None and not decoder.training


def test_closing_the_generator_restores_previous_weights(decoder, disk_example):
    inputs, target = disk_example
    inject_adapter(decoder, "a", FAST)
    with torch.no_grad():
        for p in A.adapter_parameters(decoder, "a"):
            p.normal_(0, 0.02)
    before = adapter_state(decoder, "a")
    gen = train_adapter(decoder, "a", [(inputs, target)], FAST, fine_tune=True)
    for _ in range(3):
        next(gen)
    assert any(not torch.equal(v, adapter_state(decoder, "a")[k]) for k, v in before.items())
    gen.close()
    after = adapter_state(decoder, "a")
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in decoder.parameters())


def test_between_steps_the_caller_state_is_untouched(decoder, disk_example):
    inputs, target = disk_example
    inject_adapter(decoder, "a", FAST)
    inject_adapter(decoder, "b", FAST)
    A.activate(decoder, "b")
    gen = train_adapter(decoder, "a", [(inputs, target)], FAST)
    with torch.no_grad():  # grad mode is the caller's business; training sets its own
        step = next(gen)
        assert not torch.is_grad_enabled()
    assert np.isfinite(step.loss)
    assert A.active_adapter(decoder) == "b" and not decoder.training
    gen.close()


def test_training_on_a_worker_thread_with_grad_disabled(decoder, disk_example):
    inputs, target = disk_example
    inject_adapter(decoder, "a", FAST)
    result = {}

    def work():
        torch.set_grad_enabled(False)
        result["report"] = drain(
            train_adapter(decoder, "a", [(inputs, target)], FAST.replace(max_steps_new=3))
        )

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    report = result["report"]
    assert report.steps == 3 and report.stop_reason == "max_steps"
    assert report.history[-1].loss < report.history[0].loss


def test_full_resolution_loss_and_replay_batches(decoder):
    newest, target = example(seed=0)
    old, old_target = example(seed=1, center=(0.6, 0.4))
    odd, _ = example(seed=2)
    odd.sparse_prompt_embeddings = torch.cat([odd.sparse_prompt_embeddings] * 2, dim=1)
    settings = FAST.replace(loss_resolution="full", max_steps_finetune=2)
    inject_adapter(decoder, "a", settings)
    examples = [(newest, target), (old, old_target), (odd, old_target[::2, ::2])]
    report = drain(train_adapter(decoder, "a", examples, settings, fine_tune=True))
    assert (report.steps, report.n_examples, report.fine_tune) == (2, 3, True)


def test_two_objects_are_trained_independently(decoder):
    inputs1, target1 = example(seed=0)
    inputs2, target2 = example(seed=3, center=(0.3, 0.3))
    short = FAST.replace(max_steps_new=8)
    inject_adapter(decoder, "obj1_a0", short)
    drain(train_adapter(decoder, "obj1_a0", [(inputs1, target1)], short))
    before = propose(decoder, "obj1_a0", inputs1)
    inject_adapter(decoder, "obj2_a0", short)
    drain(train_adapter(decoder, "obj2_a0", [(inputs2, target2)], short))
    after = propose(decoder, "obj1_a0", inputs1)
    assert np.array_equal(before.logits, after.logits)
    assert before.confidence == after.confidence


def test_bad_calls_fail_early(decoder, disk_example):
    with pytest.raises(ValueError, match="at least one"):
        train_adapter(decoder, "a", [], FAST)
    with pytest.raises(A.AdapterError, match="No adapter named 'a'"):
        train_adapter(decoder, "a", [disk_example], FAST)


# --------------------------------------------------------------------------- escalation


def _stack_example(kind: str, frame: int = 1, seed: int = 7):
    from napari_sam_lora.synthetic import make_stack

    images, labels = make_stack(kind, n_frames=4, shape=(128, 128), seed=seed)
    inputs = lora_fixtures.record_inputs(
        lora_fixtures.sam_model(), images[frame].astype(np.float32) / 255
    )
    return inputs, labels[frame] == 1


@pytest.mark.slow
def test_a_decoy_the_adapter_cannot_fit_escalates_capacity(decoder):
    inputs, target = _stack_example("decoy")
    inject_adapter(decoder, "obj1_a0", DEFAULT)
    report = drain(train_adapter(decoder, "obj1_a0", [(inputs, target)], DEFAULT))
    assert "rank 16" in report.escalation and report.escalated
    assert report.rank == 16 and decoder.peft_config["obj1_a0"].r == 16
    assert report.final_iou >= escalation_iou(DEFAULT) and report.warning is None
    assert [s.step for s in report.history] == list(range(1, report.steps + 1))
    kept = logits_iou(propose(decoder, "obj1_a0", inputs).logits, target)
    assert kept == pytest.approx(report.final_iou, abs=0.05)


@pytest.mark.slow
def test_an_easy_correction_does_not_escalate(decoder):
    inputs, target = _stack_example("moving_disk")
    inject_adapter(decoder, "obj1_a0", DEFAULT)
    report = drain(train_adapter(decoder, "obj1_a0", [(inputs, target)], DEFAULT))
    assert not report.escalated and report.rank == 4 and report.warning is None
    assert report.final_iou >= escalation_iou(DEFAULT)
    assert decoder.peft_config["obj1_a0"].r == 4


def test_a_fit_far_below_target_is_reported_not_silent(decoder):
    inputs, target = _stack_example("decoy")
    inject_adapter(decoder, "a", FAST)
    short = FAST.replace(max_steps_finetune=2)
    report = drain(train_adapter(decoder, "a", [(inputs, target)], short, fine_tune=True))
    assert report.stop_reason == "max_steps" and not report.escalated
    assert report.final_iou < escalation_iou(short)
    assert "could not fit this correction" in report.warning


def test_escalation_rules():
    assert escalation_iou(DEFAULT) == pytest.approx(DEFAULT.target_iou - 0.25)
    bigger = escalated_settings(DEFAULT)
    assert bigger.rank == 16 and bigger.max_steps_new >= DEFAULT.max_steps_new
    assert escalated_settings(bigger) is None  # nothing bigger to go to
    lit = load_settings("lit")
    assert escalation_iou(lit) is None and escalated_settings(lit) is None  # LIT as published


@pytest.mark.slow
def test_cancelling_during_escalation_restores_the_adapter_as_before(decoder):
    inputs, target = _stack_example("decoy")
    inject_adapter(decoder, "a", DEFAULT)
    before = adapter_state(decoder, "a")
    gen = train_adapter(decoder, "a", [(inputs, target)], DEFAULT)
    while decoder.peft_config["a"].r != 16:
        next(gen)
    next(gen)
    gen.close()
    assert decoder.peft_config["a"].r == 4
    after = adapter_state(decoder, "a")
    assert after.keys() == before.keys()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in decoder.parameters())
