"""Image bytes both ends share: content types, sniffing by magic bytes, encoding."""

from __future__ import annotations

import cv2
import numpy as np

JPEG = "image/jpeg"
PNG = "image/png"
DICOM = "application/dicom"  # a DICOS object as received (docs/DICOS.md)
_MAGIC = ((b"\xff\xd8\xff", JPEG), (b"\x89PNG\r\n\x1a\n", PNG))
_DICM_AT = 128  # a DICOM Part-10 file: 128-byte preamble, then "DICM"


def sniff_content_type(data: bytes) -> str | None:
    """JPEG, PNG or DICOM (Part 10) by magic bytes; None for anything else."""
    for magic, content_type in _MAGIC:
        if data.startswith(magic):
            return content_type
    if data[_DICM_AT : _DICM_AT + 4] == b"DICM":
        return DICOM
    return None


def encode_bgr(bgr: np.ndarray, content_type: str = JPEG, quality: int = 90) -> bytes:
    """Encode an OpenCV (BGR) image as JPEG (at `quality`) or PNG bytes."""
    if content_type == JPEG:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    elif content_type == PNG:
        ok, buf = cv2.imencode(".png", bgr)
    else:
        raise ValueError(f"cannot encode to {content_type!r}; use {JPEG} or {PNG}")
    if not ok:
        raise ValueError(f"OpenCV could not encode a {bgr.shape} image to {content_type}")
    return bytes(buf.tobytes())


def encode_image(rgb: np.ndarray, content_type: str = JPEG, quality: int = 90) -> bytes:
    """Encode an (H, W, 3) uint8 RGB array as JPEG or PNG bytes."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    return encode_bgr(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), content_type, quality)
