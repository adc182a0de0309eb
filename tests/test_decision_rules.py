"""The decision rules of iterative erasing as a table: hand-made probability vectors, no model.

Labels are (benign, gun, knife, blade) unless a case says otherwise: benign is index 0
and the threats are 1, 2 and 3. The policy detects above 0.3 and clears below 0.01.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from worker.engine.decision import (
    DecisionPolicy,
    Outcome,
    Verdict,
    decide_after_forward,
    exhausted,
    judge,
)

BENIGN = 0
THREATS = (1, 2, 3)
POLICY = DecisionPolicy(detect_th=0.3, reconsider_th=0.01, max_iter=3)
CLEAR = Outcome(Verdict.CLEAR, ())
UNDETERMINED = Outcome(Verdict.UNDETERMINED, ())


def threat(*classes: int) -> Outcome:
    return Outcome(Verdict.THREAT, classes)


def probs(*values: float) -> np.ndarray:
    """A probability vector in float64, so values on a threshold stay exactly on it."""
    vector = np.asarray(values, dtype=np.float64)
    assert np.isclose(vector.sum(), 1.0), vector
    return vector


# Vectors named by what the rules make of them under POLICY.
BLADE_JUST_ABOVE_RECONSIDER = probs(0.975, 0.005, 0.009, 0.011)
CLEARLY_BENIGN = probs(0.985, 0.005, 0.009, 0.001)
ONE_GUN = probs(0.55, 0.35, 0.08, 0.02)
GUN_AND_BLADE = probs(0.1, 0.45, 0.05, 0.4)
UNDECIDED = probs(0.7, 0.2, 0.05, 0.05)
KNIFE_ON_TOP_UNDECIDED = probs(0.26, 0.24, 0.28, 0.22)


JUDGE_TABLE = {
    "every threat below reconsider_th: clear": (CLEARLY_BENIGN, CLEAR),
    "one threat at reconsider_th is not below it: undecided": (
        probs(0.98, 0.005, 0.005, 0.01),
        None,
    ),
    "one threat just above reconsider_th keeps it undecided": (BLADE_JUST_ABOVE_RECONSIDER, None),
    "one threat above detect_th: that threat": (ONE_GUN, threat(1)),
    "two threats above detect_th: both, in label order": (GUN_AND_BLADE, threat(1, 3)),
    "every threat above detect_th: all of them": (probs(0.01, 0.33, 0.33, 0.33), threat(1, 2, 3)),
    "a threat exactly at detect_th does not detect": (probs(0.6, 0.3, 0.05, 0.05), None),
    "threats between the thresholds: undecided": (UNDECIDED, None),
    "a high benign probability does not clear while a threat is above reconsider_th": (
        probs(0.95, 0.02, 0.02, 0.01),
        None,
    ),
}


@pytest.mark.parametrize(("vector", "expected"), JUDGE_TABLE.values(), ids=JUDGE_TABLE.keys())
def test_judge(vector: np.ndarray, expected: Outcome | None) -> None:
    """`judge` clears when every threat is below reconsider_th, detects every threat above detect_th, and otherwise returns None."""
    assert judge(vector, THREATS, POLICY) == expected


def test_judge_reads_only_the_threat_indices_it_is_given() -> None:
    """With benign last (gun, knife, benign), `judge` looks at the threat indices only and names them."""
    assert judge(probs(0.005, 0.004, 0.991), (0, 1), POLICY) == CLEAR
    assert judge(probs(0.1, 0.5, 0.4), (0, 1), POLICY) == threat(1)
    assert judge(probs(0.2, 0.1, 0.7), (0, 1), POLICY) is None


EXHAUSTED_TABLE = {
    "undetermined": ("undetermined", KNIFE_ON_TOP_UNDECIDED, UNDETERMINED),
    "undetermined even when benign is on top": ("undetermined", UNDECIDED, UNDETERMINED),
    "clear": ("clear", KNIFE_ON_TOP_UNDECIDED, CLEAR),
    "clear even when a threat is above detect_th": ("clear", ONE_GUN, CLEAR),
    "argmax landing on benign: clear": ("argmax", UNDECIDED, CLEAR),
    "argmax landing on a threat: that threat alone": ("argmax", KNIFE_ON_TOP_UNDECIDED, threat(2)),
    "argmax names one threat even when two pass detect_th": (
        "argmax",
        GUN_AND_BLADE,
        threat(1),
    ),
}


@pytest.mark.parametrize(
    ("on_exhausted", "vector", "expected"), EXHAUSTED_TABLE.values(), ids=EXHAUSTED_TABLE.keys()
)
def test_exhausted(on_exhausted: str, vector: np.ndarray, expected: Outcome) -> None:
    """`exhausted` gives the configured outcome: undetermined, clear, or the argmax class (clear when it is benign)."""
    policy = dataclasses.replace(POLICY, on_exhausted=on_exhausted)
    assert exhausted(vector, BENIGN, policy) == expected


def test_exhausted_argmax_uses_the_given_benign_index() -> None:
    """With benign last, argmax on that index clears and argmax on index 0 is a threat."""
    policy = dataclasses.replace(POLICY, on_exhausted="argmax")
    assert exhausted(probs(0.2, 0.1, 0.7), 2, policy) == CLEAR
    assert exhausted(probs(0.7, 0.1, 0.2), 2, policy) == threat(0)


# (max_iter, judge_original, on_exhausted, forward_index, vector, expected)
AFTER_FORWARD_TABLE = {
    # The original image (forward 0) with iterations to come.
    "original not judged: a clear-looking original still erases": (
        3,
        False,
        "undetermined",
        0,
        CLEARLY_BENIGN,
        None,
    ),
    "original not judged: a threat-looking original still erases": (
        3,
        False,
        "argmax",
        0,
        ONE_GUN,
        None,
    ),
    "original judged: clear at once": (3, True, "undetermined", 0, CLEARLY_BENIGN, CLEAR),
    "original judged: one threat at once": (3, True, "undetermined", 0, ONE_GUN, threat(1)),
    "original judged: several threats at once": (3, True, "clear", 0, GUN_AND_BLADE, threat(1, 3)),
    "original judged but undecided: erase": (3, True, "argmax", 0, UNDECIDED, None),
    # Erased images before the last iteration.
    "erased image that clears": (3, False, "undetermined", 1, CLEARLY_BENIGN, CLEAR),
    "erased image with one threat": (3, False, "undetermined", 2, ONE_GUN, threat(1)),
    "erased image with two threats": (3, True, "undetermined", 1, GUN_AND_BLADE, threat(1, 3)),
    "undecided erased image before max_iter: erase again": (3, False, "argmax", 2, UNDECIDED, None),
    # The last iteration: rules first, then the exhausted outcome.
    "last iteration, rules clear: clear whatever on_exhausted says": (
        3,
        False,
        "argmax",
        3,
        CLEARLY_BENIGN,
        CLEAR,
    ),
    "last iteration, rules detect: threat even under on_exhausted=clear": (
        3,
        False,
        "clear",
        3,
        ONE_GUN,
        threat(1),
    ),
    "last iteration undecided, on_exhausted=undetermined": (
        3,
        False,
        "undetermined",
        3,
        KNIFE_ON_TOP_UNDECIDED,
        UNDETERMINED,
    ),
    "last iteration undecided, on_exhausted=clear": (
        3,
        True,
        "clear",
        3,
        KNIFE_ON_TOP_UNDECIDED,
        CLEAR,
    ),
    "last iteration undecided, argmax on a threat": (
        3,
        False,
        "argmax",
        3,
        KNIFE_ON_TOP_UNDECIDED,
        threat(2),
    ),
    "last iteration undecided, argmax on benign": (3, True, "argmax", 3, UNDECIDED, CLEAR),
    # No iterations (max_iter=0): the original is the last forward too.
    "max_iter 0, original not judged: argmax of the original (vanilla)": (
        0,
        False,
        "argmax",
        0,
        ONE_GUN,
        CLEAR,
    ),
    "max_iter 0, original not judged: exhausted even when the rules would clear": (
        0,
        False,
        "undetermined",
        0,
        CLEARLY_BENIGN,
        UNDETERMINED,
    ),
    "max_iter 0, original judged: the rules win over exhaustion": (
        0,
        True,
        "undetermined",
        0,
        ONE_GUN,
        threat(1),
    ),
    "max_iter 0, original judged but undecided: exhausted outcome": (
        0,
        True,
        "argmax",
        0,
        KNIFE_ON_TOP_UNDECIDED,
        threat(2),
    ),
}


@pytest.mark.parametrize(
    ("max_iter", "judge_original", "on_exhausted", "forward_index", "vector", "expected"),
    AFTER_FORWARD_TABLE.values(),
    ids=AFTER_FORWARD_TABLE.keys(),
)
def test_decide_after_forward(
    max_iter: int,
    judge_original: bool,
    on_exhausted: str,
    forward_index: int,
    vector: np.ndarray,
    expected: Outcome | None,
) -> None:
    """After each forward the rules apply (to the original only with judge_original), and at max_iter an undecided frame takes the exhausted outcome."""
    policy = dataclasses.replace(
        POLICY, max_iter=max_iter, judge_original=judge_original, on_exhausted=on_exhausted
    )
    assert decide_after_forward(vector, forward_index, THREATS, BENIGN, policy) == expected


def test_vanilla_policy_is_argmax_of_the_original() -> None:
    """`DecisionPolicy.vanilla()` decides on the first forward by argmax: benign on top clears, a threat on top is that threat."""
    vanilla = DecisionPolicy.vanilla()
    assert decide_after_forward(ONE_GUN, 0, THREATS, BENIGN, vanilla) == CLEAR
    assert decide_after_forward(KNIFE_ON_TOP_UNDECIDED, 0, THREATS, BENIGN, vanilla) == threat(2)


@pytest.mark.parametrize(
    ("field", "value"),
    [("on_exhausted", "maybe"), ("on_exhausted", "UNDETERMINED"), ("head_fusion", "median")],
)
def test_policy_refuses_an_unknown_choice_naming_the_field(field: str, value: str) -> None:
    """A DecisionPolicy with an on_exhausted or head_fusion outside its choices raises a ValueError that names the field."""
    with pytest.raises(ValueError, match=field) as caught:
        DecisionPolicy(**{field: value})
    assert repr(value) in str(caught.value)
