"""Threat objects for the foreign scanner: guns and knives assembled from 2.5-D volumes.

Each builder draws one object at true size (centimetres) with randomised proportions
and returns its sprite. Guns point their muzzle along +x with the grip hanging towards
+y; knives point their tip along +x with the handle towards -x.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from producer.foreign.volumes import Sprite

Builder = Callable[[np.random.Generator, float], Sprite]


def pistol(rng: np.random.Generator, ppc: float) -> Sprite:
    """A semi-automatic pistol: steel slide and barrel on a polymer frame, loaded magazine."""
    length = rng.uniform(15.5, 21.0)
    slide_h = rng.uniform(2.8, 3.4)
    grip_drop = rng.uniform(9.0, 11.0)
    rake = rng.uniform(0.22, 0.38)  # the grip leans back this much per cm down
    sprite = Sprite((-0.5 - rake * grip_drop - 1.0, -0.8, length + 0.5, grip_drop + 2.5), ppc)
    frame_material = "plastic" if rng.random() < 0.7 else "steel"
    frame_depth = 2.9 if frame_material == "plastic" else 0.9

    top = slide_h + 1.2  # bottom of the dust cover
    sprite.plate(
        frame_material,
        [
            (0.3, slide_h - 0.2),
            (length - 1.2, slide_h - 0.2),
            (length - 1.4, top),
            (5.6, top),
            (5.2 - rake * grip_drop, grip_drop),
            (-rake * grip_drop - 0.6, grip_drop + 0.4),
            (-0.3, slide_h + 0.4),
        ],
        frame_depth,
        bevel=0.6,
    )
    sprite.slab("steel", (length / 2, slide_h / 2), (length / 2, slide_h / 2), 0.75, edge=0.35)
    bore_y = slide_h * 0.55
    sprite.tube("steel", [(2.5, bore_y), (length - 0.1, bore_y)], 0.7, wall=0.32)
    sprite.tube("steel", [(length - 6.5, slide_h + 0.45), (length - 0.4, slide_h + 0.45)], 0.25)
    sprite.slab("steel", (length - 0.7, -0.2), (0.2, 0.25), 0.4)  # front sight
    sprite.slab("steel", (0.9, -0.25), (0.35, 0.3), 0.9)  # rear sight

    _magazine(sprite, rng, slide_h, grip_drop, rake)
    guard_y = top + rng.uniform(1.9, 2.4)
    sprite.tube(
        frame_material,
        [(5.6, top), (9.0, top + 0.3), (9.2, guard_y), (6.2, guard_y), (5.0, guard_y - 0.6)],
        0.28,
    )
    sprite.tube("steel", [(6.9, top), (7.3, top + 1.0), (7.0, top + 1.6)], 0.22)  # trigger
    for x in (3.2, 6.2):
        sprite.disc("steel", (x, top - 0.3), 0.18, 3.0)  # pins through the frame
    return sprite


def _magazine(
    sprite: Sprite, rng: np.random.Generator, slide_h: float, grip_drop: float, rake: float
) -> None:
    """A pistol's magazine up its grip: thin steel walls round a stack of brass rounds."""
    top, bottom = slide_h + 0.6, grip_drop - 0.2

    def lean(y: float) -> float:
        return -rake * (y - slide_h)

    sprite.plate(
        "steel",
        [
            (0.9 + lean(top), top),
            (4.3 + lean(top), top),
            (4.3 + lean(bottom), bottom),
            (0.9 + lean(bottom), bottom),
        ],
        0.22,
    )
    for k in range(int(rng.integers(0, 9))):
        y = top + 0.5 + k * 0.95
        x = 1.3 + lean(y)
        sprite.tube("brass", [(x, y), (x + 2.4, y)], 0.45, wall=0.12)
        sprite.ellipsoid("brass", (x + 2.7, y), (0.45, 0.42), 0.8)


def revolver(rng: np.random.Generator, ppc: float) -> Sprite:
    """A revolver: steel frame and barrel, a six-round cylinder and a wooden grip."""
    barrel = rng.uniform(5.0, 15.0)
    drum = rng.uniform(3.6, 4.4)  # cylinder length
    radius = rng.uniform(1.6, 2.0)  # cylinder radius
    front = 3.0 + drum  # where the barrel starts
    muzzle = front + barrel
    axis = radius + 0.3  # the cylinder's axis, below the top strap
    base = axis + radius + 0.6  # the underside of the frame

    # The grip leans back from under the hammer; build its outline first to size the sprite.
    rake = rng.uniform(0.25, 0.5)
    length = rng.uniform(8.5, 11.0)
    half = rng.uniform(1.5, 1.9)
    top = np.array([0.3, axis + 0.4])
    down = np.array([-np.sin(rake), np.cos(rake)])
    across = np.array([np.cos(rake), np.sin(rake)])
    grip = np.array(
        [
            top + 0.9 * half * across,
            top + length * down + half * across,
            top + (length + 0.7) * down + 0.2 * across,
            top + (length + 0.5) * down - half * across,
            top - 1.2 * half * across,
        ]
    )
    lo, hi = grip.min(0), grip.max(0)
    sprite = Sprite((min(lo[0], -2.2) - 0.5, -1.0, muzzle + 0.6, hi[1] + 0.5), ppc)

    sprite.plate("organic", grip, 3.2, bevel=1.0)
    sprite.tube(
        "steel", [top - 0.9 * half * across, top + length * down - 0.9 * half * across], 0.35
    )
    sprite.disc("steel", tuple(top + 0.5 * length * down), 0.35, 3.0)  # grip screw
    sprite.plate(
        "steel",
        [
            (-0.4, 0.1),
            (front + 0.8, 0.1),
            (front + 1.0, base),
            (2.8, base),
            tuple(top + 1.5 * down + 0.8 * half * across),
            tuple(top + 1.0 * down - half * across),
            (-1.2, 1.2),
        ],
        1.1,
        bevel=0.3,
    )
    _cylinder_and_barrel(sprite, rng, (3.0, front), axis, radius, muzzle)
    _hammer_and_trigger(sprite, base)
    return sprite


def _hammer_and_trigger(sprite: Sprite, base: float) -> None:
    """A revolver's hammer spur and, under a frame whose underside is at `base`, guard and trigger."""
    sprite.plate("steel", [(-0.2, 0.4), (-1.4, -0.4), (-1.9, 0.1), (-0.7, 1.3)], 0.8)
    turn = np.linspace(0.0, np.pi, 9)
    guard = np.stack([2.3 + 1.7 * np.cos(turn), base + 1.6 * np.sin(turn)], 1)
    sprite.tube("steel", guard, 0.26)
    sprite.tube("steel", [(2.5, base - 0.2), (2.6, base + 0.7), (2.1, base + 1.2)], 0.24)


def _cylinder_and_barrel(
    sprite: Sprite,
    rng: np.random.Generator,
    span: tuple[float, float],
    axis: float,
    radius: float,
    muzzle: float,
) -> None:
    """A revolver's cylinder over `span` (x from, to) with three rows of rounds, then its barrel."""
    back, front = span
    sprite.slab("steel", ((back + front) / 2, axis), ((front - back) / 2, radius), 3.3, edge=0.9)
    for offset in (-0.62, 0.0, 0.62):  # seen side-on, six chambers show as three rows
        y = axis + offset * radius
        sprite.tube("brass", [(back + 0.1, y), (front - 0.1, y)], 0.42, wall=0.1)
    bore = rng.uniform(0.75, 0.95)
    barrel = muzzle - front
    sprite.tube("steel", [(front, bore), (muzzle, bore)], bore, wall=bore - 0.32)
    sprite.slab("steel", (front + barrel / 2, -0.1), (barrel / 2, 0.25), 0.6)  # top rib
    ejector = 2 * bore + 0.3
    sprite.tube("steel", [(front + 0.2, ejector), (front + 0.7 * barrel, ejector)], 0.3)
    sprite.plate("steel", [(muzzle - 1.2, -0.1), (muzzle - 0.2, -0.1), (muzzle - 0.5, -0.8)], 0.5)


def dagger(rng: np.random.Generator, ppc: float) -> Sprite:
    """A double-edged dagger: ridged blade, crossguard, tang through the grip, pommel."""
    blade = rng.uniform(11.0, 20.0)
    width = rng.uniform(2.4, 3.8)
    handle = rng.uniform(9.5, 12.5)
    guard = width / 2 + rng.uniform(0.9, 2.2)
    sprite = Sprite((-handle - 1.6, -guard - 0.4, blade + 0.4, guard + 0.4), ppc)
    half = width / 2
    sprite.plate(
        "steel",
        [
            (0.0, -half),
            (0.55 * blade, -0.8 * half),
            (blade, 0.0),
            (0.55 * blade, 0.8 * half),
            (0.0, half),
        ],
        rng.uniform(0.45, 0.6),
        bevel=half,
    )
    sprite.slab("steel", (-0.4, 0.0), (0.45, guard), 1.2, edge=0.3)
    sprite.plate("steel", [(-handle, -0.45), (0.0, -0.55), (0.0, 0.55), (-handle, 0.45)], 0.45)
    handle_material = "organic" if rng.random() < 0.6 else "plastic"
    sprite.ellipsoid(handle_material, (-handle / 2 - 0.6, 0.0), (handle / 2, 1.4), 2.7)
    sprite.ellipsoid("steel", (-handle - 0.6, 0.0), (0.9, 1.35), 2.2)
    return sprite


def kitchen_knife(rng: np.random.Generator, ppc: float) -> Sprite:
    """A kitchen knife: wide single-edged blade, bolster, full tang between riveted scales."""
    blade = rng.uniform(13.0, 24.0)
    height = rng.uniform(2.8, 5.2)
    handle = rng.uniform(10.0, 13.0)
    sprite = Sprite((-handle - 0.6, -1.4, blade + 0.4, height + 0.4), ppc)
    tip = rng.uniform(0.0, 0.3) * height  # how far the point drops below the spine
    curve = np.linspace(0.0, 1.0, 9)
    edge = [(blade * t, tip + (height - tip) * (1.0 - t**2.6)) for t in curve]  # rises to the tip
    sprite.plate("steel", [(0.0, 0.0), (0.65 * blade, 0.0), *edge[::-1]], 0.28, bevel=1.4)
    sprite.slab("steel", (-0.4, 0.9), (0.5, 1.25), 1.6, edge=0.3)  # bolster
    sprite.plate("steel", [(-handle, 0.0), (-0.5, -0.05), (-0.5, 1.9), (-handle, 1.7)], 0.45)
    sprite.slab(
        "organic" if rng.random() < 0.5 else "plastic",
        (-handle / 2 - 0.4, 0.9),
        (handle / 2, 1.3),
        1.8,
        edge=0.6,
    )
    for k in range(3):
        sprite.disc("steel", (-handle * (0.2 + 0.3 * k) - 0.4, 0.9), 0.28, 2.0)
    return sprite


def folding_knife(rng: np.random.Generator, ppc: float) -> Sprite:
    """An open folding knife: drop-point blade on a pivot, steel liners and a pocket clip."""
    blade = rng.uniform(6.5, 10.5)
    height = rng.uniform(2.0, 3.0)
    handle = blade * rng.uniform(1.05, 1.25)
    sprite = Sprite((-handle - 0.6, -1.8, blade + 0.6, height + 0.6), ppc)
    sprite.plate(
        "steel",
        [
            (-0.8, -0.1),
            (0.5 * blade, 0.0),
            (blade, 0.35 * height),
            (0.7 * blade, height),
            (0.0, height),
            (-0.8, 0.8 * height),
        ],
        0.32,
        bevel=0.9,
    )
    sprite.disc("steel", (-0.1, 0.45 * height), 0.55, 1.6)  # pivot
    sprite.disc("steel", (0.6, -0.3), 0.22, 0.9)  # thumb stud
    outline = [
        (0.3, -0.2),
        (0.3, height),
        (-handle, height * 0.95),
        (-handle - 0.4, 0.5 * height),
        (-handle, -0.1),
    ]
    sprite.plate("steel", outline, 0.3)  # the two liners together
    scale = "aluminium" if rng.random() < 0.4 else "plastic"
    sprite.plate(scale, outline, 1.1 if scale == "plastic" else 0.45, bevel=0.4)
    sprite.plate(
        "steel", [(-handle + 0.3, -0.7), (-0.9, -0.5), (-0.9, -0.1), (-handle + 0.3, -0.3)], 0.12
    )
    return sprite


GUNS: dict[str, Builder] = {"pistol": pistol, "revolver": revolver}
KNIVES: dict[str, Builder] = {
    "dagger": dagger,
    "kitchen_knife": kitchen_knife,
    "folding_knife": folding_knife,
}
