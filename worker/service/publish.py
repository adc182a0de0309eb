"""Atomic writes to Redis: a decision with its artefacts and bag record, or a dead letter."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

import redis

from shared.keys import Keys
from shared.schemas import DeadLetter, DecisionEvent
from shared.vocab import DeadKind, Verdict
from worker.service.bags import bag_view
from worker.service.scripts import Call, LuaScript, run_calls


class PublishStatus(enum.IntEnum):
    """What `publish.lua` did with one frame (its return codes)."""

    DISCARDED = 0  # another worker acknowledged the frame first
    PUBLISHED = 1  # decision published, its bag still open
    DUPLICATE = 2  # the frame id was decided before (a re-sent frame)
    BAG_COMPLETE = 3  # published, and the view completed its bag: close it now
    LATE = 4  # published, but its bag had closed already: the view changes nothing
    BAG_CONFLICT = 5  # the view contradicts its bag (seen twice, other view count): dead

    @property
    def published(self) -> bool:
        return self in (PublishStatus.PUBLISHED, PublishStatus.BAG_COMPLETE, PublishStatus.LATE)


@dataclass(frozen=True)
class Lifetimes:
    """How long what a publish writes is kept (seconds), and the bag deadline."""

    artefact_ttl_s: int  # erased images and heat-maps of alerts
    dedupe_ttl_s: int  # decided frame ids, closed-bag markers
    bag_deadline_ms: int

    @property
    def open_bag_ttl_s(self) -> int:
        """Originals and bag state until the bag closes: the deadline with a wide margin,
        so a fleet that was down for a while still finds them to close the bag."""
        return self.bag_deadline_ms // 1000 + 3600


@dataclass(frozen=True, eq=False)
class Outcome:
    """A decided frame ready to publish: its event and the artefact bytes."""

    event: DecisionEvent
    original: bytes  # the image bytes as received, never re-encoded
    masked: bytes | None
    heatmap: bytes | None


class Publisher:
    """Writes one frame's outcome and acknowledges the frame in the same atomic step."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        group: str,
        *,
        lifetimes: Lifetimes,
        stream_maxlen: int,
        dead_field_bytes: int = 65_536,
    ) -> None:
        self.keys = keys
        self.group = group
        self.lifetimes = lifetimes
        self.stream_maxlen = stream_maxlen
        self.dead_field_bytes = dead_field_bytes
        self.client = client
        self._publish = LuaScript("publish.lua")
        self._dead = LuaScript("dead.lua")

    def decision(self, outcome: Outcome) -> PublishStatus:
        """`decision_call` run on its own (one round trip)."""
        (reply,) = run_calls(self.client, [self.decision_call(outcome)])
        if isinstance(reply, Exception):
            raise reply
        return decision_status(reply)[0]

    def decision_call(self, outcome: Outcome) -> Call:
        """Publish the decision (and, for threats, the alert), record the view in its bag
        and ack the frame, all or nothing (`publish.lua`; its reply: `decision_status`).

        A frame whose id was decided before gets no second decision, and a view that
        contradicts its bag none either; both go to the dead-letter stream with the reason.
        """
        event, keys, life = outcome.event, self.keys, self.lifetimes
        bag_id = event.bag_id or event.frame_id
        duplicate = DeadLetter(
            event_id=event.event_id,
            entry_id=event.entry_id,
            frame_id=event.frame_id,
            scanner_id=event.scanner_id,
            reason=f"frame id {event.frame_id} was already decided; no second decision",
            kind=DeadKind.DUPLICATE,
            deliveries=0,
            worker_id=event.worker_id,
            failed_at=event.decided_at,
        )
        captured_ms = int(event.captured_at.timestamp() * 1000)
        return Call(
            self._publish,
            keys=[
                keys.frames,
                keys.results,
                keys.alerts,
                keys.done(event.frame_id),
                keys.artefact(event.event_id, "masked"),
                keys.artefact(event.event_id, "heatmap"),
                keys.dead,
                keys.artefact(event.event_id, "original"),
                keys.bag(bag_id),
                keys.bags_open,
            ],
            args=[
                self.group,
                event.entry_id,
                event.to_json(),
                "1" if event.decision == Verdict.THREAT else "0",
                keys.alert_channel,
                life.artefact_ttl_s,
                life.dedupe_ttl_s,
                outcome.masked or b"",
                outcome.heatmap or b"",
                self.stream_maxlen,
                duplicate.to_json(),
                outcome.original,
                life.open_bag_ttl_s,
                event.view,
                event.views,
                bag_view(event).model_dump_json(),
                captured_ms + life.bag_deadline_ms,
                life.open_bag_ttl_s,
                event.scanner_id,
                bag_id,
                captured_ms,
            ],
        )

    def dead_letter_call(self, letter: DeadLetter, fields: dict[bytes, bytes]) -> Call:
        """Move the frame to the dead-letter stream with its reason (`dead.lua`: 1, or 0 if
        another worker acknowledged the frame first).

        The frame's fields travel with the letter (`frame_<name>`), each cut to
        `dead_field_bytes`; the full sizes of cut fields are noted in `frame_truncated`
        (JSON), so an oversized frame costs the dead-letter stream a bounded amount.
        """
        args: list[bytes | str | int] = [
            self.group,
            letter.entry_id,
            letter.to_json(),
            self.stream_maxlen,
        ]
        truncated: dict[str, int] = {}
        for name, value in fields.items():
            if len(value) > self.dead_field_bytes:
                truncated[name.decode(errors="replace")] = len(value)
                value = value[: self.dead_field_bytes]
            args.extend((name, value))
        if truncated:
            args.extend((b"truncated", json.dumps(truncated)))
        return Call(self._dead, keys=[self.keys.frames, self.keys.dead], args=args)


def decision_status(reply: Any) -> tuple[PublishStatus, dict[bytes, bytes] | None]:
    """`publish.lua`'s reply: the status, and the bag's state when the view completed it."""
    if isinstance(reply, list):
        values = reply[1:]
        return PublishStatus(int(reply[0])), dict(zip(values[::2], values[1::2], strict=True))
    return PublishStatus(int(reply)), None
