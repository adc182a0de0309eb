"""Scoring decisions against ground truth, and replaying the decision rules over traces.

The erasing trajectory of a frame does not depend on the thresholds (each mask comes
from the image alone), so one engine run that never stops early gives a probability
trace per frame from which any (detect_th, reconsider_th, max_iter) can be replayed
exactly with the engine's own decision function.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.vocab import ExhaustedOutcome
from worker.engine.decision import DecisionPolicy, Verdict, decide_after_forward

Labels = Sequence[int] | np.ndarray  # true class per frame


@dataclass(frozen=True)
class Decision:
    """What a policy concluded about one frame, and what it cost."""

    verdict: Verdict
    classes: tuple[int, ...]
    iterations: int
    forwards: int


def tracing_policy(max_iter: int, fill: float) -> DecisionPolicy:
    """A policy whose thresholds (almost) never fire, so the engine records the whole trajectory.

    A frame can still stop early when a threat probability exceeds 1 − 1e−7 or all fall
    under 1e−12; every policy replayed from the trace would have stopped there too.
    """
    return DecisionPolicy(
        detect_th=1 - 1e-7, reconsider_th=1e-12, max_iter=max_iter, on_exhausted="argmax", fill=fill
    )


def replay(
    trace: Sequence[Sequence[float]],
    policy: DecisionPolicy,
    threat_indices: tuple[int, ...],
    benign_index: int,
) -> Decision:
    """The decision `policy` reaches on a recorded trace (trace[0] = the original image)."""
    for forward_index, probs in enumerate(trace):
        outcome = decide_after_forward(
            np.asarray(probs), forward_index, threat_indices, benign_index, policy
        )
        if outcome is not None:
            return Decision(outcome.verdict, outcome.classes, forward_index, forward_index + 1)
    raise ValueError(
        f"trace of {len(trace)} forwards ends before the policy decides (max_iter {policy.max_iter})"
    )


def vanilla_at(
    probs: Sequence[float], threshold: float, threat_indices: tuple[int, ...]
) -> Decision:
    """Plain classification with a detection threshold: threat classes whose probability exceeds it."""
    hits = tuple(i for i in threat_indices if probs[i] > threshold)
    return Decision(Verdict.THREAT if hits else Verdict.CLEAR, hits, 0, 1)


def score(
    labels: Labels, decisions: Sequence[Decision], label_names: Sequence[str], benign_index: int = 0
) -> dict[str, Any]:
    """Per-class recall, false-alarm rate, undetermined rates and cost of a set of decisions.

    A threat frame of class c counts as detected when the verdict is THREAT and c is among
    the detected classes; a benign frame is a false alarm when the verdict is THREAT.
    """
    labels_arr = np.asarray(labels)
    threat = np.array([d.verdict is Verdict.THREAT for d in decisions])
    undetermined = np.array([d.verdict is Verdict.UNDETERMINED for d in decisions])
    recall: dict[str, float] = {}
    for cls, name in enumerate(label_names):
        if cls == benign_index:
            continue
        rows = np.flatnonzero(labels_arr == cls)
        hits = [threat[i] and cls in decisions[int(i)].classes for i in rows]
        recall[name] = float(np.mean(hits)) if len(rows) else float("nan")
    benign = labels_arr == benign_index
    threats = ~benign
    return {
        "frames": len(decisions),
        "recall": recall,
        "mean_recall": float(np.mean(list(recall.values()))),
        "any_threat_recall": float(threat[threats].mean()) if threats.any() else float("nan"),
        "false_alarm_rate": float(threat[benign].mean()) if benign.any() else float("nan"),
        "undetermined_benign": float(undetermined[benign].mean()) if benign.any() else float("nan"),
        "undetermined_threat": float(undetermined[threats].mean())
        if threats.any()
        else float("nan"),
        "mean_iterations": float(np.mean([d.iterations for d in decisions])),
        "mean_forwards": float(np.mean([d.forwards for d in decisions])),
    }


def argmax_accuracy(labels: Labels, traces: Sequence[Sequence[Sequence[float]]]) -> float:
    """Share of frames whose argmax on the original image is the true class."""
    return float(np.mean([int(np.argmax(t[0])) == y for y, t in zip(labels, traces, strict=True)]))


@dataclass(frozen=True)
class SweepGrid:
    detect_th: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
    reconsider_th: tuple[float, ...] = (0.0001, 0.001, 0.01, 0.03)
    max_iter: tuple[int, ...] = (1, 2, 3, 4, 5)

    def policies(self, fill: float, on_exhausted: ExhaustedOutcome) -> list[DecisionPolicy]:
        return [
            DecisionPolicy(
                detect_th=d, reconsider_th=r, max_iter=m, on_exhausted=on_exhausted, fill=fill
            )
            for d, r, m in itertools.product(self.detect_th, self.reconsider_th, self.max_iter)
            if r < d
        ]


def sweep(
    labels: Labels,
    traces: Sequence[Sequence[Sequence[float]]],
    policies: Sequence[DecisionPolicy],
    label_names: Sequence[str],
    benign_index: int = 0,
) -> list[dict[str, Any]]:
    """Score every policy by replaying it over the traces."""
    threats = tuple(i for i in range(len(label_names)) if i != benign_index)
    rows = []
    for policy in policies:
        decisions = [replay(t, policy, threats, benign_index) for t in traces]
        rows.append(
            {"policy": policy_dict(policy), **score(labels, decisions, label_names, benign_index)}
        )
    return rows


def vanilla_curve(
    labels: Labels,
    traces: Sequence[Sequence[Sequence[float]]],
    label_names: Sequence[str],
    thresholds: Sequence[float],
    benign_index: int = 0,
) -> list[dict[str, Any]]:
    """Plain one-forward classification at each detection threshold (the fair baseline curve)."""
    threats = tuple(i for i in range(len(label_names)) if i != benign_index)
    return [
        {
            "threshold": th,
            **score(
                labels, [vanilla_at(t[0], th, threats) for t in traces], label_names, benign_index
            ),
        }
        for th in thresholds
    ]


def choose(rows: Sequence[dict[str, Any]], far_limit: float) -> dict[str, Any] | None:
    """The row with the best mean recall whose false-alarm rate stays within `far_limit` (ties: fewer forwards)."""
    allowed = [r for r in rows if float(r["false_alarm_rate"]) <= far_limit + 1e-12]
    if not allowed:
        return None
    return max(
        allowed, key=lambda r: (round(float(r["mean_recall"]), 6), -float(r["mean_forwards"]))
    )


def policy_dict(policy: DecisionPolicy) -> dict[str, Any]:
    return {
        "detect_th": policy.detect_th,
        "reconsider_th": policy.reconsider_th,
        "max_iter": policy.max_iter,
        "on_exhausted": policy.on_exhausted,
        "fill": policy.fill,
        "judge_original": policy.judge_original,
        "head_fusion": policy.head_fusion,
    }


def calibration_by_step(
    labels: Labels,
    traces: Sequence[Sequence[Sequence[float]]],
    steps: int,
    label_names: Sequence[str],
    benign_index: int = 0,
) -> list[dict[str, Any]]:
    """Per erasing step: how benign frames are called (argmax) and the true class's mean probability.

    Frames whose trace stopped before a step are left out of that step.
    """
    labels_arr = np.asarray(labels)
    out = []
    for k in range(steps + 1):
        rows = [i for i, t in enumerate(traces) if len(t) > k]
        probs = np.array([traces[i][k] for i in rows])
        ys = labels_arr[rows]
        if not len(rows):
            break
        called = probs.argmax(axis=1)
        benign = ys == benign_index
        entry: dict[str, Any] = {"step": k, "frames": len(rows)}
        for cls, name in enumerate(label_names):
            entry[f"benign_called_{name}"] = (
                float((called[benign] == cls).mean()) if benign.any() else float("nan")
            )
        entry["benign_mean_threat_p"] = (
            float(1 - probs[benign, benign_index].mean()) if benign.any() else float("nan")
        )
        entry["threat_argmax_correct"] = (
            float((called[~benign] == ys[~benign]).mean()) if (~benign).any() else float("nan")
        )
        entry["threat_mean_true_p"] = (
            float(probs[~benign][np.arange((~benign).sum()), ys[~benign]].mean())
            if (~benign).any()
            else float("nan")
        )
        out.append(entry)
    return out
