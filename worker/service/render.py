"""Artefacts for operators: the erased image and the attention heat-map, at frame size."""

from __future__ import annotations

import cv2
import numpy as np


def _resize_to(mask: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    rows, cols = shape_hw
    return cv2.resize(
        mask.astype(np.float32, copy=False), (cols, rows), interpolation=cv2.INTER_LINEAR
    )


def erased_image(original: np.ndarray, erase_mask: np.ndarray, fill: float) -> np.ndarray:
    """The frame as the model saw it last: x = M·x₀ + (1−M)·fill, at the frame's own size.

    One cv2 blend over uint8 pixels (no float copy of the frame); it equals the float
    formula to within one grey level (the fill is rounded to a whole level).

    Args:
        original: (H, W, 3) uint8 RGB frame as received.
        erase_mask: (rows, cols) cumulative multiplier from the engine (1 = untouched).
        fill: the value erased pixels tend to, in [0, 1].
    """
    weight = _resize_to(erase_mask, original.shape[:2])  # (H, W) float32
    backdrop = np.full_like(original, round(fill * 255.0))
    return cv2.blendLinear(original, backdrop, weight, 1.0 - weight)


def heatmap_overlay(original: np.ndarray, mask_grid: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The [class] token's attention as a JET colour map blended over the frame."""
    weight = _resize_to(mask_grid, original.shape[:2])
    heat = cv2.applyColorMap((np.clip(weight, 0.0, 1.0) * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(original, 1.0 - alpha, heat, alpha, 0.0)
