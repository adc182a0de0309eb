"""Threat silhouettes for the synthetic scanner: guns and knives, procedurally varied.

Each builder returns the parts of one object in its own frame: the object is about one
unit long along x (muzzle or tip towards +x), centred on the origin. Proportions,
materials and details are drawn from the generator, so no two objects are identical.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from producer.synthetic.render import Part, ellipse, rect, rounded_rect

Builder = Callable[[np.random.Generator], list[Part]]


def _ring(
    cx: float, cy: float, rx: float, ry: float, start: float = 0.0, stop: float = np.pi
) -> np.ndarray:
    return ellipse(cx, cy, rx, ry, 16, start, stop)


def _grip(
    rng: np.random.Generator, x_top: float, y_top: float, width: float, length: float, rake: float
) -> np.ndarray:
    """A grip hanging below (y positive) the frame, raked back by `rake` radians."""
    down = np.array([-np.sin(rake), np.cos(rake)])
    across = np.array([np.cos(rake), np.sin(rake)])
    top = np.array([x_top, y_top])
    bottom = top + down * length
    flare = width * rng.uniform(1.0, 1.2)
    return np.array([top, top + across * width, bottom + across * flare, bottom])


def pistol(rng: np.random.Generator) -> list[Part]:
    """Semi-automatic pistol: slide, barrel, polymer or steel frame, raked grip, magazine."""
    slide_h = rng.uniform(0.10, 0.15)
    slide_x0 = -0.5
    grip_len = rng.uniform(0.42, 0.58)
    grip_w = rng.uniform(0.16, 0.21)
    rake = rng.uniform(0.15, 0.35)
    steel = rng.random() < 0.4
    slide = rounded_rect(slide_x0, -slide_h, 0.5, 0.0, 0.015)
    barrel = rect(-0.1, -0.7 * slide_h, 0.5, -0.3 * slide_h)
    frame = rect(-0.45, 0.0, rng.uniform(0.1, 0.3), rng.uniform(0.05, 0.08))
    grip = _grip(rng, -0.47, 0.02, grip_w, grip_len, rake)
    mag = _grip(rng, -0.44, 0.04, grip_w * 0.55, grip_len * 0.95, rake)
    guard = _ring(-0.12, 0.04, 0.11, rng.uniform(0.08, 0.11))
    trigger = np.array([[-0.16, 0.03], [-0.17, 0.1]])
    frame_mat, frame_amt = (
        ("metal", rng.uniform(1.4, 2.2)) if steel else ("organic", rng.uniform(0.9, 1.5))
    )
    return [
        Part((slide,), material="metal", amount=rng.uniform(2.0, 3.0)),
        Part((barrel,), material="metal", amount=rng.uniform(0.8, 1.4)),
        Part((frame, grip), material=frame_mat, amount=frame_amt),
        Part((mag,), material="metal", amount=rng.uniform(0.9, 1.6)),
        Part(lines=(guard, trigger), line_width=0.025, material=frame_mat, amount=frame_amt),
    ]


def revolver(rng: np.random.Generator) -> list[Part]:
    """Revolver: long barrel, fat cylinder, hammer, curved wooden or rubber grip."""
    barrel_len = rng.uniform(0.35, 0.55)
    cyl_w = rng.uniform(0.16, 0.22)
    cyl_h = rng.uniform(0.17, 0.22)
    x_cyl = 0.5 - barrel_len - cyl_w
    barrel = rect(0.5 - barrel_len, -0.1, 0.5, -0.03)
    rib = rect(0.5 - barrel_len, -0.12, 0.5, -0.1)
    cylinder = rounded_rect(x_cyl, -cyl_h / 2 - 0.05, x_cyl + cyl_w, cyl_h / 2 - 0.05, 0.03)
    frame = np.array([[x_cyl - 0.12, -0.12], [x_cyl, -0.12], [x_cyl, 0.06], [x_cyl - 0.08, 0.08]])
    hammer = np.array([[x_cyl - 0.12, -0.12], [x_cyl - 0.2, -0.16], [x_cyl - 0.1, -0.1]])
    grip_len = rng.uniform(0.3, 0.42)
    grip = np.array(
        [
            [x_cyl - 0.14, 0.0],
            [x_cyl - 0.04, 0.06],
            [x_cyl - 0.12, 0.06 + grip_len],
            [x_cyl - 0.24, 0.04 + grip_len],
            [x_cyl - 0.26, 0.02 + grip_len * 0.6],
        ]
    )
    guard = _ring(x_cyl + 0.02, 0.05, 0.09, 0.1)
    return [
        Part((barrel, rib), material="metal", amount=rng.uniform(1.6, 2.4)),
        Part((cylinder,), material="metal", amount=rng.uniform(2.6, 3.6), rounded=True),
        Part((frame, hammer), material="metal", amount=rng.uniform(1.8, 2.6)),
        Part((grip,), material="organic", amount=rng.uniform(1.0, 1.6)),
        Part(lines=(guard,), line_width=0.025, material="metal", amount=1.6),
    ]


def compact(rng: np.random.Generator) -> list[Part]:
    """Compact or subcompact pistol: short slide, stubby grip, all steel."""
    slide_h = rng.uniform(0.15, 0.2)
    slide = rounded_rect(-0.5, -slide_h, 0.5, 0.0, 0.02)
    grip = _grip(
        rng, -0.45, 0.0, rng.uniform(0.26, 0.32), rng.uniform(0.45, 0.6), rng.uniform(0.1, 0.3)
    )
    guard = _ring(-0.02, 0.04, 0.14, 0.12)
    return [
        Part((slide,), material="metal", amount=rng.uniform(2.2, 3.2)),
        Part((grip,), material="metal", amount=rng.uniform(1.3, 2.0)),
        Part(lines=(guard,), line_width=0.035, material="metal", amount=1.4),
    ]


def machine_pistol(rng: np.random.Generator) -> list[Part]:
    """Machine pistol: boxy receiver, long straight magazine, front grip, stub stock."""
    body_h = rng.uniform(0.12, 0.16)
    body = rect(-0.35, -body_h, 0.4, 0.0)
    barrel = rect(0.4, -0.7 * body_h, 0.5, -0.35 * body_h)
    grip = _grip(rng, -0.25, 0.0, 0.12, 0.3, 0.25)
    mag = rect(0.02, 0.0, 0.12, rng.uniform(0.35, 0.5))
    stock = np.array([[-0.35, -body_h], [-0.5, -body_h * 0.8], [-0.5, 0.08], [-0.35, 0.0]])
    guard = _ring(-0.1, 0.02, 0.08, 0.08)
    return [
        Part((body, barrel), material="metal", amount=rng.uniform(2.0, 2.8)),
        Part((grip, stock), material="organic", amount=rng.uniform(1.0, 1.5)),
        Part((mag,), material="metal", amount=rng.uniform(1.4, 2.0)),
        Part(lines=(guard,), line_width=0.025, material="metal", amount=1.4),
    ]


def _handle(
    rng: np.random.Generator, x0: float, x1: float, half_w: float, metal: bool
) -> list[Part]:
    body = rounded_rect(x0, -half_w, x1, half_w, half_w * 0.8)
    if metal:
        return [Part((body,), material="metal", amount=rng.uniform(1.2, 1.9))]
    tang = rect(x0 + 0.02, -half_w * 0.35, x1, half_w * 0.35)
    rivets = tuple(
        ellipse(x, 0.0, half_w * 0.3, half_w * 0.3, 10)
        for x in np.linspace(x0 + 0.05, x1 - 0.05, rng.integers(2, 4))
    )
    return [
        Part((body,), material="organic", amount=rng.uniform(0.8, 1.3)),
        Part((tang,), material="metal", amount=rng.uniform(0.5, 0.8)),
        Part(rivets, material="metal", amount=1.2),
    ]


def _blade(
    rng: np.random.Generator, x0: float, length: float, half_w: float, style: str
) -> np.ndarray:
    """Blade outline from the bolster at x0 to the tip at x0 + length."""
    t = np.linspace(0, 1, 12)
    x = x0 + t * length
    if style == "chef":
        spine = np.full_like(t, -half_w * 0.3)
        spine[-4:] = np.linspace(-half_w * 0.3, 0.0, 4)
        edge = half_w * (1.0 - t ** rng.uniform(2.0, 3.5)) + spine * 0
        edge = np.maximum(edge - half_w * 0.3 * t, 0.0)
        top, bottom = spine, edge
    elif style == "dagger":
        top = -half_w * (1 - t**1.3)
        bottom = half_w * (1 - t**1.3)
    elif style == "clip":
        top = np.where(t < 0.6, -half_w, -half_w * (1 - (t - 0.6) / 0.4) ** 0.7)
        bottom = half_w * (1 - t**4)
    else:  # narrow: bread or filleting knife, near-parallel sides, rounded or sharp point
        top = -half_w * (1 - t**8)
        bottom = half_w * (1 - t**6)
    upper = np.stack([x, top], axis=-1)
    lower = np.stack([x, bottom], axis=-1)[::-1]
    return np.concatenate([upper, lower])


def straight_knife(rng: np.random.Generator) -> list[Part]:
    """Fixed-blade knife: chef, dagger, clip-point or narrow blade, with or without a guard."""
    style = str(rng.choice(["chef", "dagger", "clip", "narrow"]))
    handle_len = rng.uniform(0.3, 0.42)
    half_w = {"chef": rng.uniform(0.07, 0.1), "narrow": rng.uniform(0.03, 0.045)}.get(
        style, rng.uniform(0.05, 0.07)
    )
    x_bolster = -0.5 + handle_len
    parts = _handle(rng, -0.5, x_bolster, rng.uniform(0.035, 0.05), metal=rng.random() < 0.3)
    blade = _blade(rng, x_bolster, 0.5 - x_bolster, half_w, style)
    parts.append(Part((blade,), material="metal", amount=rng.uniform(0.9, 1.6)))
    if style in ("dagger", "clip") and rng.random() < 0.7:
        guard_w = rng.uniform(0.08, 0.13)
        parts.append(
            Part(
                (rect(x_bolster - 0.02, -guard_w, x_bolster + 0.01, guard_w),),
                material="metal",
                amount=rng.uniform(1.5, 2.2),
            )
        )
    return parts


def cleaver(rng: np.random.Generator) -> list[Part]:
    """Cleaver: a wide rectangular blade on a short handle."""
    handle_len = rng.uniform(0.32, 0.4)
    depth = rng.uniform(0.22, 0.3)
    x0 = -0.5 + handle_len
    blade = rounded_rect(x0, -0.05, 0.5, depth - 0.05, 0.03)
    hole = ellipse(0.5 - 0.08, 0.0, 0.025, 0.025, 10)
    parts = _handle(rng, -0.5, x0, 0.04, metal=rng.random() < 0.3)
    parts.append(Part((blade,), material="metal", amount=rng.uniform(1.2, 1.8)))
    parts.append(Part((hole,), material="metal", amount=-0.5))  # the hanging hole is thinner
    return parts


def folding_knife(rng: np.random.Generator) -> list[Part]:
    """Open folding knife: steel liners in the handle, pivot, clip-point blade."""
    handle_len = rng.uniform(0.4, 0.5)
    x_pivot = -0.5 + handle_len
    handle = rounded_rect(-0.5, -0.055, x_pivot, 0.055, 0.04)
    liner = rounded_rect(-0.48, -0.04, x_pivot, 0.04, 0.03)
    pivot = ellipse(x_pivot - 0.03, 0.0, 0.03, 0.03, 12)
    clip = rounded_rect(-0.45, -0.07, -0.2, -0.05, 0.01)
    blade = _blade(rng, x_pivot - 0.02, 0.52 - x_pivot, rng.uniform(0.05, 0.065), "clip")
    return [
        Part((handle,), material="organic", amount=rng.uniform(0.6, 1.0)),
        Part((liner, clip), material="metal", amount=rng.uniform(0.6, 1.0)),
        Part((pivot,), material="metal", amount=2.0),
        Part((blade,), material="metal", amount=rng.uniform(1.0, 1.6)),
    ]


def utility_knife(rng: np.random.Generator) -> list[Part]:
    """Box cutter: a long metal body with a short trapezoid blade at the front."""
    body = rounded_rect(-0.5, -0.08, 0.3, 0.08, 0.05)
    inner = rect(-0.4, -0.03, 0.28, 0.03)
    blade = np.array([[0.28, -0.05], [0.5, -0.05], [0.42, 0.06], [0.28, 0.06]])
    return [
        Part((body,), material=str(rng.choice(["metal", "organic"])), amount=rng.uniform(0.9, 1.4)),
        Part((inner,), material="metal", amount=rng.uniform(0.5, 0.9)),
        Part((blade,), material="metal", amount=rng.uniform(1.2, 1.8)),
    ]


def curved_knife(rng: np.random.Generator) -> list[Part]:
    """Curved blade (karambit or hawkbill style) with a ring at the handle end."""
    bend = rng.uniform(0.25, 0.45)
    t = np.linspace(0, 1, 14)
    x = -0.05 + t * 0.55
    centre = bend * t**2
    width = rng.uniform(0.05, 0.07) * (1 - t**1.5)
    blade = np.concatenate(
        [np.stack([x, centre - width], -1), np.stack([x, centre + width], -1)[::-1]]
    )
    handle = rounded_rect(-0.42, -0.05, -0.03, 0.05, 0.04)
    ring = ellipse(-0.46, 0.0, 0.06, 0.06, 16)
    return [
        Part((handle,), material="organic", amount=rng.uniform(0.8, 1.2)),
        Part(lines=(ring,), line_width=0.025, material="metal", amount=1.5),
        Part((blade,), material="metal", amount=rng.uniform(1.0, 1.6)),
    ]


GUNS: dict[str, Builder] = {
    "pistol": pistol,
    "revolver": revolver,
    "compact": compact,
    "machine_pistol": machine_pistol,
}
KNIVES: dict[str, Builder] = {
    "straight": straight_knife,
    "cleaver": cleaver,
    "folding": folding_knife,
    "utility": utility_knife,
    "curved": curved_knife,
}
# Relative length of each kind (1 = the length drawn for the frame's threat scale).
LENGTH_FACTOR = {"compact": 0.7, "utility": 0.75, "folding": 0.9, "cleaver": 0.9}
# Thickness of each kind across its silhouette's plane, in object units (its length is 1),
# for the multi-view scanner's slabs: a gun is a chunky block, a blade a thin sheet.
THICKNESS = {
    "pistol": 0.14,
    "revolver": 0.18,
    "compact": 0.16,
    "machine_pistol": 0.14,
    "straight": 0.03,
    "cleaver": 0.025,
    "folding": 0.05,
    "utility": 0.08,
    "curved": 0.04,
}
