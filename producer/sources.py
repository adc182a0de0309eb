"""Frame sources: a folder of images, a video/stream/camera, the synthetic scanner, DICOS.

A source may group frames into multi-view bags (DESIGN §9): a frame then carries its
source's `bag_id` with `view` and `views`, and every view of a bag comes before the next
bag's. The synthetic source makes bags with `views` > 1; a folder makes them from its
layout (a sub-folder per bag, or files named `BAG_vK.png`; see `producer.layout`).
Video and camera frames are one-view frames, as are all frames without bag fields.
DICOS objects travel as received; their bags come from their own attributes (`producer.dicos`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import structlog

from producer.layout import image_files, plan
from producer.synthetic.pose import MAX_VIEWS
from shared.images import DICOM, JPEG, encode_bgr, sniff_content_type
from shared.keys import check_id

log = structlog.get_logger(__name__)

# Files whose bytes already are what the wire carries (DESIGN §4 allows JPEG and PNG).
# Other formats OpenCV decodes; they are re-encoded to JPEG.
_CONVERTIBLE = frozenset(
    {
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".webp",
        ".pbm",
        ".pgm",
        ".ppm",
        ".pnm",
        ".jp2",
        ".sr",
        ".ras",
    }
)


@dataclass(frozen=True)
class SourceFrame:
    """One frame as a source yields it.

    `image` is either encoded bytes in `content_type`, or an (H, W, 3) uint8 RGB
    array that the producer encodes to `content_type`.
    """

    image: bytes | np.ndarray
    content_type: str = JPEG
    meta: dict[str, Any] = field(default_factory=dict)
    # The bag this frame is view `view` (0-based) of `views` of; all three or none.
    # The id is the source's own: the producer scopes it to its run on the wire.
    bag_id: str | None = None
    view: int | None = None
    views: int | None = None

    def __post_init__(self) -> None:
        given = [value is not None for value in (self.bag_id, self.view, self.views)]
        if any(given) and not all(given):
            raise ValueError("a source frame gives bag_id, view and views together or none")
        if self.bag_id is not None:
            check_id(self.bag_id, "bag id")
            assert self.view is not None and self.views is not None  # checked just above
            if not 0 <= self.view < self.views:
                raise ValueError(f"view {self.view} does not exist in a bag of {self.views}")


class FrameSource(Protocol):
    """Anything that yields frames; iteration ends when the source is exhausted."""

    def __iter__(self) -> Iterator[SourceFrame]: ...


class DirectorySource:
    """Every image below a folder, in sorted path order, optionally forever.

    JPEG and PNG files pass through byte for byte; other formats OpenCV reads
    are re-encoded to JPEG; files it cannot read are skipped with a warning.
    Bags come from the layout (`producer.layout`): a bag's views are all read
    first, so `views` counts the readable ones. Looping, round n > 0 suffixes each
    bag id with `.r<n>`, so that every pass sends new bags.
    """

    def __init__(self, folder: str | Path, loop: bool = False, jpeg_quality: int = 90):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"image folder {str(self.folder)!r} does not exist or is not a folder")
        self.loop = loop
        self.jpeg_quality = jpeg_quality

    def paths(self) -> list[Path]:
        """The candidate image files, sorted by their path below the folder."""
        return image_files(self.folder)

    def __iter__(self) -> Iterator[SourceFrame]:
        paths = self.paths()
        if not paths:
            raise ValueError(f"image folder {str(self.folder)!r} holds no files")
        units = plan(self.folder, paths)
        rounds = 0
        while True:
            yielded = 0
            for unit in units:
                frames = [f for f in (self._read(p, rounds) for p in unit.paths) if f is not None]
                if unit.bag is not None:
                    bag = unit.bag if rounds == 0 else f"{unit.bag}.r{rounds}"
                    frames = [_in_bag(f, bag, k, len(frames)) for k, f in enumerate(frames)]
                yielded += len(frames)
                yield from frames
            rounds += 1
            if not self.loop:
                return
            if yielded == 0:  # looping over a folder of unreadable files would spin forever
                raise ValueError(f"no readable image in {str(self.folder)!r}")

    def _read(self, path: Path, rounds: int) -> SourceFrame | None:
        meta = {"source": "dir", "path": path.relative_to(self.folder).as_posix(), "round": rounds}
        data = path.read_bytes()
        content_type = sniff_content_type(data)
        if content_type is not None:
            return SourceFrame(data, content_type, meta)
        if path.suffix.lower() not in _CONVERTIBLE:
            log.warning("file_skipped", path=str(path), reason="not an image format OpenCV reads")
            return None
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            log.warning("file_skipped", path=str(path), reason="OpenCV could not decode it")
            return None
        return SourceFrame(encode_bgr(bgr, JPEG, self.jpeg_quality), JPEG, meta)


def _in_bag(frame: SourceFrame, bag_id: str, view: int, views: int) -> SourceFrame:
    return SourceFrame(frame.image, frame.content_type, frame.meta, bag_id, view, views)


class VideoSource:
    """Frames of a video file, a stream URL (RTSP, HTTP) or a camera index, as JPEG."""

    def __init__(self, target: str | int, loop: bool = False, jpeg_quality: int = 90):
        self.target: str | int = (
            int(target) if isinstance(target, str) and target.isdigit() else target
        )
        if isinstance(self.target, str) and _missing_file(self.target):
            # Checked here, not when iterating: a typo is reported before any frame.
            raise ValueError(f"cannot open video {self.target!r}: no such file")
        self.loop = loop
        self.jpeg_quality = jpeg_quality

    def __iter__(self) -> Iterator[SourceFrame]:
        capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            raise ValueError(f"OpenCV cannot open video source {self.target!r}")
        try:
            position = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    # Only files can rewind; a camera or stream that stops has ended.
                    if self.loop and isinstance(self.target, str) and position > 0:
                        capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                        position = 0
                        continue
                    return
                meta = {"source": "video", "target": str(self.target), "position": position}
                position += 1
                yield SourceFrame(encode_bgr(bgr, JPEG, self.jpeg_quality), JPEG, meta)
        finally:
            capture.release()


def _missing_file(target: str) -> bool:
    """True for a plain path with nothing there; a URL or an image-sequence pattern is not one."""
    is_path = "://" not in target and "%" not in target
    return is_path and not Path(target).exists()


class SyntheticSource:
    """Frames of the synthetic scanner; meta carries the ground truth.

    With `views` 1 these are the frame scanner's frames, without bag fields. With more,
    each bag of the multi-view scanner comes as its views in order, bag id
    `syn-<12 hex digits>` (a hash of domain, seed and index: the index would give the label
    away), each view's meta with that view's ground truth.
    """

    def __init__(
        self,
        domain: str = "source",
        seed: int = 0,
        size: tuple[int, int] | None = None,
        start: int = 0,
        views: int = 1,
    ):
        if domain not in ("source", "target"):
            raise ValueError(f"synthetic domain must be 'source' or 'target', not {domain!r}")
        if not 1 <= views <= MAX_VIEWS:
            raise ValueError(f"views must be between 1 and {MAX_VIEWS}, not {views}")
        self.domain = domain
        self.seed = seed
        self.size = size
        self.start = start
        self.views = views

    def _about(self, index: int, label: int, label_name: str, kind: str | None) -> dict[str, Any]:
        return {
            "source": "synthetic",
            "domain": self.domain,
            "seed": self.seed,
            "index": index,
            "label": int(label),
            "label_name": label_name,
            "kind": kind,
        }

    def __iter__(self) -> Iterator[SourceFrame]:
        if self.views > 1:
            yield from self._bags()
            return
        from producer.synthetic import SyntheticScanner  # numpy-only; loaded when used

        options = {} if self.size is None else {"size": self.size}
        scanner = SyntheticScanner(domain=self.domain, seed=self.seed, **options)
        index = self.start
        while True:
            frame = scanner.frame(index)
            meta = self._about(index, frame.label, frame.label_name, frame.kind)
            meta["box"] = list(frame.box) if frame.box is not None else None
            yield SourceFrame(np.ascontiguousarray(frame.image), JPEG, meta)
            index += 1

    def _bags(self) -> Iterator[SourceFrame]:
        from producer.synthetic import SyntheticBagScanner  # numpy-only; loaded when used

        options = {} if self.size is None else {"size": self.size}
        scanner = SyntheticBagScanner(self.domain, self.seed, views=self.views, **options)
        index = self.start
        while True:
            bag = scanner.bag(index)
            # Opaque: the index would give the label away (it is `index % 3`) to anyone who
            # sees the id, e.g. an operator at the station. The meta keeps the index.
            digest = hashlib.blake2b(f"{self.domain}:{self.seed}:{index}".encode(), digest_size=6)
            bag_id = f"syn-{digest.hexdigest()}"
            for view in bag.views:
                meta = self._about(index, bag.label, bag.label_name, bag.kind)
                meta |= {
                    "box": list(view.box) if view.box is not None else None,
                    "occluded": view.occluded,
                    "view_name": view.name,
                }
                image = np.ascontiguousarray(view.image)
                yield SourceFrame(image, JPEG, meta, bag_id, view.view, len(bag.views))
            index += 1


class DicosSource:
    """DICOS DX objects from a Part-10 file or a folder, as received (see `producer.dicos`)."""

    def __init__(self, path: str | Path, loop: bool = False):
        from producer.dicos import DicosFiles  # pydicom loads for a dicos: source only

        self.files = DicosFiles(path, loop=loop)

    def __iter__(self) -> Iterator[SourceFrame]:
        for obj in self.files:
            yield SourceFrame(obj.data, DICOM, obj.meta, obj.bag_id, obj.view, obj.views)


def parse_source(
    spec: str,
    loop: bool = False,
    seed: int = 0,
    jpeg_quality: int = 90,
    size: tuple[int, int] | None = None,
    views: int = 1,
) -> FrameSource:
    """Build a source from `dir:PATH`, `video:PATH_OR_URL_OR_INDEX`, `synthetic:DOMAIN` or
    `dicos:PATH` (a DICOS file or a folder of them).

    `views` is for the synthetic scanner only; a folder's bags come from its layout.
    """
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise ValueError(
            f"source {spec!r} must look like dir:PATH, video:TARGET, synthetic:source|target "
            "or dicos:PATH"
        )
    if views != 1 and kind != "synthetic":
        raise ValueError(f"only synthetic sources make views; {kind}: frames have their own")
    if kind == "dir":
        return DirectorySource(arg, loop=loop, jpeg_quality=jpeg_quality)
    if kind == "video":
        return VideoSource(arg, loop=loop, jpeg_quality=jpeg_quality)
    if kind == "synthetic":
        return SyntheticSource(arg, seed=seed, size=size, views=views)
    if kind == "dicos":
        return DicosSource(arg, loop=loop)
    raise ValueError(f"unknown source kind {kind!r}; use dir:, video:, synthetic: or dicos:")
