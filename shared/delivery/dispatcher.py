"""The dispatcher: read events with its own consumer group, enqueue RQ jobs, ack.

It reads `{ns}:results` and/or `{ns}:alerts` (decision events) and/or `{ns}:bags` (bag
events) through a consumer group of its own, so it never competes with workers and
resumes after the last entry it acknowledged. Each event goes to the configured sinks
that take its kind (`shared.delivery.sinks.event_kinds`).
An entry is acknowledged only after a job for every configured sink is enqueued; a
crash in between redelivers the entry, and the derived job ids stop it from being
delivered twice. An entry that is not a readable decision event is acknowledged,
logged (`event_unreadable`) and counted: left pending it would come back on every
restart and claim, for ever; it stays on the stream for anyone to inspect.
Its counts, and what the RQ workers made of the jobs (`shared.delivery.metrics`), are
served on `/metrics` when SCANGUARD_DELIVERY__METRICS_PORT is set.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import redis
import structlog
from pydantic import ValidationError

from shared.backoff import Backoff
from shared.client import EventError, parse_event
from shared.delivery.jobs import enqueue, make_queue
from shared.delivery.metrics import DispatcherMetrics
from shared.delivery.sinks import build_sink, event_kinds
from shared.keys import Keys
from shared.schemas import BagEvent
from shared.settings import Settings
from shared.streams import REDIS_DOWN, default_consumer_id, ensure_group

log = structlog.get_logger("scanguard.dispatcher")


class Dispatcher:
    """One consumer of the event streams, feeding the delivery queue."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        ds = settings.delivery
        if not ds.sinks:
            raise ValueError(
                "no sinks configured: set SCANGUARD_DELIVERY__SINKS, e.g. '[\"archive\"]'"
            )
        keys = Keys(settings.namespace)
        by_name = {"results": keys.results, "alerts": keys.alerts, "bags": keys.bags}
        self.streams = {name: by_name[name] for name in ds.streams}
        self.stream_names = {key: name for name, key in self.streams.items()}
        # Built here so that a bad sink fails at start-up, not in every job.
        kinds = {spec: event_kinds(build_sink(spec, settings)) for spec in ds.sinks}
        for spec, takes in kinds.items():
            if not takes & set(ds.streams):
                raise ValueError(
                    f"sink {spec!r} takes events from {sorted(takes)} but "
                    f"SCANGUARD_DELIVERY__STREAMS is {list(ds.streams)}: add one of them"
                )
        # Per stream key, the sinks that take its events.
        self.targets = {
            key: [spec for spec in ds.sinks if name in kinds[spec]]
            for name, key in self.streams.items()
        }
        self.bags_key = keys.bags
        self.settings = settings
        self.ds = ds
        self.client = client
        self.namespace = settings.namespace
        self.consumer = ds.consumer or default_consumer_id()
        self.queue = make_queue(client, ds.queue)
        self.metrics = DispatcherMetrics(client, keys, self.queue, ds.sinks, self.streams)
        self.enqueued = 0
        self.duplicates = 0
        self.unreadable = 0
        self._stop = threading.Event()
        self._next_claim = 0.0
        self.log = log.bind(consumer=self.consumer, group=ds.group)

    def request_stop(self) -> None:
        """Finish the batch in hand, then return from `run`."""
        self._stop.set()

    def ensure_groups(self) -> None:
        """Create the consumer group on each stream (and the stream) if missing."""
        start = "0" if self.ds.from_start else "$"
        for key in self.streams.values():
            ensure_group(self.client, key, self.ds.group, start)

    def run(self, *, burst: bool = False) -> int:
        """Dispatch until stopped (or, with `burst`, until no new entries are waiting)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
            signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        backoff = Backoff(0.05, 10.0)
        self.log.info(
            "dispatcher_started",
            streams=list(self.streams.values()),
            sinks=self.ds.sinks,
            queue=self.ds.queue,
        )
        recovered = False
        reason = "stopped"
        while not self._stop.is_set():
            try:
                if not recovered:
                    self.ensure_groups()
                    self._recover_own_pending()
                    recovered = True
                self._claim_stale()
                read = self._read_new(block=not burst)
                backoff.reset()
            except REDIS_DOWN as exc:
                delay = backoff.next_delay()
                self.log.warning("redis_unavailable", error=str(exc), retry_in_s=round(delay, 3))
                self._stop.wait(delay)
                continue
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self.log.warning("group_missing", error=str(exc))  # deleted while we ran
                recovered = False
                continue
            if burst and read == 0:
                reason = "burst_done"
                break
        self.log.info(
            "dispatcher_stopped",
            reason=reason,
            enqueued=self.enqueued,
            duplicates=self.duplicates,
            unreadable=self.unreadable,
        )
        return 0

    # -- reading -------------------------------------------------------------------

    def _read_new(self, block: bool) -> int:
        reply: Any = self.client.xreadgroup(
            self.ds.group,
            self.consumer,
            dict.fromkeys(self.streams.values(), ">"),
            count=self.ds.batch,
            block=self.ds.block_ms if block else None,
        )
        read = 0
        for raw_key, entries in reply or []:
            read += self._dispatch(raw_key.decode(), entries)
        return read

    def _recover_own_pending(self) -> None:
        """Entries this consumer read but never acknowledged (a crash before the ack)."""
        for key in self.streams.values():
            cursor = "0"
            while True:
                reply: Any = self.client.xreadgroup(
                    self.ds.group, self.consumer, {key: cursor}, count=self.ds.batch
                )
                entries = reply[0][1] if reply else []
                if not entries:
                    break
                self._dispatch(key, entries)
                cursor = entries[-1][0].decode()

    def _claim_stale(self) -> None:
        """Take over entries another dispatcher of the group left pending too long."""
        now = time.monotonic()
        if now < self._next_claim:
            return
        self._next_claim = now + self.ds.claim_idle_ms / 2000
        for key in self.streams.values():
            reply: Any = self.client.xautoclaim(
                key,
                self.ds.group,
                self.consumer,
                min_idle_time=self.ds.claim_idle_ms,
                start_id="0-0",
                count=self.ds.batch,
            )
            claimed = [entry for entry in reply[1] if entry is not None]
            if claimed:
                self.log.info("entries_claimed", stream=key, count=len(claimed))
                self._dispatch(key, claimed)

    # -- dispatching ---------------------------------------------------------------

    def _dispatch(self, key: str, entries: list[Any]) -> int:
        """Enqueue every sink's job for each readable entry, then acknowledge all entries."""
        done: list[str] = []
        fresh = dupes = unreadable = 0
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            if not fields:  # trimmed from the stream while pending: nothing left to deliver
                self.log.warning("entry_gone", stream=key, entry_id=entry_id)
                done.append(entry_id)
                continue
            try:
                event = _parse_bag(fields) if key == self.bags_key else parse_event(fields)
            except EventError as exc:
                # No retry can make it readable (an unsafe id, JSON nested too deep, another
                # schema), so it is acknowledged rather than left to wedge the group.
                self.log.warning("event_unreadable", stream=key, entry_id=entry_id, reason=str(exc))
                unreadable += 1
                self.metrics.unreadable.labels(self.stream_names[key]).inc()
                done.append(entry_id)
                continue
            body = fields[b"event"].decode()
            for sink in self.targets[key]:
                if enqueue(self.queue, self.ds, self.namespace, sink, event.event_id, body):
                    fresh += 1
                    self.metrics.enqueued.labels(sink).inc()
                else:
                    dupes += 1
                    self.metrics.duplicates.labels(sink).inc()
            done.append(entry_id)
        if done:
            self.client.xack(key, self.ds.group, *done)
        self.enqueued += fresh
        self.duplicates += dupes
        self.unreadable += unreadable
        if entries:
            self.log.info(
                "batch_dispatched",
                stream=key,
                entries=len(entries),
                acked=len(done),
                enqueued=fresh,
                duplicates=dupes,
                unreadable=unreadable,
            )
        return len(entries)


def _parse_bag(fields: dict[bytes, bytes]) -> BagEvent:
    """A `{ns}:bags` entry as a BagEvent, or `EventError`."""
    raw = fields.get(b"event")
    if raw is None:
        raise EventError("entry has no 'event' field")
    try:
        return BagEvent.model_validate_json(raw)
    except ValidationError as exc:
        raise EventError(f"not a bag event: {exc.errors()[0]['msg']}") from None
