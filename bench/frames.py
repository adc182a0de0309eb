"""Deterministic frames with structure (shapes on a light background) for benchmarks."""

from __future__ import annotations

import cv2
import numpy as np


def bench_frames(count: int, size_hw: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """`count` RGB uint8 images of `size_hw`, a few filled shapes each, reproducible."""
    rng = np.random.default_rng(seed)
    rows, cols = size_hw
    frames = []
    for _ in range(count):
        image = np.full((rows, cols, 3), 235, dtype=np.uint8)
        for _ in range(int(rng.integers(2, 7))):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            centre = (int(rng.integers(0, cols)), int(rng.integers(0, rows)))
            axes = (int(rng.integers(4, cols // 3)), int(rng.integers(4, rows // 3)))
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        frames.append(cv2.GaussianBlur(image, (5, 5), 0))
    return frames
