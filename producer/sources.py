"""Frame sources: a folder of images, a video/stream/camera, the synthetic scanner."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import structlog

from shared.images import JPEG, encode_bgr, sniff_content_type

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


class FrameSource(Protocol):
    """Anything that yields frames; iteration ends when the source is exhausted."""

    def __iter__(self) -> Iterator[SourceFrame]: ...


class DirectorySource:
    """Every image below a folder, in sorted path order, optionally forever.

    JPEG and PNG files pass through byte for byte; other formats OpenCV reads
    are re-encoded to JPEG; files it cannot read are skipped with a warning.
    """

    def __init__(self, folder: str | Path, loop: bool = False, jpeg_quality: int = 90):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"image folder {str(self.folder)!r} does not exist or is not a folder")
        self.loop = loop
        self.jpeg_quality = jpeg_quality

    def paths(self) -> list[Path]:
        """The candidate image files, sorted by their path below the folder."""
        return sorted(
            p for p in self.folder.rglob("*") if p.is_file() and not p.name.startswith(".")
        )

    def __iter__(self) -> Iterator[SourceFrame]:
        paths = self.paths()
        if not paths:
            raise ValueError(f"image folder {str(self.folder)!r} holds no files")
        rounds = 0
        while True:
            yielded = 0
            for path in paths:
                frame = self._read(path, rounds)
                if frame is not None:
                    yielded += 1
                    yield frame
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
    """Frames of the synthetic scanner; meta carries the ground-truth label."""

    def __init__(
        self,
        domain: str = "source",
        seed: int = 0,
        size: tuple[int, int] | None = None,
        start: int = 0,
    ):
        if domain not in ("source", "target"):
            raise ValueError(f"synthetic domain must be 'source' or 'target', not {domain!r}")
        self.domain = domain
        self.seed = seed
        self.size = size
        self.start = start

    def __iter__(self) -> Iterator[SourceFrame]:
        from producer.synthetic import SyntheticScanner  # numpy-only; loaded when used

        options = {} if self.size is None else {"size": self.size}
        scanner = SyntheticScanner(domain=self.domain, seed=self.seed, **options)
        index = self.start
        while True:
            frame = scanner.frame(index)
            meta = {
                "source": "synthetic",
                "domain": self.domain,
                "seed": self.seed,
                "index": index,
                "label": int(frame.label),
                "label_name": frame.label_name,
                "kind": frame.kind,
                "box": list(frame.box) if frame.box is not None else None,
            }
            yield SourceFrame(np.ascontiguousarray(frame.image), JPEG, meta)
            index += 1


def parse_source(
    spec: str,
    loop: bool = False,
    seed: int = 0,
    jpeg_quality: int = 90,
    size: tuple[int, int] | None = None,
) -> FrameSource:
    """Build a source from `dir:PATH`, `video:PATH_OR_URL_OR_INDEX` or `synthetic:DOMAIN`."""
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise ValueError(
            f"source {spec!r} must look like dir:PATH, video:TARGET or synthetic:source|target"
        )
    if kind == "dir":
        return DirectorySource(arg, loop=loop, jpeg_quality=jpeg_quality)
    if kind == "video":
        return VideoSource(arg, loop=loop, jpeg_quality=jpeg_quality)
    if kind == "synthetic":
        return SyntheticSource(arg, seed=seed, size=size)
    raise ValueError(f"unknown source kind {kind!r}; use dir:, video: or synthetic:")
