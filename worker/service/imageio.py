"""Frame bytes in: guarded decoding (size checked before any pixel is read)."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import simplejpeg

from shared.images import DICOM, JPEG, sniff_content_type
from shared.vocab import DeadKind

# JPEG start-of-frame markers that carry the image size (all SOFn except DHT/JPG/DAC).
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class DecodeError(ValueError):
    """Bytes that are not a usable image; the message is the dead-letter reason."""

    def __init__(self, reason: str, kind: DeadKind = DeadKind.UNDECODABLE) -> None:
        super().__init__(reason)
        self.kind = kind


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise DecodeError("PNG header is truncated or has no IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise DecodeError(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    raise DecodeError("JPEG is truncated before its frame header")


def image_size(data: bytes, content_type: str) -> tuple[int, int]:
    """(width, height) from the header alone, so a decompression bomb is refused unread."""
    actual = sniff_content_type(data)
    if actual is None:
        raise DecodeError(f"bytes are neither PNG nor JPEG (declared {content_type})")
    if actual != content_type:
        raise DecodeError(f"declared {content_type} but the bytes are {actual}")
    return _png_size(data) if actual == "image/png" else _jpeg_size(data)


def _check_complete(data: bytes, content_type: str) -> None:
    """Refuse truncated files: decoders fill a cut-off JPEG with grey rather than fail."""
    if content_type == JPEG:
        # Some encoders pad after the end-of-image marker; look at the last few bytes.
        if b"\xff\xd9" not in data[-16:]:
            raise DecodeError("JPEG is truncated: no end-of-image marker")
    elif b"IEND" not in data[-16:]:
        raise DecodeError("PNG is truncated: no IEND chunk")


def checked_size(data: bytes, content_type: str, max_pixels: int, max_side: int) -> tuple[int, int]:
    """(width, height) of a complete JPEG/PNG within the limits, from its header alone.

    Raises `DecodeError` for bytes that are not a complete image of the declared type
    and for images over a side or pixel limit (kind `too_large`).
    """
    width, height = image_size(data, content_type)
    _check_complete(data, content_type)
    if width == 0 or height == 0:
        raise DecodeError(f"image header declares {width}x{height} pixels")
    if max(width, height) > max_side:
        # Every image on the path must stay encodable (JPEG stops at 65,500 px a side).
        raise DecodeError(
            f"image is {width}x{height}, a side over the {max_side}-pixel limit", DeadKind.TOO_LARGE
        )
    if width * height > max_pixels:
        raise DecodeError(
            f"image is {width}x{height}, over the {max_pixels}-pixel limit", DeadKind.TOO_LARGE
        )
    return width, height


def decode_image(
    data: bytes, content_type: str, max_pixels: int, max_side: int = 16_384
) -> np.ndarray:
    """Decode JPEG/PNG bytes, or a DICOS DX object, to (H, W, 3) uint8 RGB.

    Grayscale, 16-bit and alpha images are accepted and converted; anything that is
    not a complete image of the declared type raises `DecodeError`.
    """
    if content_type == DICOM:
        return _decode_dicos(data, max_pixels, max_side)
    checked_size(data, content_type, max_pixels, max_side)
    if content_type == JPEG:
        # libjpeg-turbo straight to RGB: OpenCV's pixels (the same library underneath)
        # without its BGR output and the swap after it. Strict, as on the scaled path:
        # damaged data is refused, not filled with grey that could hide a threat.
        return _decode_jpeg(data)
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise DecodeError(f"{content_type} bytes are corrupt or truncated")
    image = np.asarray(decoded)
    if image.dtype == np.uint16:
        image = (image // 256).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DecodeError(f"unsupported sample type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise DecodeError(f"unsupported channel count {image.shape[2]}")


def decode_jpeg_scaled(data: bytes, min_hw: tuple[int, int]) -> np.ndarray:
    """A checked JPEG decoded in the DCT domain at the smallest scale (k/8) whose image
    still covers `min_hw` on both axes, as (h, w, 3) uint8 RGB.

    libjpeg-turbo (through simplejpeg) skips the detail a smaller scale does not need,
    so a 512×384 frame for a 128×160 model decodes at 192×144. Strict: data errors that
    a lenient decoder would paper over with grey raise `DecodeError`.
    """
    return _decode_jpeg(data, min_height=min_hw[0], min_width=min_hw[1])


def _decode_jpeg(data: bytes, **scale: int) -> np.ndarray:
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, **scale)
    except ValueError as exc:
        raise DecodeError(f"JPEG cannot be decoded: {exc}") from None


def _decode_dicos(data: bytes, max_pixels: int, max_side: int) -> np.ndarray:
    # Imported here: pydicom loads in workers that meet a DICOS frame, not in every one.
    from worker.service.dicos import DicosError, decode_dicos

    try:
        return decode_dicos(data, max_pixels, max_side).rgb
    except DicosError as exc:
        raise DecodeError(str(exc), exc.kind) from None
