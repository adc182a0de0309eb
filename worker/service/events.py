"""Turning an engine result and its frame into the wire event (and rendering artefacts)."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import numpy as np

from shared.images import encode_image
from shared.keys import Keys
from shared.schemas import (
    ArtefactRef,
    DecisionEvent,
    Detection,
    FrameFields,
    ModelRef,
    Thresholds,
    utc_now,
)
from worker.engine.decision import DecisionPolicy
from worker.engine.erasing import FrameResult
from worker.engine.model import LoadedModel
from worker.service.render import erased_image, heatmap_overlay


@dataclass(frozen=True, eq=False)
class InFlight:
    """A frame read from the stream and decoded, waiting for (or inside) the engine."""

    entry_id: str
    raw: dict[bytes, bytes]  # the stream entry as read, kept for a dead letter
    fields: FrameFields
    enqueued_at: datetime | None
    original: np.ndarray  # (H, W, 3) uint8 RGB as received
    deliveries: int


@dataclass(frozen=True, eq=False)
class Rendered:
    """A decided frame, ready for the atomic publish."""

    event: DecisionEvent
    masked: bytes | None
    heatmap: bytes | None


def render(
    frame: InFlight,
    result: FrameResult,
    *,
    model: LoadedModel,
    policy: DecisionPolicy,
    keys: Keys,
    worker_id: str,
    artefact_ttl_s: int,
    jpeg_quality: int,
) -> Rendered:
    """Build the decision event; threats get the erased image and heat-map as JPEG."""
    event_id = uuid.uuid4().hex
    decided_at = utc_now()
    artefacts: list[ArtefactRef] = []
    masked = heatmap = None
    if result.verdict.value == "threat":
        expires = decided_at + timedelta(seconds=artefact_ttl_s)
        rows, cols = frame.original.shape[:2]
        masked = encode_image(
            erased_image(frame.original, result.erase_mask, policy.fill), quality=jpeg_quality
        )
        heatmap = encode_image(
            heatmap_overlay(frame.original, result.mask_grid), quality=jpeg_quality
        )
        for kind, data in (("masked", masked), ("heatmap", heatmap)):
            artefacts.append(
                ArtefactRef(
                    kind=kind,
                    key=keys.artefact(event_id, kind),
                    content_type="image/jpeg",
                    bytes=len(data),
                    width=cols,
                    height=rows,
                    expires_at=expires,
                )
            )
    labels = model.labels
    event = DecisionEvent(
        event_id=event_id,
        frame_id=frame.fields.frame_id,
        entry_id=frame.entry_id,
        scanner_id=frame.fields.scanner_id,
        captured_at=frame.fields.captured_at,
        enqueued_at=frame.enqueued_at,
        decided_at=decided_at,
        latency_ms=(decided_at - frame.fields.captured_at).total_seconds() * 1000.0,
        decision=result.verdict.value,
        detections=[
            Detection(class_id=c, label=labels[c], probability=result.probabilities[c])
            for c in result.classes
        ],
        probabilities=dict(zip(labels, result.probabilities, strict=True)),
        trace=[dict(zip(labels, probs, strict=True)) for probs in result.trace],
        iterations=result.iterations,
        forward_passes=result.forwards,
        thresholds=Thresholds(**asdict(policy)),
        model=ModelRef(id=model.model_id, checksum=model.checksum, labels=list(labels)),
        worker_id=worker_id,
        artefacts=artefacts,
        meta=frame.fields.meta,
    )
    return Rendered(event, masked, heatmap)
