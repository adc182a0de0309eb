"""Rendering fast paths against slow, obvious transcriptions of the same formulas."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from producer.synthetic import SyntheticScanner
from worker.service.render import erased_image


def erased_image_slow(original: np.ndarray, erase_mask: np.ndarray, fill: float) -> np.ndarray:
    """x = M·x₀ + (1−M)·fill in float32 over the whole frame, rounded (the first version)."""
    rows, cols = original.shape[:2]
    weight = cv2.resize(erase_mask.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
    out = original.astype(np.float32) * weight[..., None] + (1.0 - weight[..., None]) * fill * 255
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("fill", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("size", [(512, 384), (97, 131)])
def test_erased_image_equals_the_float_formula_within_one_level(fill, size):
    """The uint8 blend gives the float formula's pixels to within one grey level (the fill is rounded to a level)."""
    image = SyntheticScanner("target", 3, size=size).frame(4).image
    mask = np.random.default_rng(1).random((16, 20)).astype(np.float32)
    fast = erased_image(image, mask, fill).astype(int)
    slow = erased_image_slow(image, mask, fill).astype(int)
    assert fast.shape == slow.shape and fast.dtype == slow.dtype
    assert np.abs(fast - slow).max() <= 1
