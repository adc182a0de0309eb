"""Dual-energy X-ray rendering for the synthetic scanner: line integrals and false colour.

Every object adds its attenuation (material coefficient × thickness) to two line
integrals, one per beam energy, so overlapping objects add up as Beer–Lambert says.
The ratio low/high of the integrals tells the material (organic < inorganic < metal);
the high-energy transmission tells how dense the stack is. Colour follows the usual
scanner convention: organic orange, inorganic green, metal blue, empty belt near white.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# Ratio of low- to high-energy attenuation for each material class; the high-energy
# coefficient is folded into the amount drawn, so an amount of 1 absorbs e^-1 at high energy.
MATERIAL_RATIO = {"organic": 1.25, "inorganic": 1.6, "metal": 2.4}

_SUBPIXEL_BITS = 3  # cv2 polygon coordinates carry 3 fractional bits
HIGH_LEVELS = 1024  # quantisation of the high-energy integral for the colour table
HIGH_MAX = 6.0  # integrals above this are black whatever the material
RATIO_LEVELS = 64
RATIO_RANGE = (1.1, 2.6)
EMPTY = 0.02  # pseudo-amount of organic matter that gives the empty belt a material


# Absorption weights per channel at the three anchor materials: a medium stack of
# organic matter keeps red and loses blue (orange), inorganic loses red and blue
# (green), metal loses red and green (blue).
ABSORPTION = np.array([[0.05, 0.62, 1.70], [1.50, 0.36, 1.50], [1.90, 1.20, 0.15]])
WHITE = np.array([246.0, 246.0, 240.0])


def colour_table(
    weights: np.ndarray = ABSORPTION, grey_term: float = 0.25, white: np.ndarray = WHITE
) -> np.ndarray:
    """(ratio level, high level) → RGB uint8: per-channel Beer–Lambert with tinted absorption.

    `weights` (material × channel) tint the absorption; `grey_term` is added to every
    channel, so dense stacks go dark whatever their colour; `white` is the empty belt.
    """
    anchors = np.array(
        [MATERIAL_RATIO["organic"], MATERIAL_RATIO["inorganic"], MATERIAL_RATIO["metal"]]
    )
    ratios = np.linspace(*RATIO_RANGE, RATIO_LEVELS)
    per_channel = np.stack([np.interp(ratios, anchors, weights[:, c]) for c in range(3)], axis=-1)
    highs = np.linspace(0.0, HIGH_MAX, HIGH_LEVELS)
    absorb = highs[None, :, None] * (per_channel[:, None, :] + grey_term)
    return np.clip(white * np.exp(-absorb), 0, 255).astype(np.uint8)  # (R, H, 3)


_TABLE = colour_table()


@dataclass(frozen=True)
class Part:
    """One rigid piece of an object in its own frame (units: the object's length)."""

    polygons: tuple[np.ndarray, ...] = ()  # filled, each (N, 2)
    lines: tuple[np.ndarray, ...] = ()  # open polylines, each (N, 2)
    line_width: float = 0.0  # in object units
    material: str = "metal"
    amount: float = 1.0  # attenuation at full thickness (high energy)
    rounded: bool = False  # cylinder-like profile instead of a flat slab


def transform(
    points: np.ndarray,
    centre: tuple[float, float],
    angle: float,
    scale: float,
    mirror: bool = False,
) -> np.ndarray:
    """Object-frame points → image coordinates (x right, y down)."""
    pts = np.asarray(points, dtype=np.float64)
    if mirror:
        pts = pts * np.array([1.0, -1.0])
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return pts @ rot.T * scale + np.asarray(centre)


class Canvas:
    """Two line integrals (low and high energy) that objects add into."""

    def __init__(self, height: int, width: int) -> None:
        self.height = height
        self.width = width
        self.low = np.zeros((height, width), np.float32)
        self.high = np.zeros((height, width), np.float32)
        # Per-material multiplier of every part's amount (a scanner's spectrum); 1 by default.
        self.material_gain: dict[str, float] = {}

    def stamp(
        self,
        part: Part,
        centre: tuple[float, float],
        angle: float,
        scale: float,
        mirror: bool = False,
        footprint: np.ndarray | None = None,
    ) -> None:
        """Rasterise `part` at a pose and add its attenuation; mark it in `footprint` if given."""
        polys = [transform(p, centre, angle, scale, mirror) for p in part.polygons]
        lines = [transform(p, centre, angle, scale, mirror) for p in part.lines]
        width_px = max(1, round(part.line_width * scale))
        self.stamp_points(part, polys, lines, width_px, footprint)

    def stamp_points(
        self,
        part: Part,
        polys: Sequence[np.ndarray],
        lines: Sequence[np.ndarray],
        width_px: int,
        footprint: np.ndarray | None = None,
        gain: float = 1.0,
        smear: tuple[float, float] | None = None,
    ) -> None:
        """Rasterise outlines already in image coordinates and add `part`'s attenuation.

        `gain` multiplies the part's amount (a longer path through it); `smear` (dx, dy)
        sweeps the silhouette along that vector, centred, as a slab seen at a slant is
        widened by its projected thickness. The defaults leave `stamp`'s pixels as they were.
        """
        everything = [*polys, *lines]
        if not everything:
            return
        allpts = np.concatenate(everything)
        reach = 0 if smear is None else int(np.ceil(max(abs(smear[0]), abs(smear[1])) / 2))
        pad = width_px + 3 + reach
        x0 = max(int(np.floor(allpts[:, 0].min())) - pad, 0)
        y0 = max(int(np.floor(allpts[:, 1].min())) - pad, 0)
        x1 = min(int(np.ceil(allpts[:, 0].max())) + pad, self.width)
        y1 = min(int(np.ceil(allpts[:, 1].max())) + pad, self.height)
        if x1 <= x0 or y1 <= y0:
            return
        roi = np.zeros((y1 - y0, x1 - x0), np.uint8)
        offset = np.array([x0, y0])
        unit = 1 << _SUBPIXEL_BITS
        if polys:
            fixed = [np.round((p - offset) * unit).astype(np.int32) for p in polys]
            cv2.fillPoly(roi, fixed, 255, cv2.LINE_AA, _SUBPIXEL_BITS)
        if lines:
            fixed = [np.round((p - offset) * unit).astype(np.int32) for p in lines]
            cv2.polylines(roi, fixed, False, 255, width_px, cv2.LINE_AA, _SUBPIXEL_BITS)
        if smear is not None:
            roi = _sweep(roi, smear)
        thick = _profile(roi) if part.rounded else roi / 255.0
        add = (thick * (part.amount * gain * self.material_gain.get(part.material, 1.0))).astype(
            np.float32
        )
        ratio = MATERIAL_RATIO[part.material]
        self.high[y0:y1, x0:x1] += add
        self.low[y0:y1, x0:x1] += add * ratio
        if footprint is not None:
            footprint[y0:y1, x0:x1] |= roi > 127

    def stamp_all(
        self,
        parts: Sequence[Part],
        centre: tuple[float, float],
        angle: float,
        scale: float,
        mirror: bool = False,
        footprint: np.ndarray | None = None,
    ) -> None:
        for part in parts:
            self.stamp(part, centre, angle, scale, mirror, footprint)

    def render(self, rng: np.random.Generator, noise: float, blur: float) -> np.ndarray:
        """False-colour RGB uint8 image of the integrals, with detector blur and noise."""
        high: np.ndarray = self.high
        low: np.ndarray = self.low
        if blur > 0:
            high = cv2.GaussianBlur(high, (0, 0), blur)
            low = cv2.GaussianBlur(low, (0, 0), blur)
        ratio = (low + EMPTY * MATERIAL_RATIO["organic"]) / (high + EMPTY)
        if noise > 0:
            # Quantum noise grows with attenuation (fewer photons reach the detector).
            grain = rng.standard_normal(high.shape, dtype=np.float32)
            high = high + grain * (noise * (1.0 + 0.5 * high))
        r_lo, r_hi = RATIO_RANGE
        r_idx = ((ratio - r_lo) * ((RATIO_LEVELS - 1) / (r_hi - r_lo))).clip(0, RATIO_LEVELS - 1)
        h_idx = (high * ((HIGH_LEVELS - 1) / HIGH_MAX)).clip(0, HIGH_LEVELS - 1)
        return _TABLE[r_idx.astype(np.intp), h_idx.astype(np.intp)]


def _profile(roi: np.ndarray) -> np.ndarray:
    """Relative thickness of a rounded (cylinder-like) part from its rasterised silhouette."""
    inside = (roi > 127).astype(np.uint8)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    depth = dist.max()
    if depth <= 0:
        return roi / 255.0
    # Chord length through a cylinder: thickest on the axis, zero at the rim.
    frac = 1.0 - np.minimum(dist / depth, 1.0)
    return np.sqrt(np.maximum(1.0 - frac * frac, 0.0)) * 0.8 + 0.2 * (roi / 255.0)


def _sweep(roi: np.ndarray, smear: tuple[float, float]) -> np.ndarray:
    """`roi` dilated by a segment `smear` long, centred: the silhouette swept along it."""
    dx, dy = smear
    half = int(np.ceil(max(abs(dx), abs(dy)) / 2))
    if half == 0:
        return roi
    kernel = np.zeros((2 * half + 1, 2 * half + 1), np.uint8)
    start = (round(half - dx / 2), round(half - dy / 2))
    stop = (round(half + dx / 2), round(half + dy / 2))
    cv2.line(kernel, start, stop, 1, 1)
    return cv2.dilate(roi, kernel)


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def ellipse(
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    n: int = 24,
    start: float = 0.0,
    stop: float = 2 * np.pi,
) -> np.ndarray:
    t = np.linspace(start, stop, n, endpoint=stop - start < 2 * np.pi - 1e-9)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=-1)


def rounded_rect(x0: float, y0: float, x1: float, y1: float, r: float, n: int = 5) -> np.ndarray:
    """Rectangle with circular corners of radius r (clipped to half the shorter side)."""
    r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
    corners = [
        (x1 - r, y0 + r, -np.pi / 2),
        (x1 - r, y1 - r, 0.0),
        (x0 + r, y1 - r, np.pi / 2),
        (x0 + r, y0 + r, np.pi),
    ]
    pts = [ellipse(cx, cy, r, r, n, a, a + np.pi / 2) for cx, cy, a in corners]
    return np.concatenate(pts)


def blob(
    rng: np.random.Generator, rx: float, ry: float, roughness: float = 0.25, n: int = 28
) -> np.ndarray:
    """A smooth random closed outline around the origin (clothing, pouches, shoes)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = np.ones(n)
    for k in (2, 3, 5):
        radius += roughness / k * rng.uniform(-1, 1) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    return np.stack([rx * radius * np.cos(t), ry * radius * np.sin(t)], axis=-1)


def wiggle(rng: np.random.Generator, length: float, n: int = 14, bend: float = 0.5) -> np.ndarray:
    """A random smooth open curve of about `length` starting at the origin (cables, straps)."""
    step = length / n
    heading = rng.uniform(0, 2 * np.pi)
    turn = 0.0
    pts = [np.zeros(2)]
    for _ in range(n):
        turn = 0.7 * turn + rng.normal(0, bend)
        heading += turn * 0.5
        pts.append(pts[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
    curve = np.array(pts)
    return curve - curve.mean(axis=0)
