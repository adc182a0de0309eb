"""The foreign scanner's detector: line integrals in, noisy transmission at two energies out.

A line-scan array counts photons: the expected count is the source intensity times the
Beer–Lambert transmission, spread by the detector's point-spread, then read with photon
noise and electronic noise. Each detector row has its own gain, which shows as faint
streaks along the direction the belt moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Photons reaching each layer through air, relative to the high-energy layer's dose: the
# low-energy layer sits in front and sees about half as many.
SHARES = np.array([0.55, 1.0], np.float32)


def _normal_quantiles(levels: int) -> np.ndarray:
    """The standard normal's quantiles at the middles of `levels` equal-probability bins."""
    target = (np.arange(levels) + 0.5) / levels
    lo, hi = np.full(levels, -8.0), np.full(levels, 8.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = np.array([0.5 * (1.0 + math.erf(z / math.sqrt(2.0))) for z in mid]) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return ((lo + hi) / 2).astype(np.float32)


# Normal variates come from random bytes looked up in this table: 256 levels are plenty
# for photon noise, and it is some twenty times faster than drawing them one by one.
_NORMAL = _normal_quantiles(256)


@dataclass(frozen=True)
class Detector:
    """One frame's acquisition settings."""

    dose: float  # photons per pixel reaching the high-energy layer through air
    blur: float  # sigma of the point-spread, pixels
    electronic: float  # read-out noise, photons
    streaks: float  # spread of the per-row gain


def random_detector(rng: np.random.Generator) -> Detector:
    """Settings drawn for one frame, from a clean high dose to a grainy low one."""
    return Detector(
        dose=float(np.exp(rng.uniform(np.log(400.0), np.log(8000.0)))),
        blur=rng.uniform(0.5, 1.4),
        electronic=rng.uniform(1.0, 6.0),
        streaks=rng.uniform(0.0, 0.012),
    )


def expose(
    scene: np.ndarray, detector: Detector, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Line integrals (H, W, 2) → measured transmissions (low, high), each (H, W) in (0, 1.2]."""
    height, width = scene.shape[:2]
    measured = []
    # One energy at a time on contiguous planes: numpy is slow on a trailing axis of two.
    for integral, share in zip(cv2.split(scene), SHARES, strict=True):
        dose = np.float32(detector.dose * share)
        expected = np.negative(integral)
        np.exp(expected, out=expected)
        expected *= dose  # mean photon counts
        expected = cv2.GaussianBlur(expected, (0, 0), detector.blur)
        # Poisson noise by its normal approximation (variance = mean), exact enough above
        # a few photons; electronic noise adds its variance on top.
        counts = expected + np.float32(detector.electronic**2)
        np.sqrt(counts, out=counts)
        draws = np.frombuffer(rng.bytes(height * width), np.uint8).reshape(height, width)
        counts *= cv2.LUT(draws, _NORMAL)
        counts += expected
        gain = 1.0 + detector.streaks * rng.standard_normal((height, 1), dtype=np.float32)
        counts *= gain / dose
        np.maximum(counts, 0.5 / dose, out=counts)
        np.minimum(counts, np.float32(1.2), out=counts)
        measured.append(counts)
    return measured[0], measured[1]
