"""The worker's outbox: decided and rejected frames waiting for Redis, sent a step at a time.

Everything a step finished goes out in one pipeline: each frame's atomic publish (or dead
letter) and, for one-view bags, the bag's close right behind it. An item leaves the
outbox only once Redis has answered for it, so an outage keeps it queued; bags whose last
view completed them in a multi-view bag are closed in one more round trip.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from typing import Any

import redis

from shared.schemas import BagEvent, DeadLetter, utc_now
from shared.vocab import DeadKind, Verdict
from worker.service.bags import BagCloser, CloseStatus
from worker.service.intake import Rejected
from worker.service.metrics import WorkerMetrics
from worker.service.publish import Outcome, Publisher, PublishStatus, decision_status
from worker.service.scripts import Call, run_calls


class Outbox:
    """Frames decided or rejected, in order, until Redis has taken each of them."""

    def __init__(
        self,
        client: redis.Redis,
        publisher: Publisher,
        bags: BagCloser,
        metrics: WorkerMetrics,
        worker_id: str,
        log: Any,
    ) -> None:
        self.client = client
        self.publisher = publisher
        self.bags = bags
        self.metrics = metrics
        self.worker_id = worker_id
        self.log = log
        self.items: deque[Outcome | Rejected] = deque()
        self.decided = 0
        self.dead = 0

    def __len__(self) -> int:
        return len(self.items)

    def append(self, item: Outcome | Rejected) -> None:
        self.items.append(item)

    def flush(self) -> list[str]:
        """Send everything queued in one round trip; return the entry ids Redis settled.

        Raises the first Redis error a call met (e.g. a write refusal) after settling the
        items before it; that item and the ones after it stay queued for the next try.
        """
        if not self.items:
            return []
        items = list(self.items)
        calls: list[Call] = []
        singles: dict[int, BagEvent] = {}
        for n, item in enumerate(items):
            if isinstance(item, Rejected):
                calls.append(self.publisher.dead_letter_call(self._letter(item), item.raw))
                continue
            calls.append(self.publisher.decision_call(item))
            if item.event.views == 1:
                singles[n], close = self.bags.single_view_close(item.event)
                calls.append(close)
        replies = iter(run_calls(self.client, calls))
        settled, complete, batch = [], {}, Counter[str]()
        for n, item in enumerate(items):
            reply = next(replies)
            close_reply = next(replies) if n in singles else None
            if isinstance(reply, Exception):
                self._summary(batch)
                raise reply
            self.items.popleft()  # only after Redis took it: an outage keeps it queued
            if isinstance(item, Rejected):
                settled.append(item.entry_id)
                batch["dead"] += self._dead_letter_done(item, bool(reply))
                continue
            settled.append(item.event.entry_id)
            status, state = decision_status(reply)
            batch[status.name.lower()] += 1
            self._account(item, status)
            if n in singles:
                self._single_closed(singles[n], close_reply, batch)
            elif state is not None:
                complete[item.event.bag_id or item.event.frame_id] = state
        if complete:
            # Published already: if Redis goes before this close, the deadline closes them.
            for event in self.bags.close_states(complete):
                self.bag_closed(event, batch)
        self._summary(batch)
        return settled

    def bag_closed(self, event: BagEvent, batch: Counter[str] | None = None) -> None:
        self.metrics.bags.labels(event.decision.value, event.reason.value).inc()
        if batch is not None:
            batch["bags_closed"] += 1
        self.log.debug(
            "bag_closed",
            bag_id=event.bag_id,
            decision=event.decision.value,
            reason=event.reason.value,
            missing_views=event.missing_views,
        )

    def _single_closed(self, event: BagEvent, reply: Any, batch: Counter[str]) -> None:
        if isinstance(reply, Exception):
            # The view is published; its bag waits for the deadline, which closes it.
            self.log.warning("bag_close_failed", bag_id=event.bag_id, error=str(reply))
        elif CloseStatus(int(reply)) is CloseStatus.CLOSED:
            self.bag_closed(event, batch)

    def _summary(self, batch: Counter[str]) -> None:
        if batch:
            self.log.info("batch_done", **batch)

    def _account(self, item: Outcome, status: PublishStatus) -> None:
        event = item.event
        if status.published:
            self.decided += 1
            self.metrics.frames.labels(event.decision.value).inc()
            self.metrics.iterations.observe(event.iterations)
            self.metrics.latency_seconds.observe(event.latency_ms / 1000.0)
            if event.decision == Verdict.THREAT:
                self.log.info(
                    "threat_alert",
                    frame_id=event.frame_id,
                    scanner_id=event.scanner_id,
                    classes=[d.label for d in event.detections],
                    iterations=event.iterations,
                )
            if status is PublishStatus.LATE:
                self.log.info("late_view", bag_id=event.bag_id, frame_id=event.frame_id)
        elif status is PublishStatus.DISCARDED:
            self.metrics.discarded.inc()
            self.log.warning("publish_discarded", frame_id=event.frame_id, entry_id=event.entry_id)
        else:
            kind = DeadKind.DUPLICATE if status is PublishStatus.DUPLICATE else DeadKind.BAD_BAG
            self.dead += 1
            self.metrics.dead.labels(kind.value).inc()
            self.log.warning(
                "frame_dead", frame_id=event.frame_id, entry_id=event.entry_id, kind=kind.value
            )

    def _letter(self, item: Rejected) -> DeadLetter:
        return DeadLetter(
            event_id=os.urandom(16).hex(),
            entry_id=item.entry_id,
            frame_id=_text(item.raw, b"frame_id"),
            scanner_id=_text(item.raw, b"scanner_id"),
            reason=item.reason,
            kind=item.kind,
            deliveries=item.deliveries,
            worker_id=self.worker_id,
            failed_at=utc_now(),
        )

    def _dead_letter_done(self, item: Rejected, written: bool) -> int:
        if not written:  # another worker acknowledged the frame first
            return 0
        self.dead += 1
        self.metrics.dead.labels(item.kind.value).inc()
        self.log.warning(
            "frame_dead",
            entry_id=item.entry_id,
            frame_id=_text(item.raw, b"frame_id"),
            kind=item.kind.value,
            reason=item.reason,
        )
        return 1


def _text(raw: dict[bytes, bytes], name: bytes) -> str | None:
    return raw.get(name, b"").decode(errors="replace") or None
