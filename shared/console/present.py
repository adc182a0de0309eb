"""What operators are shown: bags and alerts without anything that gives an answer away.

Every operator-facing payload is built here. Frame meta keys listed in
`hidden_meta_keys` (the synthetic scanner's ground truth and what regenerates it) are
dropped; a bag goes out as the views' images, boxes and traces, never as its stored
event, so a TIP bag's payload has the same fields as a real one and its ground truth
(kept in `{ns}:tip:bag:<id>`) is never read here.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from shared.console.station import Held, utc
from shared.schemas import BagView


def strip_meta(event: dict[str, Any], hidden: Collection[str]) -> dict[str, Any]:
    """`event` (a dumped decision event) with the hidden keys taken out of its meta."""
    meta = event.get("meta")
    if isinstance(meta, dict):
        event["meta"] = {k: v for k, v in meta.items() if k not in hidden}
    return event


def artefact_url(event_id: str, kind: str) -> str:
    return f"/api/artefacts/{event_id}/{kind}"


def _view(view: BagView) -> dict[str, Any]:
    original = next((a for a in view.artefacts if a.kind == "original"), None)
    return {
        "view": view.view,
        "captured_at": view.captured_at.isoformat(),
        "decision": view.decision.value,
        "detections": [d.model_dump() for d in view.detections],
        "trace": view.trace,
        "iterations": view.iterations,
        "rois": [r.model_dump() for r in view.rois],
        "width": original.width if original else None,
        "height": original.height if original else None,
        "images": {a.kind: artefact_url(view.event_id, a.kind) for a in view.artefacts},
    }


def bag_payload(held: Held, deadline_s: int, now_ms: int) -> dict[str, Any]:
    """The bag an operator holds, as their page shows it."""
    bag, lease = held.bag, held.lease
    model = bag.model or (bag.views[0].model if bag.views else None)
    return {
        "bag_id": bag.bag_id,
        "scanner_id": bag.scanner_id,
        "captured_at": bag.first_captured_at.isoformat(),
        "decision": bag.decision.value,
        "classes": [c.model_dump() for c in bag.classes],
        "model": {"id": model.id, "labels": model.labels} if model else None,
        "views_expected": bag.views_expected,
        "missing_views": bag.missing_views,
        "views": [_view(v) for v in bag.views],
        "pool": held.pool,
        "queued_at": utc(lease.queued_ms).isoformat(),
        "taken_at": utc(lease.taken_ms).isoformat(),
        "lease_expires_at": utc(held.expires_ms).isoformat(),
        "overdue": now_ms - lease.queued_ms > deadline_s * 1000,
    }
