"""Tiny random-initialised ViTs, synthetic scans and engine/reference helpers for the engine tests.

A pytest plugin (`pytest_plugins` in conftest.py): its fixtures reach every test module;
its helpers are imported from `tests.engine_fixtures`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import timm
import torch

from worker.engine.decision import DecisionPolicy, Verdict
from worker.engine.erasing import EngineInput, ErasingEngine, FrameResult
from worker.engine.model import LoadedModel, from_module
from worker.engine.reference import ReferenceResult, reference_predict

THREE_LABELS = ("benign", "gun", "knife")
FIVE_LABELS = ("benign", "gun", "knife", "blade", "taser")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: on a small shared CPU, tiny forwards are faster that way.

    A module asks for it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def structured_images(
    count: int, hw: tuple[int, int] = (64, 64), seed: int = 0
) -> list[np.ndarray]:
    """Blocky RGB uint8 images with noise: patch-sized structure a ViT can tell apart."""
    rows, cols = hw
    images = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        blocks = rng.integers(0, 256, size=(rows // 8, cols // 8, 3), dtype=np.uint8)
        big = cv2.resize(blocks, (cols, rows), interpolation=cv2.INTER_NEAREST).astype(np.int16)
        big += rng.integers(-24, 25, size=big.shape, dtype=np.int16)
        images.append(np.clip(big, 0, 255).astype(np.uint8))
    return images


def as_inputs(images: Sequence[np.ndarray], start: int = 0) -> list[EngineInput]:
    """Engine inputs keyed by their position (offset by `start`)."""
    return [EngineInput(start + index, image) for index, image in enumerate(images)]


def build_vit(
    labels: Sequence[str] = THREE_LABELS,
    *,
    img_size: int | tuple[int, int] = 64,
    seed: int = 0,
    depth: int = 4,
    reg_tokens: int = 0,
    attention_gain: float = 1.0,
    spread: float | None = None,
    device: str = "cpu",
    **timm_kwargs: object,
) -> LoadedModel:
    """A tiny random-initialised timm ViT wrapped as a `LoadedModel`.

    `attention_gain` scales the query and key projections, which sharpens attention so
    erasing visibly changes the image. `spread` replaces the head by random directions
    scaled to the spread of [class] features over a few synthetic scans, so that some
    images are confidently benign, some confidently one threat and some torn between
    several; without it the head gives near-uniform probabilities.
    """
    torch.manual_seed(seed)
    module = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=len(labels),
        img_size=img_size,
        patch_size=8,
        depth=depth,
        embed_dim=64,
        num_heads=2,
        reg_tokens=reg_tokens,
        **timm_kwargs,
    )
    module.eval()
    with torch.no_grad():
        dim = module.embed_dim
        for block in module.blocks:
            block.attn.qkv.weight[: 2 * dim].mul_(attention_gain)
        if spread is not None:
            hw = module.patch_embed.img_size
            calib = np.stack(structured_images(48, (int(hw[0]), int(hw[1])), seed=10_000 + seed))
            pixels = torch.from_numpy(calib).permute(0, 3, 1, 2).float().div(255.0)
            features = module.forward_head(
                module.forward_features((pixels - 0.5) / 0.5), pre_logits=True
            )
            generator = torch.Generator().manual_seed(seed + 1)
            directions = torch.randn(len(labels), dim, generator=generator)
            weight = directions / features.std(dim=0) * (spread / dim**0.5)
            module.head.weight.copy_(weight)
            module.head.bias.copy_(-weight @ features.mean(dim=0))
    module.to(device)
    return from_module(module, list(labels))


def run_engine(
    model: LoadedModel,
    policy: DecisionPolicy,
    frames: Sequence[EngineInput],
    *,
    max_batch: int = 32,
    precision: str = "fp32",
) -> dict[object, FrameResult]:
    """Decide `frames` with a fresh engine (closed afterwards); results by frame key."""
    engine = ErasingEngine(model, policy, max_batch=max_batch, precision=precision)
    try:
        results = engine.run(frames)
    finally:
        engine.close()
    assert len(results) == len(frames)
    return {result.key: result for result in results}


def run_reference(
    model: LoadedModel, policy: DecisionPolicy, frames: Sequence[EngineInput]
) -> dict[object, ReferenceResult]:
    """The seed's slow per-image algorithm on every frame; results by frame key."""
    return {frame.key: reference_predict(model, frame.pixels, policy) for frame in frames}


def judged_offset(policy: DecisionPolicy) -> int:
    """Position of the engine's trace entry that the reference's trace[0] describes."""
    return 0 if policy.judge_original or policy.max_iter == 0 else 1


def near_decision_boundary(
    probs: Sequence[float], policy: DecisionPolicy, benign_index: int, tol: float
) -> bool:
    """True if a threat probability lies within `tol` of a threshold, or the top two are within `tol`."""
    values = np.asarray(probs, dtype=np.float64)
    threats = np.delete(values, benign_index)
    for threshold in (policy.reconsider_th, policy.detect_th):
        if np.any(np.abs(threats - threshold) <= tol):
            return True
    top_two = np.sort(values)[-2:]
    return policy.on_exhausted == "argmax" and bool(top_two[1] - top_two[0] <= tol)


@dataclass(frozen=True)
class Agreement:
    """How the engine's outcomes compared with the reference's over a set of frames."""

    agreed: int
    boundary_disagreements: int


def compare_with_reference(
    model: LoadedModel,
    policy: DecisionPolicy,
    engine: dict[object, FrameResult],
    reference: dict[object, ReferenceResult],
    *,
    threshold_tol: float = 1e-4,
    prob_atol: float = 1e-4,
) -> Agreement:
    """Assert the engine matches the reference frame by frame.

    Verdict, classes and iterations must be equal, and so must the probabilities of every
    image both classified (within `prob_atol`). A frame may disagree only when the
    reference's probabilities at some forward both judged lie within `threshold_tol` of a
    threshold (or of a tie under argmax): float rounding may then fall either way.
    """
    assert engine.keys() == reference.keys()
    offset = judged_offset(policy)
    agreed = boundary = 0
    for key, ours in engine.items():
        theirs = reference[key]
        shared = min(len(ours.trace) - offset, len(theirs.trace))
        ours_probs = np.asarray(ours.trace[offset : offset + shared])
        theirs_probs = np.asarray(theirs.trace[:shared])
        same = (ours.verdict, ours.classes, ours.iterations) == (
            theirs.verdict,
            theirs.classes,
            theirs.iterations,
        )
        if same:
            agreed += 1
            np.testing.assert_allclose(
                ours_probs, theirs_probs, rtol=0, atol=prob_atol, err_msg=f"frame {key}"
            )
            continue
        reasons = [
            near_decision_boundary(p, policy, model.benign_index, threshold_tol)
            for p in theirs_probs
        ]
        assert any(reasons), (
            f"frame {key}: engine says {ours.verdict} {ours.classes} after {ours.iterations}, "
            f"reference {theirs.verdict} {theirs.classes} after {theirs.iterations}, and no reference "
            f"probability lies within {threshold_tol} of a threshold: {theirs.trace}"
        )
        first = reasons.index(True)
        np.testing.assert_allclose(
            ours_probs[: first + 1],
            theirs_probs[: first + 1],
            rtol=0,
            atol=prob_atol,
            err_msg=f"frame {key}",
        )
        boundary += 1
    return Agreement(agreed, boundary)


def branch_of(result: FrameResult | ReferenceResult, policy: DecisionPolicy) -> str:
    """Which branch of the decision rules ended a frame."""
    if result.iterations >= policy.max_iter and not _decided_by_rules(result, policy):
        return "exhausted"
    if result.verdict is Verdict.CLEAR:
        return "clear"
    if result.verdict is Verdict.THREAT:
        return "single" if len(result.classes) == 1 else "multiple"
    return "exhausted"


def _decided_by_rules(result: FrameResult | ReferenceResult, policy: DecisionPolicy) -> bool:
    last = np.asarray(result.trace[-1])
    threats = np.delete(last, 0)
    return bool(np.all(threats < policy.reconsider_th) or np.any(threats > policy.detect_th))
