"""Randomised scanner looks: the "randomised" domain draws one per frame.

A model trained on one renderer learns that renderer: its palette, its noise, its
sharpness. The randomised domain draws, per frame, how a scanner might turn the same two
line integrals into pixels, so that a different machine (or a different simulator) is
just another draw:

- palette: the usual false colour with perturbed per-channel absorption, a grey
  (single-energy) display plain or tinted towards one hue, a channel permutation or an
  inverted (dark belt) display of any of them; the empty-belt white point; with or
  without the bag's shell;
- physics: per-material attenuation gain, a shift of the low/high ratio that tells
  materials apart, an overall attenuation scale;
- detector: blur, quantum noise, row banding, a coarser pixel pitch, aspect and size;
- display and transport: gamma, contrast, JPEG quality.

`random_look(rng)` draws the parameters; `render_look(canvas, rng, look)` makes the RGB
image. Ranges are wide on purpose; the plain "source" and "target" looks lie inside them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from producer.synthetic.render import (
    ABSORPTION,
    EMPTY,
    HIGH_LEVELS,
    HIGH_MAX,
    MATERIAL_RATIO,
    RATIO_LEVELS,
    RATIO_RANGE,
    WHITE,
    Canvas,
    colour_table,
)


@dataclass(frozen=True)
class Look:
    """One draw of how a scanner displays its integrals."""

    weights: np.ndarray  # (3 materials, 3 channels) absorption per channel
    grey_term: float
    white: np.ndarray  # (3,) empty-belt colour
    grey: bool  # single-energy grey display
    tint: np.ndarray | None  # (3,) colour a grey display shades towards, else None
    inverted: bool  # attenuation shown bright on a dark belt
    channels: tuple[int, int, int]  # output channel order
    material_gain: dict[str, float]
    ratio_shift: float
    attenuation: float
    blur: float
    noise: float
    banding: float
    pitch: float  # ≤ 1: detector resolution relative to the frame
    gamma: float
    contrast: float
    jpeg_quality: int | None
    size_scale: float
    aspect: float  # width / height of the frame


def random_look(rng: np.random.Generator) -> Look:
    """Draw a look; every parameter from its own range."""
    weights = ABSORPTION * rng.uniform(0.6, 1.5, size=(3, 3))
    grey = bool(rng.random() < 0.2)
    channels = (0, 1, 2)
    if rng.random() < 0.15:
        channels = tuple(int(c) for c in rng.permutation(3))  # type: ignore[assignment]
    white = rng.uniform(215, 255, size=3) if rng.random() < 0.7 else WHITE
    return Look(
        weights=weights,
        grey_term=float(rng.uniform(0.08, 0.5)),
        white=white,
        grey=grey,
        tint=rng.uniform(0, 170, size=3) if grey and rng.random() < 0.4 else None,
        inverted=bool(rng.random() < 0.12),
        channels=channels,
        material_gain={
            "organic": float(rng.uniform(0.6, 1.6)),
            "inorganic": float(rng.uniform(0.6, 1.5)),
            "metal": float(rng.uniform(0.7, 1.5)),
        },
        ratio_shift=float(rng.uniform(-0.18, 0.18)),
        attenuation=float(rng.uniform(0.6, 1.5)),
        blur=float(rng.uniform(0.0, 1.8)),
        noise=float(rng.uniform(0.0, 0.09)),
        banding=float(rng.uniform(0.0, 0.05)) if rng.random() < 0.3 else 0.0,
        pitch=float(rng.uniform(0.35, 1.0)) if rng.random() < 0.5 else 1.0,
        gamma=float(np.exp(rng.uniform(-0.35, 0.35))),
        contrast=float(rng.uniform(0.75, 1.2)),
        jpeg_quality=int(rng.integers(25, 96)) if rng.random() < 0.6 else None,
        size_scale=float(rng.uniform(0.7, 1.3)),
        aspect=float(rng.uniform(1.0, 1.8)),
    )


def frame_size(look: Look, size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a frame drawn with `look` by a scanner of nominal `size`."""
    width, height = size
    area = width * height * look.size_scale**2
    w = round(float(np.sqrt(area * look.aspect)))
    return max(w, 64), max(round(w / look.aspect), 64)


def render_look(canvas: Canvas, rng: np.random.Generator, look: Look) -> np.ndarray:
    """The RGB uint8 image of `canvas`'s integrals as a scanner with `look` shows them."""
    high: np.ndarray = canvas.high * look.attenuation
    low: np.ndarray = canvas.low * look.attenuation
    if look.pitch < 1.0:
        small = (max(8, int(canvas.width * look.pitch)), max(8, int(canvas.height * look.pitch)))
        high = cv2.resize(high, small, interpolation=cv2.INTER_AREA)
        low = cv2.resize(low, small, interpolation=cv2.INTER_AREA)
    if look.blur > 0.05:
        high = cv2.GaussianBlur(high, (0, 0), look.blur)
        low = cv2.GaussianBlur(low, (0, 0), look.blur)
    ratio = (low + EMPTY * MATERIAL_RATIO["organic"]) / (high + EMPTY) + look.ratio_shift
    if look.noise > 0:
        grain = rng.standard_normal(high.shape, dtype=np.float32)
        high = high + grain * (look.noise * (1.0 + 0.5 * high))
    if look.banding > 0:
        rows = rng.standard_normal((high.shape[0], 1)).astype(np.float32)
        high = high + look.banding * cv2.GaussianBlur(rows, (1, 0), 2.0) * (1.0 + high)
    table = colour_table(look.weights, look.grey_term, look.white)
    if look.grey:
        level = table.mean(axis=-1, keepdims=True)
        if look.tint is None:
            table = np.repeat(level, 3, axis=-1).astype(np.uint8)
        else:  # one hue: the belt's white point shading to the tint as attenuation grows
            share = level / 255.0
            table = (share * look.white + (1.0 - share) * look.tint).astype(np.uint8)
    r_lo, r_hi = RATIO_RANGE
    r_idx = ((ratio - r_lo) * ((RATIO_LEVELS - 1) / (r_hi - r_lo))).clip(0, RATIO_LEVELS - 1)
    h_idx = (high * ((HIGH_LEVELS - 1) / HIGH_MAX)).clip(0, HIGH_LEVELS - 1)
    image = table[r_idx.astype(np.intp), h_idx.astype(np.intp)]
    if image.shape[:2] != (canvas.height, canvas.width):
        image = cv2.resize(image, (canvas.width, canvas.height), interpolation=cv2.INTER_LINEAR)
    image = image[..., list(look.channels)]
    if look.inverted:
        image = 255 - image
    levels = np.arange(256, dtype=np.float32) / 255.0
    curve = (levels**look.gamma - 0.5) * look.contrast + 0.5
    lut = np.clip(curve * 255.0 + 0.5, 0, 255).astype(np.uint8)
    image = cv2.LUT(np.ascontiguousarray(image), lut)
    if look.jpeg_quality is not None:
        ok, data = cv2.imencode(
            ".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, look.jpeg_quality]
        )
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if decoded is None:
            raise RuntimeError("JPEG decoding failed")
        image = decoded[..., ::-1]
    return np.ascontiguousarray(image)
