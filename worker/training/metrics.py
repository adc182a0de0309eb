"""Scoring decisions against ground truth, replaying the decision rules over traces, and
rates with their confidence intervals.

The erasing trajectory of a frame does not depend on the thresholds (each mask comes
from the image alone), so one engine run that never stops early gives a probability
trace per frame from which any (detect_th, reconsider_th, max_iter) can be replayed
exactly with the engine's own decision function.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from shared.vocab import ExhaustedOutcome
from worker.engine.decision import DecisionPolicy, Verdict, decide_after_forward

Labels = Sequence[int] | np.ndarray  # true class per frame
Curve = Sequence[tuple[float, float]]  # (false-alarm rate, recall) points
# Rates computed two ways (a count over a total, a mean of booleans) can differ in the last
# bit; a budget compared against them must not flip on that.
RATE_TOLERANCE = 1e-12


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
    the detected classes; a benign frame is a false alarm when the verdict is THREAT. The
    counts behind the false-alarm rate come along so that it can carry an interval.
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
        "benign_frames": int(benign.sum()),
        "false_alarms": int(threat[benign].sum()),
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


def policy_dict(policy: DecisionPolicy) -> dict[str, Any]:
    """Every field of a policy, as plain JSON values (`DecisionPolicy(**d)` rebuilds it)."""
    return dataclasses.asdict(policy)


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


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the share successes / trials.

    Unlike the normal approximation it stays inside [0, 1] and does not collapse to a point
    at 0 or at `trials` successes, which is where the rates of a good detector live.
    With no trials nothing is known, and the interval is all of [0, 1].

    Raises:
        ValueError: on negative counts, more successes than trials, or a confidence
            outside (0, 1).
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if trials == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    share = successes / trials
    z2_n = z * z / trials
    centre = (share + z2_n / 2) / (1 + z2_n)
    half = z * math.sqrt(share * (1 - share) / trials + z2_n / (4 * trials)) / (1 + z2_n)
    # At 0 and at `trials` successes the bound is exactly 0 or 1; rounding would leave a crumb.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class Rate:
    """A share of trials with its Wilson score interval; `value` is NaN when there were no trials."""

    successes: int
    trials: int
    value: float
    low: float
    high: float

    @classmethod
    def of(cls, successes: int, trials: int, confidence: float = 0.95) -> Rate:
        """The rate successes / trials and its interval at `confidence`."""
        low, high = wilson_interval(successes, trials, confidence)
        value = successes / trials if trials else math.nan
        return cls(successes, trials, value, low, high)

    @property
    def interval(self) -> tuple[float, float]:
        return self.low, self.high

    def __str__(self) -> str:
        if not self.trials:
            return "n/a (no trials)"
        return f"{100 * self.value:.1f} % [{100 * self.low:.1f}, {100 * self.high:.1f}]"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; the rate is None rather than NaN when there were no trials."""
        return {
            "successes": self.successes,
            "trials": self.trials,
            "value": self.value if self.trials else None,
            "low": self.low,
            "high": self.high,
        }


def operating_curve(
    threat_scores: Sequence[float] | np.ndarray, labels: Labels, benign_index: int = 0
) -> list[tuple[float, float]]:
    """(false-alarm rate, recall) of a one-forward classifier as its threshold sweeps down.

    A frame is called a threat when its score exceeds the threshold (as in `vanilla_at`);
    false alarms count benign frames called threat, recall counts threat frames called
    threat, whatever their class. The curve starts at (0, 0) (threshold above every score),
    has one point per distinct score, ends at (1, 1), and never decreases in either rate.

    Raises:
        ValueError: when scores and labels differ in length, a score is not finite, or
            either benign or threat frames are missing (a rate would have no denominator).
    """
    scores = np.asarray(threat_scores, dtype=np.float64)
    threat = np.asarray(labels) != benign_index
    if scores.shape != threat.shape or scores.ndim != 1:
        raise ValueError(f"need one score per label, got {scores.shape} and {threat.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("threat scores must be finite")
    n_threat = int(threat.sum())
    n_benign = len(threat) - n_threat
    if not n_threat or not n_benign:
        raise ValueError(
            f"an operating curve needs benign and threat frames, got {n_benign} and {n_threat}"
        )
    order = np.argsort(-scores, kind="stable")
    descending, threat = scores[order], threat[order]
    # Frames with equal scores cross the threshold together: keep the last of each run.
    ends = np.append(np.flatnonzero(np.diff(descending) != 0), len(descending) - 1)
    detected = np.cumsum(threat)[ends]
    false_alarms = np.cumsum(~threat)[ends]
    return [(0.0, 0.0)] + [
        (float(f) / n_benign, float(d) / n_threat)
        for f, d in zip(false_alarms, detected, strict=True)
    ]


def recall_at_fa(curve: Curve, fa: float) -> float:
    """The best recall among the curve's points whose false-alarm rate stays within `fa`.

    Points are not interpolated between: a threshold between two operating points is
    not one the classifier can be run at. Flagging nothing is always possible, so a
    curve with no point within the budget gives 0.
    """
    return max((r for f, r in curve if f <= fa + RATE_TOLERANCE), default=0.0)


def _step_function(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """A curve's false-alarm rates in order, and the best recall reached up to each."""
    points = np.asarray(curve, dtype=np.float64).reshape(-1, 2)
    order = np.argsort(points[:, 0], kind="stable")
    return points[order, 0], np.maximum.accumulate(points[order, 1])


def _recall_at(step: tuple[np.ndarray, np.ndarray], fas: np.ndarray) -> np.ndarray:
    """`recall_at_fa` at many false-alarm rates at once."""
    curve_fas, best = step
    if not len(curve_fas):
        return np.zeros_like(fas)
    within = np.searchsorted(curve_fas, fas + RATE_TOLERANCE, side="right")  # points ≤ each fa
    return np.where(within > 0, best[np.maximum(within - 1, 0)], 0.0)


def area_between(curve_a: Curve, curve_b: Curve, fa_max: float) -> float:
    """Signed area between two recall-vs-false-alarm curves over false-alarm rates [0, fa_max].

    Each curve is read as the step function `recall_at_fa`; the result is positive where
    `curve_a` lies above `curve_b`. Divided by `fa_max` it is the mean recall difference
    over that range. Vectorised: a bootstrap calls it thousands of times on curves with
    a point per frame.

    Raises:
        ValueError: when fa_max is not in (0, 1].
    """
    if not 0.0 < fa_max <= 1.0:
        raise ValueError(f"fa_max must lie in (0, 1], got {fa_max}")
    step_a, step_b = _step_function(curve_a), _step_function(curve_b)
    inside = np.concatenate([step_a[0], step_b[0]])
    inside = inside[(inside > 0.0) & (inside < fa_max)]
    edges = np.unique(np.concatenate([[0.0, fa_max], inside]))  # sorted
    left = edges[:-1]  # each step holds from its left edge
    gap = _recall_at(step_a, left) - _recall_at(step_b, left)
    return float(np.sum(np.diff(edges) * gap))
