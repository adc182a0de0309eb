"""A second, independent X-ray baggage scanner: labelled frames from a look never trained on.

    scanner = ForeignScanner(seed=7)
    frame = scanner.frame(42)        # ForeignFrame: image (H, W, 3) uint8 RGB, label, box, mask
    for frame in scanner.frames(0, 30): ...

Classes: 0 = benign, 1 = gun, 2 = knife; frame `i` has label `i % 3` unless told
otherwise. A frame depends only on (seed, index, label), so the same call gives the
same pixels in any order and in any process.

The scene is physical: every object is a 2.5-D volume of real materials at true size
(centimetres, scaled by the bag's pixels per centimetre), its thickness adding to two
line integrals that a photon-counting detector turns into noisy transmissions, shown in
one of three display modes and often JPEG-compressed. None of it comes from the
training scanner in `producer.synthetic`, whose flat polygons and classic
orange/green/blue table it shares neither code nor look with; scores on these frames
say how a model holds up on a scanner it has never seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from producer.foreign.belongings import BENIGN, WEIGHTS
from producer.foreign.detector import expose, random_detector
from producer.foreign.display import compress, show
from producer.foreign.luggage import Luggage, lay_luggage
from producer.foreign.threats import GUNS, KNIVES
from producer.foreign.volumes import Pose, Sprite, stamp

LABELS = ("benign", "gun", "knife")
DEFAULT_SIZE = (600, 400)  # (width, height)
SALT = 0x0F0E_1647  # keeps these streams apart from any other generator's
_NEAR_CM = 6.0  # how far from the threat (or its benign stand-in) items are piled on it
_ITEMS = tuple(BENIGN)
_ITEM_P = np.array([WEIGHTS[name] for name in _ITEMS]) / sum(WEIGHTS.values())


@dataclass(frozen=True, eq=False)
class ForeignFrame:
    """One scan from the foreign scanner with its ground truth."""

    image: np.ndarray  # (H, W, 3) uint8, RGB
    label: int  # 0 benign, 1 gun, 2 knife
    box: tuple[int, int, int, int] | None  # (x0, y0, x1, y1) of the mask, end-exclusive
    mask: np.ndarray  # (H, W) bool: pixels the threat covers (all False if benign)
    kind: str | None  # e.g. "pistol", "dagger"; None if benign
    index: int

    @property
    def label_name(self) -> str:
        return LABELS[self.label]


class ForeignScanner:
    """Deterministic source of scans from the foreign scanner.

    Args:
        seed: selects the stream of bags; different seeds give unrelated frames.
        size: (width, height) of every frame in pixels, at least 64x64.
    """

    def __init__(self, seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, not {seed}")
        width, height = size
        if width < 64 or height < 64:
            raise ValueError(f"frame size must be at least 64x64, not {width}x{height}")
        self.seed = int(seed)
        self.size = (int(width), int(height))

    def frame(self, index: int, label: int | None = None) -> ForeignFrame:
        """The frame at `index`; `label` overrides the default class `index % 3`."""
        if index < 0:
            raise ValueError(f"index must be >= 0, not {index}")
        label = index % len(LABELS) if label is None else int(label)
        if not 0 <= label < len(LABELS):
            raise ValueError(f"label must be 0, 1 or 2, not {label}")
        rng = np.random.default_rng([self.seed, SALT, index, label])
        return _compose(rng, self.size, label, index)

    def frames(self, start: int, count: int) -> Iterator[ForeignFrame]:
        """Frames start, start + 1, ..., start + count - 1."""
        for index in range(start, start + count):
            yield self.frame(index)


def _compose(
    rng: np.random.Generator, size: tuple[int, int], label: int, index: int
) -> ForeignFrame:
    width, height = size
    scene = np.zeros((height, width, 2), np.float32)  # (H, W, [low, high]) line integrals
    luggage = lay_luggage(scene, rng)
    # From a couple of loose items to a bag packed full, scaled by how much bag there is.
    left, top, right, bottom = luggage.region
    area_m2 = (right - left) * (bottom - top) / luggage.ppc**2 / 1e4
    for _ in range(int(rng.integers(1, 4 + round(rng.uniform(4.0, 50.0) * area_m2)))):
        _pack(scene, rng, luggage, None)

    mask = np.zeros((height, width), bool)
    kind = None
    if label == 0:
        # Benign bags get the same pile-up round one spot that threats get, so that a
        # crowded patch does not give the label away.
        spot = (rng.uniform(left, right), rng.uniform(top, bottom))
    else:
        builders = GUNS if label == 1 else KNIVES
        kind = str(rng.choice(list(builders)))
        threat = builders[kind](rng, luggage.ppc)
        pose = _pose(rng, luggage, threat)
        stamp(scene, threat, pose, mask)
        spot = (pose.x, pose.y)
    for _ in range(int(rng.choice(4, p=[0.35, 0.35, 0.2, 0.1]))):
        _pack(scene, rng, luggage, spot)

    low, high = expose(scene, random_detector(rng), rng)
    image, _ = show(low, high, rng)
    image = compress(image, rng)
    box = _bounds(mask)
    if label != 0 and box is None:
        raise AssertionError("threat fell outside the frame")  # its centre is kept in the bag
    return ForeignFrame(image=image, label=label, box=box, mask=mask, kind=kind, index=index)


def _pack(
    scene: np.ndarray,
    rng: np.random.Generator,
    luggage: Luggage,
    near: tuple[float, float] | None,
) -> None:
    """Put one benign item in the bag, anywhere or on top of the spot `near`."""
    name = _ITEMS[int(rng.choice(len(_ITEMS), p=_ITEM_P))]
    sprite = BENIGN[name](rng, luggage.ppc)
    stamp(scene, sprite, _pose(rng, luggage, sprite, near))


def _pose(
    rng: np.random.Generator,
    luggage: Luggage,
    sprite: Sprite,
    near: tuple[float, float] | None = None,
) -> Pose:
    """A random rotation and a centre that keep the sprite inside the packing region.

    A long object gets a few tries at an angle that fits, as a packer would turn it;
    `near` pulls the centre to within a few centimetres of a spot.
    """
    height, width = sprite.shape
    x0, y0, x1, y1 = luggage.region
    best: tuple[float, float, float, float] | None = None
    for _ in range(4):
        if rng.random() < 0.5:  # squared up with the bag's sides, as things are often packed
            angle = int(rng.integers(4)) * math.pi / 2 + rng.normal(0.0, 0.12)
        else:
            angle = rng.uniform(0.0, 2 * math.pi)
        c, s = abs(math.cos(angle)), abs(math.sin(angle))
        half_x, half_y = (width * c + height * s) / 2, (width * s + height * c) / 2
        slack = min((x1 - x0) / 2 - half_x, (y1 - y0) / 2 - half_y)
        if best is None or slack > best[0]:
            best = (slack, angle, half_x, half_y)
        if slack >= 0:
            break
    assert best is not None
    _, angle, half_x, half_y = best
    lo_x, hi_x = _centres(x0, x1, half_x)
    lo_y, hi_y = _centres(y0, y1, half_y)
    if near is None:
        x, y = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    else:
        reach = _NEAR_CM * luggage.ppc
        x = min(max(near[0] + rng.uniform(-reach, reach), lo_x), hi_x)
        y = min(max(near[1] + rng.uniform(-reach, reach), lo_y), hi_y)
    return Pose(x, y, angle, bool(rng.random() < 0.5))


def _centres(start: float, stop: float, half: float) -> tuple[float, float]:
    """The range of centres along one axis that keeps an object of `half` extent inside.

    An object longer than the range is centred, give or take a twentieth of it.
    """
    if stop - start >= 2 * half:
        return start + half, stop - half
    middle, play = (start + stop) / 2, 0.05 * (stop - start)
    return middle - play, middle + play


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The end-exclusive bounding box of the True pixels, None if there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
