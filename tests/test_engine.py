"""The continuous-batching erasing engine against the seed's reference, and its invariants."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from tests.engine_fixtures import (
    FIVE_LABELS,
    THREE_LABELS,
    as_inputs,
    branch_of,
    build_vit,
    compare_with_reference,
    near_decision_boundary,
    run_engine,
    run_reference,
    structured_images,
)
from worker.engine.decision import DecisionPolicy, Verdict
from worker.engine.erasing import EngineInput, ErasingEngine
from worker.engine.reference import erase

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BATCH_ATOL = (
    5e-5  # same frame, different batch: only GEMM blocking differs, amplified by the steep head
)


@pytest.fixture(scope="module")
def threat_model():
    """Five-label tiny ViT whose probabilities spread over benign, one threat and several threats."""
    return build_vit(FIVE_LABELS, attention_gain=2.0, spread=8.0)


@pytest.fixture(scope="module")
def frames():
    """Two hundred synthetic 64x64 scans."""
    return as_inputs(structured_images(200))


@pytest.fixture(scope="module")
def branching_policy(threat_model, frames):
    """Thresholds read off the originals' probabilities so that every decision branch occurs.

    reconsider_th is the 5% quantile of the largest threat probability (the most benign
    frames clear), detect_th its 16% quantile (below 0.5, so two threats can pass it at once).
    """
    probe = run_engine(threat_model, DecisionPolicy.vanilla(), frames, max_batch=64)
    largest_threat = np.array([max(result.trace[0][1:]) for result in probe.values()])
    return DecisionPolicy(
        reconsider_th=float(np.quantile(largest_threat, 0.05)),
        detect_th=float(np.quantile(largest_threat, 0.16)),
        max_iter=3,
    )


@pytest.fixture
def small_frames():
    """A dozen synthetic scans distinct from the main set."""
    return as_inputs(structured_images(12, seed=1))


def undecided_policy(max_iter: int, **overrides) -> DecisionPolicy:
    """Thresholds a near-uniform three-class model never meets, so every frame runs to max_iter."""
    return DecisionPolicy(reconsider_th=0.01, detect_th=0.9, max_iter=max_iter, **overrides)


def test_decisions_match_reference_on_200_frames_with_every_branch(
    threat_model, frames, branching_policy
):
    """Verdicts, classes and iterations equal the reference's; any disagreement sits within 1e-4 of a threshold."""
    policy = branching_policy
    assert policy.detect_th < 0.5
    ours = run_engine(threat_model, policy, frames, max_batch=64)
    theirs = run_reference(threat_model, policy, frames)

    agreement = compare_with_reference(
        threat_model, policy, ours, theirs, threshold_tol=1e-4, prob_atol=1e-4
    )
    assert agreement.agreed + agreement.boundary_disagreements == len(frames)
    assert agreement.boundary_disagreements <= 2

    branches = Counter(branch_of(result, policy) for result in theirs.values())
    if agreement.boundary_disagreements == 0:
        assert Counter(branch_of(result, policy) for result in ours.values()) == branches
    for branch in ("clear", "single", "multiple", "exhausted"):
        assert branches[branch] >= 3, (
            f"branch {branch} occurred {branches[branch]} times: {branches}"
        )
    assert {
        result.verdict for result in ours.values() if branch_of(result, policy) == "exhausted"
    } == {Verdict.UNDETERMINED}

    for key, result in ours.items():
        assert result.forwards == result.iterations + 1
        assert len(result.trace) == result.forwards
        assert result.probabilities == result.trace[-1]
        assert 1 <= result.iterations <= policy.max_iter
        assert theirs[key].forwards == 2 * theirs[key].iterations
    assert len({result.iterations for result in ours.values()}) >= 2


def test_frame_results_do_not_depend_on_batch_neighbours_or_max_batch(threat_model, small_frames):
    """A frame alone (max_batch 1), or among different neighbours (max_batch 16), gets the same result within 5e-5."""
    policy = DecisionPolicy(reconsider_th=1e-4, detect_th=0.6, max_iter=3)
    targets = small_frames[:3]
    other = as_inputs(structured_images(9, seed=2), start=100)
    alone = {}
    for frame in targets:
        alone.update(run_engine(threat_model, policy, [frame], max_batch=1))
    runs = [
        run_engine(threat_model, policy, targets, max_batch=1),
        run_engine(threat_model, policy, small_frames, max_batch=16),
        run_engine(threat_model, policy, [*other, *reversed(targets)], max_batch=16),
        run_engine(threat_model, policy, [*other[:4], *targets, *small_frames[3:]], max_batch=5),
    ]
    for run in runs:
        for frame in targets:
            expected, got = alone[frame.key], run[frame.key]
            assert (got.verdict, got.classes, got.iterations) == (
                expected.verdict,
                expected.classes,
                expected.iterations,
            )
            np.testing.assert_allclose(got.trace, expected.trace, rtol=0, atol=BATCH_ATOL)
            np.testing.assert_allclose(got.mask_grid, expected.mask_grid, rtol=0, atol=BATCH_ATOL)
            np.testing.assert_allclose(got.erase_mask, expected.erase_mask, rtol=0, atol=BATCH_ATOL)


def test_admitting_frames_between_steps_matches_running_them_separately(threat_model, small_frames):
    """Frames admitted while others are mid-erasing end as when each runs on its own (probabilities within 5e-5)."""
    policy = DecisionPolicy(reconsider_th=1e-4, detect_th=0.6, max_iter=3)
    separate = {}
    for frame in small_frames:
        separate.update(run_engine(threat_model, policy, [frame], max_batch=1))
    assert len({result.iterations for result in separate.values()}) >= 2

    engine = ErasingEngine(threat_model, policy, max_batch=4)
    try:
        pending = list(small_frames)
        finished = {}
        admissions = [1, 2, 3, 1, 2, 3]
        steps = 0
        while pending or engine.active:
            take = min(admissions[steps % len(admissions)], engine.free_slots, len(pending))
            engine.admit(pending[:take])
            del pending[:take]
            assert engine.active + engine.free_slots == 4
            for result in engine.step():
                finished[result.key] = result
            steps += 1
        assert engine.step() == []
    finally:
        engine.close()

    assert finished.keys() == separate.keys()
    for key, expected in separate.items():
        got = finished[key]
        assert (got.verdict, got.classes, got.iterations, got.forwards) == (
            expected.verdict,
            expected.classes,
            expected.iterations,
            expected.forwards,
        )
        np.testing.assert_allclose(got.trace, expected.trace, rtol=0, atol=BATCH_ATOL)
        np.testing.assert_allclose(got.erase_mask, expected.erase_mask, rtol=0, atol=BATCH_ATOL)


def test_register_token_model_agrees_with_reference():
    """A ViT with 4 register tokens (5 prefix tokens) erases and decides like the reference."""
    model = build_vit(FIVE_LABELS, reg_tokens=4, attention_gain=2.0, spread=8.0, seed=3)
    assert model.num_prefix_tokens == 5
    assert model.grid_hw == (8, 8)
    policy = DecisionPolicy(reconsider_th=1e-3, detect_th=0.5, max_iter=2)
    inputs = as_inputs(structured_images(20, seed=4))
    ours = run_engine(model, policy, inputs)
    compare_with_reference(model, policy, ours, run_reference(model, policy, inputs))
    for result in ours.values():
        assert result.mask_grid.shape == (8, 8)


def test_non_square_input_uses_its_grid_and_agrees_with_reference():
    """A 64x96 model has an 8x12 grid, 8x12 masks, 64x96 erase masks, and decides like the reference."""
    model = build_vit(FIVE_LABELS, img_size=(64, 96), attention_gain=2.0, spread=8.0, seed=5)
    assert model.input_hw == (64, 96)
    assert model.grid_hw == (8, 12)
    policy = DecisionPolicy(reconsider_th=1e-3, detect_th=0.5, max_iter=2)
    inputs = as_inputs(structured_images(20, hw=(64, 96), seed=6))
    ours = run_engine(model, policy, inputs)
    compare_with_reference(model, policy, ours, run_reference(model, policy, inputs))
    for result in ours.values():
        assert result.mask_grid.shape == (8, 12)
        assert result.erase_mask.shape == (64, 96)


def test_masks_lie_in_unit_interval_with_max_exactly_one(threat_model, small_frames):
    """Every attention mask is in (0, 1], float32, and reaches exactly 1."""
    for result in run_engine(threat_model, undecided_policy(2), small_frames).values():
        assert result.mask_grid.dtype == np.float32
        assert np.all(result.mask_grid > 0)
        assert np.all(result.mask_grid <= 1)
        assert result.mask_grid.max() == 1.0


def test_cumulative_erase_mask_never_increases_across_iterations(small_frames):
    """The cumulative multiplier starts at 1 and only shrinks: with fill 0 erasing never brightens."""
    model = build_vit(THREE_LABELS, attention_gain=3.0)
    by_budget = [
        run_engine(model, undecided_policy(budget), small_frames[:4]) for budget in range(4)
    ]
    for key in by_budget[0]:
        assert np.all(by_budget[0][key].erase_mask == 1.0)
        for budget in range(1, 4):
            earlier, later = by_budget[budget - 1][key], by_budget[budget][key]
            assert later.iterations == budget
            assert later.erase_mask.dtype == np.float32
            assert np.all(later.erase_mask <= 1.0)
            assert np.all(later.erase_mask <= earlier.erase_mask)
            assert np.any(later.erase_mask < earlier.erase_mask)


def test_erasing_with_fill_moves_pixels_toward_fill():
    """With fill 0.5 an erased pixel never ends farther from 0.5 than it was, and erased ones move."""
    rng = np.random.default_rng(11)
    image = rng.uniform(0.0, 1.0, size=(64, 64, 3)).astype(np.float32)
    mask = rng.uniform(0.05, 1.0, size=(8, 8)).astype(np.float32)
    mask /= mask.max()
    erased = erase(image, mask, 0.5)
    assert np.all(np.abs(erased - 0.5) <= np.abs(image - 0.5) + 1e-6)
    assert np.mean(np.abs(erased - 0.5)) < np.mean(np.abs(image - 0.5))


def test_engine_with_fill_agrees_with_reference_and_differs_from_darkening(small_frames):
    """Erasing toward fill 0.5 gives the reference's probabilities, which differ from fill 0's."""
    model = build_vit(FIVE_LABELS, attention_gain=3.0, spread=8.0, seed=7)
    grey = undecided_policy(2, fill=0.5, on_exhausted="argmax")
    dark = undecided_policy(2, on_exhausted="argmax")
    inputs = small_frames[:6]
    ours = run_engine(model, grey, inputs)
    compare_with_reference(model, grey, ours, run_reference(model, grey, inputs))
    darkened = run_engine(model, dark, inputs)
    differences = [
        np.abs(np.subtract(ours[k].trace[-1], darkened[k].trace[-1])).max() for k in ours
    ]
    assert max(differences) > 1e-3


def test_judge_original_decides_on_the_unerased_image(threat_model, frames, branching_policy):
    """With judge_original, decisive originals stop after one forward; the rest match the reference."""
    policy = DecisionPolicy(
        reconsider_th=branching_policy.reconsider_th,
        detect_th=branching_policy.detect_th,
        max_iter=2,
        judge_original=True,
    )
    inputs = frames[:40]
    ours = run_engine(threat_model, policy, inputs)
    theirs = run_reference(threat_model, policy, inputs)
    compare_with_reference(threat_model, policy, ours, theirs)
    iterations = Counter(result.iterations for result in ours.values())
    assert iterations[0] >= 1
    assert sum(count for it, count in iterations.items() if it > 0) >= 1
    for key, result in ours.items():
        assert result.forwards == result.iterations + 1
        assert theirs[key].forwards == 1 + 2 * theirs[key].iterations
        if result.iterations == 0:
            assert result.verdict in (Verdict.CLEAR, Verdict.THREAT)


def test_seed_policy_never_stops_on_the_original(threat_model, frames, branching_policy):
    """Without judge_original a frame decisive from the start still erases once before it is judged."""
    ours = run_engine(threat_model, branching_policy, frames[:20])
    assert min(result.iterations for result in ours.values()) == 1


def test_vanilla_policy_is_one_forward_and_argmax(threat_model, frames):
    """DecisionPolicy.vanilla() spends one forward and reports the argmax class, like the reference."""
    policy = DecisionPolicy.vanilla()
    assert (policy.max_iter, policy.on_exhausted, policy.judge_original) == (0, "argmax", False)
    inputs = frames[:60]
    ours = run_engine(threat_model, policy, inputs)
    theirs = run_reference(threat_model, policy, inputs)
    compare_with_reference(threat_model, policy, ours, theirs)
    verdicts = Counter()
    for key, result in ours.items():
        top = int(np.argmax(result.trace[0]))
        assert (result.iterations, result.forwards, theirs[key].forwards) == (0, 1, 1)
        assert np.all(result.erase_mask == 1.0)
        if top == 0:
            assert (result.verdict, result.classes) == (Verdict.CLEAR, ())
        else:
            assert (result.verdict, result.classes) == (Verdict.THREAT, (top,))
        verdicts[result.verdict] += 1
    assert verdicts[Verdict.CLEAR] >= 1
    assert verdicts[Verdict.THREAT] >= 1


@pytest.mark.parametrize("outcome", ["undetermined", "clear", "argmax"])
def test_on_exhausted_outcome_applies_after_max_iter(small_frames, outcome):
    """Frames that no threshold decides end after max_iter with the configured outcome, like the reference."""
    model = build_vit(THREE_LABELS, attention_gain=3.0)
    policy = undecided_policy(2, on_exhausted=outcome)
    inputs = small_frames[:6]
    ours = run_engine(model, policy, inputs)
    theirs = run_reference(model, policy, inputs)
    compare_with_reference(model, policy, ours, theirs)
    for result in ours.values():
        assert (result.iterations, result.forwards) == (2, 3)
        top = int(np.argmax(result.probabilities))
        expected = {
            "undetermined": (Verdict.UNDETERMINED, ()),
            "clear": (Verdict.CLEAR, ()),
            "argmax": (Verdict.CLEAR, ()) if top == 0 else (Verdict.THREAT, (top,)),
        }[outcome]
        assert (result.verdict, result.classes) == expected


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_on_cpu_gives_valid_probabilities_and_fp32_masks(
    threat_model, small_frames, precision
):
    """Under CPU autocast probabilities are finite and sum to 1 (1e-5); masks stay float32 in (0, 1]."""
    results = run_engine(
        threat_model, DecisionPolicy(max_iter=2), small_frames[:6], precision=precision
    )
    assert len(results) == 6
    for result in results.values():
        trace = np.asarray(result.trace)
        assert np.all(np.isfinite(trace))
        np.testing.assert_allclose(trace.sum(axis=1), 1.0, rtol=0, atol=1e-5)
        assert result.mask_grid.dtype == np.float32
        assert result.erase_mask.dtype == np.float32
        assert result.mask_grid.max() == 1.0
        assert np.all(result.mask_grid > 0)


def test_engine_refuses_bad_settings_and_frames():
    """Unknown precision, max_batch 0, wrong frame shape or dtype, and overfilling raise ValueError."""
    model = build_vit(depth=1)
    with pytest.raises(ValueError, match="precision"):
        ErasingEngine(model, DecisionPolicy(), precision="int8")
    with pytest.raises(ValueError, match="max_batch"):
        ErasingEngine(model, DecisionPolicy(), max_batch=0)
    engine = ErasingEngine(model, DecisionPolicy(), max_batch=2)
    try:
        with pytest.raises(ValueError, match=r"expected \(64, 64, 3\) uint8"):
            engine.admit([EngineInput("small", np.zeros((32, 32, 3), np.uint8))])
        with pytest.raises(ValueError, match="uint8"):
            engine.admit([EngineInput("floats", np.zeros((64, 64, 3), np.float32))])
        good = as_inputs(structured_images(3))
        with pytest.raises(ValueError, match="3 frames offered, 2 slots free"):
            engine.admit(good)
        assert engine.active == 0
        assert engine.step() == []
    finally:
        engine.close()


def test_two_engines_on_one_model_each_record_only_their_forwards(small_frames):
    """Two open engines on one model can both run; neither sees the other's attention maps."""
    model = build_vit(depth=2)
    first = ErasingEngine(model, DecisionPolicy(max_iter=1))
    second = ErasingEngine(model, DecisionPolicy(max_iter=1))
    try:
        alone = {r.key: r.probabilities for r in first.run(small_frames[:2])}
        with torch.inference_mode():
            model.module(torch.rand(1, 3, *model.input_hw))  # a forward outside any engine
        shared = {r.key: r.probabilities for r in second.run(small_frames[:2])}
        assert shared == alone
    finally:
        first.close()
        second.close()


@pytest.mark.cuda
def test_cuda_engine_matches_cpu_decisions_in_fp32_and_runs_in_bf16(
    threat_model, frames, branching_policy, monkeypatch
):
    """On CUDA, fp32 decisions equal the CPU's except within 1e-3 of a threshold; bf16 gives valid probabilities."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    # PyTorch lets cuDNN run the patch-embedding convolution in TF32 by default; on an H100
    # that moved probabilities by up to 1.1e-3. This compares the engine's arithmetic, so
    # it runs in true fp32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    inputs = frames[:64]
    policy = branching_policy
    on_cpu = run_engine(threat_model, policy, inputs)
    gpu_model = build_vit(FIVE_LABELS, attention_gain=2.0, spread=8.0, device="cuda")
    assert gpu_model.device.type == "cuda"
    on_gpu = run_engine(gpu_model, policy, inputs)
    for key, cpu in on_cpu.items():
        gpu = on_gpu[key]
        if (gpu.verdict, gpu.classes, gpu.iterations) != (cpu.verdict, cpu.classes, cpu.iterations):
            assert any(near_decision_boundary(p, policy, 0, 1e-3) for p in cpu.trace[1:]), key
        else:
            np.testing.assert_allclose(gpu.trace, cpu.trace, rtol=0, atol=1e-3)
    for result in run_engine(gpu_model, policy, inputs, precision="bf16").values():
        trace = np.asarray(result.trace)
        assert np.all(np.isfinite(trace))
        np.testing.assert_allclose(trace.sum(axis=1), 1.0, rtol=0, atol=1e-5)
        assert result.mask_grid.dtype == np.float32
