"""From a raw stream entry to a frame the engine can take, or a reason it cannot."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared.schemas import FrameError, MetaLimits, parse_frame_fields
from shared.vocab import DeadKind
from worker.engine.erasing import EngineInput
from worker.engine.preprocess import to_model_input
from worker.service.events import InFlight
from worker.service.imageio import DecodeError, checked_size, decode_image, decode_jpeg_scaled

# Scaled JPEG decoding filters differently from a full decode and an area resize. Down
# to exactly the model input, it moved the demo model's inputs by 1.1 grey levels on
# average (1024x768 frames) and changed 1 of 60 decisions; from twice the input, the area
# resize does the last step as it does after a full decode: 0.5 levels, no decision
# changed (tests/test_scaled_decode.py).
DECODE_OVERSAMPLE = 2


@dataclass(frozen=True, eq=False)
class Rejected:
    """A frame that cannot be decided, with the reason it goes to the dead-letter stream."""

    entry_id: str
    raw: dict[bytes, bytes]
    reason: str
    kind: DeadKind
    deliveries: int


@dataclass(frozen=True)
class IntakeLimits:
    max_frame_bytes: int
    max_pixels: int
    input_hw: tuple[int, int]  # the model's input size
    max_side: int = 16_384
    max_views: int = 8
    meta: MetaLimits = field(default_factory=MetaLimits)


def decode_entry(
    entry_id: str, raw: dict[bytes, bytes], deliveries: int, limits: IntakeLimits
) -> tuple[InFlight, EngineInput] | Rejected:
    """Validate and decode one entry. Never raises for bad input: it returns `Rejected`."""
    try:
        fields, data, enqueued = parse_frame_fields(raw, limits.max_frame_bytes, limits.meta)
        if fields.views is not None and fields.views > limits.max_views:
            reason = f"bag {fields.bag_id} declares {fields.views} views, over the limit of {limits.max_views}"
            return Rejected(entry_id, raw, reason, DeadKind.BAD_BAG, deliveries)
        pixels, size_hw, decoded = decode_for_model(data, fields.content_type, limits)
    except (FrameError, DecodeError) as exc:
        return Rejected(entry_id, raw, str(exc), exc.kind, deliveries)
    frame = InFlight(entry_id, raw, fields, enqueued, size_hw, decoded, deliveries)
    return frame, EngineInput(entry_id, pixels)


def decode_for_model(
    data: bytes, content_type: str, limits: IntakeLimits
) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None]:
    """(model input, frame (rows, cols), full-size image or None).

    A JPEG at least twice as large as twice the model input (`DECODE_OVERSAMPLE`) on both
    axes is decoded at the smallest DCT scale that still covers twice the input, and
    resized from there by `to_model_input`; its full-size decode waits until artefacts
    need it (frames that are not clear). A smaller JPEG would save little and, for a
    frame that gets artefacts, be decoded twice: it is decoded at full size once and kept,
    like every other format.
    """
    if content_type == "image/jpeg":
        width, height = checked_size(data, content_type, limits.max_pixels, limits.max_side)
        rows, cols = (DECODE_OVERSAMPLE * side for side in limits.input_hw)
        if height >= 2 * rows and width >= 2 * cols:
            small = decode_jpeg_scaled(data, (rows, cols))
            return to_model_input(small, limits.input_hw), (height, width), None
    full = decode_image(data, content_type, limits.max_pixels, limits.max_side)
    return to_model_input(full, limits.input_hw), full.shape[:2], full


def internal_error(
    entry_id: str, raw: dict[bytes, bytes], deliveries: int, exc: Exception
) -> Rejected:
    """The dead letter for a bug met while handling this one frame (kind `internal`)."""
    return Rejected(entry_id, raw, f"{type(exc).__name__}: {exc}", DeadKind.INTERNAL, deliveries)
