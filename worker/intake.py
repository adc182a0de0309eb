"""From a raw stream entry to a frame the engine can take, or a reason it cannot."""

from __future__ import annotations

from dataclasses import dataclass

from shared.schemas import FrameError, parse_frame_fields
from worker.engine import EngineInput
from worker.events import InFlight
from worker.imageio import DecodeError, decode_image, to_model_input


@dataclass(frozen=True, eq=False)
class Rejected:
    """A frame that cannot be decided, with the reason it goes to the dead-letter stream."""

    entry_id: str
    raw: dict[bytes, bytes]
    reason: str
    deliveries: int


@dataclass(frozen=True)
class IntakeLimits:
    max_frame_bytes: int
    max_pixels: int
    input_hw: tuple[int, int]  # the model's input size


def decode_entry(
    entry_id: str, raw: dict[bytes, bytes], deliveries: int, limits: IntakeLimits
) -> tuple[InFlight, EngineInput] | Rejected:
    """Validate and decode one entry. Never raises for bad input: it returns `Rejected`."""
    try:
        fields, data, enqueued = parse_frame_fields(raw, limits.max_frame_bytes)
        original = decode_image(data, fields.content_type, limits.max_pixels)
    except (FrameError, DecodeError) as exc:
        return Rejected(entry_id, raw, str(exc), deliveries)
    frame = InFlight(entry_id, fields, enqueued, original, deliveries)
    return frame, EngineInput(entry_id, to_model_input(original, limits.input_hw))
