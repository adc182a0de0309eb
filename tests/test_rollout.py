"""Attention capture and rollout against independent float64 numpy computations."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine_fixtures import (
    FIVE_LABELS,
    build_vit,
    structured_images,
)
from worker.engine.attention import (
    AttentionRecorder,
    attention_mask,
    forward_with_attention,
    resize_mask,
    rollout_class_row,
)
from worker.engine.reference import vit_attention_forward

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROLLOUT_ATOL = 1e-6  # same fp32 input maps: only fp32 vs float64 arithmetic differs
CAPTURE_ATOL = 1e-6  # hook capture vs block-by-block reference forward, same weights


def numpy_joint_rollout(fused: np.ndarray) -> np.ndarray:
    """J_L of the full recursive product J_l = Â_l J_{l-1}, in float64, for (L, N, N) maps."""
    fused = fused.astype(np.float64)
    tokens = fused.shape[-1]
    joint = np.eye(tokens)
    for layer in fused:
        augmented = layer + np.eye(tokens)
        augmented /= augmented.sum(axis=-1, keepdims=True)
        joint = augmented @ joint
    return joint


def numpy_mask(fused: np.ndarray, prefix: int, grid_hw: tuple[int, int]) -> np.ndarray:
    """The [class] row of the rollout over patch columns, on the grid, divided by its max."""
    row = numpy_joint_rollout(fused)[0, prefix:].reshape(grid_hw)
    return row / row.max()


def random_stochastic_maps(
    seed: int, layers: int, batch: int, tokens: int, sharpness: float
) -> list[torch.Tensor]:
    """Per-layer (B, N, N) fp32 maps whose rows are random probability vectors."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=sharpness, size=(layers, batch, tokens, tokens))
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return [torch.from_numpy(layer.astype(np.float32)) for layer in probs]


def capture(model, images: list[np.ndarray], head_fusion: str) -> list[torch.Tensor]:
    """Head-fused attention maps of one batched forward, as the engine's recorder sees them."""
    recorder = AttentionRecorder(model.module, head_fusion)
    try:
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        with torch.inference_mode():
            _, maps = forward_with_attention(model, recorder, pixels)
    finally:
        recorder.close()
    return maps


@settings(max_examples=30, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    layers=st.integers(1, 6),
    batch=st.integers(1, 3),
    tokens=st.integers(2, 20),
    sharpness=st.sampled_from([0.1, 1.0, 5.0]),
)
def test_class_row_equals_full_product_on_random_stochastic_attention(
    seed, layers, batch, tokens, sharpness
):
    """The vector-matrix class row equals row 0 of the float64 full product within 1e-6."""
    maps = random_stochastic_maps(seed, layers, batch, tokens, sharpness)
    ours = rollout_class_row(maps).numpy()
    stacked = np.stack([m.numpy() for m in maps], axis=1)  # (B, L, N, N)
    expected = np.stack([numpy_joint_rollout(per_image)[0] for per_image in stacked])
    assert ours.shape == (batch, tokens)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=0, atol=ROLLOUT_ATOL)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, rtol=0, atol=ROLLOUT_ATOL)


def test_mask_on_non_square_grid_with_register_tokens_equals_numpy():
    """With 5 prefix tokens and a 3x4 grid the mask equals the numpy mask within 1e-6, max exactly 1."""
    prefix, grid_hw = 5, (3, 4)
    maps = random_stochastic_maps(7, layers=4, batch=2, tokens=prefix + 12, sharpness=2.0)
    mask = attention_mask(maps, prefix, grid_hw).numpy()
    stacked = np.stack([m.numpy() for m in maps], axis=1)
    expected = np.stack([numpy_mask(per_image, prefix, grid_hw) for per_image in stacked])
    assert mask.shape == (2, *grid_hw)
    np.testing.assert_allclose(mask, expected, rtol=0, atol=ROLLOUT_ATOL)
    assert np.all(mask > 0)
    assert np.all(mask.reshape(2, -1).max(axis=1) == 1.0)


def test_mask_rejects_tokens_that_do_not_fill_the_grid():
    """A grid that does not match the number of patch tokens is refused with ValueError."""
    maps = random_stochastic_maps(1, layers=2, batch=1, tokens=1 + 12, sharpness=1.0)
    with pytest.raises(ValueError, match="do not fill a 4x4 grid"):
        attention_mask(maps, 1, (4, 4))


def test_rollout_of_attention_captured_from_a_vit_equals_numpy():
    """On attention captured from a real tiny ViT, rollout and mask equal numpy within 1e-6."""
    model = build_vit(FIVE_LABELS, attention_gain=3.0)
    maps = capture(model, structured_images(3), "mean")
    assert len(maps) == len(model.module.blocks)
    stacked = np.stack([m.numpy() for m in maps], axis=1)
    row = rollout_class_row(maps).numpy()
    mask = attention_mask(maps, model.num_prefix_tokens, model.grid_hw).numpy()
    for index, per_image in enumerate(stacked):
        np.testing.assert_allclose(
            row[index], numpy_joint_rollout(per_image)[0], rtol=0, atol=ROLLOUT_ATOL
        )
        np.testing.assert_allclose(
            mask[index],
            numpy_mask(per_image, model.num_prefix_tokens, model.grid_hw),
            rtol=0,
            atol=ROLLOUT_ATOL,
        )


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_recorded_attention_equals_reference_forward_for_each_head_fusion(fusion):
    """Each block's recorded map equals the reference forward's heads fused by numpy, within 1e-6."""
    model = build_vit(FIVE_LABELS, attention_gain=3.0, reg_tokens=2)
    images = structured_images(3, seed=5)
    maps = capture(model, images, fusion)
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    for index, image in enumerate(images):
        _, attention = vit_attention_forward(
            model, image.astype(np.float32) / 255.0
        )  # (L, heads, N, N)
        expected = fuse(attention.astype(np.float64), axis=1)
        recorded = np.stack([m[index].numpy() for m in maps])
        assert recorded.shape == expected.shape
        np.testing.assert_allclose(recorded, expected, rtol=0, atol=CAPTURE_ATOL)


def test_min_fused_rollout_equals_numpy_and_stays_positive():
    """Min-fused captured attention rolls out like numpy (1e-6) and the mask stays strictly positive."""
    model = build_vit(FIVE_LABELS, attention_gain=3.0)
    images = structured_images(2, seed=9)
    maps = capture(model, images, "min")
    mask = attention_mask(maps, model.num_prefix_tokens, model.grid_hw).numpy()
    for index, image in enumerate(images):
        _, attention = vit_attention_forward(model, image.astype(np.float32) / 255.0)
        expected = numpy_mask(
            attention.astype(np.float64).min(axis=1), model.num_prefix_tokens, model.grid_hw
        )
        np.testing.assert_allclose(mask[index], expected, rtol=0, atol=ROLLOUT_ATOL)
    assert np.all(mask > 0)


def test_recorder_refuses_an_unknown_head_fusion():
    """A head fusion other than mean, max or min is refused with ValueError."""
    model = build_vit(depth=1)
    with pytest.raises(ValueError, match="head_fusion"):
        AttentionRecorder(model.module, "median")


def test_recorder_reports_a_forward_that_bypassed_it():
    """Taking maps when no forward ran through the hooks raises RuntimeError naming the count."""
    model = build_vit(depth=2)
    recorder = AttentionRecorder(model.module)
    try:
        with pytest.raises(RuntimeError, match="captured 0 attention maps for 2 blocks"):
            recorder.take()
    finally:
        recorder.close()


def test_closed_recorder_records_nothing():
    """After close, forwards of the model leave no maps behind."""
    model = build_vit(depth=2)
    recorder = AttentionRecorder(model.module)
    recorder.close()
    with torch.inference_mode():
        model.module(torch.zeros(1, 3, 64, 64))
    assert recorder.maps == []


def test_resize_mask_matches_cv2_bilinear():
    """Upsampling a grid mask to the image matches cv2 INTER_LINEAR within 1e-6, also for non-square sizes."""
    rng = np.random.default_rng(3)
    grid = rng.uniform(0.01, 1.0, size=(2, 8, 12)).astype(np.float32)
    resized = resize_mask(torch.from_numpy(grid), (64, 96)).numpy()
    assert resized.shape == (2, 1, 64, 96)
    for index in range(2):
        expected = cv2.resize(grid[index], (96, 64), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(resized[index, 0], expected, rtol=0, atol=1e-6)
