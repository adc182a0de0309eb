"""From a raw stream entry to a frame the engine can take, or a reason it cannot."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.schemas import FrameError, MetaLimits, parse_frame_fields
from shared.vocab import DeadKind
from worker.engine.erasing import EngineInput
from worker.engine.preprocess import to_model_input
from worker.service.events import InFlight
from worker.service.imageio import DecodeError, decode_image


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
        original = decode_image(data, fields.content_type, limits.max_pixels, limits.max_side)
    except (FrameError, DecodeError) as exc:
        return Rejected(entry_id, raw, str(exc), exc.kind, deliveries)
    frame = InFlight(entry_id, raw, fields, enqueued, original, deliveries)
    return frame, EngineInput(entry_id, to_model_input(original, limits.input_hw))


def internal_error(
    entry_id: str, raw: dict[bytes, bytes], deliveries: int, exc: Exception
) -> Rejected:
    """The dead letter for a bug met while handling this one frame (kind `internal`)."""
    return Rejected(entry_id, raw, f"{type(exc).__name__}: {exc}", DeadKind.INTERNAL, deliveries)
