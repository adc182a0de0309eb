"""A synthetic dual-energy X-ray baggage scanner: labelled frames, reproducible from a seed.

    scanner = SyntheticScanner(domain="target", seed=7)
    frame = scanner.frame(42)        # SyntheticFrame: image (H, W, 3) uint8 RGB, label, box, mask
    for frame in scanner: ...        # frames 0, 1, 2, ... without end

Classes: 0 = benign, 1 = gun, 2 = knife; by default frame `i` has label `i % 3`, so any
run of frames is balanced. A frame depends only on (domain, seed, index, label): the
same call always returns the same pixels, in any order and in any process.

Two domains play the two sides of a domain gap. "source" packs few items and shows
large, unobstructed threats (like the web images a model is first trained on);
"target" packs dense clutter and shows smaller threats with other items overlapping
them (like frames from a real screening line). A third, "randomised", is for training
models that must hold on scanners they have not seen: every frame draws its packing
from a range spanning both and its look (palette, physics, detector, display, frame
size and aspect) from `looks`, so its frames come in many sizes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from producer.synthetic.clutter import CLUTTER, CLUTTER_WEIGHTS, draw_bag
from producer.synthetic.looks import frame_size, random_look, render_look
from producer.synthetic.render import Canvas
from producer.synthetic.shapes import GUNS, KNIVES, LENGTH_FACTOR

LABELS = ("benign", "gun", "knife")
DOMAINS = ("source", "target", "randomised")
DEFAULT_SIZE = (512, 384)  # (width, height)
DOMAIN_SALT = {"source": 0x5EED_0001, "target": 0x5EED_0002, "randomised": 0x5EED_0003}
_CLUTTER_NAMES = tuple(CLUTTER)


@dataclass(frozen=True)
class DomainSpec:
    """How a domain packs a bag and shows its threat (lengths are fractions of the bag width)."""

    clutter: tuple[int, int]  # items packed, inclusive range
    threat_length: tuple[float, float]
    occluders: tuple[int, int]  # items placed over the threat, inclusive range
    clutter_scale: float  # multiplies every clutter item's size
    noise: float
    blur: float
    randomise_look: bool = False  # draw a `looks.Look` per frame (noise and blur then unused)


DOMAIN_SPECS = {
    "source": DomainSpec(
        clutter=(1, 4),
        threat_length=(0.34, 0.5),
        occluders=(0, 0),
        clutter_scale=0.9,
        noise=0.02,
        blur=0.6,
    ),
    "target": DomainSpec(
        clutter=(7, 13),
        threat_length=(0.2, 0.32),
        occluders=(1, 2),
        clutter_scale=1.0,
        noise=0.045,
        blur=0.9,
    ),
    "randomised": DomainSpec(
        clutter=(0, 10),
        threat_length=(0.22, 0.55),
        occluders=(0, 2),
        clutter_scale=1.0,
        noise=0.0,
        blur=0.0,
        randomise_look=True,
    ),
}


@dataclass(frozen=True, eq=False)
class SyntheticFrame:
    """One generated scan with its ground truth."""

    image: np.ndarray  # (H, W, 3) uint8, RGB
    label: int  # 0 benign, 1 gun, 2 knife
    box: (
        tuple[int, int, int, int] | None
    )  # threat footprint (x0, y0, x1, y1), end-exclusive; None if benign
    mask: np.ndarray  # (H, W) bool: pixels the threat attenuates (all False if benign)
    domain: str
    index: int
    kind: str | None  # threat kind, e.g. "revolver", "cleaver"; None if benign

    @property
    def label_name(self) -> str:
        return LABELS[self.label]


class SyntheticScanner:
    """Deterministic frame source of synthetic X-ray scans.

    Args:
        domain: "source" (sparse bags, large threats), "target" (dense, small, occluded)
            or "randomised" (packing and look drawn per frame).
        seed: selects the stream of bags; different seeds give unrelated frames.
        size: (width, height) of every frame in pixels; in "randomised", the nominal size
            that each frame's size and aspect are drawn around.
    """

    def __init__(
        self, domain: str = "source", seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE
    ) -> None:
        if domain not in DOMAIN_SPECS:
            raise ValueError(f"domain must be one of {DOMAINS}, not {domain!r}")
        width, height = size
        if width < 64 or height < 64:
            raise ValueError(f"frame size must be at least 64x64, not {width}x{height}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, not {seed}")
        self.domain = domain
        self.seed = int(seed)
        self.size = (int(width), int(height))
        self.spec = DOMAIN_SPECS[domain]

    def frame(self, index: int, label: int | None = None) -> SyntheticFrame:
        """The frame at `index`; `label` overrides the default class `index % 3`."""
        if index < 0:
            raise ValueError(f"index must be >= 0, not {index}")
        label = index % len(LABELS) if label is None else int(label)
        if not 0 <= label < len(LABELS):
            raise ValueError(f"label must be 0, 1 or 2, not {label}")
        rng = np.random.default_rng([self.seed, DOMAIN_SALT[self.domain], index, label])
        return _compose(rng, self.spec, self.size, label, self.domain, index)

    def __iter__(self) -> Iterator[SyntheticFrame]:
        index = 0
        while True:
            yield self.frame(index)
            index += 1

    def frames(self, start: int, count: int) -> Iterator[SyntheticFrame]:
        """Frames start, start + 1, ..., start + count - 1."""
        for index in range(start, start + count):
            yield self.frame(index)


def _compose(
    rng: np.random.Generator,
    spec: DomainSpec,
    size: tuple[int, int],
    label: int,
    domain: str,
    index: int,
) -> SyntheticFrame:
    look = None
    clutter_scale = spec.clutter_scale
    if spec.randomise_look:
        look = random_look(rng)
        size = frame_size(look, size)
        clutter_scale *= rng.uniform(0.75, 1.2)
    width, height = size
    canvas = Canvas(height, width)
    if look is not None:
        canvas.material_gain = look.material_gain
    bag = _bag_box(rng, width, height)
    if look is None or rng.random() < 0.8:
        draw_bag(canvas, rng, bag)
    bag_w = bag[2] - bag[0]
    for _ in range(rng.integers(spec.clutter[0], spec.clutter[1] + 1)):
        _place_clutter(canvas, rng, bag, clutter_scale * bag_w, None)

    footprint = np.zeros((height, width), bool)
    kind = None
    if label != 0:
        builders = GUNS if label == 1 else KNIVES
        kind = str(rng.choice(list(builders)))
        parts = builders[kind](rng)
        length = rng.uniform(*spec.threat_length) * bag_w * LENGTH_FACTOR.get(kind, 1.0)
        centre = _threat_centre(rng, bag, length)
        canvas.stamp_all(
            parts, centre, rng.uniform(0, 2 * np.pi), length, bool(rng.random() < 0.5), footprint
        )
        over = (centre, 0.6 * length)
    else:
        # Benign bags get the same extra items near one spot, so that item count and
        # local density do not give the label away.
        over = (_threat_centre(rng, bag, 0.3 * bag_w), 0.1 * bag_w)
    for _ in range(rng.integers(spec.occluders[0], spec.occluders[1] + 1)):
        _place_clutter(canvas, rng, bag, clutter_scale * bag_w, over)

    if look is None:
        image = canvas.render(rng, spec.noise, spec.blur)
    else:
        image = render_look(canvas, rng, look)
    box = box_of(footprint) if label != 0 else None
    if label != 0 and box is None:
        raise AssertionError("threat drawn outside the frame")  # the centre is kept inside the bag
    return SyntheticFrame(
        image=image, label=label, box=box, mask=footprint, domain=domain, index=index, kind=kind
    )


def _bag_box(
    rng: np.random.Generator, width: int, height: int
) -> tuple[float, float, float, float]:
    bw = width * rng.uniform(0.78, 0.94)
    bh = height * rng.uniform(0.72, 0.92)
    x0 = rng.uniform(0.02 * width, width - bw - 0.02 * width)
    y0 = rng.uniform(0.02 * height, height - bh - 0.02 * height)
    return (x0, y0, x0 + bw, y0 + bh)


def _threat_centre(
    rng: np.random.Generator, bag: tuple[float, float, float, float], length: float
) -> tuple[float, float]:
    """A point where an object of `length` fits inside the bag whatever its rotation."""
    x0, y0, x1, y1 = bag
    margin_x = min(0.5 * length, 0.45 * (x1 - x0))
    margin_y = min(0.5 * length, 0.45 * (y1 - y0))
    return (rng.uniform(x0 + margin_x, x1 - margin_x), rng.uniform(y0 + margin_y, y1 - margin_y))


def _place_clutter(
    canvas: Canvas,
    rng: np.random.Generator,
    bag: tuple[float, float, float, float],
    bag_w: float,
    near: tuple[tuple[float, float], float] | None,
) -> None:
    name = _CLUTTER_NAMES[int(rng.choice(len(_CLUTTER_NAMES), p=CLUTTER_WEIGHTS))]
    parts, rel_len = CLUTTER[name](rng)
    length = rel_len * bag_w
    if near is None:
        centre = _threat_centre(rng, bag, length)
    else:
        (cx, cy), spread = near
        centre = (cx + rng.uniform(-spread, spread), cy + rng.uniform(-spread, spread))
    canvas.stamp_all(parts, centre, rng.uniform(0, 2 * np.pi), length, bool(rng.random() < 0.5))


def box_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    points = cv2.findNonZero(mask.astype(np.uint8))
    if points is None:
        return None
    x, y, w, h = cv2.boundingRect(points)
    return (int(x), int(y), int(x + w), int(y + h))
