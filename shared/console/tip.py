"""TIP (threat image projection): benign bags with a threat projected in, made by the station.

The base bag is a benign bag of the synthetic scanner's cluttered "target" domain,
rendered at the size and view count of the real bag waiting next in the pool. Clear bags
of the line itself cannot serve: the worker deletes their originals when the bag closes,
so nothing of them is left for the station to keep.

The threat comes from a library: by default the synthetic scanner's own gun and knife
silhouettes, posed once in 3-D and projected into every view (a knife lying flat is
full-size from the top and a sliver from the side); or a folder of threat images with
masks (`tip_library`), placed in each view on its own. Either way the threat is imaged
alone on an empty belt and laid over the bag by Beer–Lambert: transmissions multiply, so
per channel I = I_bag · I_threat / I_empty = I_bag · exp(−μ·t).

Only this module and `station` see a TIP bag's ground truth (class, kind, boxes); the
browser gets the bag as it gets a real one, through `present`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from producer.synthetic import SyntheticBagScanner
from producer.synthetic.pose import Item, Orientation, edge_gain, view_geometries
from producer.synthetic.render import Canvas
from producer.synthetic.scanner import DEFAULT_SIZE, DOMAIN_SPECS, LABELS, box_of
from producer.synthetic.shapes import GUNS, KNIVES, LENGTH_FACTOR, THICKNESS
from shared.images import JPEG, encode_image
from shared.keys import Keys
from shared.schemas import ArtefactRef, BagEvent, BagView
from shared.vocab import BagReason, Verdict

Box = tuple[int, int, int, int]  # x0, y0, x1, y1, end-exclusive
DOMAIN = "target"  # the synthetic domain that looks like a screening line
# The colour of the synthetic scanner's empty belt (its colour table at zero attenuation):
# a threat imaged alone divided by it is the threat's transmission.
EMPTY_BELT = np.array([246.0, 246.0, 240.0], np.float32)
BAG_PIXEL = 225  # a channel darker than this is inside the bag (the belt is ~246)


@dataclass(frozen=True, eq=False)
class Projection:
    """Bag views with a threat laid over them, and where it went."""

    images: list[np.ndarray]  # (H, W, 3) uint8 RGB per view
    label: str  # class name: "gun", "knife", or a library folder's name
    kind: str  # e.g. "revolver", or the library file's stem
    boxes: list[Box | None]  # per view; None where the threat fell outside


class ThreatLibrary(Protocol):
    """Projects one threat into every view of a bag."""

    def project(self, views: Sequence[np.ndarray], rng: np.random.Generator) -> Projection: ...


def beer_lambert(bag: np.ndarray, transmission: np.ndarray) -> np.ndarray:
    """I = I_bag · T per channel (attenuations add, so transmissions multiply), as uint8."""
    out = bag.astype(np.float32) * transmission
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def bag_extent(image: np.ndarray) -> Box:
    """The bag's bounding box in a view: where most rows/columns hold non-belt pixels."""
    inside = image.min(axis=2) < BAG_PIXEL  # (H, W)
    h, w = inside.shape
    cols = np.flatnonzero(inside.mean(axis=0) > 0.05)
    rows = np.flatnonzero(inside.mean(axis=1) > 0.05)
    if len(cols) < w // 8 or len(rows) < h // 8:
        return (w // 5, h // 5, w - w // 5, h - h // 5)
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


class SyntheticThreats:
    """The synthetic scanner's guns and knives, posed in 3-D and projected into each view."""

    def project(self, views: Sequence[np.ndarray], rng: np.random.Generator) -> Projection:
        h, w = views[0].shape[:2]
        label = int(rng.integers(1, len(LABELS)))
        builders = GUNS if label == 1 else KNIVES
        kind = str(rng.choice(sorted(builders)))
        volume = _volume(views)
        spec = DOMAIN_SPECS[DOMAIN]
        bag_w = float(volume[0, 1] - volume[0, 0])
        length = rng.uniform(*spec.threat_length) * bag_w * LENGTH_FACTOR.get(kind, 1.0)
        pose = Orientation(
            spin=float(rng.uniform(0, 2 * np.pi)),
            tilt=float(abs(rng.normal(0, 0.3))),
            yaw=float(rng.uniform(0, 2 * np.pi)),
            mirror=bool(rng.random() < 0.5),
        )
        thickness = THICKNESS[kind]
        item = Item(builders[kind](rng), np.zeros(3), pose, length, thickness, edge_gain(thickness))
        margin = np.minimum(item.half_extent(), 0.45 * (volume[:, 1] - volume[:, 0]))
        centre = rng.uniform(volume[:, 0] + margin, volume[:, 1] - margin)
        item = Item(item.parts, centre, pose, length, thickness, item.edge_gain)
        images, boxes = [], []
        for view, geometry in zip(views, view_geometries(len(views), volume, (w, h)), strict=True):
            canvas = Canvas(h, w)
            footprint = np.zeros((h, w), bool)
            geometry.stamp(canvas, item, footprint)
            alone = canvas.render(np.random.default_rng(0), noise=0.0, blur=spec.blur)
            images.append(beer_lambert(view, np.clip(alone / EMPTY_BELT, 0.0, 1.0)))
            boxes.append(box_of(footprint))
        return Projection(images, LABELS[label], kind, boxes)


def _volume(views: Sequence[np.ndarray]) -> np.ndarray:
    """(3, 2) world extent of the bag: x and y from the top view, z from the side view.

    Top and side views draw world pixels 1:1 (`view_geometries`), so the bag's box in
    the images is its box in the world, and a threat placed in it lands inside the bag
    in every view.
    """
    h = views[0].shape[0]
    x0, y0, x1, y1 = bag_extent(views[0])
    z0, z1 = (bag_extent(views[1])[1::2]) if len(views) > 1 else (int(0.3 * h), int(0.9 * h))
    return np.array([[x0, x1], [y0, y1], [z0, z1]], np.float64)


@dataclass(frozen=True, eq=False)
class _Threat:
    label: str
    kind: str
    image: np.ndarray  # (h, w, 3) uint8 RGB, the threat on an empty background
    mask: np.ndarray  # (h, w) bool


@dataclass(eq=False)
class FolderThreats:
    """Threat images from a folder: CLASS/NAME.png, each with its mask CLASS/NAME.mask.png.

    The image shows the threat alone on an empty (bright) belt; dividing by the belt's
    colour (the median outside the mask) gives its transmission. Views get it on their
    own (a 2-D image has no pose), scaled to a quarter of the bag's width.
    """

    folder: Path
    threats: list[_Threat] = field(default_factory=list)

    def __post_init__(self) -> None:
        for path in sorted(self.folder.glob("*/*.png")):
            if path.name.endswith(".mask.png"):
                continue
            mask_path = path.with_name(path.stem + ".mask.png")
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if image is None or mask is None or mask.shape != image.shape[:2]:
                raise ValueError(f"TIP library: {path} needs a readable mask {mask_path.name}")
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            self.threats.append(_Threat(path.parent.name, path.stem, rgb, mask > 127))
        if not self.threats:
            raise ValueError(f"TIP library {str(self.folder)!r} holds no CLASS/NAME.png threats")

    def project(self, views: Sequence[np.ndarray], rng: np.random.Generator) -> Projection:
        threat = self.threats[int(rng.integers(len(self.threats)))]
        outside = threat.image[~threat.mask]
        belt = np.median(outside, axis=0) if len(outside) else np.full(3, 255.0)
        transmission = np.clip(threat.image / np.maximum(belt, 1.0), 0.0, 1.0)
        transmission[~threat.mask] = 1.0
        images, boxes = [], []
        for view in views:
            placed, box = _place(view, transmission.astype(np.float32), threat.mask, rng)
            images.append(beer_lambert(view, placed))
            boxes.append(box)
        return Projection(images, threat.label, threat.kind, boxes)


def _place(
    view: np.ndarray, transmission: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, Box | None]:
    """A full-frame transmission with the threat scaled into the bag at a random spot."""
    h, w = view.shape[:2]
    x0, y0, x1, y1 = bag_extent(view)
    scale = 0.25 * (x1 - x0) / max(transmission.shape[1], 1)
    tw = max(4, min(int(transmission.shape[1] * scale), x1 - x0))
    th = max(4, min(int(transmission.shape[0] * scale), y1 - y0))
    small = cv2.resize(transmission, (tw, th), interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST) > 0
    left = int(rng.integers(x0, max(x0 + 1, x1 - tw + 1)))
    top = int(rng.integers(y0, max(y0 + 1, y1 - th + 1)))
    full = np.ones((h, w, 3), np.float32)
    full[top : top + th, left : left + tw] = small[: h - top, : w - left]
    footprint = np.zeros((h, w), bool)
    footprint[top : top + th, left : left + tw] = small_mask[: h - top, : w - left]
    return full, box_of(footprint)


@dataclass(frozen=True, eq=False)
class TipBag:
    """A made TIP bag: the bag event the operator is shown, its images, its ground truth."""

    bag: BagEvent
    images: list[bytes]  # JPEG per view, stored as the views' originals
    projection: Projection


def view_size(view: BagView) -> tuple[int, int]:
    """(width, height) of a view's original, from its artefact reference."""
    for ref in view.artefacts:
        if ref.kind == "original":
            return ref.width, ref.height
    return DEFAULT_SIZE


def make_tip_bag(
    template: BagEvent,
    library: ThreatLibrary,
    rng: np.random.Generator,
    keys: Keys,
    now: datetime,
    ttl_s: int,
) -> TipBag:
    """A benign synthetic bag shaped like `template` (views, sizes, scanner, model) with a
    threat projected in; nothing in the event tells it from a real undetermined bag but
    its missing machine trace (the station has no model to run)."""
    sizes = [view_size(v) for v in template.views] or [DEFAULT_SIZE]
    scanner = SyntheticBagScanner(DOMAIN, int(rng.integers(1 << 31)), sizes[0], len(sizes))
    base = scanner.bag(int(rng.integers(1 << 30)), label=0)
    views = [
        v.image if v.image.shape[1::-1] == size else cv2.resize(v.image, size)
        for v, size in zip(base.views, sizes, strict=True)
    ]
    projection = library.project(views, rng)
    images = [encode_image(np.ascontiguousarray(img), JPEG, 90) for img in projection.images]
    prefix, sep, _tail = template.bag_id.rpartition(":")
    bag_id = f"{prefix}{sep}{uuid.uuid4().hex[:12]}" if sep else uuid.uuid4().hex
    first = now - timedelta(milliseconds=template.latency_ms)
    model = template.model or template.views[0].model
    # Views keep the template's capture offsets (a scanner takes its views one after another).
    offsets = [v.captured_at - template.first_captured_at for v in template.views]
    bag_views = []
    for index, (image, (width, height)) in enumerate(zip(images, sizes, strict=True)):
        event_id = uuid.uuid4().hex
        captured = first + (offsets[index] if index < len(offsets) else timedelta(0))
        ref = ArtefactRef(
            kind="original",
            key=keys.artefact(event_id, "original"),
            content_type=JPEG,
            bytes=len(image),
            width=width,
            height=height,
            expires_at=now + timedelta(seconds=ttl_s),
        )
        bag_views.append(
            BagView(
                view=index,
                frame_id=f"{bag_id}-v{index}",
                entry_id=f"{int(captured.timestamp() * 1000)}-{index}",
                event_id=event_id,
                captured_at=captured,
                decision=Verdict.UNDETERMINED,
                detections=[],
                trace=[],
                iterations=0,
                rois=[],
                artefacts=[ref],
                model=model,
            )
        )
    bag = BagEvent(
        event_id=uuid.uuid4().hex,
        bag_id=bag_id,
        scanner_id=template.scanner_id,
        decision=Verdict.UNDETERMINED,
        reason=BagReason.ALL_VIEWS,
        classes=[],
        views=bag_views,
        views_expected=len(bag_views),
        missing_views=[],
        first_captured_at=first,
        decided_at=now,
        latency_ms=template.latency_ms,
        model=model,
        closed_by=template.closed_by,
    )
    return TipBag(bag, images, projection)


def threat_library(folder: Path | None) -> ThreatLibrary:
    """The folder's threats if one is set, else the synthetic scanner's."""
    return FolderThreats(folder) if folder is not None else SyntheticThreats()
