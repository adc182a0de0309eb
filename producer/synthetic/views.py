"""A multi-view synthetic scanner: one 3-D bag, seen from the top and from the side.

    scanner = SyntheticBagScanner(domain="target", seed=7)          # views=2
    bag = scanner.bag(42)           # SyntheticBag: label, kind, views (top, side)
    top, side = bag.views           # SyntheticView: image, box, mask, occluded

A bag is one arrangement of its contents in 3-D: the shell, clutter and the threat if
any, each a flat silhouette (the frame scanner's builders) made a slab of its own
thickness, with a position in the bag's volume and an orientation (see `pose`). Every
view projects that same arrangement, so a knife lying flat is full-size from the top and
a dark sliver from the side. Labels, domains and determinism follow `SyntheticScanner`:
bag `i` has label `i % 3` by default and depends only on (domain, seed, index, label).
In the "target" domain, occluders are packed next to the threat in one view's plane at a
time, so a threat hidden behind clutter in one view is often plain in the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from producer.synthetic.clutter import CLUTTER, CLUTTER_WEIGHTS, draw_bag
from producer.synthetic.clutter import THICKNESS as CLUTTER_THICKNESS
from producer.synthetic.pose import (
    MAX_VIEWS,
    Item,
    Orientation,
    ViewGeometry,
    edge_gain,
    view_geometries,
)
from producer.synthetic.render import Canvas, Part
from producer.synthetic.scanner import (
    DEFAULT_SIZE,
    DOMAIN_SALT,
    DOMAIN_SPECS,
    LABELS,
    DomainSpec,
    box_of,
)
from producer.synthetic.shapes import GUNS, KNIVES, LENGTH_FACTOR
from producer.synthetic.shapes import THICKNESS as THREAT_THICKNESS

_BAG_SALT = 0xBA6_0002  # keeps bag streams apart from the frame scanner's
_CLUTTER_NAMES = tuple(CLUTTER)
# A threat pixel counts as covered where the other contents alone absorb at least
# 1 - e^-DENSE_ATTENUATION of the high-energy beam (about 63 %): a folded shirt does not hide
# a knife, a laptop or a stack of items does.
DENSE_ATTENUATION = 1.0
OCCLUDED_FRACTION = 0.6
# Chance that an item stands on edge rather than lying roughly flat: (threat, clutter).
STAND_CHANCE = {"source": (0.15, 0.25), "target": (0.35, 0.3)}
# Which world axes an occluder shares with the threat: (x, y) hides it from the top,
# (x, z) from the side, all three from both.
_NEAR_AXES = ((0, 1), (0, 2), (0, 1, 2))
_NEAR_WEIGHTS = (0.4, 0.4, 0.2)

Box = tuple[int, int, int, int]


@dataclass(frozen=True, eq=False)
class SyntheticView:
    """One view of a bag with the threat's ground truth in that view."""

    image: np.ndarray  # (H, W, 3) uint8, RGB
    view: int  # 0-based index in the bag
    name: str  # "top", "side", "oblique-45", ...
    box: Box | None  # threat footprint (x0, y0, x1, y1), end-exclusive; None if benign
    mask: np.ndarray  # (H, W) bool: pixels the threat attenuates in this view
    occluded: bool  # covered > OCCLUDED_FRACTION (see SyntheticBagScanner)
    covered: float  # fraction of the threat's footprint under dense other items; 0 if benign
    dense: np.ndarray  # (H, W) bool: where the other contents alone reach DENSE_ATTENUATION


@dataclass(frozen=True, eq=False)
class SyntheticBag:
    """One generated bag: its class and every view of it."""

    label: int  # 0 benign, 1 gun, 2 knife
    kind: str | None  # threat kind, e.g. "revolver", "cleaver"; None if benign
    index: int
    domain: str
    views: tuple[SyntheticView, ...]

    @property
    def label_name(self) -> str:
        return LABELS[self.label]


class SyntheticBagScanner:
    """Deterministic source of multi-view synthetic X-ray bags.

    A view is `occluded` when more than OCCLUDED_FRACTION (60 %) of the threat's footprint
    (`mask`) in it lies where the other contents (clutter and occluders, not the bag shell)
    add a high-energy attenuation of at least DENSE_ATTENUATION (1.0) (`dense`), both
    taken before detector blur and noise; benign views never are.

    Args:
        domain: "source" (sparse bags, large threats) or "target" (dense, small, occluded).
        seed: selects the stream of bags; different seeds give unrelated bags.
        size: (width, height) of every view in pixels, the same for all views.
        views: 1 to MAX_VIEWS; view 0 is "top", view 1 "side", further ones oblique.
    """

    def __init__(
        self,
        domain: str = "source",
        seed: int = 0,
        size: tuple[int, int] = DEFAULT_SIZE,
        views: int = 2,
    ) -> None:
        if domain not in STAND_CHANCE:
            raise ValueError(f"bag domain must be one of {tuple(STAND_CHANCE)}, not {domain!r}")
        width, height = size
        if width < 64 or height < 64:
            raise ValueError(f"frame size must be at least 64x64, not {width}x{height}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, not {seed}")
        if not 1 <= views <= MAX_VIEWS:
            raise ValueError(f"views must be between 1 and {MAX_VIEWS}, not {views}")
        self.domain = domain
        self.seed = int(seed)
        self.size = (int(width), int(height))
        self.views = int(views)
        self.spec = DOMAIN_SPECS[domain]

    def bag(
        self, index: int, label: int | None = None, threat_pose: Orientation | None = None
    ) -> SyntheticBag:
        """The bag at `index`; `label` overrides the class `index % 3`.

        `threat_pose` replaces the threat's drawn orientation (everything else in the bag
        stays as drawn), e.g. to lay a knife flat in a test.
        """
        if index < 0:
            raise ValueError(f"index must be >= 0, not {index}")
        label = index % len(LABELS) if label is None else int(label)
        if not 0 <= label < len(LABELS):
            raise ValueError(f"label must be 0, 1 or 2, not {label}")
        salt = [self.seed, DOMAIN_SALT[self.domain], index, label, _BAG_SALT]
        rng = np.random.default_rng(salt)
        scene = _arrange(rng, self.spec, self.size, label, self.domain, threat_pose)
        geometries = view_geometries(self.views, scene.volume, self.size)
        shots = tuple(_shoot(rng, self.spec, self.size, scene, g) for g in geometries)
        return SyntheticBag(label, scene.kind, index, self.domain, shots)

    def __iter__(self) -> Iterator[SyntheticBag]:
        index = 0
        while True:
            yield self.bag(index)
            index += 1

    def bags(self, start: int, count: int) -> Iterator[SyntheticBag]:
        """Bags start, start + 1, ..., start + count - 1."""
        for index in range(start, start + count):
            yield self.bag(index)


@dataclass(frozen=True, eq=False)
class _Scene:
    volume: np.ndarray  # (3, 2) world min/max per axis, pixels
    shell_seed: int  # the shell's details, drawn alike in every view
    contents: list[Item]  # everything but the threat
    threat: Item | None
    kind: str | None


def _arrange(
    rng: np.random.Generator,
    spec: DomainSpec,
    size: tuple[int, int],
    label: int,
    domain: str,
    threat_pose: Orientation | None,
) -> _Scene:
    volume = _volume(rng, *size)
    shell_seed = int(rng.integers(1 << 62))
    bag_w = float(volume[0, 1] - volume[0, 0])
    stand_threat, stand_clutter = STAND_CHANCE[domain]
    contents = [
        _clutter(rng, volume, spec.clutter_scale * bag_w, stand_clutter, None)
        for _ in range(rng.integers(spec.clutter[0], spec.clutter[1] + 1))
    ]
    threat, kind = None, None
    if label != 0:
        builders = GUNS if label == 1 else KNIVES
        kind = str(rng.choice(list(builders)))
        parts = builders[kind](rng)
        length = rng.uniform(*spec.threat_length) * bag_w * LENGTH_FACTOR.get(kind, 1.0)
        pose = _orientation(rng, stand_threat)
        thickness = THREAT_THICKNESS[kind]
        if threat_pose is None:
            threat = _placed(rng, volume, parts, length, pose, thickness)
        else:  # as asked, even if it sticks out of the bag
            threat = _placed(rng, volume, parts, length, threat_pose, thickness, tip=False)
        near = (threat.centre, 0.6 * length)
    else:
        # Benign bags get the same extra items near one spot, so that item count and
        # local density do not give the label away.
        near = (_uniform_point(rng, volume, np.full(3, 0.15 * bag_w)), 0.1 * bag_w)
    for _ in range(rng.integers(spec.occluders[0], spec.occluders[1] + 1)):
        contents.append(_clutter(rng, volume, spec.clutter_scale * bag_w, stand_clutter, near))
    return _Scene(volume, shell_seed, contents, threat, kind)


def _volume(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """The bag's box in world pixels: x and y as the frame scanner's bag, z resting on the belt."""
    bw, bh = width * rng.uniform(0.78, 0.94), height * rng.uniform(0.72, 0.92)
    x0 = rng.uniform(0.02 * width, width - bw - 0.02 * width)
    y0 = rng.uniform(0.02 * height, height - bh - 0.02 * height)
    depth = height * rng.uniform(0.5, 0.75)
    z1 = height * (1.0 - rng.uniform(0.03, 0.08))  # the belt is the side view's bottom
    return np.array([[x0, x0 + bw], [y0, y0 + bh], [z1 - depth, z1]])


def _orientation(rng: np.random.Generator, stand_chance: float) -> Orientation:
    """Mostly lying roughly flat; now and then standing on an edge."""
    standing = rng.random() < stand_chance
    tilt = 0.5 * np.pi + rng.normal(0, 0.2) if standing else abs(rng.normal(0, 0.15))
    return Orientation(
        spin=rng.uniform(0, 2 * np.pi),
        tilt=float(tilt),
        yaw=rng.uniform(0, 2 * np.pi),
        mirror=bool(rng.random() < 0.5),
    )


def _clutter(
    rng: np.random.Generator,
    volume: np.ndarray,
    bag_w: float,
    stand_chance: float,
    near: tuple[np.ndarray, float] | None,
) -> Item:
    name = _CLUTTER_NAMES[int(rng.choice(len(_CLUTTER_NAMES), p=CLUTTER_WEIGHTS))]
    parts, rel_len = CLUTTER[name](rng)
    pose = _orientation(rng, stand_chance)
    item = _placed(rng, volume, parts, rel_len * bag_w, pose, CLUTTER_THICKNESS[name])
    if near is None:
        return item
    (spot, spread), axes = near, _NEAR_AXES[int(rng.choice(3, p=_NEAR_WEIGHTS))]
    centre = item.centre.copy()
    for axis in axes:
        centre[axis] = spot[axis] + rng.uniform(-spread, spread)
    # Next to a threat by the wall, stay inside the bag as far as the item's size allows.
    margin = np.minimum(item.half_extent(), 0.45 * (volume[:, 1] - volume[:, 0]))
    centre = np.clip(centre, volume[:, 0] + margin, volume[:, 1] - margin)
    return Item(item.parts, centre, item.orientation, item.length, item.thickness, item.edge_gain)


def _placed(
    rng: np.random.Generator,
    volume: np.ndarray,
    parts: list[Part],
    length: float,
    pose: Orientation,
    thickness: float,
    tip: bool = True,
) -> Item:
    """The item somewhere it fits inside the volume, tipped flatter if it is too tall."""
    item = Item(parts, np.zeros(3), pose, length, thickness, edge_gain(thickness))
    depth = volume[2, 1] - volume[2, 0]
    for _ in range(3 if tip else 0):
        if item.half_extent()[2] <= 0.5 * depth:
            break
        pose = Orientation(pose.spin, 0.5 * pose.tilt, pose.yaw, pose.mirror)
        item = Item(parts, item.centre, pose, length, thickness, item.edge_gain)
    centre = _uniform_point(rng, volume, item.half_extent())
    return Item(parts, centre, pose, length, thickness, item.edge_gain)


def _uniform_point(rng: np.random.Generator, volume: np.ndarray, half: np.ndarray) -> np.ndarray:
    """A point where a box of half size `half` fits (or is centred, if it cannot fit)."""
    margin = np.minimum(half, 0.45 * (volume[:, 1] - volume[:, 0]))
    return rng.uniform(volume[:, 0] + margin, volume[:, 1] - margin)


def _shoot(
    rng: np.random.Generator,
    spec: DomainSpec,
    size: tuple[int, int],
    scene: _Scene,
    geometry: ViewGeometry,
) -> SyntheticView:
    """Render one view of the scene with the threat's footprint and occlusion in it."""
    width, height = size
    canvas = Canvas(height, width)
    corners = np.array(np.meshgrid(*scene.volume, indexing="ij")).reshape(3, -1).T  # (8, 3)
    outline = geometry.to_image(corners)
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    draw_bag(canvas, np.random.default_rng(scene.shell_seed), (lo[0], lo[1], hi[0], hi[1]))
    shell = canvas.high.copy()
    for item in scene.contents:
        geometry.stamp(canvas, item)
    dense = (canvas.high - shell) >= DENSE_ATTENUATION  # (H, W) the contents alone, no shell
    footprint = np.zeros((height, width), bool)
    box, covered = None, 0.0
    if scene.threat is not None:
        geometry.stamp(canvas, scene.threat, footprint)
        box = box_of(footprint)
        if box is None:
            raise AssertionError("threat drawn outside the frame")  # its centre is in the bag
        covered = float(np.mean(dense[footprint]))
    image = canvas.render(rng, spec.noise, spec.blur)
    return SyntheticView(
        image=image,
        view=geometry.index,
        name=geometry.name,
        box=box,
        mask=footprint,
        occluded=covered > OCCLUDED_FRACTION,
        covered=covered,
        dense=dense,
    )
