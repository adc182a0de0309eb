"""3-D poses of flat items in a bag, and their projections onto a multi-view scanner's views.

An item is a planar silhouette (a threat or clutter builder's parts, about one unit long
in its own (u, v) plane) made solid as a slab `thickness` units thick. World axes, in
pixels: x along the belt, y across it, z through the bag's height. View 0 ("top") looks
down z and shows (x, y); view 1 ("side") looks across y and shows (x, z); further views
look along directions between the two ("oblique-30" is 30° from the top view).

Projecting a slab: its outline goes through the item's rotation, so a flat blade is
full-size from the top and a sliver edge-on from the side. The sliver keeps its
projected thickness (and at least `MIN_WIDTH_PX`, so nothing vanishes), and the
attenuation grows with the path length through the slab, 1 / |cos| of the angle between
the view and the slab's normal, up to the item's edge-on gain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from producer.synthetic.render import Canvas, Part

MAX_VIEWS = 8  # the most views a bag may have, for every source of bags
MIN_WIDTH_PX = 3.0  # narrowest projection of any item
MAX_GAIN = 5.0  # path length through a slab seen edge-on, at most, over its thickness
EDGE_CHORD = 0.3  # typical in-plane chord (object units) that an edge-on view looks through


def view_names(views: int) -> tuple[str, ...]:
    """Names of the first `views` views: top, side, then oblique ones in between."""
    extra = [f"oblique-{round(np.degrees(a))}" for a in _view_angles(views)[2:]]
    return ("top", "side", *extra)[:views]


def _view_angles(views: int) -> list[float]:
    """Angle of each view's line of sight from the vertical: 0 top, 90° side, then between."""
    between = [0.5 * np.pi * j / (views - 1) for j in range(1, views - 1)]
    return [0.0, 0.5 * np.pi, *between][:views]


@dataclass(frozen=True)
class Orientation:
    """How an item's plane sits in the bag (radians): R = Rz(yaw) · Rx(tilt) · Rz(spin)."""

    spin: float = 0.0  # rotation of the silhouette within its own plane
    tilt: float = 0.0  # angle between its plane and the belt: 0 lying flat, pi/2 standing
    yaw: float = 0.0  # heading, about the vertical, of the axis it is tilted around
    mirror: bool = False

    def matrix(self) -> np.ndarray:
        """(3, 3) rotation whose columns are the item's u, v and normal axes in the world."""
        return _rot_z(self.yaw) @ _rot_x(self.tilt) @ _rot_z(self.spin)


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


@dataclass(frozen=True, eq=False)
class Item:
    """One solid in the bag: a silhouette with its size, thickness and 3-D pose."""

    parts: list[Part]
    centre: np.ndarray  # (3,) world pixels
    orientation: Orientation
    length: float  # pixels
    thickness: float  # object units, across the silhouette's plane
    edge_gain: float = MAX_GAIN

    def outline(self) -> np.ndarray:
        """(N, 2) every outline point of every part, in object units (mirror applied)."""
        pts = [p for part in self.parts for p in (*part.polygons, *part.lines)]
        flat = np.concatenate(pts) if pts else np.zeros((0, 2))
        return flat * np.array([1.0, -1.0]) if self.orientation.mirror else flat

    def half_extent(self) -> np.ndarray:
        """(3,) half size of the item's world bounding box around its centre, in pixels."""
        rot = self.orientation.matrix()
        world = self.outline() @ rot[:, :2].T * self.length
        reach = np.abs(world).max(axis=0) if len(world) else np.zeros(3)
        return reach + 0.5 * self.thickness * self.length * np.abs(rot[:, 2])


@dataclass(frozen=True)
class ViewGeometry:
    """One view: world → image is ((p - origin) @ axes[:2].T) * scale + anchor."""

    index: int
    name: str
    axes: np.ndarray  # (3, 3) rows: image column axis, image row axis, line of sight
    origin: np.ndarray  # (3,) world point drawn at `anchor`
    anchor: tuple[float, float]
    scale: float

    def to_image(self, world: np.ndarray) -> np.ndarray:
        """(N, 3) world points → (N, 2) image (column, row)."""
        return (world - self.origin) @ self.axes[:2].T * self.scale + np.asarray(self.anchor)

    def stamp(self, canvas: Canvas, item: Item, footprint: np.ndarray | None = None) -> None:
        """Add the item's projection to `canvas`, marking it in `footprint` if given."""
        rot = item.orientation.matrix()
        px = item.length * self.scale
        linear = self.axes[:2] @ rot[:, :2] * px  # (2, 2): object (u, v) → image
        shift = self.to_image(item.centre[None, :])[0]
        normal = rot[:, 2]
        across = self.axes[:2] @ normal  # the normal in the image: the squashed direction
        cos = abs(float(self.axes[2] @ normal))
        sweep = _sweep(item.outline() @ linear.T, across, item.thickness * px)
        mirror = np.array([1.0, -1.0]) if item.orientation.mirror else np.ones(2)
        for part in item.parts:
            polys = [(p * mirror) @ linear.T + shift for p in part.polygons]
            lines = [(p * mirror) @ linear.T + shift for p in part.lines]
            # A line is a tube: its path length is the same from every side.
            gain = min(1.0 / max(cos, 1e-6), item.edge_gain) if polys else 1.0
            width_px = max(1, round(part.line_width * px))
            canvas.stamp_points(part, polys, lines, width_px, footprint, gain, sweep)


def _sweep(
    projected: np.ndarray, across: np.ndarray, thickness_px: float
) -> tuple[float, float] | None:
    """The slab's projected thickness as a vector, widened to MIN_WIDTH_PX overall."""
    norm = float(np.hypot(*across))
    if norm < 1e-6 or len(projected) == 0:
        return None  # looked at face-on: no rim to show
    unit = across / norm
    along = projected @ unit
    width = max(thickness_px * norm, MIN_WIDTH_PX - float(along.max() - along.min()))
    if width < 0.5:
        return None
    return (float(unit[0] * width), float(unit[1] * width))


def edge_gain(thickness: float) -> float:
    """Path length through the slab edge-on over its thickness, between 1 and MAX_GAIN."""
    return float(np.clip(EDGE_CHORD / thickness, 1.0, MAX_GAIN))


def view_geometries(
    views: int, volume: np.ndarray, size: tuple[int, int]
) -> tuple[ViewGeometry, ...]:
    """The views of a bag volume ((3, 2) world min/max per axis) in frames of `size`.

    Top and side are drawn 1:1 in world pixels (the volume is chosen to fit both);
    an oblique view is scaled down if the bag's slanted extent would not fit.
    """
    _, height = size  # columns are x in every view, and the volume fits the width
    names = view_names(views)
    centre = volume.mean(axis=1)
    geometries = []
    for index, angle in enumerate(_view_angles(views)):
        c, s = np.cos(angle), np.sin(angle)
        axes = np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])
        extent = float(np.abs(axes[1]) @ (volume[:, 1] - volume[:, 0]))
        scale = min(1.0, 0.96 * height / extent)
        # Row of the bag's centre: its own y in the top view, its own z in the side view.
        row = float(centre[1] * c * c + centre[2] * s * s)
        half = 0.5 * extent * scale
        row = float(np.clip(row, half, height - half))
        geometries.append(
            ViewGeometry(index, names[index], axes, centre, (float(centre[0]), row), scale)
        )
    return tuple(geometries)
