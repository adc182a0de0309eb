"""How the foreign scanner shows a scan: one of three display modes, then the video link's JPEG.

- "grey": dark objects on a light belt, from the transmission or its logarithm, with
  the edge enhancement operators often switch on;
- "inverse": the same attenuation as a negative, dense objects bright on a dark belt;
- "material": a pseudo-colour of its own where hue follows the effective atomic number
  (organics teal, light metals and glass yellow-green, steel and brass crimson to
  magenta), saturation the amount of matter and brightness the transmission.
"""

from __future__ import annotations

import cv2
import numpy as np

DISPLAYS = ("grey", "inverse", "material")
_DISPLAY_WEIGHTS = (0.35, 0.2, 0.45)
LOW_WEIGHT = 0.35  # share of the low-energy attenuation in the fused grey image

# Effective-Z hue ramp: low/high attenuation ratio → hue in degrees (may pass below 0),
# tabulated in steps of 1/64 from a ratio of 1 so that a pixel's hue is one lookup.
_RATIO_STOPS = np.array([1.15, 1.45, 2.0, 2.9, 4.0])
_HUE_STOPS = np.array([190.0, 165.0, 75.0, -5.0, -55.0])
_RATIO_STEP = 64.0
_HUE = (np.interp(1.0 + np.arange(256) / _RATIO_STEP, _RATIO_STOPS, _HUE_STOPS) % 360.0).astype(
    np.float32
)


def show(low: np.ndarray, high: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Transmissions (H, W) at two energies → an (H, W, 3) uint8 RGB image and its display mode."""
    mode = DISPLAYS[int(rng.choice(len(DISPLAYS), p=_DISPLAY_WEIGHTS))]
    att_low, att_high = np.log(low), np.log(high)
    np.negative(att_low, out=att_low)
    np.negative(att_high, out=att_high)
    fused = cv2.addWeighted(att_low, LOW_WEIGHT, att_high, 1.0 - LOW_WEIGHT, 0.0)
    if mode == "material":
        image = _material(att_low, att_high, fused)
    else:
        grey = _grey(fused, rng, negative=mode == "inverse")
        image = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    return image, mode


def compress(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Round-trip through JPEG at a random quality, as most frames do on the way to a viewer."""
    if rng.random() < 0.35:
        return image
    quality = int(rng.integers(40, 93))
    ok, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    if decoded is None:
        raise RuntimeError("OpenCV could not decode its own JPEG")
    return np.ascontiguousarray(decoded[..., ::-1])


def _grey(fused: np.ndarray, rng: np.random.Generator, negative: bool) -> np.ndarray:
    """Attenuation (H, W) → uint8 grey, log or linear scale, optionally edge-enhanced."""
    if rng.random() < 0.5:  # logarithmic: evenly spaced steps of material look evenly spaced
        level = np.clip(fused / rng.uniform(2.5, 4.5), 0.0, 1.0) ** rng.uniform(0.6, 1.0)
    else:  # linear in transmission, with a gamma that lifts the thin end
        level = 1.0 - np.exp(-fused) ** rng.uniform(0.35, 0.7)
    if rng.random() < 0.5:
        soft = cv2.GaussianBlur(level, (0, 0), rng.uniform(1.5, 4.0))
        level = level + rng.uniform(0.4, 1.2) * (level - soft)
    if not negative:
        level = 1.0 - level
    bottom, top = rng.uniform(0.0, 0.08), rng.uniform(0.9, 1.0)
    # convertScaleAbs saturates to 0..255; the values it sees are never negative.
    return cv2.convertScaleAbs(
        np.maximum(level, 0.0), alpha=255.0 * (top - bottom), beta=255.0 * bottom
    )


def _material(att_low: np.ndarray, att_high: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """Pseudo-colour from the ratio of the two attenuations, via HSV."""
    ratio = att_low / np.maximum(att_high, 0.05)
    level = np.clip((ratio - 1.0) * _RATIO_STEP, 0, 255).astype(np.uint8)
    hue = cv2.LUT(level, _HUE)
    # The bare belt stays nearly white; colour builds up with the matter on it.
    saturation = np.clip((att_high - 0.1) * 1.6, 0.0, 0.85)
    value = 0.04 + 0.94 * np.exp(-0.75 * fused)
    rgb = cv2.cvtColor(cv2.merge([hue, saturation, value]), cv2.COLOR_HSV2RGB)
    return cv2.convertScaleAbs(rgb, alpha=255.0)
