"""The closed value sets of scanguard, listed once.

Wire schemas, settings, the engine and the console all take their words from here, so a
value added or renamed in one place cannot drift from the others. Enums are `str`
subclasses: they serialise as their plain values ("threat", not "Verdict.THREAT").
"""

from __future__ import annotations

import enum
from typing import Literal, get_args


class Word(str, enum.Enum):
    """A closed-set word: compares, formats and serialises as its plain value."""

    def __str__(self) -> str:
        return str(self.value)


class Verdict(Word):
    """The machine's decision on a frame (and, later, on a bag)."""

    CLEAR = "clear"
    THREAT = "threat"
    UNDETERMINED = "undetermined"


class OperatorVerdict(Word):
    """What an operator says of an alert in the console."""

    CONFIRMED = "confirmed"
    FALSE_ALARM = "false_alarm"


class DeadKind(Word):
    """Why a frame went to the dead-letter stream: a closed set, safe as a metric label.

    The free-text `reason` next to it carries the details (sizes, offsets, messages).
    """

    BAD_FIELDS = "bad_fields"  # missing, malformed or invalid stream fields
    UNDECODABLE = "undecodable"  # bytes that are not a complete PNG/JPEG of the declared type
    TOO_LARGE = "too_large"  # over a byte or pixel limit
    DUPLICATE = "duplicate"  # a frame id that was decided before
    MAX_DELIVERIES = "max_deliveries"  # delivered too often without a decision
    DELETED = "deleted"  # the entry vanished before it was decided
    INTERNAL = "internal"  # a bug met while decoding or rendering this frame
    BAD_BAG = "bad_bag"  # a view that contradicts its bag (seen twice, another view count)


class BagReason(Word):
    """Why a bag closed."""

    ALL_VIEWS = "all_views"  # every view was decided
    DEADLINE = "deadline"  # bag_deadline_ms passed first; missing views make it undetermined


ExhaustedOutcome = Literal["undetermined", "clear", "argmax"]
HeadFusion = Literal["mean", "max", "min"]
# How the erasing mask is shaped from the max-normalised rollout (worker.engine.attention).
MaskShape = Literal["rollout", "power", "top_k", "peak"]
# Where the worker's erasing policy starts (shared.settings.ErasingSettings.preset).
ErasingPreset = Literal["card", "seed"]
Precision = Literal["fp32", "bf16", "fp16"]


def check_choice(name: str, value: str, choices: object) -> str:
    """Return `value` if it is one of the Literal `choices`, else raise a ValueError naming it."""
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def check_mask_shape(shape: str, param: float) -> None:
    """Refuse a mask shape or parameter `attention.shape_mask` cannot use (ValueError)."""
    check_choice("mask_shape", shape, MaskShape)
    if shape == "power" and not 0.0 < param <= 8.0:
        raise ValueError(f"mask_param of the power shape must lie in (0, 8], not {param}")
    if shape == "top_k" and not 0.0 < param < 1.0:
        raise ValueError(f"mask_param of the top_k shape is a share in (0, 1), not {param}")
    if shape == "peak" and not (param >= 0 and float(param).is_integer()):
        raise ValueError(
            f"mask_param of the peak shape is a radius in patches (0, 1, ...), not {param}"
        )
