"""The online calibrator (isotonic, per object) and the calibration metrics."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.engine.learning.calibration import OnlineCalibrator, isotonic_fit
from napari_sam_lora.evaluation.calibration import (
    calibration_summary,
    candidate_scores,
    expected_calibration_error,
    pairs_from_frames,
    precision_recall,
    reliability_bins,
    spearman,
)

# --------------------------------------------------------------------------- metrics


def test_spearman_on_known_inputs():
    x = [1, 2, 3, 4, 5]
    assert spearman(x, [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    assert spearman(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman(x, [1, 4, 9, 16, 25]) == pytest.approx(1.0)  # monotone, not linear
    # d = (0, -1, 1, -1, 1), sum d^2 = 4 -> rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert spearman(x, [1, 3, 2, 5, 4]) == pytest.approx(0.8)
    # Ties get average ranks: y ranks (1.5, 1.5, 3) -> Pearson of ranks
    assert spearman([1, 2, 3], [0, 0, 1]) == pytest.approx(np.sqrt(3) / 2)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_ece_on_known_inputs():
    # perfectly calibrated: each bin's mean confidence equals its mean IoU
    assert expected_calibration_error([0.15, 0.15, 0.85], [0.1, 0.2, 0.85]) == pytest.approx(0)
    # over-confident by 0.5 everywhere
    assert expected_calibration_error([0.9, 0.9, 0.7], [0.4, 0.4, 0.2]) == pytest.approx(0.5)
    # two bins, weights 3/4 and 1/4: |0.95 - 0.5| * 0.75 + |0.05 - 0.05| * 0.25
    ece = expected_calibration_error([0.95, 0.95, 0.95, 0.05], [0.5, 0.5, 0.5, 0.05])
    assert ece == pytest.approx(0.45 * 0.75)
    assert expected_calibration_error([], []) is None
    with pytest.raises(ValueError, match="pair up"):
        expected_calibration_error([0.1, 0.2], [0.1])


def test_reliability_bins_and_precision_recall():
    bins = reliability_bins([0.0, 0.05, 1.0, 0.55], [0.1, 0.3, 0.9, 0.5])
    assert len(bins) == 10 and [b["count"] for b in bins] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert bins[0]["mean_iou"] == pytest.approx(0.2) and bins[1]["mean_iou"] is None
    rows = precision_recall([0.9, 0.8, 0.6, 0.3], [0.95, 0.4, 0.7, 0.9], 0.5, taus=(0.5, 0.85))
    assert rows[0] == {"tau": 0.5, "selected": 3, "good": 3, "precision": 2 / 3, "recall": 2 / 3}
    assert rows[1]["precision"] == 1.0 and rows[1]["recall"] == pytest.approx(1 / 3)
    assert precision_recall([0.1], [0.1], 0.5, taus=(0.5,))[0]["precision"] is None


def test_summary_reports_raw_next_to_shown():
    summary = calibration_summary(
        [0.2, 0.5, 0.9], [0.2, 0.5, 0.9], 0.5, raw_confidence=[0.3, 0.3, 0.31], source="test"
    )
    assert summary["n"] == 3 and summary["spearman"] == pytest.approx(1.0)
    assert summary["ece"] == pytest.approx(0.0)
    assert summary["raw"]["ece"] > 0.2 and len(summary["reliability"]) == 10


def test_pairs_from_frames_prefers_every_candidate():
    class Cand:
        def __init__(self, shown, raw):
            self.confidence = shown
            self.payload = type("P", (), {"confidences": np.array([raw])})()

    scores = candidate_scores([Cand(0.8, 0.3), Cand(0.2, 0.25)], [0.9, 0.1])
    assert scores == [
        {"confidence": 0.8, "raw": pytest.approx(0.3), "iou": 0.9},
        {"confidence": 0.2, "raw": pytest.approx(0.25), "iou": 0.1},
    ]
    frames = [{"candidate_scores": scores}, {"candidate_scores": []}]
    pairs, source = pairs_from_frames(frames)
    assert len(pairs) == 2 and source.startswith("every candidate")
    top = [{"candidate_confidence": 0.4, "candidate_iou": 0.6}, {"candidate_confidence": None}]
    pairs, source = pairs_from_frames(top)
    assert pairs == [{"confidence": 0.4, "raw": 0.4, "iou": 0.6}]
    assert source.startswith("most confident")


# --------------------------------------------------------------------------- calibrator


def test_isotonic_fit_pools_violators():
    kx, ky = isotonic_fit(np.array([1, 2, 3, 4]), np.array([1.0, 3.0, 2.0, 4.0]))
    assert np.allclose(ky, [1.0, 2.5, 4.0]) and np.allclose(kx, [1.0, 2.5, 4.0])
    kx, ky = isotonic_fit(np.array([1, 1, 2]), np.array([0.0, 1.0, 0.2]))
    assert np.all(np.diff(ky) >= 0) and len(kx) == 1  # tie at x=1 pooled, then 0.5 > 0.2


def test_calibrator_is_the_identity_before_any_observation():
    cal = OnlineCalibrator()
    assert len(cal) == 0 and cal.estimate(0.3) == pytest.approx(0.3)
    assert cal.estimate(1.7) == 1.0 and cal.estimate(-1) == 0.0


def test_calibrator_moves_toward_observed_ious_and_stays_monotone():
    rng = np.random.default_rng(0)
    cal = OnlineCalibrator(prior_weight=2.0)
    # untrained SAM2: raw scores squeezed near 0.3, true IoU spread over [0, 1]
    truth = rng.uniform(0, 1, 200)
    raw = 0.25 + 0.1 * truth + 0.01 * rng.standard_normal(200)
    errors = []
    for k, (r, t) in enumerate(zip(raw, truth, strict=True)):
        if k in (0, 5, 50, 199):
            errors.append(np.mean(np.abs(cal.estimate_many(raw) - truth)))
        cal.observe(r, t)
    assert errors[0] > errors[1] > errors[2] > errors[3]  # gets closer as it sees more
    assert errors[-1] < 0.1
    grid = np.linspace(0, 1, 101)
    assert np.all(np.diff(cal.estimate_many(grid)) >= -1e-7)  # monotone
    # a single observation pulls the estimate part of the way (prior weight 2 -> 1/3)
    one = OnlineCalibrator(prior_weight=2.0)
    one.observe(0.3, 0.9)
    assert one.estimate(0.3) == pytest.approx((0.9 + 2 * 0.3) / 3)


def test_calibrator_has_no_say_beyond_the_scores_it_observed():
    cal = OnlineCalibrator(prior_weight=0.0)
    # corrections happen where candidates fail: every observation is low
    cal.observe_many([(0.1, 0.05), (0.2, 0.1), (0.3, 0.2)])
    assert cal.estimate(0.2) == pytest.approx(0.1)  # inside: the fitted map
    assert cal.estimate(0.9) == pytest.approx(0.9)  # above: back to the raw score
    assert cal.estimate(0.05) == pytest.approx(0.05)  # below: the raw score (not above 0.05)
    assert cal.estimate(0.31) == pytest.approx(0.31)  # just above: a step up, still monotone
    high = OnlineCalibrator(prior_weight=0.0)
    high.observe_many([(0.5, 0.9), (0.6, 0.95)])  # over the identity: kept flat above
    assert high.estimate(0.7) == pytest.approx(0.95)
    assert high.estimate(0.2) == pytest.approx(0.2)
    grid = np.linspace(0, 1, 101)
    for c in (cal, high):
        assert np.all(np.diff(c.estimate_many(grid)) >= -1e-7)


def test_calibrator_round_trips_and_rejects_bad_records():
    cal = OnlineCalibrator(max_points=3)
    cal.observe_many([(0.1, 0.2), (0.2, 0.3), (0.3, 0.9), (0.4, 1.0)])
    assert len(cal) == 3  # the oldest pair dropped
    again = OnlineCalibrator.from_dict(cal.to_dict())
    assert again.estimate(0.25) == pytest.approx(cal.estimate(0.25))
    cal.observe(float("nan"), 0.5)
    assert len(cal) == 3
    with pytest.raises(ValueError, match="calibrator record"):
        OnlineCalibrator.from_dict({"prior_weight": 2, "max_points": 5, "raw": [0.1], "iou": []})
    with pytest.raises(ValueError, match="not a calibrator record"):
        OnlineCalibrator.from_dict({"raw": []})


# --------------------------------------------------------------------------- in the pool

from lora_fixtures import decoder, example  # noqa: E402, F401  (fixture)


def test_each_correction_feeds_the_objects_calibrator_before_training(decoder):  # noqa: F811
    from napari_sam_lora.engine.learning.adapter_pool import AdapterPool, CorrectionPlan
    from napari_sam_lora.engine.learning.lora_settings import load_settings

    pool = AdapterPool(1, load_settings("default"))
    inputs, target = example(seed=0)
    first = pool.plan(decoder, inputs, target)
    assert first.is_new and len(pool.calibrator) == 0  # no adapter yet: nothing proposed
    pool.begin(decoder, first)
    pool.begin(decoder, CorrectionPlan(1, "obj1_a1", True, False, "test", [(inputs, target)]))
    plan = pool.plan(decoder, *example(seed=1, center=(0.6, 0.4)))
    assert len(pool.calibrator) == 2  # one (confidence, IoU) pair per adapter
    raw = [p.confidence for p in plan.proposals.values()]
    truth = np.array([plan.ious[n] for n in plan.proposals])
    est = pool.estimate_ious(raw)
    assert est.shape == (2,) and np.all((est >= 0) & (est <= 1))
    # the estimate moved from the raw score toward the observed IoUs
    assert np.mean(np.abs(est - truth)) < np.mean(np.abs(np.array(raw) - truth))


def test_an_accepted_mask_is_observed_for_every_adapter(decoder):  # noqa: F811
    from napari_sam_lora.engine.learning.adapter_pool import AdapterPool
    from napari_sam_lora.engine.learning.lora_settings import load_settings

    pool = AdapterPool(1, load_settings("default"))
    inputs, target = example(seed=0)
    pool.begin(decoder, pool.plan(decoder, inputs, target))
    ious = pool.observe(decoder, inputs, target)
    assert list(ious) == ["obj1_a0"] and len(pool.calibrator) == 1
    assert pool.calibrator.to_dict()["iou"] == [pytest.approx(ious["obj1_a0"], abs=1e-6)]


def test_an_accepted_adapter_does_not_confirm_itself(decoder):  # noqa: F811
    from napari_sam_lora.engine.learning.adapter_pool import AdapterPool
    from napari_sam_lora.engine.learning.lora_settings import load_settings

    pool = AdapterPool(1, load_settings("default"))
    inputs, target = example(seed=0)
    pool.begin(decoder, pool.plan(decoder, inputs, target))
    assert pool.observe(decoder, inputs, target, exclude="obj1_a0") == {}
    assert len(pool.calibrator) == 0


def test_raw_score_is_agreement_with_the_reference_or_the_confidence():
    from napari_sam_lora.engine.learning.adapter_pool import raw_score
    from napari_sam_lora.engine.learning.adapters import Proposal

    logits = np.full((8, 8), -5.0, np.float32)
    logits[:4, :4] = 5.0  # 16 pixels
    proposal = Proposal("a", logits, 0.3, 0.9, 0.27, 0)
    assert raw_score(proposal, None) == pytest.approx(0.27)
    same = logits > 0
    assert raw_score(proposal, same) == pytest.approx(1.0)
    half = np.zeros((8, 8), bool)
    half[:4, :2] = True  # 8 of the 16 pixels
    assert raw_score(proposal, half) == pytest.approx(0.5)
    # the reference at full resolution: the logits are upsampled to it
    assert raw_score(proposal, np.kron(same, np.ones((4, 4), bool))) == pytest.approx(1.0, abs=0.01)
    empty = Proposal("a", np.full((8, 8), -1024.0, np.float32), 0.3, 0.1, 0.03, 0)
    assert raw_score(empty, np.zeros((8, 8), bool)) == pytest.approx(1.0)  # both absent
