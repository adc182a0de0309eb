"""Benign belongings for the foreign scanner and the table a bag's contents are drawn from.

Alongside soft organic items (clothes, books, bottles, toiletries) it has metal ones that
are neither guns nor blades: keys, coins, belt buckles, umbrella rods, shoe shanks. With
the electronics they keep "there is metal here" from meaning "there is a threat here".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import producer.foreign.electronics as electronics
from producer.foreign.volumes import Sprite

Builder = Callable[[np.random.Generator, float], Sprite]


def clothes(rng: np.random.Generator, ppc: float) -> Sprite:
    """Folded garments: soft lumps of fabric, sometimes with a zip, buttons or rivets."""
    w, h = rng.uniform(22.0, 40.0), rng.uniform(16.0, 30.0)
    sprite = Sprite((-w / 2, -h / 2, w / 2, h / 2), ppc)
    for _ in range(int(rng.integers(1, 4))):
        centre = (rng.uniform(-w / 8, w / 8), rng.uniform(-h / 8, h / 8))
        radii = (rng.uniform(0.3, 0.5) * w, rng.uniform(0.3, 0.5) * h)
        sprite.lump("textile", centre, radii, rng.uniform(3.0, 9.0), rng, rng.uniform(-0.4, 0.4))
    extra = rng.random()
    if extra < 0.3:
        x = rng.uniform(-w / 4, w / 4)
        sprite.tube("steel", [(x, -h / 3), (x + rng.uniform(-3.0, 3.0), h / 3)], 0.22, flatten=0.5)
        sprite.slab("steel", (x, -h / 3), (0.4, 0.8), 0.25)  # the zip's slider
    elif extra < 0.6:
        x = rng.uniform(-w / 4, w / 4)
        for y in np.linspace(-h / 3, h / 3, int(rng.integers(3, 7))):
            sprite.disc("plastic", (x, float(y)), 0.6, 0.35)
    elif extra < 0.8:
        for _ in range(int(rng.integers(2, 6))):
            spot = (rng.uniform(-w / 3, w / 3), rng.uniform(-h / 3, h / 3))
            sprite.disc("brass", spot, rng.uniform(0.3, 0.8), 0.2)
    return sprite


def book(rng: np.random.Generator, ppc: float) -> Sprite:
    """A book or a notebook, sometimes spiral-bound with a steel wire."""
    w, h = rng.uniform(13.0, 24.0), rng.uniform(18.0, 30.0)
    sprite = Sprite((-w / 2 - 1.0, -h / 2 - 0.3, w / 2 + 0.3, h / 2 + 0.3), ppc)
    sprite.slab("organic", (0.0, 0.0), (w / 2, h / 2), rng.uniform(1.2, 3.5) * 0.8, edge=0.3)
    if rng.random() < 0.3:
        for y in np.arange(-h / 2 + 0.8, h / 2 - 0.5, 0.85):
            sprite.ring("steel", (-w / 2, float(y)), 0.4, 0.05, segments=10)
    return sprite


def bottle(rng: np.random.Generator, ppc: float) -> Sprite:
    """A bottle of liquid lying down: plastic or glass wall, neck and cap."""
    length = rng.uniform(14.0, 30.0)
    radius = rng.uniform(2.5, 4.5)
    sprite = Sprite((-length / 2 - 0.5, -radius - 0.5, length / 2 + 0.5, radius + 0.5), ppc)
    glass = rng.random() < 0.35
    body_end = length / 2 - 2.5 * radius / 2
    sprite.tube("organic", [(-length / 2 + radius, 0.0), (body_end, 0.0)], radius - 0.1)
    wall_material, wall = ("glass", 0.35) if glass else ("plastic", 0.06)
    sprite.tube(wall_material, [(-length / 2 + radius, 0.0), (body_end, 0.0)], radius, wall=wall)
    neck = radius * 0.4
    sprite.tube(wall_material, [(body_end, 0.0), (length / 2 - 0.8, 0.0)], neck, wall=wall)
    sprite.tube("organic", [(body_end, 0.0), (length / 2 - 1.5, 0.0)], neck - wall)
    sprite.slab("plastic", (length / 2 - 0.6, 0.0), (0.6, neck + 0.2), 2 * neck, edge=0.4)
    return sprite


def shoe(rng: np.random.Generator, ppc: float) -> Sprite:
    """A shoe: rubber sole, leather upper, a steel shank in the arch and metal eyelets."""
    length = rng.uniform(24.0, 31.0)
    width = length * rng.uniform(0.34, 0.4)
    sprite = Sprite((-length / 2 - 0.3, -width / 2 - 0.3, length / 2 + 0.3, width / 2 + 0.3), ppc)
    turn = np.linspace(0.0, 2 * np.pi, 20, endpoint=False)
    waist = 1.0 - 0.22 * np.exp(-(((turn - 1.6) % (2 * np.pi)) ** 2))  # narrower at the arch
    outline = np.stack([length / 2 * np.cos(turn), width / 2 * np.sin(turn) * waist], 1)
    sprite.plate("organic", outline, rng.uniform(2.0, 3.2), bevel=1.2)
    sprite.ellipsoid("organic", (length * 0.08, 0.0), (length * 0.42, width * 0.45), 1.6)
    if rng.random() < 0.6:
        sprite.slab("steel", (-length * 0.12, 0.0), (length * 0.16, 0.6), 0.12, edge=0.05)
    if rng.random() < 0.6:
        for k in range(int(rng.integers(3, 7))):
            x = length * (0.05 + 0.05 * k)
            for side in (-1, 1):
                sprite.ring("steel", (x, side * width * 0.15), 0.25, 0.06, segments=8)
    return sprite


def keys(rng: np.random.Generator, ppc: float) -> Sprite:
    """A bunch of keys on a steel ring: notched shanks fanned round it."""
    ring = rng.uniform(1.0, 1.8)
    sprite = Sprite((-9.5, -9.5, 9.5, 9.5), ppc)
    sprite.ring("steel", (0.0, 0.0), ring, 0.13)
    start = rng.uniform(0.0, 2 * np.pi)
    for k in range(int(rng.integers(1, 6))):
        angle = start + k * rng.uniform(0.4, 0.9)
        length = rng.uniform(4.5, 7.0)
        teeth = [
            (length - 0.1 * i, 0.45 + rng.uniform(0.0, 0.45) * (i % 2))
            for i in range(0, int(length * 5), 3)
        ]
        local = [
            (0.0, -1.2),
            (2.4, -1.2),
            (2.4, -0.4),
            (length, -0.4),
            (length + 0.4, 0.1),
            *teeth[::-1],
            (2.4, 0.45),
            (2.4, 1.2),
            (0.0, 1.2),
        ]
        c, s = np.cos(angle), np.sin(angle)
        base = np.array([ring * c, ring * s])
        shape = np.array([[x * c - y * s, x * s + y * c] for x, y in local]) + base
        sprite.plate("brass" if rng.random() < 0.6 else "steel", shape, 0.22)
    if rng.random() < 0.5:  # a plastic fob or a car key
        angle = start - 0.8
        sprite.ellipsoid(
            "plastic", (4.0 * np.cos(angle), 4.0 * np.sin(angle)), (2.2, 1.5), 1.6, angle
        )
    return sprite


def belt(rng: np.random.Generator, ppc: float) -> Sprite:
    """A rolled-up leather belt around its steel buckle."""
    sprite = Sprite((-8.0, -8.0, 8.0, 8.0), ppc)
    turn = np.linspace(0.0, rng.uniform(3.0, 5.0) * np.pi, 60)
    spiral = np.stack([(2.5 + 0.55 * turn) * np.cos(turn), (2.5 + 0.55 * turn) * np.sin(turn)], 1)
    sprite.tube("organic", spiral, 1.7, flatten=0.12)
    frame = [(-2.5, -2.0), (2.5, -2.0), (2.5, 2.0), (-2.5, 2.0)]
    sprite.tube("steel", frame, 0.28, closed=True)
    sprite.tube("steel", [(-2.5, 0.0), (2.3, 0.0)], 0.16)
    return sprite


def coins(rng: np.random.Generator, ppc: float) -> Sprite:
    """Loose change in a leather purse."""
    sprite = Sprite((-6.0, -5.0, 6.0, 5.0), ppc)
    sprite.lump("organic", (0.0, 0.0), (5.5, 4.5), 0.6, rng)
    for _ in range(int(rng.integers(2, 10))):
        spot = (rng.uniform(-3.5, 3.5), rng.uniform(-2.5, 2.5))
        metal = "brass" if rng.random() < 0.6 else "steel"
        sprite.disc(metal, spot, rng.uniform(0.8, 1.4), rng.uniform(0.15, 0.25), edge=0.05)
    return sprite


def umbrella(rng: np.random.Generator, ppc: float) -> Sprite:
    """A folded umbrella: hollow steel shaft, ribs along it, the canopy and a handle."""
    length = rng.uniform(22.0, 45.0)
    sprite = Sprite((-length / 2 - 4.0, -3.5, length / 2 + 0.5, 4.5), ppc)
    tip = length / 2
    sprite.lump("textile", (length * 0.05, 0.0), (length * 0.4, 2.6), 6.0, rng)
    sprite.tube("steel", [(-length / 2, 0.0), (tip, 0.0)], 0.45, wall=0.08)
    for k in range(int(rng.integers(5, 9))):
        y = (k - 3.5) * 0.35
        sprite.tube("steel", [(-length * 0.3, y * 0.3), (length * 0.45, y)], 0.07)
    sprite.slab("steel", (-length * 0.3, 0.0), (0.8, 0.7), 0.6)  # the runner
    if rng.random() < 0.5:
        hook = [
            (-length / 2, 0.0),
            (-length / 2 - 2.5, 0.3),
            (-length / 2 - 3.4, 2.2),
            (-length / 2 - 2.4, 3.8),
            (-length / 2 - 0.8, 3.6),
        ]
        sprite.tube("plastic", hook, 0.9)
    else:
        sprite.slab("plastic", (-length / 2 - 1.5, 0.0), (2.0, 1.3), 2.4, edge=0.8)
    return sprite


def toiletries(rng: np.random.Generator, ppc: float) -> Sprite:
    """A wash bag: small bottles, a toothpaste tube, an aerosol can, a toothbrush."""
    w, h = rng.uniform(16.0, 24.0), rng.uniform(10.0, 15.0)
    sprite = Sprite((-w / 2, -h / 2, w / 2, h / 2), ppc)
    sprite.lump("plastic", (0.0, 0.0), (w / 2, h / 2), 0.5, rng)
    sprite.tube(
        "steel", [(-w / 2 + 1.0, -h / 2 + 0.6), (w / 2 - 1.0, -h / 2 + 0.6)], 0.15, flatten=0.6
    )
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.uniform(-w / 4, w / 4), rng.uniform(-h / 4, h / 4)
        r = rng.uniform(1.2, 2.2)
        sprite.tube("organic", [(x - 3.0, y), (x + 3.0, y)], r)
        sprite.slab("plastic", (x + 3.0 + r / 2, y), (r / 2, r * 0.6), 1.6 * r, edge=0.5)
    if rng.random() < 0.6:
        y = rng.uniform(-h / 3, h / 3)
        sprite.tube("aluminium", [(-w / 3, y), (w / 6, y)], 2.3, wall=0.04)
        sprite.slab("steel", (w / 6 + 1.0, y), (0.6, 0.5), 0.8)  # the valve
    if rng.random() < 0.6:
        y = rng.uniform(-h / 3, h / 3)
        sprite.plate(
            "aluminium",
            [(-w / 3, y - 1.6), (w / 8, y - 2.4), (w / 8, y + 2.4), (-w / 3, y + 1.6)],
            0.03,
        )
        sprite.plate(
            "organic",
            [(-w / 3, y - 1.2), (w / 8, y - 2.0), (w / 8, y + 2.0), (-w / 3, y + 1.2)],
            1.0,
            bevel=1.0,
        )
    sprite.tube("plastic", [(-w / 2 + 1.0, h / 3), (w / 2 - 2.0, h / 3 + 0.5)], 0.45)
    return sprite


BENIGN: dict[str, Builder] = {
    "clothes": clothes,
    "book": book,
    "bottle": bottle,
    "shoe": shoe,
    "keys": keys,
    "belt": belt,
    "coins": coins,
    "umbrella": umbrella,
    "toiletries": toiletries,
    "laptop": electronics.laptop,
    "phone": electronics.phone,
    "charger": electronics.charger,
    "power_bank": electronics.power_bank,
    "headphones": electronics.headphones,
    "torch": electronics.torch,
}
# How often each item is packed; clothes fill most bags.
WEIGHTS: dict[str, float] = {
    "clothes": 4.0,
    "book": 1.0,
    "bottle": 1.5,
    "shoe": 1.5,
    "keys": 1.0,
    "belt": 1.0,
    "coins": 1.0,
    "umbrella": 0.8,
    "toiletries": 1.2,
    "laptop": 0.9,
    "phone": 1.0,
    "charger": 1.2,
    "power_bank": 0.8,
    "headphones": 0.7,
    "torch": 0.7,
}
