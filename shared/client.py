"""Reading decision events: replay, live follow, consumer groups, and artefact fetches.

Events sit in `{ns}:results` (every decision) and `{ns}:alerts` (threats), one
entry each with a single field `event` holding the DecisionEvent JSON.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis
import structlog
from pydantic import ValidationError

from shared.backoff import Backoff
from shared.keys import Keys
from shared.schemas import ArtefactRef, DecisionEvent
from shared.streams import REDIS_DOWN, ensure_group

log = structlog.get_logger(__name__)
StreamName = Literal["results", "alerts"]
EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png"}


class EventError(ValueError):
    """A stream entry that is not a readable decision event."""


@dataclass(frozen=True)
class Received:
    """One event together with the id of the stream entry that carried it."""

    entry_id: str
    event: DecisionEvent


def parse_event(fields: dict[bytes, bytes]) -> DecisionEvent:
    """Turn the fields of one stream entry into a DecisionEvent, or raise `EventError`."""
    raw = fields.get(b"event")
    if raw is None:
        raise EventError("entry has no 'event' field")
    try:
        return DecisionEvent.model_validate_json(raw)
    except ValidationError as exc:
        raise EventError(f"not a decision event: {exc.errors()[0]['msg']}") from None


def format_event(received: Received) -> str:
    """One line per event: when, scanner, decision, classes with probabilities, cost."""
    event = received.event
    if event.detections:
        classes = ", ".join(f"{d.label} {d.probability:.3f}" for d in event.detections)
    else:
        classes = "-"
    return (
        f"{event.decided_at.isoformat(timespec='milliseconds')}  {event.scanner_id}  "
        f"{event.decision.upper()}  {classes}  iterations {event.iterations}  "
        f"latency {event.latency_ms:.0f} ms  frame {event.frame_id}  event {event.event_id}"
    )


class EventClient:
    """Consume decision events from one namespace."""

    def __init__(self, client: redis.Redis, keys: Keys, backoff: Backoff | None = None):
        self.client = client
        self.keys = keys
        self.backoff = backoff or Backoff(0.1, 10.0)

    def stream(self, name: StreamName) -> str:
        """The key of the `results` or `alerts` stream."""
        if name == "results":
            return self.keys.results
        if name == "alerts":
            return self.keys.alerts
        raise ValueError(f"stream must be 'results' or 'alerts', not {name!r}")

    def replay(
        self, name: StreamName = "alerts", start: str = "-", end: str = "+", page: int = 500
    ) -> Iterator[Received]:
        """Every event from entry id `start` to `end` (both included), oldest first.

        Reads in pages of `page` entries, so a long history never lands in one reply.
        """
        key = self.stream(name)
        lower = start
        while True:
            entries: Any = self.client.xrange(key, min=lower, max=end, count=page)
            yield from _parsed(entries, key)
            if len(entries) < page:
                return
            lower = "(" + entries[-1][0].decode()  # exclusive: the next page starts after it

    def follow(
        self,
        name: StreamName = "alerts",
        last_id: str = "$",
        block_ms: int = 5_000,
        stop: threading.Event | None = None,
    ) -> Iterator[Received]:
        """Events as they arrive after `last_id` ("$": only new ones, "0": from the start).

        Waits with XREAD BLOCK (keep `block_ms` below the client's socket timeout);
        rides out Redis outages with back-off and resumes after the last entry it
        saw. Ends when `stop` is set.
        """
        key = self.stream(name)
        while stop is None or not stop.is_set():
            try:
                if last_id == "$":
                    # Resolved once, so a reconnect resumes where we were, not at the new end.
                    last_id = self._last_entry_id(key)
                reply: Any = self.client.xread({key: last_id}, count=100, block=block_ms)
            except REDIS_DOWN as exc:
                log.warning("redis_unavailable", stream=key, error=str(exc))
                if _wait(stop, self.backoff.next_delay()):
                    return
                continue
            self.backoff.reset()
            for _stream, entries in reply or []:
                last_id = entries[-1][0].decode()
                yield from _parsed(entries, key)

    def _last_entry_id(self, key: str) -> str:
        newest: Any = self.client.xrevrange(key, count=1)
        return newest[0][0].decode() if newest else "0-0"

    def ensure_group(self, name: StreamName, group: str, start_id: str = "0") -> bool:
        """Create consumer group `group` on the stream (and the stream) if missing.

        Returns True if it was created now. `start_id` "0" delivers the history too,
        "$" only what comes next.
        """
        return ensure_group(self.client, self.stream(name), group, start_id)

    def read_group(
        self,
        name: StreamName,
        group: str,
        consumer: str,
        count: int = 10,
        block_ms: int | None = 5_000,
        pending: bool = False,
    ) -> list[Received]:
        """Up to `count` events for this consumer; acknowledge each with `ack` once handled.

        With `pending`, returns this consumer's delivered-but-unacknowledged events
        (read them first after a restart). Unreadable entries are logged and left
        pending, so a newer event schema is never lost to an older client.
        """
        key = self.stream(name)
        reply: Any = self.client.xreadgroup(
            group,
            consumer,
            {key: "0" if pending else ">"},
            count=count,
            block=None if pending else block_ms,
        )
        received: list[Received] = []
        for _stream, entries in reply or []:
            received.extend(_parsed(entries, key))
        return received

    def ack(self, name: StreamName, group: str, *entry_ids: str) -> int:
        """Acknowledge handled events; returns how many were pending."""
        if not entry_ids:
            return 0
        return int(self.client.xack(self.stream(name), group, *entry_ids))

    def artefact(self, ref: ArtefactRef | str) -> bytes | None:
        """The bytes of one artefact, or None once its TTL has expired."""
        key = ref.key if isinstance(ref, ArtefactRef) else ref
        data = self.client.get(key)
        return bytes(data) if data is not None else None  # type: ignore[arg-type]

    def save_artefacts(self, event: DecisionEvent, folder: str | Path) -> list[Path]:
        """Write an event's artefacts as `{event_id}-{kind}.jpg|png`; expired ones are skipped."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        saved = []
        for ref in event.artefacts:
            data = self.artefact(ref)
            if data is None:
                log.warning("artefact_expired", event_id=event.event_id, kind=ref.kind, key=ref.key)
                continue
            path = folder / f"{event.event_id}-{ref.kind}{EXTENSIONS.get(ref.content_type, '.bin')}"
            path.write_bytes(data)
            saved.append(path)
        return saved


def _parsed(entries: list[Any], key: str) -> Iterator[Received]:
    for raw_id, fields in entries:
        entry_id = raw_id.decode()
        try:
            yield Received(entry_id, parse_event(fields))
        except EventError as exc:
            log.warning("event_unreadable", stream=key, entry_id=entry_id, reason=str(exc))


def _wait(stop: threading.Event | None, seconds: float) -> bool:
    """Sleep `seconds` or until `stop` is set; True if stopped."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)
