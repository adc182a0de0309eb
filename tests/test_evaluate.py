"""The evaluation command, end to end on a tiny set."""

from __future__ import annotations

import json
from pathlib import Path

from worker.engine.decision import DecisionPolicy, Verdict
from worker.training import evaluate
from worker.training.metrics import Decision, choose, replay, score

CARD = Path(__file__).resolve().parent.parent / "models" / "scanguard-demo" / "card.json"


def test_evaluate_writes_report_json_and_figures(tmp_path: Path) -> None:
    """Four frames per class and a two-point sweep produce REPORT.md, results.json and both PNGs."""
    code = evaluate.main(
        [
            "--card",
            str(CARD),
            "--out",
            str(tmp_path),
            "--per-class",
            "4",
            "--val-per-class",
            "2",
            "--detect-th",
            "0.1",
            "0.5",
            "--reconsider-th",
            "0.001",
            "--max-iters",
            "1",
            "2",
            "--fills",
            "1.0",
            "--speed-frames",
            "0",
            "--test-seed",
            "5",
            "--val-seed",
            "6",
        ]
    )
    assert code == 0
    for name in ("REPORT.md", "results.json", "sweep.png", "montage.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    for domain in ("target", "source"):
        held = results["held_out"][domain]
        assert held["frames"] == 12
        assert set(held["vanilla"]["recall"]) == {"gun", "knife"}
        assert held["replay_agreement"] == 1.0
    assert "false alarms" in (tmp_path / "REPORT.md").read_text()


def test_replay_follows_the_seed_rules() -> None:
    """Replaying a trace stops at the first erased forward that clears or detects."""
    policy = DecisionPolicy(detect_th=0.3, reconsider_th=0.01, max_iter=3, on_exhausted="argmax")
    trace = [(0.1, 0.8, 0.1), (0.7, 0.2, 0.1), (0.2, 0.1, 0.7)]
    decided = replay(trace, policy, (1, 2), 0)
    assert decided.verdict is Verdict.THREAT and decided.classes == (2,) and decided.forwards == 3
    cleared = replay([(0.5, 0.3, 0.2), (0.995, 0.004, 0.001)], policy, (1, 2), 0)
    assert cleared.verdict is Verdict.CLEAR and cleared.iterations == 1


def test_score_and_choose_respect_the_false_alarm_budget() -> None:
    """Recall counts only the true class; `choose` never exceeds the false-alarm budget."""
    labels = [0, 1, 2]
    decisions = [
        Decision(Verdict.THREAT, (1,), 1, 2),
        Decision(Verdict.THREAT, (1,), 1, 2),
        Decision(Verdict.THREAT, (1,), 1, 2),
    ]
    scored = score(labels, decisions, ["benign", "gun", "knife"])
    assert scored["recall"] == {"gun": 1.0, "knife": 0.0} and scored["false_alarm_rate"] == 1.0
    rows = [
        {"mean_recall": 0.9, "false_alarm_rate": 0.2, "mean_forwards": 2.0},
        {"mean_recall": 0.6, "false_alarm_rate": 0.05, "mean_forwards": 3.0},
    ]
    assert choose(rows, 0.1) is rows[1]
    assert choose(rows, 0.01) is None
