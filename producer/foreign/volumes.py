"""2.5-D volumes: objects built as material thickness in their own frame, then laid on a scene.

A `Sprite` is one object seen from above. Its primitives (ellipsoids, slabs, discs, swept
tubes, bevelled plates) each know how thick they are at every pixel, and that thickness
times the material's attenuation at each beam energy adds to two line integrals. A
coverage map records which pixels the object covers at all, which is how a threat's
mask follows its true silhouette after it is rotated onto the scene.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# Linear attenuation (1/cm) at the low and the high effective beam energy. Heavier
# elements lose much more at low energy (photoelectric absorption grows like Z^3), so
# the low/high ratio rises from about 1.3 for organics to 4.5 for brass.
MATERIALS: dict[str, tuple[float, float]] = {
    "textile": (0.075, 0.055),  # folded clothes: fibre with a lot of air in it
    "organic": (0.26, 0.185),  # water, food, leather, wood, rubber
    "plastic": (0.21, 0.165),
    "glass": (0.80, 0.41),
    "aluminium": (0.95, 0.45),
    "steel": (6.0, 1.55),
    "brass": (8.2, 1.8),
}

LOW, HIGH = 0, 1  # the channels of a sprite and of a scene
_SHIFT = 4  # fractional bits for cv2 drawing coordinates
_ONE = 1 << _SHIFT

Point = tuple[float, float]
Points = Sequence[Point] | Sequence[np.ndarray] | np.ndarray  # (N, 2) centimetres


@dataclass(frozen=True)
class Pose:
    """Where a sprite lands: its centre in scene pixels, a rotation and an optional mirror."""

    x: float
    y: float
    angle: float  # radians, counter-clockwise as seen on screen
    mirror: bool = False


class Sprite:
    """One object in its own frame, in centimetres with x to the right and y down.

    Args:
        bounds: (x0, y0, x1, y1), the part of the object frame the sprite holds; parts
            outside it are cut off, and its middle is the point a `Pose` places.
        ppc: pixels per centimetre of the scene it will be laid on.
    """

    def __init__(self, bounds: tuple[float, float, float, float], ppc: float) -> None:
        x0, y0, x1, y1 = bounds
        self.ppc = float(ppc)
        self.origin = ((x0 + x1) / 2, (y0 + y1) / 2)
        width = max(3, math.ceil((x1 - x0) * ppc) + 2)
        height = max(3, math.ceil((y1 - y0) * ppc) + 2)
        self.data = np.zeros((height, width, 2), np.float32)  # (h, w, [low, high])
        self.cover = np.zeros((height, width), np.float32)  # 1 where any part lies

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[0], self.data.shape[1]

    def to_pixels(self, points: Points) -> np.ndarray:
        """Object-frame centimetres → sprite pixel coordinates (x, y), pixel centres at integers."""
        height, width = self.shape
        pts = np.asarray(points, np.float64).reshape(-1, 2) - np.array(self.origin)
        return pts * self.ppc + np.array([(width - 1) / 2, (height - 1) / 2])

    def _window(self, lo: Point, hi: Point) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        """Pixels of the box lo..hi (cm): row and column slices and their centres in cm."""
        (x0, y0), (x1, y1) = self.to_pixels([lo, hi])
        height, width = self.shape
        c0, c1 = max(0, math.floor(x0)), min(width, math.ceil(x1) + 1)
        r0, r1 = max(0, math.floor(y0)), min(height, math.ceil(y1) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        xs, ys = self._centres(slice(r0, r1), slice(c0, c1))
        return slice(r0, r1), slice(c0, c1), xs, ys

    def _centres(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Centimetre coordinates of pixel centres: x (1, w) and y (h, 1)."""
        height, width = self.shape
        xs = (np.arange(cols.start, cols.stop, dtype=np.float32) - (width - 1) / 2) / self.ppc
        ys = (np.arange(rows.start, rows.stop, dtype=np.float32) - (height - 1) / 2) / self.ppc
        return xs[None, :] + self.origin[0], ys[:, None] + self.origin[1]

    def add(self, material: str, rows: slice, cols: slice, thickness: np.ndarray) -> None:
        """Add `thickness` (cm) of `material` over a window of the sprite."""
        mu_low, mu_high = MATERIALS[material]
        window = self.data[rows, cols]
        window[..., LOW] += mu_low * thickness
        window[..., HIGH] += mu_high * thickness
        cover = self.cover[rows, cols]
        np.maximum(cover, thickness > 0, out=cover)

    def ellipsoid(
        self, material: str, centre: Point, radii: Point, depth: float, angle: float = 0.0
    ) -> None:
        """A solid ellipsoid lying flat: `radii` across, `depth` thick at its middle."""
        found = self._local(centre, radii, angle)
        if found is None:
            return
        rows, cols, u, v = found
        inside = 1.0 - (u / radii[0]) ** 2 - (v / radii[1]) ** 2
        self.add(material, rows, cols, depth * np.sqrt(np.maximum(inside, 0.0)))

    def lump(
        self,
        material: str,
        centre: Point,
        radii: Point,
        depth: float,
        rng: np.random.Generator,
        angle: float = 0.0,
    ) -> None:
        """A soft, uneven ellipsoid (a pile of cloth, a sponge bag): thickness times a random field."""
        found = self._local(centre, radii, angle)
        if found is None:
            return
        rows, cols, u, v = found
        radius = np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2)
        grain = rng.uniform(0.35, 1.6, size=(5, 5)).astype(np.float32)
        field = cv2.resize(grain, (radius.shape[1], radius.shape[0]), interpolation=cv2.INTER_CUBIC)
        edge = np.clip((1.0 - radius) * 4.0, 0.0, 1.0)
        self.add(material, rows, cols, depth * edge * np.maximum(field, 0.1))

    def slab(
        self,
        material: str,
        centre: Point,
        half: Point,
        depth: float,
        angle: float = 0.0,
        edge: float = 0.2,
    ) -> None:
        """A box `2 * half` across and `depth` thick, its rim rounded over `edge` cm."""
        found = self._local(centre, half, angle)
        if found is None:
            return
        rows, cols, u, v = found
        inset = np.minimum(half[0] - np.abs(u), half[1] - np.abs(v))
        self.add(material, rows, cols, depth * np.clip(inset / max(edge, 1e-3), 0.0, 1.0))

    def disc(
        self, material: str, centre: Point, radius: float, depth: float, edge: float = 0.1
    ) -> None:
        """A flat cylinder seen end-on: a coin, a screw head, a bottle cap."""
        found = self._local(centre, (radius, radius), 0.0)
        if found is None:
            return
        rows, cols, u, v = found
        inset = radius - np.sqrt(u * u + v * v)
        self.add(material, rows, cols, depth * np.clip(inset / max(edge, 1e-3), 0.0, 1.0))

    def tube(
        self,
        material: str,
        points: Points,
        radius: float,
        wall: float | None = None,
        closed: bool = False,
        flatten: float = 1.0,
    ) -> None:
        """A circle of `radius` swept along a polyline; hollow with a `wall` thick shell if given.

        `flatten` scales the thickness, so a flat band (a strap, a cable tie) is a tube
        squashed to a fraction of its width.
        """
        pts = np.asarray(points, np.float64)
        reach = radius + 2.0 / self.ppc
        window = self._window(
            (pts[:, 0].min() - reach, pts[:, 1].min() - reach),
            (pts[:, 0].max() + reach, pts[:, 1].max() + reach),
        )
        if window is None:
            return
        rows, cols, _, _ = window
        # Distance to the centre line, by drawing it as zeros and asking OpenCV how far
        # every pixel is from a zero: one call whatever the number of segments.
        source = np.full((rows.stop - rows.start, cols.stop - cols.start), 255, np.uint8)
        line = self.to_pixels(pts) - np.array([cols.start, rows.start])
        fixed = np.round(line * _ONE).astype(np.int32)
        cv2.polylines(source, [fixed], closed, 0, 1, cv2.LINE_8, _SHIFT)
        if source.min() > 0:  # the centre line runs outside the sprite
            return
        distance = cv2.distanceTransform(source, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) / self.ppc
        squared = distance * distance
        thickness = 2.0 * np.sqrt(np.maximum(radius * radius - squared, 0.0))
        if wall is not None and wall < radius:
            inner = radius - wall
            thickness -= 2.0 * np.sqrt(np.maximum(inner * inner - squared, 0.0))
        self.add(material, rows, cols, flatten * thickness)

    def ring(
        self, material: str, centre: Point, radius: float, wire: float, segments: int = 24
    ) -> None:
        """A torus lying flat (a key ring, an eyelet): a tube of radius `wire` around a circle."""
        turn = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
        circle = np.stack([centre[0] + radius * np.cos(turn), centre[1] + radius * np.sin(turn)], 1)
        self.tube(material, circle, wire, closed=True)

    def rim(
        self,
        material: str,
        half: Point,
        corner: float,
        radius: float,
        flatten: float = 1.0,
    ) -> None:
        """A tube bent round a rounded rectangle about the origin: a container's walls, a zip.

        Only pixels near the outline are visited, in bands that never overlap (full-width
        ones along top and bottom, short ones down the sides), so nothing is added twice.
        """
        hx, hy = half
        corner = min(corner, hx, hy)
        reach = radius + 1.0 / self.ppc
        height, width = self.shape
        (ox0, oy0), (ix0, iy0), (ix1, iy1), (ox1, oy1) = self.to_pixels(
            [
                (-hx - reach, -hy - reach),
                (-hx + corner + reach, -hy + corner + reach),
                (hx - corner - reach, hy - corner - reach),
                (hx + reach, hy + reach),
            ]
        )
        c0, c3 = max(0, math.floor(ox0)), min(width, math.ceil(ox1) + 1)
        r0, r3 = max(0, math.floor(oy0)), min(height, math.ceil(oy1) + 1)
        r1 = min(max(math.floor(iy0), r0), r3)
        r2 = min(max(math.ceil(iy1) + 1, r1), r3)
        c1 = min(max(math.floor(ix0), c0), c3)
        c2 = min(max(math.ceil(ix1) + 1, c1), c3)
        bands = [(r0, r1, c0, c3), (r2, r3, c0, c3), (r1, r2, c0, c1), (r1, r2, c2, c3)]
        for top, bottom, left, right in bands:
            if top >= bottom or left >= right:
                continue
            rows, cols = slice(top, bottom), slice(left, right)
            xs, ys = self._centres(rows, cols)
            qx = np.abs(xs) - (hx - corner)
            qy = np.abs(ys) - (hy - corner)
            outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
            off = outside + np.minimum(np.maximum(qx, qy), 0.0) - corner  # signed distance
            thickness = 2.0 * flatten * np.sqrt(np.maximum(radius * radius - off * off, 0.0))
            self.add(material, rows, cols, thickness)

    def plate(self, material: str, polygon: Points, depth: float, bevel: float = 0.0) -> None:
        """A flat polygon `depth` thick; with `bevel`, thinning towards its edges like a blade."""
        pts = np.asarray(polygon, np.float64)
        window = self._window(tuple(pts.min(0)), tuple(pts.max(0)))
        if window is None:
            return
        rows, cols, _, _ = window
        inside = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.uint8)
        outline = self.to_pixels(pts) - np.array([cols.start, rows.start])
        cv2.fillPoly(inside, [np.round(outline * _ONE).astype(np.int32)], 255, cv2.LINE_8, _SHIFT)
        if bevel <= 0.0:
            self.add(material, rows, cols, depth * (inside > 0).astype(np.float32))
            return
        # Pixels of a polygon that fills its whole window get OpenCV's "no edge in sight"
        # distance, a huge number; the bevel caps it before any arithmetic.
        ramp = bevel * self.ppc
        profile = np.minimum(cv2.distanceTransform(inside, cv2.DIST_L2, 3), ramp) / ramp
        self.add(material, rows, cols, depth * np.where(inside > 0, 0.2 + 0.8 * profile, 0.0))

    def _local(
        self, centre: Point, half: Point, angle: float
    ) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        """The window around a rotated part and its pixels in the part's own axes (u, v)."""
        c, s = math.cos(angle), math.sin(angle)
        reach_x = abs(half[0] * c) + abs(half[1] * s) + 1.0 / self.ppc
        reach_y = abs(half[0] * s) + abs(half[1] * c) + 1.0 / self.ppc
        window = self._window(
            (centre[0] - reach_x, centre[1] - reach_y), (centre[0] + reach_x, centre[1] + reach_y)
        )
        if window is None:
            return None
        rows, cols, xs, ys = window
        dx, dy = xs - centre[0], ys - centre[1]
        return rows, cols, dx * c + dy * s, dy * c - dx * s


def stamp(scene: np.ndarray, sprite: Sprite, pose: Pose, cover: np.ndarray | None = None) -> None:
    """Add a sprite's line integrals to `scene` (H, W, 2) at `pose`; mark `cover` (H, W) if given."""
    height, width = sprite.shape
    c, s = math.cos(pose.angle), math.sin(pose.angle)
    flip = -1.0 if pose.mirror else 1.0
    linear = np.array([[c, s * flip], [-s, c * flip]])  # screen y points down
    middle = np.array([(width - 1) / 2, (height - 1) / 2])
    corners = np.array(
        [[-0.5, -0.5], [width - 0.5, -0.5], [-0.5, height - 0.5], [width - 0.5, height - 0.5]]
    )
    placed = (corners - middle) @ linear.T + np.array([pose.x, pose.y])
    x0, y0 = np.floor(placed.min(0)).astype(int)
    x1, y1 = np.ceil(placed.max(0)).astype(int) + 1
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, scene.shape[1]), min(y1, scene.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    offset = np.array([pose.x - x0, pose.y - y0]) - linear @ middle
    matrix = np.hstack([linear, offset[:, None]]).astype(np.float64)
    size = (x1 - x0, y1 - y0)
    scene[y0:y1, x0:x1] += cv2.warpAffine(sprite.data, matrix, size, flags=cv2.INTER_LINEAR)
    if cover is not None:
        covered = cv2.warpAffine(sprite.cover, matrix, size, flags=cv2.INTER_LINEAR)
        cover[y0:y1, x0:x1] |= covered > 0.5
