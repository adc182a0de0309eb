"""The evaluation command end to end on tiny sets, and the replay it relies on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline_fixtures import write_tiny_card
from worker.engine.decision import DecisionPolicy, Verdict
from worker.training import evaluate
from worker.training.metrics import Decision, replay, score

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG = b"\x89PNG\r\n\x1a\n"
# A calibrated point for the tiny card, which calls every generated scan a knife with 0.5 to
# 0.99: a detect threshold of 0.9 flags some frames and clears the rest when exhausted.
# One other mask shape is recorded the way calibrate records them.
POINT_POLICY = {
    "detect_th": 0.9,
    "reconsider_th": 0.05,
    "max_iter": 2,
    "fill": 0.0,
    "mask_shape": "power",
    "mask_param": 2.0,
    "on_exhausted": "clear",
    "judge_original": False,
    "head_fusion": "mean",
}


def run_evaluate(card: Path, out: Path, *data: str) -> dict[str, Any]:
    """evaluate on `data` with 10 bootstrap resamples on one thread; its results.json."""
    args = ["--card", str(card), "--out", str(out), "--data", *data]
    assert evaluate.main([*args, "--bootstrap", "10", "--threads", "1"]) == 0
    return json.loads((out / "results.json").read_text())


def assert_rate(rate: dict[str, Any], trials: int) -> None:
    """A Rate dict over `trials` trials whose value lies inside its interval."""
    assert rate["trials"] == trials and 0 <= rate["successes"] <= trials
    assert rate["low"] <= rate["value"] <= rate["high"]


def test_evaluate_scores_each_set_at_the_seed_thresholds_without_a_point(tmp_path: Path) -> None:
    """Two frames per class of source and target: per-set rates, the matched comparison, mask scores and figures."""
    card = write_tiny_card(tmp_path / "model")
    out = tmp_path / "eval"
    results = run_evaluate(card, out, "source:2", "target:2")

    assert results["operating_point"] is None
    assert results["policy_source"] == "seed thresholds (the card has no operating point)"
    seed = DecisionPolicy()
    assert results["policy"]["detect_th"] == seed.detect_th
    assert results["policy"]["mask_shape"] == "rollout"
    assert results["model"]["card"] == str(card) and results["model"]["input_hw"] == [64, 64]
    assert list(results["sets"]) == ["source", "target"]
    for name, result in results["sets"].items():
        assert result["set"] == name and result["frames"] == 6
        assert result["per_class"] == {"benign": 2, "gun": 2, "knife": 2}
        assert_rate(result["erasing"]["recall"], 4)
        assert_rate(result["erasing"]["false_alarm"], 2)
        assert_rate(result["vanilla_argmax"]["recall"], 4)
        assert set(result["erasing"]["by_class"]["recall"]) == {"gun", "knife"}
        assert result["replay_agreement"] == 1.0
        matched = result["matched"]
        assert matched["bootstrap_resamples"] == 10
        assert matched["recall_gain"] == pytest.approx(
            matched["erasing_recall"] - matched["vanilla_recall_at_that_fa"]
        )
        assert matched["recall_gain_interval"][0] <= matched["recall_gain_interval"][1]
        # Generated threat frames carry their masks, so the first mask can be scored.
        assert result["mask"]["frames"] == 4
        assert_rate(result["mask"]["pointing"], 4)
        assert len(result["calibration_by_step"]) == 6  # the original and five erasing steps
        assert result["curves"]["vanilla"][0] == [0.0, 0.0]
        assert "shapes" not in result  # no calibration, no shapes to compare
    for name in ("curves-source.png", "curves-target.png", "montage.png"):
        assert (out / name).read_bytes()[:8] == PNG, name


def test_evaluate_runs_the_card_point_and_compares_its_shapes(tmp_path: Path) -> None:
    """With an operating point, evaluate runs that policy and scores every mask shape the card records."""
    card = write_tiny_card(tmp_path / "model")
    raw = json.loads(card.read_text())
    raw["operating_point"] = {
        "policy": POINT_POLICY,
        "target_false_alarm": 0.3,
        "per_shape": {
            "power:2": {"policy": POINT_POLICY},
            "rollout:1": {"policy": {**POINT_POLICY, "mask_shape": "rollout", "mask_param": 1.0}},
        },
    }
    card.write_text(json.dumps(raw))
    results = run_evaluate(card, tmp_path / "eval", "target:2")

    assert results["policy_source"] == "the card's operating point"
    assert results["policy"] == POINT_POLICY
    assert results["operating_point"]["target_false_alarm"] == 0.3
    result = results["sets"]["target"]
    assert result["replay_agreement"] == 1.0
    by_class = result["erasing"]["by_class"]
    assert by_class["undetermined_benign"] == by_class["undetermined_threat"] == 0.0
    assert by_class["mean_forwards"] <= POINT_POLICY["max_iter"] + 1
    flagged = (
        result["erasing"]["recall"]["successes"] + result["erasing"]["false_alarm"]["successes"]
    )
    assert 0 < flagged < 6, "the point should flag some frames and clear others"
    assert set(result["shapes"]) == {"power:2", "rollout:1"}
    for entry in result["shapes"].values():
        assert_rate(entry["recall"], 4)
        assert_rate(entry["false_alarm"], 2)
    # The shape the point runs, scored alone, gives the point's own recall.
    assert result["shapes"]["power:2"]["recall"] == result["erasing"]["recall"]


def test_replay_follows_the_seed_rules() -> None:
    """Replaying a trace stops at the first erased forward that clears or detects."""
    policy = DecisionPolicy(detect_th=0.3, reconsider_th=0.01, max_iter=3, on_exhausted="argmax")
    trace = [(0.1, 0.8, 0.1), (0.7, 0.2, 0.1), (0.2, 0.1, 0.7)]
    decided = replay(trace, policy, (1, 2), 0)
    assert decided.verdict is Verdict.THREAT and decided.classes == (2,) and decided.forwards == 3
    cleared = replay([(0.5, 0.3, 0.2), (0.995, 0.004, 0.001)], policy, (1, 2), 0)
    assert cleared.verdict is Verdict.CLEAR and cleared.iterations == 1


def test_replay_refuses_a_trace_too_short_for_the_policy() -> None:
    """A trace that ends before max_iter without a decision is an error, not a guess."""
    policy = DecisionPolicy(detect_th=0.9, reconsider_th=0.01, max_iter=3)
    with pytest.raises(ValueError, match="trace of 2 forwards ends before the policy decides"):
        replay([(0.4, 0.3, 0.3), (0.4, 0.3, 0.3)], policy, (1, 2), 0)


def test_score_counts_recall_for_the_true_class_only() -> None:
    """A frame called "gun" counts towards gun recall, not knife; a benign one called a threat is a false alarm."""
    labels = [0, 1, 2]
    decisions = [
        Decision(Verdict.THREAT, (1,), 1, 2),
        Decision(Verdict.THREAT, (1,), 1, 2),
        Decision(Verdict.THREAT, (1,), 1, 2),
    ]
    scored = score(labels, decisions, ["benign", "gun", "knife"])
    assert scored["recall"] == {"gun": 1.0, "knife": 0.0} and scored["false_alarm_rate"] == 1.0
