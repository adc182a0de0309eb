"""Bags: the views a worker publishes are recorded in their bag; a full or overdue bag closes.

`publish.lua` records each decided view in the bag's state hash (`{ns}:bag:<id>`) and
tells the publisher when a view completes its bag. `BagCloser` then reads the state,
applies the bag rule and runs `close_bag.lua`, which writes the one `scanguard.bag/1`
event (and the review entry) only if the bag is not closed yet and no view arrived since
the state was read. Any worker's maintenance closes bags past their deadline the same way,
so a bag closes exactly once whoever decided its views and whoever died on the way.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import redis

from shared.keys import Keys
from shared.schemas import BagEvent, BagView, DecisionEvent, Detection, utc_now
from shared.vocab import BagReason, Verdict
from worker.service.scripts import Call, LuaScript, run_calls


class CloseStatus(enum.IntEnum):
    """What `close_bag.lua` did (its return codes)."""

    ALREADY_CLOSED = 0
    CLOSED = 1
    STALE = 2  # a view arrived after the state was read
    NOT_OURS = 3  # the state does not hold the view the caller expected


def bag_view(event: DecisionEvent) -> BagView:
    """What a bag keeps of one decided view."""
    return BagView(
        view=event.view,
        frame_id=event.frame_id,
        entry_id=event.entry_id,
        event_id=event.event_id,
        captured_at=event.captured_at,
        decision=event.decision,
        detections=event.detections,
        trace=event.trace,
        iterations=event.iterations,
        rois=event.rois,
        artefacts=event.artefacts,
        model=event.model,
    )


def bag_decision(decisions: Iterable[Verdict], expected: int) -> Verdict:
    """The bag rule over the decided views' decisions, `expected` views in all: threat if
    any view is a threat; else undetermined if any view is undetermined or missing; else
    clear."""
    seen = list(decisions)
    if Verdict.THREAT in seen:
        return Verdict.THREAT
    if Verdict.UNDETERMINED in seen or len(seen) < expected:
        return Verdict.UNDETERMINED
    return Verdict.CLEAR


def union_classes(views: Sequence[BagView]) -> list[Detection]:
    """Detected classes over all views, each with its highest probability, by class id."""
    best: dict[int, Detection] = {}
    for view in views:
        for found in view.detections:
            kept = best.get(found.class_id)
            if kept is None or found.probability > kept.probability:
                best[found.class_id] = found
    return [best[k] for k in sorted(best)]


def build_bag_event(
    bag_id: str, state: Mapping[bytes, bytes], closed_by: str, now: datetime | None = None
) -> BagEvent:
    """The bag event for the state hash as read: every view decided so far, the rule applied."""
    views = sorted(
        (BagView.model_validate_json(v) for k, v in state.items() if k.startswith(b"v:")),
        key=lambda v: v.view,
    )
    expected = int(state[b"views"])
    decided_at = now or utc_now()
    first = datetime.fromtimestamp(int(state[b"first_ms"]) / 1000, tz=timezone.utc)
    missing = sorted(set(range(expected)) - {v.view for v in views})
    return BagEvent(
        event_id=uuid.uuid4().hex,
        bag_id=bag_id,
        scanner_id=state[b"scanner_id"].decode(),
        decision=bag_decision((v.decision for v in views), expected),
        reason=BagReason.DEADLINE if missing else BagReason.ALL_VIEWS,
        classes=union_classes(views),
        views=views,
        views_expected=expected,
        missing_views=missing,
        first_captured_at=first,
        decided_at=decided_at,
        latency_ms=(decided_at - first).total_seconds() * 1000.0,
        model=views[0].model if views else None,
        closed_by=closed_by,
    )


class BagCloser:
    """Closes bags exactly once: when their last view is published, or at their deadline."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        worker_id: str,
        *,
        review_ttl_s: int,
        closed_ttl_s: int,
        stream_maxlen: int,
    ) -> None:
        self.client = client
        self.keys = keys
        self.worker_id = worker_id
        self.review_ttl_s = review_ttl_s
        self.closed_ttl_s = closed_ttl_s
        self.stream_maxlen = stream_maxlen
        self._script = LuaScript("close_bag.lua")

    def close_call(self, event: BagEvent, seen: int, expect: tuple[str, str] | None = None) -> Call:
        """Close the bag with `event` if `seen` views are still all it has (and, with
        `expect`, if that state field still holds that value)."""
        review = event.decision != Verdict.CLEAR
        artefacts = [a.key for view in event.views for a in view.artefacts]
        return Call(
            self._script,
            keys=[
                self.keys.bag(event.bag_id),
                self.keys.bags_open,
                self.keys.bags,
                self.keys.review,
                *artefacts,
            ],
            args=[
                event.bag_id,
                event.to_json(),
                seen,
                "1" if review else "0",
                self.review_ttl_s,
                self.closed_ttl_s,
                self.stream_maxlen,
                *(expect or ()),
            ],
        )

    def single_view_close(self, view_event: DecisionEvent) -> tuple[BagEvent, Call]:
        """The close of a one-view bag, built from its only view before it is published,
        so it can ride in the same round trip as the publish. It closes nothing unless
        the state holds exactly this view (a discarded publish leaves another one)."""
        record = bag_view(view_event).model_dump_json()
        state = {
            b"views": b"1",
            b"seen": b"1",
            b"scanner_id": view_event.scanner_id.encode(),
            b"first_ms": str(int(view_event.captured_at.timestamp() * 1000)).encode(),
            f"v:{view_event.view}".encode(): record.encode(),
        }
        bag_id = view_event.bag_id or view_event.frame_id
        event = build_bag_event(bag_id, state, self.worker_id)
        return event, self.close_call(event, 1, (f"v:{view_event.view}", record))

    def close_states(self, states: Mapping[str, Mapping[bytes, bytes]]) -> list[BagEvent]:
        """Close bags whose full state is in hand (one round trip); a bag that changed
        meanwhile is read again and closed on its own."""
        events = {
            bag_id: build_bag_event(bag_id, s, self.worker_id) for bag_id, s in states.items()
        }
        calls = [self.close_call(events[b], int(s.get(b"seen", b"0"))) for b, s in states.items()]
        closed = []
        for bag_id, reply in zip(events, run_calls(self.client, calls), strict=True):
            if isinstance(reply, Exception):
                raise reply
            status = CloseStatus(int(reply))
            if status is CloseStatus.CLOSED:
                closed.append(events[bag_id])
            elif status is CloseStatus.STALE:
                event = self.close(bag_id)
                if event is not None:
                    closed.append(event)
        return closed

    def close(self, bag_id: str, *, attempts: int = 5) -> BagEvent | None:
        """Close `bag_id` now if it is still open; the event written, or None.

        A view that lands between reading the state and closing makes the script refuse
        (stale); the state is read again, at most `attempts` times.
        """
        for _ in range(attempts):
            state: Any = self.client.hgetall(self.keys.bag(bag_id))
            if not state or b"closed" in state or b"views" not in state:
                self.client.zrem(self.keys.bags_open, bag_id)
                return None
            event = build_bag_event(bag_id, state, self.worker_id)
            (reply,) = run_calls(
                self.client, [self.close_call(event, int(state.get(b"seen", b"0")))]
            )
            if isinstance(reply, Exception):
                raise reply
            status = CloseStatus(int(reply))
            if status is CloseStatus.CLOSED:
                return event
            if status is CloseStatus.ALREADY_CLOSED:
                return None
        return None

    def close_due(self, now_ms: int, limit: int = 100) -> list[BagEvent]:
        """Close bags whose deadline has passed (missing views make them undetermined)."""
        due: Any = self.client.zrangebyscore(self.keys.bags_open, "-inf", now_ms, 0, limit)
        closed = []
        for raw in due:
            event = self.close(raw.decode())
            if event is not None:
                closed.append(event)
        return closed
