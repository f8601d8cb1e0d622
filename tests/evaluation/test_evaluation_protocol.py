"""The simulated user (LIT protocol) on a controlled tracker, and the SAM2-backed tracker."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_lora.simulation.protocol import (
    CandidateMask,
    UserSettings,
    run_object,
    scan_order,
    start_frame,
)

T, H, W = 6, 24, 24


def disk_truth(n_frames: int = T) -> np.ndarray:
    rows, cols = np.mgrid[:H, :W]
    return np.stack([(rows - 12) ** 2 + (cols - 6 - 2 * t) ** 2 < 16 for t in range(n_frames)])


class FakeTracker:
    """Returns scripted masks; records what the simulated user did to it.

    ``good``: frames tracked correctly (others come back empty). ``clicks_to_fix``: clicks
    after which a click returns the truth (``None``: clicks never help). ``candidates``:
    frame → list of ``(mask, confidence)``.
    """

    def __init__(self, truth, good=(), clicks_to_fix=None, candidates=None):
        self.truth = truth
        self.good = set(good)
        self.clicks_to_fix = clicks_to_fix
        self.offers = candidates or {}
        self.calls: list[tuple] = []
        self.corrected: dict[int, np.ndarray] = {}

    def begin(self, frame, mask):
        self.calls.append(("begin", frame))
        assert np.array_equal(mask, self.truth[frame])

    def track(self, frame, reverse):
        self.calls.append(("track", frame, reverse))
        return self.truth[frame] if frame in self.good else np.zeros((H, W), bool)

    def click(self, frame, points, labels):
        assert points.shape == (len(labels), 2)
        self.calls.append(("click", frame, len(points)))
        if self.clicks_to_fix is not None and len(points) >= self.clicks_to_fix:
            return self.truth[frame]
        return np.zeros((H, W), bool)

    def correct(self, frame, mask):
        self.calls.append(("correct", frame))
        self.corrected[frame] = mask

    def candidates(self, frame):
        return [CandidateMask(m, c, f"a{k}") for k, (m, c) in enumerate(self.offers.get(frame, []))]

    def accept(self, frame, candidate):
        self.calls.append(("accept", frame, candidate.name))


def test_correction_counting():
    truth = disk_truth()
    tracker = FakeTracker(truth, good={1, 2})
    result = run_object(tracker, truth, np.ones(T, bool), 1, UserSettings(max_clicks=3), False)
    assert result.start_frame == 0 and len(result.scored) == T - 1
    assert [f.action for f in result.frames] == ["none", "none", "mask", "mask", "mask"]
    assert result.corrections == 3 and result.mask_corrections == 3 and result.clicks == 9
    assert all(np.array_equal(tracker.corrected[t], truth[t]) for t in (3, 4, 5))
    assert result.mean("iou_tracked") == pytest.approx(2 / 5)
    assert result.mean("iou_final") == 1.0


def test_clicks_that_fix_a_frame_are_one_correction():
    truth = disk_truth()
    tracker = FakeTracker(truth, clicks_to_fix=2)
    result = run_object(tracker, truth, np.ones(T, bool), 1, UserSettings(max_clicks=3), False)
    assert {f.action for f in result.frames} == {"clicks"}
    assert result.corrections == 5 and result.clicks == 10 and result.mask_corrections == 0
    assert ("click", 1, 3) not in tracker.calls  # stops clicking once above the threshold
    assert np.array_equal(tracker.corrected[1], truth[1])  # the click result goes to SAM2


def test_no_clicks_means_straight_to_the_mask():
    truth = disk_truth()
    result = run_object(
        FakeTracker(truth, clicks_to_fix=1),
        truth,
        np.ones(T, bool),
        1,
        UserSettings(max_clicks=0),
        False,
    )
    assert result.clicks == 0 and result.mask_corrections == result.corrections == 5


def test_confident_good_candidate_is_accepted_not_corrected():
    truth = disk_truth()
    empty = np.zeros((H, W), bool)
    offers = {
        2: [(truth[2], 0.9), (empty, 0.2)],  # the confident one is right: accepted
        3: [(empty, 0.8), (truth[3], 0.3)],  # only the oracle would pick the right one
        4: [(empty, 0.8)],  # nothing good
    }
    tracker = FakeTracker(truth, candidates=offers)
    result = run_object(tracker, truth, np.ones(T, bool), 1, UserSettings(), learning=True)
    actions = {f.frame: f.action for f in result.frames}
    assert actions == {1: "mask", 2: "accepted", 3: "mask", 4: "mask", 5: "mask"}
    assert ("accept", 2, "a0") in tracker.calls and 2 not in tracker.corrected
    assert result.accepted_candidates == 1 and result.accepted_candidates_oracle == 2
    assert result.corrections == 4
    frame2 = next(f for f in result.frames if f.frame == 2)
    assert frame2.iou_model == 1.0 and frame2.candidate_confidence == pytest.approx(0.9)
    frame3 = next(f for f in result.frames if f.frame == 3)
    assert frame3.candidate_iou == 0.0 and frame3.oracle_iou == 1.0 and frame3.oracle_accept


def test_baseline_never_looks_at_candidates():
    truth = disk_truth()
    tracker = FakeTracker(truth, candidates={2: [(truth[2], 0.9)]})
    result = run_object(tracker, truth, np.ones(T, bool), 1, UserSettings(), learning=False)
    assert result.accepted_candidates == 0 and result.corrections == 5


def test_sparse_annotation_scores_only_annotated_frames():
    truth = disk_truth()
    annotated = np.array([False, True, False, True, False, True])
    tracker = FakeTracker(truth)
    result = run_object(tracker, truth, annotated, 1, UserSettings(), False)
    assert result.start_frame == 1  # the first annotated frame with the object
    assert [f.frame for f in result.scored] == [3, 5]
    assert result.corrections == 2 and set(tracker.corrected) == {3, 5}
    tracked = [c[1] for c in tracker.calls if c[0] == "track"]
    assert tracked == [2, 3, 4, 5, 0]  # unannotated frames are still tracked
    assert {f.frame: f.action for f in result.frames}[0] == "unscored"


def test_annotated_empty_frame_counts_as_absent():
    truth = disk_truth()
    truth[3] = False  # the object is hidden on frame 3
    tracker = FakeTracker(truth)  # the tracker outputs nothing: right on frame 3
    result = run_object(tracker, truth, np.ones(T, bool), 1, UserSettings(), False)
    assert {f.frame: f.action for f in result.frames}[3] == "none"


@pytest.mark.parametrize(
    ("start", "expected_start", "order"),
    [
        ("first", 0, [(1, False), (2, False), (3, False), (4, False), (5, False)]),
        ("middle", 2, [(3, False), (4, False), (5, False), (1, True), (0, True)]),
    ],
)
def test_start_modes(start, expected_start, order):
    truth = disk_truth()
    tracker = FakeTracker(truth)
    result = run_object(tracker, truth, np.ones(T, bool), 1, UserSettings(start=start), False)
    assert result.start_frame == expected_start and tracker.calls[0] == ("begin", expected_start)
    assert [c[1:] for c in tracker.calls if c[0] == "track"] == order
    assert expected_start not in [f.frame for f in result.frames]


def test_start_frame_rules():
    present = np.array([False, True, True, True, False, True, True])
    assert start_frame(present, np.ones(7, bool), "first") == 1
    assert start_frame(present, np.ones(7, bool), "middle") == 3
    assert start_frame(present, np.array([1, 0, 0, 0, 0, 1, 1], bool), "middle") == 5
    with pytest.raises(ValueError, match="no pixels"):
        start_frame(np.zeros(3, bool), np.ones(3, bool), "first")
    assert list(scan_order(0, 1)) == []


def test_user_settings_are_checked():
    with pytest.raises(ValueError, match="threshold"):
        UserSettings(threshold=0)
    with pytest.raises(ValueError, match="max_clicks"):
        UserSettings(max_clicks=-1)
    with pytest.raises(ValueError, match="start"):
        UserSettings(start="last")


def test_phase_timer_moves_encoder_time_out_of_the_phase():
    import time

    from napari_sam_lora.evaluation.metering import PeakMemory, PhaseTimer

    encoder = {"seconds": 0.0}

    def encode() -> None:  # what the session's encoder counter sees
        time.sleep(0.05)
        encoder["seconds"] += 0.05

    timer, memory = PhaseTimer(encoder_seconds=lambda: encoder["seconds"]), PeakMemory()
    with memory.watch(), timer.phase("track"):
        time.sleep(0.05)
        encode()
    assert timer.seconds["encode"] == pytest.approx(0.05, abs=0.03)
    assert timer.seconds["track"] == pytest.approx(0.05, abs=0.03)
    assert timer.seconds["train"] == 0.0 and memory.peak_mb > 0
