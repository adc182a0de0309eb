"""Benign electronics for the foreign scanner: dense, metal-rich items that are not threats.

Laptops, phones, chargers, power banks, headphones and torches put steel, copper and
aluminium in a bag as often as a weapon does, so a model cannot call "metal" a threat.
"""

from __future__ import annotations

import numpy as np

from producer.foreign.volumes import Sprite


def laptop(rng: np.random.Generator, ppc: float) -> Sprite:
    """A closed laptop: shell, battery cells, mainboard with heat pipe and fan, hinges, screws."""
    w, h = rng.uniform(28.0, 36.0), rng.uniform(19.0, 25.0)
    sprite = Sprite((-w / 2 - 0.3, -h / 2 - 0.3, w / 2 + 0.3, h / 2 + 0.3), ppc)
    shell = "aluminium" if rng.random() < 0.5 else "plastic"
    sprite.slab(shell, (0.0, 0.0), (w / 2, h / 2), 0.35 if shell == "aluminium" else 0.9, edge=0.6)
    sprite.slab("plastic", (0.0, 0.0), (w / 2 - 0.4, h / 2 - 0.4), 0.6, edge=0.3)
    sprite.slab("glass", (0.0, 0.0), (w / 2 - 1.0, h / 2 - 1.0), 0.25, edge=0.2)  # display panel

    battery_y = h / 2 - rng.uniform(3.5, 5.0)
    if rng.random() < 0.5:  # cylindrical cells lying side by side
        cells = int(rng.integers(3, 7))
        for k in range(cells):
            x = (k - (cells - 1) / 2) * 6.8
            sprite.tube("aluminium", [(x - 3.0, battery_y), (x + 3.0, battery_y)], 0.9)
            sprite.tube("steel", [(x - 3.2, battery_y), (x + 3.2, battery_y)], 0.92, wall=0.03)
    else:  # a flat polymer pack split into cells
        for k in range(3):
            x = (k - 1) * w * 0.24
            sprite.slab("aluminium", (x, battery_y), (w * 0.11, 2.6), 0.55, edge=0.2)

    board_x = rng.uniform(-w / 6, w / 6)
    sprite.slab("glass", (board_x, -h / 6), (w / 4, h / 5), 0.16, edge=0.1)
    for _ in range(int(rng.integers(3, 7))):
        cx = board_x + rng.uniform(-w / 5, w / 5)
        cy = -h / 6 + rng.uniform(-h / 7, h / 7)
        sprite.slab("brass", (cx, cy), (rng.uniform(0.5, 1.6), rng.uniform(0.5, 1.4)), 0.08)
    fan = (board_x + w / 4 - 2.0, -h / 2 + 4.0)
    sprite.ring("plastic", fan, 2.6, 0.25)
    sprite.disc("steel", fan, 0.8, 0.5)
    sprite.tube("brass", [(board_x - 3.0, -h / 6), (fan[0] - 2.6, fan[1] + 0.5)], 0.3, wall=0.05)
    for side in (-1, 1):
        sprite.tube(
            "steel", [(side * w / 3 - 2.0, -h / 2 + 0.6), (side * w / 3 + 2.0, -h / 2 + 0.6)], 0.35
        )
    for x in np.linspace(-w / 2 + 1.2, w / 2 - 1.2, 5):
        for y in (-h / 2 + 1.0, h / 2 - 1.0):
            sprite.disc("steel", (float(x), y), 0.2, 0.5)
    return sprite


def phone(rng: np.random.Generator, ppc: float) -> Sprite:
    """A smartphone: glass faces, metal rim, battery, camera and board."""
    w, h = rng.uniform(6.5, 8.0), rng.uniform(13.5, 16.5)
    sprite = Sprite((-w / 2 - 0.3, -h / 2 - 0.3, w / 2 + 0.3, h / 2 + 0.3), ppc)
    sprite.slab("glass", (0.0, 0.0), (w / 2, h / 2), 0.14, edge=0.4)
    rim = [
        (-w / 2 + 0.15, -h / 2 + 0.15),
        (w / 2 - 0.15, -h / 2 + 0.15),
        (w / 2 - 0.15, h / 2 - 0.15),
        (-w / 2 + 0.15, h / 2 - 0.15),
    ]
    sprite.tube("aluminium" if rng.random() < 0.7 else "steel", rim, 0.2, closed=True, flatten=0.9)
    sprite.slab("aluminium", (0.0, h / 8), (w / 2 - 0.6, h / 3.2), 0.45, edge=0.2)
    sprite.slab("glass", (0.0, -h / 3), (w / 2 - 0.7, h / 8), 0.15)
    sprite.disc("steel", (-w / 4, -h / 2 + 1.5), 0.6, 0.35)
    sprite.disc("steel", (w / 2 - 1.0, h / 2 - 1.4), 0.45, 0.4)  # vibration motor
    return sprite


def charger(rng: np.random.Generator, ppc: float) -> Sprite:
    """A wall charger with its coiled cable: transformer core, copper winding, brass prongs."""
    size = rng.uniform(3.5, 6.0)
    reach = rng.uniform(8.0, 14.0)
    sprite = Sprite((-reach, -reach, reach, reach), ppc)
    sprite.slab("plastic", (0.0, 0.0), (size / 2, size * 0.6), 2.6, edge=0.6)
    sprite.slab("steel", (0.0, 0.3), (size / 4, size / 4), 0.9, edge=0.2)
    sprite.slab("brass", (0.0, 0.3), (size / 3, size / 6), 0.7, edge=0.2)
    for side in (-1, 1):
        sprite.slab("brass", (side * size / 5, -size * 0.6 - 0.8), (0.12, 0.8), 0.6)
    angles = np.cumsum(rng.normal(0.0, 0.9, size=14))
    steps = np.stack([np.cos(angles), np.sin(angles)], 1) * reach / 6
    plug = np.array([0.0, size * 0.6])  # where the cable leaves the case
    path = np.vstack([plug, plug + np.cumsum(steps, 0)])
    path = np.clip(path, -reach + 0.5, reach - 0.5)
    sprite.tube("plastic", path, 0.25)
    sprite.tube("brass", path, 0.06)
    return sprite


def power_bank(rng: np.random.Generator, ppc: float) -> Sprite:
    """A power bank: aluminium case around a row of cylindrical cells and a small board."""
    cells = int(rng.integers(1, 4))
    w, h = 7.0, 2.0 * cells + 0.6
    sprite = Sprite((-w / 2 - 0.3, -h / 2 - 0.3, w / 2 + 0.3, h / 2 + 0.3), ppc)
    sprite.slab("aluminium", (0.0, 0.0), (w / 2, h / 2), 0.35, edge=0.3)
    for k in range(cells):
        y = (k - (cells - 1) / 2) * 2.0
        sprite.tube("aluminium", [(-2.8, y), (2.8, y)], 0.9)
        sprite.tube("steel", [(-3.1, y), (3.1, y)], 0.92, wall=0.03)
    sprite.slab("glass", (w / 2 - 0.5, 0.0), (0.3, h / 2 - 0.3), 0.6)
    return sprite


def headphones(rng: np.random.Generator, ppc: float) -> Sprite:
    """Folded headphones: a sprung steel band in a plastic arc between two ear cups."""
    span = rng.uniform(13.0, 17.0)
    sprite = Sprite((-span / 2 - 4.0, -span / 2 - 1.0, span / 2 + 4.0, 5.0), ppc)
    turn = np.linspace(np.pi, 2 * np.pi, 16)
    arc = np.stack([span / 2 * np.cos(turn), span / 2 * np.sin(turn)], 1)
    sprite.tube("plastic", arc, 1.1, flatten=0.6)
    sprite.tube("steel", arc, 0.5, flatten=0.12)
    for side in (-1, 1):
        cup = (side * span / 2, 1.5)
        sprite.ellipsoid("plastic", cup, (3.2, 3.6), 2.6)
        sprite.disc("steel", cup, 1.1, 0.45)
        sprite.ring("brass", cup, 1.5, 0.12)
    return sprite


def torch(rng: np.random.Generator, ppc: float) -> Sprite:
    """A torch: aluminium body around battery cells, spring, reflector and glass lens."""
    length = rng.uniform(12.0, 22.0)
    radius = rng.uniform(1.1, 1.6)
    sprite = Sprite((-length / 2 - 1.0, -radius - 1.2, length / 2 + 1.0, radius + 1.2), ppc)
    body = [(-length / 2, 0.0), (length / 2 - 3.0, 0.0)]
    sprite.tube("aluminium", body, radius, wall=0.15)
    sprite.tube("aluminium", [(length / 2 - 3.0, 0.0), (length / 2, 0.0)], radius + 0.8, wall=0.2)
    cells = int((length - 5.0) // 5.2)
    for k in range(cells):
        x = -length / 2 + 0.8 + k * 5.2
        sprite.tube("aluminium", [(x + 0.9, 0.0), (x + 4.2, 0.0)], radius - 0.3)
        sprite.tube("steel", [(x + 0.8, 0.0), (x + 4.3, 0.0)], radius - 0.28, wall=0.03)
    coil = [(-length / 2 + 0.1 + 0.12 * k, (-1) ** k * (radius - 0.4)) for k in range(6)]
    sprite.tube("steel", coil, 0.05)
    sprite.slab("glass", (length / 2 - 0.3, 0.0), (0.2, radius + 0.6), 0.5)
    return sprite
