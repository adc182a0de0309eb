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
from shared.vocab import Verdict
from worker.engine.decision import DecisionPolicy
from worker.engine.erasing import FrameResult
from worker.engine.model import LoadedModel
from worker.service.imageio import decode_image
from worker.service.publish import Outcome
from worker.service.render import erased_image, heatmap_overlay
from worker.service.rois import rois_from_mask


@dataclass(frozen=True, eq=False)
class InFlight:
    """A frame read from the stream and decoded, waiting for (or inside) the engine."""

    entry_id: str
    raw: dict[bytes, bytes]  # the stream entry as read, kept for a dead letter
    fields: FrameFields
    enqueued_at: datetime | None
    size_hw: tuple[int, int]  # the frame's own (rows, cols)
    # (H, W, 3) uint8 RGB at full size, or None for a JPEG decoded scaled for the model:
    # then it is decoded again at full size only if artefacts are drawn on it.
    decoded: np.ndarray | None
    deliveries: int

    def full_image(self) -> np.ndarray:
        """The frame at its own size, decoded now if intake only decoded it scaled."""
        if self.decoded is not None:
            return self.decoded
        rows, cols = self.size_hw
        return decode_image(
            self.raw[b"image"], self.fields.content_type, rows * cols, max(rows, cols)
        )


@dataclass(frozen=True)
class RenderOptions:
    """How a decided frame becomes its event and artefacts."""

    artefact_ttl_s: int  # erased image and heat-map
    original_ttl_s: int  # the received bytes, until the bag closes (then review or gone)
    jpeg_quality: int
    roi_threshold: float
    max_rois: int


def _ref(
    keys: Keys,
    event_id: str,
    kind: str,
    data: bytes,
    content_type: str,
    hw: tuple[int, int],
    expires: datetime,
) -> ArtefactRef:
    return ArtefactRef(
        kind=kind,  # one of ARTEFACT_KINDS, checked by keys.artefact
        key=keys.artefact(event_id, kind),
        content_type=content_type,
        bytes=len(data),
        width=hw[1],
        height=hw[0],
        expires_at=expires,
    )


def render(
    frame: InFlight,
    result: FrameResult,
    *,
    model: LoadedModel,
    policy: DecisionPolicy,
    keys: Keys,
    worker_id: str,
    options: RenderOptions,
) -> Outcome:
    """Build the decision event with its ROIs; every view keeps its original (until its bag
    closes), and views that are not clear get the erased image and heat-map as JPEG."""
    event_id = uuid.uuid4().hex
    decided_at = utc_now()
    hw = frame.size_hw
    original = frame.raw[b"image"]
    artefacts = [
        _ref(
            keys,
            event_id,
            "original",
            original,
            frame.fields.content_type,
            hw,
            decided_at + timedelta(seconds=options.original_ttl_s),
        )
    ]
    masked = heatmap = None
    if result.verdict != Verdict.CLEAR:
        image = frame.full_image()
        expires = decided_at + timedelta(seconds=options.artefact_ttl_s)
        masked = encode_image(
            erased_image(image, result.erase_mask, policy.fill),
            quality=options.jpeg_quality,
        )
        heatmap = encode_image(
            heatmap_overlay(image, result.mask_grid), quality=options.jpeg_quality
        )
        artefacts.append(_ref(keys, event_id, "masked", masked, "image/jpeg", hw, expires))
        artefacts.append(_ref(keys, event_id, "heatmap", heatmap, "image/jpeg", hw, expires))
    labels = model.labels
    bag_id, view, views = frame.fields.bag
    event = DecisionEvent(
        event_id=event_id,
        frame_id=frame.fields.frame_id,
        entry_id=frame.entry_id,
        scanner_id=frame.fields.scanner_id,
        captured_at=frame.fields.captured_at,
        enqueued_at=frame.enqueued_at,
        decided_at=decided_at,
        latency_ms=(decided_at - frame.fields.captured_at).total_seconds() * 1000.0,
        decision=result.verdict,
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
        rois=rois_from_mask(result.mask_grid, hw, options.roi_threshold, options.max_rois),
        bag_id=bag_id,
        view=view,
        views=views,
    )
    return Outcome(event, original, masked, heatmap)
