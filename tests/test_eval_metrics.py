"""Rates with Wilson intervals, operating curves and the comparisons made on them."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engine.decision import Verdict
from worker.training.metrics import (
    Decision,
    Rate,
    area_between,
    operating_curve,
    recall_at_fa,
    score,
    wilson_interval,
)


def test_wilson_gives_the_textbook_bounds() -> None:
    """0/10, 5/10, 10/10 and Newcombe's (1998) examples give their published 95 % bounds."""
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    # Newcombe, Statistics in Medicine 17 (1998) 857, table II, method 3.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)


def test_wilson_by_hand() -> None:
    """8 of 20 at 95 % matches the formula worked through by hand.

    z = 1.959964, z² = 3.841459, z²/n = 0.192073, p = 0.4
    centre = (p + z²/2n) / (1 + z²/n) = 0.496037 / 1.192073 = 0.416113
    half = z·√(p(1−p)/n + z²/4n²) / (1 + z²/n) = 1.959964·√0.014401 / 1.192073 = 0.197306
    → (0.218807, 0.613419)
    """
    assert wilson_interval(8, 20) == pytest.approx((0.218807, 0.613419), abs=2e-6)


def test_wilson_edges() -> None:
    """No trials means nothing is known; the extreme counts pin one bound exactly."""
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 7)[0] == 0.0
    assert wilson_interval(7, 7)[1] == 1.0
    narrow, wide = wilson_interval(1, 2, confidence=0.5), wilson_interval(1, 2, confidence=0.99)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]


@pytest.mark.parametrize(
    ("successes", "trials", "confidence"),
    [(-1, 5, 0.95), (6, 5, 0.95), (0, -1, 0.95), (1, 2, 0.0), (1, 2, 1.0)],
)
def test_wilson_rejects_impossible_counts(successes: int, trials: int, confidence: float) -> None:
    """Counts that cannot be a share, and confidences outside (0, 1), are refused."""
    with pytest.raises(ValueError):
        wilson_interval(successes, trials, confidence)


@settings(max_examples=200, deadline=None)
@given(
    trials=st.integers(1, 2000),
    fraction=st.floats(0, 1),
    confidence=st.floats(0.5, 0.999),
)
def test_wilson_contains_the_share_and_moves_with_it(
    trials: int, fraction: float, confidence: float
) -> None:
    """The interval holds the observed share, widens with confidence, shifts up with successes and narrows with trials."""
    successes = round(fraction * trials)
    low, high = wilson_interval(successes, trials, confidence)
    assert 0.0 <= low <= successes / trials <= high <= 1.0
    wide_low, wide_high = wilson_interval(successes, trials, min(0.9999, confidence + 0.05))
    assert wide_low <= low and high <= wide_high
    if successes < trials:
        up_low, up_high = wilson_interval(successes + 1, trials, confidence)
        assert up_low >= low and up_high >= high
    more_low, more_high = wilson_interval(10 * successes, 10 * trials, confidence)
    assert more_high - more_low < high - low


def test_rate_prints_and_serialises() -> None:
    """A rate prints as percent with its interval and turns into plain JSON, also without trials."""
    rate = Rate.of(187, 200)
    assert str(rate) == "93.5 % [89.2, 96.2]"
    assert rate.interval == wilson_interval(187, 200)
    assert json.loads(json.dumps(rate.to_dict())) == {
        "successes": 187,
        "trials": 200,
        "value": 0.935,
        "low": rate.low,
        "high": rate.high,
    }
    empty = Rate.of(0, 0)
    assert math.isnan(empty.value) and str(empty) == "n/a (no trials)"
    assert json.loads(json.dumps(empty.to_dict()))["value"] is None


def test_operating_curve_on_a_hand_made_set() -> None:
    """Three benign and three threat frames give one point per distinct score, ties crossing together."""
    scores = [0.9, 0.8, 0.8, 0.3, 0.1, 0.7]
    labels = [1, 0, 2, 0, 0, 1]
    expected = [(0, 0), (0, 1 / 3), (1 / 3, 2 / 3), (1 / 3, 1), (2 / 3, 1), (1, 1)]
    np.testing.assert_allclose(operating_curve(scores, labels), expected, rtol=0, atol=1e-15)


def test_operating_curve_matches_thresholding_each_frame() -> None:
    """The curve is what calling `score > threshold` frame by frame gives at every threshold between scores."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 200)
    scores = np.round(rng.random(200) * 0.5 + 0.4 * (labels > 0), 2)  # rounding makes ties
    distinct = np.unique(scores)
    thresholds = [distinct[-1] + 1, *((distinct[1:] + distinct[:-1]) / 2)[::-1], distinct[0] - 1]
    benign, threat = scores[labels == 0], scores[labels > 0]
    slow = [(float((benign > t).mean()), float((threat > t).mean())) for t in thresholds]
    np.testing.assert_allclose(operating_curve(scores, labels), slow, rtol=0, atol=1e-12)


def test_operating_curve_needs_both_kinds_of_frame() -> None:
    """Without benign or threat frames a rate has no denominator; bad scores are refused too."""
    with pytest.raises(ValueError, match="benign and threat"):
        operating_curve([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="one score per label"):
        operating_curve([0.1], [0, 1])
    with pytest.raises(ValueError, match="finite"):
        operating_curve([0.1, math.nan], [0, 1])


def test_recall_at_fa_takes_the_best_point_within_budget() -> None:
    """Recall steps up only at the false-alarm rate of a point; below every point it is 0."""
    curve = [(0, 0), (0, 1 / 3), (1 / 3, 2 / 3), (1 / 3, 1), (2 / 3, 1), (1, 1)]
    assert recall_at_fa(curve, 0.0) == 1 / 3
    assert recall_at_fa(curve, 0.2) == 1 / 3
    assert recall_at_fa(curve, 1 / 3) == 1.0
    assert recall_at_fa(curve, 0.9) == 1.0
    assert recall_at_fa([(0.5, 0.9)], 0.1) == 0.0
    assert recall_at_fa([], 0.5) == 0.0
    # 0.05 computed as a mean of booleans and as 1/20 differ in the last bit at most.
    assert recall_at_fa([(float(np.mean([True] + [False] * 19)), 0.7)], 1 / 20) == 0.7


def test_area_between_step_curves() -> None:
    """The signed area adds (width × recall difference) over the steps of both curves."""
    a = [(0.0, 0.5), (0.2, 0.8)]
    b = [(0.0, 0.6), (0.1, 0.7)]
    # [0, 0.1): 0.5 − 0.6; [0.1, 0.2): 0.5 − 0.7; [0.2, 0.4): 0.8 − 0.7
    assert area_between(a, b, 0.4) == pytest.approx(-0.1 * 0.1 - 0.2 * 0.1 + 0.1 * 0.2)
    assert area_between(b, a, 0.4) == pytest.approx(0.01)
    assert area_between(a, b, 0.15) == pytest.approx(-0.1 * 0.1 - 0.2 * 0.05)
    assert area_between(a, a, 1.0) == 0.0
    # Above the last point a curve keeps its best recall, so the area runs on to fa_max.
    assert area_between([(0.0, 1.0)], [(0.0, 0.0)], 1.0) == 1.0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fa_max"):
            area_between(a, b, bad)


def slow_area_between(curve_a: list, curve_b: list, fa_max: float) -> float:
    """The area summed step by step with `recall_at_fa`, as the definition reads."""
    edges = sorted({0.0, fa_max, *(f for f, _ in curve_a + curve_b if 0.0 < f < fa_max)})
    return sum(
        (right - left) * (recall_at_fa(curve_a, left) - recall_at_fa(curve_b, left))
        for left, right in itertools.pairwise(edges)
    )


def test_area_between_matches_the_step_by_step_sum() -> None:
    """The vectorised area equals the plain sum over steps on random, unsorted, non-monotone curves.

    Both add the same products in the same order of edges, so they agree to rounding (1e-12).
    """
    rng = np.random.default_rng(7)
    for _ in range(50):
        a = [(float(f), float(r)) for f, r in rng.random((int(rng.integers(0, 30)), 2))]
        b = [
            (float(f), float(r)) for f, r in np.round(rng.random((int(rng.integers(1, 30)), 2)), 1)
        ]
        fa_max = float(rng.uniform(0.01, 1.0))
        assert area_between(a, b, fa_max) == pytest.approx(
            slow_area_between(a, b, fa_max), abs=1e-12
        )


def test_score_reports_the_false_alarm_counts() -> None:
    """The false-alarm rate comes with the counts its interval is computed from."""
    decisions = [
        Decision(Verdict.THREAT, (1,), 1, 2),
        Decision(Verdict.CLEAR, (), 1, 2),
        Decision(Verdict.UNDETERMINED, (), 1, 2),
        Decision(Verdict.THREAT, (1,), 1, 2),
    ]
    scored = score([0, 0, 0, 1], decisions, ["benign", "gun"])
    assert scored["benign_frames"] == 3 and scored["false_alarms"] == 1
    assert scored["false_alarm_rate"] == pytest.approx(1 / 3)
