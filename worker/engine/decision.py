"""The decision rules of iterative erasing (DESIGN §2, step 3) as plain values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.vocab import (
    ExhaustedOutcome,
    HeadFusion,
    MaskShape,
    Verdict,
    check_choice,
    check_mask_shape,
)

__all__ = [
    "DecisionPolicy",
    "Outcome",
    "Verdict",
    "check_mask_shape",
    "decide_after_forward",
    "exhausted",
    "judge",
]


@dataclass(frozen=True)
class DecisionPolicy:
    """Thresholds and stopping rules; the defaults are the seed's values."""

    detect_th: float = 0.1
    reconsider_th: float = 0.001
    max_iter: int = 5
    on_exhausted: ExhaustedOutcome = "undetermined"
    judge_original: bool = False
    head_fusion: HeadFusion = "mean"
    fill: float = 0.0
    mask_shape: MaskShape = "rollout"  # see attention.shape_mask; "rollout" is the seed's
    mask_param: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.reconsider_th < self.detect_th < 1.0:
            raise ValueError(
                f"need 0 < reconsider_th ({self.reconsider_th}) < detect_th ({self.detect_th}) < 1"
            )
        if self.max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, not {self.max_iter}")
        check_choice("on_exhausted", self.on_exhausted, ExhaustedOutcome)
        check_choice("head_fusion", self.head_fusion, HeadFusion)
        if not 0.0 <= self.fill <= 1.0:
            raise ValueError(f"fill must lie in [0, 1], not {self.fill}")
        check_mask_shape(self.mask_shape, self.mask_param)

    @classmethod
    def vanilla(cls) -> DecisionPolicy:
        """One forward on the original, argmax: plain classification, for comparison."""
        return cls(max_iter=0, on_exhausted="argmax")


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    classes: tuple[int, ...]  # detected threat classes, empty unless THREAT


def judge(
    probs: np.ndarray, threat_indices: tuple[int, ...], policy: DecisionPolicy
) -> Outcome | None:
    """Apply the seed's rules to one probability vector; None means "erase and look again"."""
    threat = probs[list(threat_indices)]
    if bool(np.all(threat < policy.reconsider_th)):
        return Outcome(Verdict.CLEAR, ())
    hits = tuple(i for i in threat_indices if probs[i] > policy.detect_th)
    if hits:
        return Outcome(Verdict.THREAT, hits)
    return None


def exhausted(probs: np.ndarray, benign_index: int, policy: DecisionPolicy) -> Outcome:
    """The configured outcome once `max_iter` iterations decided nothing."""
    if policy.on_exhausted == "clear":
        return Outcome(Verdict.CLEAR, ())
    if policy.on_exhausted == "argmax":
        top = int(np.argmax(probs))
        if top == benign_index:
            return Outcome(Verdict.CLEAR, ())
        return Outcome(Verdict.THREAT, (top,))
    return Outcome(Verdict.UNDETERMINED, ())


def decide_after_forward(
    probs: np.ndarray,
    forward_index: int,
    threat_indices: tuple[int, ...],
    benign_index: int,
    policy: DecisionPolicy,
) -> Outcome | None:
    """Decision after the forward numbered `forward_index` (0 = the original image).

    The seed erases before it judges, so the original is judged only when
    `judge_original` is set; its forward still supplies the first mask.
    """
    if forward_index > 0 or policy.judge_original:
        outcome = judge(probs, threat_indices, policy)
        if outcome is not None:
            return outcome
    if forward_index >= policy.max_iter:
        return exhausted(probs, benign_index, policy)
    return None
