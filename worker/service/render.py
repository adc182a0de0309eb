"""Artefacts for operators: the erased image and the attention heat-map, at frame size.

Both are drawn with a few vectorised cv2 calls over uint8 frames (float32 only for the
mask plane and, in the erased image, for one band of rows at a time; no numpy
temporaries): on a CPU worker they share the cores with the model, and on a GPU worker
they are most of the host's work per alarm frame.
"""

from __future__ import annotations

import cv2
import numpy as np

# JET, in RGB order, as a 256-entry colour map for `cv2.applyColorMap`: the frames here
# are RGB, so this saves converting the coloured heat-map from OpenCV's BGR.
_JET_RGB = cv2.cvtColor(
    cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_JET),
    cv2.COLOR_BGR2RGB,
)


# Pixels per band of `erased_image`: each of its float32 temporaries stays under a megabyte.
_BAND_PIXELS = 65_536


def _resize_to(mask: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    rows, cols = shape_hw
    return cv2.resize(
        mask.astype(np.float32, copy=False), (cols, rows), interpolation=cv2.INTER_LINEAR
    )


def erased_image(original: np.ndarray, erase_mask: np.ndarray, fill: float) -> np.ndarray:
    """The frame as the model saw it last: x = M·x₀ + (1−M)·fill, at the frame's own size.

    Computed as fill + M·(x₀ − fill) over bands of rows: per band one float32 difference,
    one product with the mask spread over the three channels, then rounded back into the
    uint8 output. Bands of `_BAND_PIXELS` keep the float temporaries in cache (on a
    1024×768 frame, one pass over the whole frame was twice as slow). It equals the float
    formula to within one grey level (the fill is rounded to a whole level).

    Args:
        original: (H, W, 3) uint8 RGB frame as received.
        erase_mask: (rows, cols) cumulative multiplier from the engine (1 = untouched).
        fill: the value erased pixels tend to, in [0, 1].
    """
    rows, cols = original.shape[:2]
    level = round(fill * 255.0)
    fill_bgra = (level, level, level, 0)
    weight = _resize_to(erase_mask, (rows, cols))
    out = np.empty_like(original)
    band = max(1, _BAND_PIXELS // cols)
    for top in range(0, rows, band):
        part = slice(top, top + band)
        # A 4-tuple is OpenCV's scalar operand; the type stubs list only arrays.
        offset = cv2.subtract(original[part], fill_bgra, dtype=cv2.CV_32F)  # type: ignore[call-overload]
        spread = cv2.cvtColor(weight[part], cv2.COLOR_GRAY2RGB)
        # With M in [0, 1] the result lies between x₀ and the fill, so it is never
        # negative: convertScaleAbs is here the fast rounding, saturating conversion.
        cv2.convertScaleAbs(cv2.multiply(offset, spread), out[part], 1.0, level)
    return out


def heatmap_overlay(original: np.ndarray, mask_grid: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The [class] token's attention as a JET colour map blended over the frame.

    Args:
        original: (H, W, 3) uint8 RGB frame.
        mask_grid: (rows, cols) attention on the patch grid, in [0, 1] (max-normalised).
        alpha: the heat-map's share of each pixel.
    """
    weight = _resize_to(mask_grid, original.shape[:2])
    # Colour-map index round(255·w), saturated to [0, 255] (the mask is never negative).
    index = cv2.convertScaleAbs(weight, alpha=255.0)
    heat = cv2.applyColorMap(index, _JET_RGB)
    return cv2.addWeighted(original, 1.0 - alpha, heat, alpha, 0.0)
