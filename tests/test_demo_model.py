"""The shipped demo checkpoint and its model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from producer.synthetic import LABELS, SyntheticScanner
from worker.engine.decision import DecisionPolicy, Verdict
from worker.engine.erasing import EngineInput, ErasingEngine
from worker.engine.model import ModelCard, load_model
from worker.engine.preprocess import to_model_input

CARD = Path(__file__).resolve().parent.parent / "models" / "scanguard-demo" / "card.json"


@pytest.fixture(scope="module")
def demo_model():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return load_model(CARD)


def test_card_is_complete_and_checkpoint_small() -> None:
    """The card validates, names the classes benign/gun/knife and records how the model was trained."""
    raw = json.loads(CARD.read_text())
    card = ModelCard.model_validate(raw)
    assert card.labels == list(LABELS) and card.benign_index == 0
    assert card.timm_kwargs["global_pool"] == "token"
    assert card.sha256 is not None and card.input_size is not None
    assert {"command", "seed", "data", "wall_time_s"} <= set(raw["training"])
    assert (CARD.parent / card.checkpoint).stat().st_size <= 12 * 1024 * 1024


def test_demo_model_classifies_source_frames(demo_model) -> None:
    """Vanilla classification of nine unseen source-domain frames gets at least eight right."""
    scanner = SyntheticScanner("source", seed=31337)
    frames = [scanner.frame(i) for i in range(9)]
    inputs = [
        EngineInput(i, to_model_input(f.image, demo_model.input_hw)) for i, f in enumerate(frames)
    ]
    engine = ErasingEngine(demo_model, DecisionPolicy.vanilla(), max_batch=9)
    try:
        results = sorted(engine.run(inputs), key=lambda r: r.key)
    finally:
        engine.close()
    predicted = [int(np.argmax(r.probabilities)) for r in results]
    correct = sum(p == f.label for p, f in zip(predicted, frames, strict=True))
    assert correct >= 8, (predicted, [f.label for f in frames])
    for result, pred in zip(results, predicted, strict=True):
        assert (result.verdict is Verdict.CLEAR) == (pred == 0)


def test_the_shipped_cards_carry_a_calibrated_operating_point() -> None:
    """Both shipped models were calibrated: the worker runs their operating points by default."""
    for folder in ("scanguard-demo", "scanguard-source"):
        card = ModelCard.model_validate_json(
            (CARD.parent.parent / folder / "card.json").read_text()
        )
        point = card.operating_point
        assert point is not None, folder
        assert 0 < point.target_false_alarm <= 0.2
        expected = point.expected
        assert expected["false_alarm"]["trials"] > 0 and expected["threat_recall"]["trials"] > 0
        assert point.chosen_on["seed"] != 424242  # never the held-out evaluation seed


def test_the_demo_model_was_trained_on_randomised_looks() -> None:
    """The shipped default learned from the randomised scanner, never from the foreign one."""
    training = json.loads(CARD.read_text())["training"]
    assert any(spec.startswith("randomised:") for spec in training["data"]["train"])
    assert not any(spec.startswith("foreign:") for spec in training["data"]["train"])
