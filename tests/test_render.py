"""Rendering fast paths against slow, obvious transcriptions of the same formulas."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from producer.synthetic import SyntheticScanner
from worker.service.render import erased_image, heatmap_overlay


def erased_image_slow(original: np.ndarray, erase_mask: np.ndarray, fill: float) -> np.ndarray:
    """x = M·x₀ + (1−M)·fill in float32 over the whole frame, rounded (the first version)."""
    rows, cols = original.shape[:2]
    weight = cv2.resize(erase_mask.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
    out = original.astype(np.float32) * weight[..., None] + (1.0 - weight[..., None]) * fill * 255
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("fill", [0.0, 0.37, 1.0])
# (width, height): whole bands of rows, one band, and bands with a shorter last one.
@pytest.mark.parametrize("size", [(512, 384), (97, 131), (1000, 301)])
def test_erased_image_equals_the_float_formula_within_one_level(fill, size):
    """The uint8 blend gives the float formula's pixels to within one grey level (the fill is rounded to a level)."""
    image = SyntheticScanner("target", 3, size=size).frame(4).image
    mask = np.random.default_rng(1).random((16, 20)).astype(np.float32)
    fast = erased_image(image, mask, fill).astype(int)
    slow = erased_image_slow(image, mask, fill).astype(int)
    assert fast.shape == slow.shape and fast.dtype == slow.dtype
    assert np.abs(fast - slow).max() <= 1


def heatmap_overlay_slow(
    original: np.ndarray, mask_grid: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """The first version: float clip and scale, OpenCV's BGR JET, converted to RGB, blended."""
    rows, cols = original.shape[:2]
    weight = cv2.resize(mask_grid.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap((np.clip(weight, 0.0, 1.0) * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(original, 1.0 - alpha, heat, alpha, 0.0)


@pytest.mark.parametrize("size", [(512, 384), (97, 131)])
def test_heatmap_overlay_equals_the_first_version_within_three_levels(size):
    """The index is now rounded where it was truncated: one JET step (at most 4 levels a
    channel), halved by the blend, plus the blend's own rounding."""
    image = SyntheticScanner("target", 3, size=size).frame(4).image
    mask = np.random.default_rng(2).random((16, 20)).astype(np.float32)
    mask /= mask.max()
    fast = heatmap_overlay(image, mask).astype(int)
    slow = heatmap_overlay_slow(image, mask).astype(int)
    assert fast.shape == slow.shape and fast.dtype == slow.dtype
    assert np.abs(fast - slow).max() <= 3


def test_heatmap_is_rgb_red_where_attention_peaks_and_blue_where_there_is_none():
    """The colour map is applied in RGB order: JET's hot end is red, its cold end blue."""
    grey = np.full((64, 80, 3), 128, np.uint8)
    hot = heatmap_overlay(grey, np.ones((4, 5), np.float32), alpha=1.0)
    cold = heatmap_overlay(grey, np.zeros((4, 5), np.float32), alpha=1.0)
    red, green, blue = hot[32, 40]
    assert red > 100 and green == 0 and blue == 0
    red, green, blue = cold[32, 40]
    assert blue > 100 and green == 0 and red == 0
