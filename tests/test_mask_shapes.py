"""Mask shapes: their invariants on known grids, their refusals, and the engine against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.vocab import check_mask_shape
from tests.engine_fixtures import (
    FIVE_LABELS,
    as_inputs,
    build_vit,
    compare_with_reference,
    run_engine,
    run_reference,
    structured_images,
)
from worker.engine.attention import shape_mask
from worker.engine.decision import DecisionPolicy
from worker.engine.reference import numpy_shape_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# One non-default setting of each shape, as calibration tries them.
SHAPES = [("power", 2.0), ("top_k", 0.25), ("peak", 1.0)]


def random_grids(batch: int = 6, rows: int = 8, cols: int = 10, seed: int = 0) -> torch.Tensor:
    """Max-normalised (B, rows, cols) float32 masks with distinct values in (0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.rand(batch, rows, cols, generator=gen) * 0.95 + 0.05
    return grid / grid.amax(dim=(1, 2), keepdim=True)


@pytest.mark.parametrize(
    ("shape", "param"), [("rollout", 1.0), ("power", 0.5), ("power", 3.0), *SHAPES, ("peak", 0.0)]
)
def test_every_shape_keeps_the_peak_at_one_and_values_in_unit_interval(shape, param):
    """Each image's largest weight stays exactly 1, its position unchanged, and nothing leaves (0, 1]."""
    grid = random_grids()
    shaped = shape_mask(grid, shape, param)
    assert shaped.shape == grid.shape and shaped.dtype == torch.float32
    flat, shaped_flat = grid.flatten(1), shaped.flatten(1)
    peaks = flat.argmax(dim=1)
    assert torch.all(shaped_flat.gather(1, peaks[:, None]) == 1.0)
    assert torch.all(shaped_flat.amax(dim=1) == 1.0)
    assert torch.all(shaped > 0) and torch.all(shaped <= 1)


def test_power_one_is_the_rollout_and_higher_powers_only_darken():
    """power with p = 1 returns the mask unchanged; p = 2 squares it, which never raises a weight."""
    grid = random_grids(seed=1)
    assert torch.equal(shape_mask(grid, "power", 1.0), grid)
    assert torch.equal(shape_mask(grid, "rollout", 7.0), grid)
    squared = shape_mask(grid, "power", 2.0)
    torch.testing.assert_close(squared, grid * grid, rtol=0, atol=0)
    below = grid < 1.0
    assert torch.all(squared[below] < grid[below])


@pytest.mark.parametrize("share", [0.01, 0.1, 0.25, 0.5, 0.99])
def test_top_k_keeps_the_right_number_of_patches_whole_and_squares_the_rest(share):
    """top_k keeps max(1, round(share · patches)) of the largest weights at 1; every other weight is squared."""
    grid = random_grids(batch=4, rows=8, cols=10, seed=2)
    keep = max(1, round(share * 80))
    shaped = shape_mask(grid, "top_k", share)
    for image, out in zip(grid.flatten(1), shaped.flatten(1), strict=True):
        largest = set(image.topk(keep).indices.tolist())
        ones = set(torch.nonzero(out == 1.0).flatten().tolist())
        assert ones == largest
        rest = torch.tensor(sorted(set(range(80)) - largest), dtype=torch.long)
        torch.testing.assert_close(out[rest], image[rest] ** 2, rtol=0, atol=0)


PEAKS = [(4, 5), (0, 6), (7, 9)]  # in the middle, on an edge, in a corner


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_peak_keeps_the_square_around_the_peak_and_nothing_else_changes(radius):
    """peak sets the (2r+1)² patches around each image's maximum to 1, clipped at the grid's edge."""
    gen = torch.Generator().manual_seed(3)
    grid = torch.rand(len(PEAKS), 8, 10, generator=gen) * 0.85 + 0.05
    for b, (row, col) in enumerate(PEAKS):
        grid[b, row, col] = 1.0
    shaped = shape_mask(grid, "peak", float(radius))
    for b, (row, col) in enumerate(PEAKS):
        near = torch.zeros(8, 10, dtype=torch.bool)
        top, left = max(row - radius, 0), max(col - radius, 0)
        near[top : row + radius + 1, left : col + radius + 1] = True
        assert torch.all(shaped[b][near] == 1.0)
        assert torch.equal(shaped[b][~near], grid[b][~near])
        assert int((shaped[b] == 1.0).sum()) == int(near.sum())
    side = 2 * radius + 1
    assert int((shaped[0] == 1.0).sum()) == side * side  # the whole square in the middle
    assert int((shaped[2] == 1.0).sum()) == (radius + 1) ** 2  # a quarter of it in the corner


@pytest.mark.parametrize(("shape", "param"), [("rollout", 1.0), *SHAPES, ("peak", 2.0)])
def test_numpy_transcription_gives_the_same_masks(shape, param):
    """The reference's per-image numpy shapes equal the batched torch shapes on the same float64 grids."""
    grid = random_grids(batch=4, seed=4).double()
    shaped = shape_mask(grid, shape, param).numpy()
    for image, ours in zip(grid.numpy(), shaped, strict=True):
        np.testing.assert_array_equal(numpy_shape_mask(image, shape, param), ours)


@pytest.mark.parametrize(
    ("shape", "param"),
    [
        ("power", 0.0),
        ("power", -1.0),
        ("power", 9.0),
        ("top_k", 0.0),
        ("top_k", 1.0),
        ("top_k", 25.0),
        ("peak", 1.5),
        ("peak", -1.0),
    ],
)
def test_parameters_a_shape_cannot_use_are_refused_naming_mask_param(shape, param):
    """A policy with an out-of-range mask_param is a ValueError that names mask_param and the shape."""
    with pytest.raises(ValueError, match=rf"mask_param of the {shape} shape"):
        check_mask_shape(shape, param)
    with pytest.raises(ValueError, match="mask_param"):
        DecisionPolicy(mask_shape=shape, mask_param=param)


def test_an_unknown_shape_is_refused_naming_mask_shape():
    """A shape outside the vocabulary is refused by the policy and by shape_mask itself."""
    with pytest.raises(ValueError, match="mask_shape must be one of rollout, power, top_k, peak"):
        DecisionPolicy(mask_shape="blur", mask_param=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="blur"):
        shape_mask(random_grids(batch=1), "blur", 1.0)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def threat_model():
    """Five-label tiny ViT with sharpened attention and a head that spreads its probabilities."""
    return build_vit(FIVE_LABELS, attention_gain=2.0, spread=8.0, seed=11)


@pytest.fixture(scope="module")
def shape_frames():
    """Ten synthetic 64x64 scans."""
    return as_inputs(structured_images(10, seed=21))


# Thresholds that decide some frames after one, two or three steps and leave a few
# undetermined; and thresholds that (almost) never fire, so every frame erases to the end.
DECIDING = {"reconsider_th": 1e-2, "detect_th": 0.95, "max_iter": 3}
THROUGH = {"reconsider_th": 1e-9, "detect_th": 0.999999, "max_iter": 3, "on_exhausted": "argmax"}


@pytest.mark.parametrize("thresholds", [DECIDING, THROUGH], ids=["deciding", "through"])
@pytest.mark.parametrize(("shape", "param"), SHAPES)
def test_engine_agrees_with_the_reference_under_each_shape(
    threat_model, shape_frames, shape, param, thresholds
):
    """Verdicts, classes and iterations equal the reference's, probabilities within 1e-4 (as for the seed's mask)."""
    policy = DecisionPolicy(**thresholds, mask_shape=shape, mask_param=param)
    ours = run_engine(threat_model, policy, shape_frames)
    theirs = run_reference(threat_model, policy, shape_frames)
    agreement = compare_with_reference(
        threat_model, policy, ours, theirs, threshold_tol=1e-4, prob_atol=1e-4
    )
    assert agreement.agreed + agreement.boundary_disagreements == len(shape_frames)
    assert agreement.boundary_disagreements <= 1
    # Several frames must erase more than once for the shape to matter past the first step.
    assert sum(result.iterations >= 2 for result in ours.values()) >= 2

    # The shape takes effect: the first erased forward differs from the seed mask's.
    seed_run = run_engine(threat_model, DecisionPolicy(**thresholds), shape_frames)
    differences = [np.abs(np.subtract(ours[k].trace[1], seed_run[k].trace[1])).max() for k in ours]
    assert max(differences) > 1e-3


def test_engine_masks_carry_the_shape(threat_model, shape_frames):
    """The engine's last mask under top_k has exactly round(share · patches) ones; under peak, the 3x3 square."""
    patches = threat_model.grid_hw[0] * threat_model.grid_hw[1]
    undecided = {"reconsider_th": 1e-9, "detect_th": 0.999999, "max_iter": 1}
    top_k = run_engine(
        threat_model, DecisionPolicy(**undecided, mask_shape="top_k", mask_param=0.25), shape_frames
    )
    for result in top_k.values():
        assert int((result.mask_grid == 1.0).sum()) == round(0.25 * patches)
    peak = run_engine(
        threat_model, DecisionPolicy(**undecided, mask_shape="peak", mask_param=1.0), shape_frames
    )
    rows, cols = threat_model.grid_hw
    for result in peak.values():
        assert result.iterations == 1
        ones = np.argwhere(result.mask_grid == 1.0)
        (top, left), (bottom, right) = ones.min(axis=0), ones.max(axis=0)
        assert len(ones) == (bottom - top + 1) * (right - left + 1)  # one solid block
        for low, high, size in ((top, bottom, rows), (left, right, cols)):
            extent = high - low + 1
            assert extent == 3 or (extent == 2 and (low == 0 or high == size - 1))
