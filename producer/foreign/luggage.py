"""The belt and the container for the foreign scanner: what every scan shows behind the contents.

The belt is a woven rubber band under the whole frame. On it sits a grey tray, a hard
suitcase with trolley tubes and wheels, or a soft holdall; the container fixes the
scene's scale (pixels per centimetre) and the region the contents are packed into.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from producer.foreign.volumes import MATERIALS, Sprite

CONTAINERS = ("tray", "suitcase", "holdall")
_CONTAINER_WEIGHTS = (0.35, 0.4, 0.25)


@dataclass(frozen=True)
class Luggage:
    """Where the contents go: the packing region in pixels and the scene's scale."""

    region: tuple[float, float, float, float]  # (x0, y0, x1, y1), pixels
    ppc: float  # pixels per centimetre
    container: str


def lay_luggage(scene: np.ndarray, rng: np.random.Generator) -> Luggage:
    """Draw the belt and a container into `scene` (H, W, 2) and say where contents may go."""
    height, width = scene.shape[:2]
    _belt(scene, rng)
    w_px = int(width * rng.uniform(0.8, 0.95))
    h_px = int(height * rng.uniform(0.74, 0.92))
    # The scale suits a bag of ordinary size in whichever direction the frame is tighter.
    ppc = min(w_px / rng.uniform(52.0, 80.0), h_px / rng.uniform(36.0, 56.0))
    w_cm, h_cm = (w_px - 2) / ppc, (h_px - 2) / ppc  # a sprite adds a pixel on each side
    container = CONTAINERS[int(rng.choice(len(CONTAINERS), p=_CONTAINER_WEIGHTS))]
    sprite = Sprite((-w_cm / 2, -h_cm / 2, w_cm / 2, h_cm / 2), ppc)
    inset = {"tray": _tray, "suitcase": _suitcase, "holdall": _holdall}[container](
        sprite, rng, w_cm / 2, h_cm / 2
    )
    # Containers ride square on the belt, so the sprite is added pixel for pixel rather
    # than resampled; turning it over swaps the side its trolley or zip is on.
    rows, cols = sprite.shape
    x0 = int(rng.integers(0, width - cols + 1))
    y0 = int(rng.integers(0, height - rows + 1))
    data = sprite.data[::-1] if rng.random() < 0.5 else sprite.data
    scene[y0 : y0 + rows, x0 : x0 + cols] += data
    margin = min(inset * ppc, 0.25 * min(rows, cols))
    region = (x0 + margin, y0 + margin, x0 + cols - margin, y0 + rows - margin)
    return Luggage(region=region, ppc=ppc, container=container)


def _belt(scene: np.ndarray, rng: np.random.Generator) -> None:
    """A rubber belt with a fine weave across it and a seam now and then along it."""
    height, width = scene.shape[:2]
    thickness = rng.uniform(0.4, 0.9)
    period = rng.uniform(3.0, 7.0)
    phase = rng.uniform(0.0, 2 * np.pi)
    across = 1.0 + 0.05 * np.sin(2 * np.pi * np.arange(width, dtype=np.float32) / period + phase)
    along = 1.0 + 0.04 * np.sin(np.arange(height, dtype=np.float32) * rng.uniform(0.3, 0.6))
    belt = thickness * across[None, :] * along[:, None]  # (H, W)
    if rng.random() < 0.5:
        seam = int(rng.integers(0, width))
        belt[:, seam : seam + 3] *= 2.2
    mu_low, mu_high = MATERIALS["organic"]
    scene[..., 0] += mu_low * belt
    scene[..., 1] += mu_high * belt


def _tray(sprite: Sprite, rng: np.random.Generator, hx: float, hy: float) -> float:
    """A grey screening tray: a thin plastic floor, sloped walls and a rolled lip."""
    corner = rng.uniform(3.0, 6.0)
    sprite.slab("plastic", (0.0, 0.0), (hx - 1.5, hy - 1.5), rng.uniform(0.4, 0.7), edge=1.0)
    sprite.rim("plastic", (hx - 2.2, hy - 2.2), corner, 1.4, flatten=1.6)  # the walls
    sprite.rim("plastic", (hx - 0.7, hy - 0.7), corner + 1.0, 0.6, flatten=2.5)  # the lip
    return 3.5


def _suitcase(sprite: Sprite, rng: np.random.Generator, hx: float, hy: float) -> float:
    """A hard suitcase: shell and walls, a zip, trolley tubes along one side and wheels."""
    corner = rng.uniform(4.0, 7.0)
    shell = "plastic" if rng.random() < 0.8 else "aluminium"
    sprite.slab(shell, (0.0, 0.0), (hx - 0.5, hy - 0.5), 0.5 if shell == "plastic" else 0.12)
    sprite.rim(shell, (hx - 0.6, hy - 0.6), corner, 0.5, flatten=4.0 if shell == "plastic" else 1.5)
    sprite.rim("steel", (hx - 1.6, hy - 1.6), corner - 1.0, 0.2, flatten=0.6)  # the zip
    side = hy - 2.8
    for x in (-hx * 0.45, hx * 0.45):
        sprite.tube("aluminium", [(x, -side), (x, side)], 1.0, wall=0.12)
    sprite.tube("aluminium", [(-hx * 0.45, side), (hx * 0.45, side)], 1.0, wall=0.12)
    for x in (-hx + 2.5, hx - 2.5):
        sprite.disc("plastic", (x, side), 2.6, 3.5, edge=0.8)
        sprite.disc("steel", (x, side), 0.5, 3.0)
    sprite.tube("plastic", [(-5.0, -hy + 1.5), (5.0, -hy + 1.5)], 1.0)  # the carry handle
    return 4.0


def _holdall(sprite: Sprite, rng: np.random.Generator, hx: float, hy: float) -> float:
    """A soft holdall: a fabric skin, straps with plastic buckles and a zip along the top."""
    sprite.lump("textile", (0.0, 0.0), (hx, hy), rng.uniform(2.0, 4.0), rng)
    sprite.rim("organic", (hx - 1.5, hy - 1.5), rng.uniform(5.0, 10.0), 0.6, flatten=0.5)
    zip_y = rng.uniform(-hy / 2, hy / 2)
    sprite.tube("steel", [(-hx * 0.8, zip_y), (hx * 0.8, zip_y)], 0.2, flatten=0.6)
    sprite.slab("steel", (rng.uniform(-hx * 0.7, hx * 0.7), zip_y), (0.8, 0.5), 0.3)
    for x in (-hx * 0.3, hx * 0.3):
        sprite.tube("organic", [(x, -hy + 1.0), (x, hy - 1.0)], 1.8, flatten=0.1)
        sprite.slab("plastic", (x, -hy * 0.6), (2.2, 1.4), 0.8)
    return 2.5
