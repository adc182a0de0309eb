"""Atomic writes to Redis: a decision with its artefacts, or a dead letter (Lua scripts)."""

from __future__ import annotations

import enum
import json
from importlib import resources

import redis

from shared.keys import Keys
from shared.schemas import DeadLetter, DecisionEvent
from shared.vocab import DeadKind


def _script(name: str) -> str:
    return resources.files("worker.service").joinpath("lua", name).read_text()


class PublishStatus(enum.IntEnum):
    DISCARDED = 0  # another worker acknowledged the frame first
    PUBLISHED = 1
    DUPLICATE = 2  # the frame id was decided before (a re-sent frame)


class Publisher:
    """Writes one frame's outcome and acknowledges the frame in the same atomic step."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        group: str,
        *,
        artefact_ttl_s: int,
        dedupe_ttl_s: int,
        stream_maxlen: int,
        dead_field_bytes: int = 65_536,
    ) -> None:
        self.keys = keys
        self.group = group
        self.artefact_ttl_s = artefact_ttl_s
        self.dedupe_ttl_s = dedupe_ttl_s
        self.stream_maxlen = stream_maxlen
        self.dead_field_bytes = dead_field_bytes
        self._publish = client.register_script(_script("publish.lua"))
        self._dead = client.register_script(_script("dead.lua"))

    def decision(
        self, event: DecisionEvent, masked: bytes | None, heatmap: bytes | None
    ) -> PublishStatus:
        """Publish `event` (and, for threats, the alert) and ack its frame, or do nothing.

        A frame whose id was decided before gets no second decision; it is recorded
        on the dead-letter stream instead, with that reason.
        """
        keys = self.keys
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
        status = self._publish(
            keys=[
                keys.frames,
                keys.results,
                keys.alerts,
                keys.done(event.frame_id),
                keys.artefact(event.event_id, "masked"),
                keys.artefact(event.event_id, "heatmap"),
                keys.dead,
            ],
            args=[
                self.group,
                event.entry_id,
                event.to_json(),
                "1" if event.decision == "threat" else "0",
                keys.alert_channel,
                self.artefact_ttl_s,
                self.dedupe_ttl_s,
                masked or b"",
                heatmap or b"",
                self.stream_maxlen,
                duplicate.to_json(),
            ],
        )
        return PublishStatus(int(status))

    def dead_letter(self, letter: DeadLetter, fields: dict[bytes, bytes]) -> bool:
        """Move the frame to the dead-letter stream with its reason; False if already acked.

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
        return bool(self._dead(keys=[self.keys.frames, self.keys.dead], args=args))
