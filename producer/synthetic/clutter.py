"""Bags and benign clutter for the synthetic scanner.

Clutter builders follow the threat builders' convention (parts in the object's own
frame, about one unit long) and also say how long the object is relative to the bag,
so a scene can size them. Some clutter is metal on purpose (cables, keys, zips,
umbrella ribs, battery packs): a detector must not call every piece of metal a threat.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from producer.synthetic.render import Canvas, Part, blob, ellipse, rect, rounded_rect, wiggle

Clutter = Callable[[np.random.Generator], tuple[list[Part], float]]


def clothing(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A folded garment: a large thin organic blob, sometimes with a fold or buttons."""
    parts = [
        Part(
            (blob(rng, 0.5, rng.uniform(0.25, 0.45), 0.35),),
            material="organic",
            amount=rng.uniform(0.25, 0.7),
        )
    ]
    if rng.random() < 0.5:
        parts.append(
            Part((blob(rng, 0.35, 0.15, 0.3),), material="organic", amount=rng.uniform(0.15, 0.4))
        )
    if rng.random() < 0.3:
        buttons = tuple(ellipse(x, 0.0, 0.015, 0.015, 8) for x in np.linspace(-0.3, 0.3, 5))
        parts.append(Part(buttons, material="inorganic", amount=0.8))
    return parts, rng.uniform(0.3, 0.55)


def bottle(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A bottle of liquid (plastic) or glass, with a cap."""
    half_w = rng.uniform(0.14, 0.22)
    body = rounded_rect(-0.5, -half_w, 0.25, half_w, half_w * 0.5)
    neck = rounded_rect(0.2, -half_w * 0.4, 0.45, half_w * 0.4, 0.03)
    cap = rect(0.42, -half_w * 0.45, 0.5, half_w * 0.45)
    glass = rng.random() < 0.3
    parts = [
        Part((body, neck), material="organic", amount=rng.uniform(1.0, 2.0), rounded=True),
        Part((cap,), material="organic", amount=1.0),
    ]
    if glass:
        parts.append(Part(lines=(body,), line_width=0.03, material="inorganic", amount=1.2))
    return parts, rng.uniform(0.18, 0.3)


def cable(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A charging cable: copper core in an insulating sheath, sometimes with a plug."""
    curve = wiggle(rng, 1.0, 16, rng.uniform(0.3, 0.9))
    parts = [
        Part(lines=(curve,), line_width=0.02, material="organic", amount=0.6),
        Part(lines=(curve,), line_width=0.006, material="metal", amount=rng.uniform(0.8, 1.5)),
    ]
    if rng.random() < 0.6:
        end = curve[-1]
        plug = rect(end[0] - 0.05, end[1] - 0.03, end[0] + 0.05, end[1] + 0.03)
        pins = rect(end[0] - 0.02, end[1] - 0.015, end[0] + 0.02, end[1] + 0.015)
        parts += [
            Part((plug,), material="inorganic", amount=1.0),
            Part((pins,), material="metal", amount=2.0),
        ]
    return parts, rng.uniform(0.3, 0.6)


def laptop(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A laptop or tablet: thin inorganic slab, board, battery cells, a few screws."""
    aspect = rng.uniform(0.55, 0.75)
    shell = rounded_rect(-0.5, -aspect / 2, 0.5, aspect / 2, 0.03)
    board = rect(-0.3, -aspect / 2 + 0.05, 0.3, -0.02)
    cells = tuple(rect(x, 0.05, x + 0.12, aspect / 2 - 0.06) for x in np.linspace(-0.4, 0.25, 5))
    screws = tuple(
        ellipse(x, y, 0.01, 0.01, 6) for x in (-0.45, 0.45) for y in (-aspect / 2.5, aspect / 2.5)
    )
    return [
        Part((shell,), material="inorganic", amount=rng.uniform(0.4, 0.7)),
        Part((board,), material="inorganic", amount=0.6),
        Part(cells, material="metal", amount=rng.uniform(0.6, 1.0)),
        Part(screws, material="metal", amount=1.5),
    ], rng.uniform(0.45, 0.65)


def phone(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A phone, power bank or charger brick: a small dense rectangle with a battery."""
    aspect = rng.uniform(0.4, 0.6)
    shell = rounded_rect(-0.5, -aspect / 2, 0.5, aspect / 2, 0.08)
    battery = rect(-0.3, -aspect / 2 + 0.06, 0.25, aspect / 2 - 0.06)
    return [
        Part((shell,), material="inorganic", amount=rng.uniform(0.6, 1.0)),
        Part((battery,), material="metal", amount=rng.uniform(0.8, 1.4)),
    ], rng.uniform(0.1, 0.18)


def zip_line(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A zip: a row of small metal teeth along a gentle curve, with its slider."""
    t = np.linspace(-0.5, 0.5, 40)
    curve = np.stack([t, rng.uniform(-0.1, 0.1) * np.sin(np.pi * t * rng.uniform(0.5, 2))], -1)
    teeth = tuple(rect(x - 0.006, y - 0.012, x + 0.006, y + 0.012) for x, y in curve)
    slider = rect(-0.02, -0.025, 0.03, 0.025) + curve[rng.integers(0, 40)]
    return [
        Part(teeth, material="metal", amount=rng.uniform(0.8, 1.3)),
        Part((slider,), material="metal", amount=1.8),
    ], rng.uniform(0.3, 0.6)


def keys(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A key ring with two to four keys, or a handful of coins."""
    if rng.random() < 0.4:
        coins = []
        for r in rng.uniform(0.08, 0.14, rng.integers(2, 6)):
            cx, cy = rng.uniform(-0.3, 0.3, 2)
            coins.append(ellipse(cx, cy, r, r, 14))
        return [Part(tuple(coins), material="metal", amount=rng.uniform(1.0, 1.8))], rng.uniform(
            0.06, 0.1
        )
    ring = ellipse(-0.35, 0.0, 0.12, 0.12, 16)
    parts = [Part(lines=(ring,), line_width=0.03, material="metal", amount=1.5)]
    for angle in rng.uniform(-0.8, 0.8, rng.integers(2, 5)):
        c, s = np.cos(angle), np.sin(angle)
        shaft = np.array([[-0.25, -0.04], [0.45, -0.04], [0.45, 0.02], [-0.25, 0.04]]) @ np.array(
            [[c, s], [-s, c]]
        )
        bow = ellipse(-0.25 * c, -0.25 * s, 0.09, 0.09, 12)
        parts.append(Part((shaft, bow), material="metal", amount=rng.uniform(1.0, 1.6)))
    return parts, rng.uniform(0.08, 0.13)


def umbrella(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A folded umbrella: central shaft, bundled ribs, canopy and a curved handle."""
    canopy = rounded_rect(-0.3, -0.06, 0.5, 0.06, 0.05)
    ribs = tuple(np.array([[-0.25, y], [0.48, y * 0.3]]) for y in np.linspace(-0.05, 0.05, 4))
    shaft = np.array([[-0.5, 0.0], [0.5, 0.0]])
    hook = ellipse(-0.5, 0.06, 0.06, 0.06, 10, np.pi / 2, 1.5 * np.pi)
    return [
        Part((canopy,), material="organic", amount=0.5),
        Part(lines=ribs, line_width=0.006, material="metal", amount=0.8),
        Part(lines=(shaft, hook), line_width=0.014, material="metal", amount=1.3),
    ], rng.uniform(0.45, 0.7)


def shoe(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A shoe: thick organic sole and upper, with a steel shank and eyelets."""
    sole = blob(rng, 0.5, 0.18, 0.15)
    shank = rect(-0.15, -0.02, 0.15, 0.02)
    eyelets = tuple(ellipse(x, -0.08, 0.012, 0.012, 8) for x in np.linspace(0.0, 0.3, 5))
    return [
        Part((sole,), material="organic", amount=rng.uniform(1.0, 1.8), rounded=True),
        Part((shank,), material="metal", amount=0.9),
        Part(eyelets, material="metal", amount=0.8),
    ], rng.uniform(0.25, 0.38)


def toiletries(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A wash bag: several small tubes and bottles in a pouch."""
    pouch = blob(rng, 0.5, 0.3, 0.2)
    tubes = tuple(
        rounded_rect(x, y - 0.06, x + 0.35, y + 0.06, 0.04)
        for x, y in rng.uniform(-0.4, 0.05, (rng.integers(2, 5), 2))
    )
    return [
        Part((pouch,), material="organic", amount=0.3),
        Part(tubes, material="organic", amount=rng.uniform(0.8, 1.4), rounded=True),
    ], rng.uniform(0.2, 0.32)


def book(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A book or folder: a uniform organic slab."""
    aspect = rng.uniform(0.6, 0.8)
    return [
        Part(
            (rect(-0.5, -aspect / 2, 0.5, aspect / 2),),
            material="organic",
            amount=rng.uniform(0.8, 1.6),
        )
    ], rng.uniform(0.25, 0.4)


def belt(rng: np.random.Generator) -> tuple[list[Part], float]:
    """A coiled belt with a metal buckle."""
    strap = wiggle(rng, 1.0, 12, 0.8)
    buckle = rounded_rect(-0.06, -0.05, 0.06, 0.05, 0.01) + strap[0]
    return [
        Part(lines=(strap,), line_width=0.04, material="organic", amount=0.7),
        Part(lines=(buckle,), line_width=0.02, material="metal", amount=1.6),
    ], rng.uniform(0.3, 0.5)


CLUTTER: dict[str, Clutter] = {
    "clothing": clothing,
    "bottle": bottle,
    "cable": cable,
    "laptop": laptop,
    "phone": phone,
    "zip": zip_line,
    "keys": keys,
    "umbrella": umbrella,
    "shoe": shoe,
    "toiletries": toiletries,
    "book": book,
    "belt": belt,
}
# How often each kind is packed; clothing dominates a real bag.
CLUTTER_WEIGHTS = np.array([5, 2, 2, 1, 2, 1, 1.5, 0.7, 1, 1, 1, 1], dtype=np.float64)
CLUTTER_WEIGHTS /= CLUTTER_WEIGHTS.sum()


def draw_bag(
    canvas: Canvas, rng: np.random.Generator, box: tuple[float, float, float, float]
) -> None:
    """Bag shell, seams, perimeter zip, trolley rods and wheels inside `box` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    radius = 0.08 * min(x1 - x0, y1 - y0)
    shell = rounded_rect(x0, y0, x1, y1, radius)
    canvas.stamp(
        Part((shell,), material="organic", amount=rng.uniform(0.15, 0.3)), (0, 0), 0.0, 1.0
    )
    canvas.stamp(
        Part(
            lines=(np.vstack([shell, shell[:1]]),),
            line_width=rng.uniform(3, 6),
            material="organic",
            amount=rng.uniform(0.6, 1.0),
        ),
        (0, 0),
        0.0,
        1.0,
    )
    inset = 0.06 * min(x1 - x0, y1 - y0)
    zip_path = rounded_rect(x0 + inset, y0 + inset, x1 - inset, y1 - inset, radius)
    canvas.stamp(
        Part(
            lines=(np.vstack([zip_path, zip_path[:1]]),),
            line_width=2,
            material="metal",
            amount=rng.uniform(0.4, 0.7),
        ),
        (0, 0),
        0.0,
        1.0,
    )
    if rng.random() < 0.7:  # a trolley case: two rods along one long side, wheels at the corners
        side = rng.integers(0, 2)
        xa, xb = (x0 + 0.15 * (x1 - x0), x1 - 0.15 * (x1 - x0))
        yr = y0 + 0.03 * (y1 - y0) if side == 0 else y1 - 0.03 * (y1 - y0)
        rods = tuple(np.array([[xa, yr + d], [xb, yr + d]]) for d in (-3.0, 3.0))
        canvas.stamp(
            Part(lines=rods, line_width=3, material="metal", amount=rng.uniform(1.0, 1.5)),
            (0, 0),
            0.0,
            1.0,
        )
        wheel_r = 0.035 * min(x1 - x0, y1 - y0)
        wheels = tuple(
            ellipse(x, y, wheel_r, wheel_r, 16)
            for x in (x0 + radius, x1 - radius)
            for y in ((y0 + radius,) if side == 1 else (y1 - radius,))
        )
        canvas.stamp(Part(wheels, material="metal", amount=rng.uniform(1.5, 2.2)), (0, 0), 0.0, 1.0)


# Thickness of each item across its silhouette's plane, in object units (its length is 1),
# for the multi-view scanner's slabs: a folded shirt is a thin layer, a shoe a fat block.
THICKNESS = {
    "clothing": 0.12,
    "bottle": 0.35,
    "cable": 0.03,
    "laptop": 0.05,
    "phone": 0.08,
    "zip": 0.02,
    "keys": 0.03,
    "umbrella": 0.12,
    "shoe": 0.35,
    "toiletries": 0.25,
    "book": 0.1,
    "belt": 0.05,
}
