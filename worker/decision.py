"""The decision rules of iterative erasing (DESIGN §2, step 3) as plain values."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from shared.settings import ErasingSettings


class Verdict(str, enum.Enum):
    CLEAR = "clear"
    THREAT = "threat"
    UNDETERMINED = "undetermined"


@dataclass(frozen=True)
class DecisionPolicy:
    """Thresholds and stopping rules; the defaults are the seed's values."""

    detect_th: float = 0.1
    reconsider_th: float = 0.001
    max_iter: int = 5
    on_exhausted: str = "undetermined"  # undetermined | clear | argmax
    judge_original: bool = False
    head_fusion: str = "mean"
    fill: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.reconsider_th < self.detect_th < 1.0:
            raise ValueError(
                f"need 0 < reconsider_th ({self.reconsider_th}) < detect_th ({self.detect_th}) < 1"
            )
        if self.max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, not {self.max_iter}")
        if self.on_exhausted not in ("undetermined", "clear", "argmax"):
            raise ValueError(
                f"on_exhausted must be undetermined, clear or argmax, not {self.on_exhausted!r}"
            )
        if not 0.0 <= self.fill <= 1.0:
            raise ValueError(f"fill must lie in [0, 1], not {self.fill}")

    @classmethod
    def from_settings(cls, erasing: ErasingSettings, card_fill: float) -> DecisionPolicy:
        """The policy the settings ask for; `fill` falls back to the model card's."""
        return cls(
            detect_th=erasing.detect_th,
            reconsider_th=erasing.reconsider_th,
            max_iter=erasing.max_iter,
            on_exhausted=erasing.on_exhausted,
            judge_original=erasing.judge_original,
            head_fusion=erasing.head_fusion,
            fill=card_fill if erasing.fill is None else erasing.fill,
        )

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
