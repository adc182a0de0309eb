"""The worker's upkeep on the frames stream's consumer group: stale consumers and frames.

Plain functions over a Redis client, so the loop reads as a checklist and each query can
be tested on its own against a real server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis


@dataclass(frozen=True)
class Claimed:
    """An entry taken over from another consumer; `raw` is empty if it was deleted."""

    entry_id: str
    raw: dict[bytes, bytes]
    deliveries: int


def prune_consumers(
    client: redis.Redis, stream: str, group: str, *, keep: str, idle_s: int
) -> list[str]:
    """Remove consumers idle longer than `idle_s` with nothing pending; return their names.

    Every restart with a default name (host-pid) adds a consumer to the group; gone ones
    are dead weight in XINFO and XPENDING. Removing a live one is harmless: its next
    read recreates it.
    """
    removed = []
    consumers: Any = client.xinfo_consumers(stream, group)
    for consumer in consumers:
        name = consumer["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name != keep and int(consumer["pending"]) == 0 and int(consumer["idle"]) > idle_s * 1000:
            client.xgroup_delconsumer(stream, group, name)
            removed.append(name)
    return removed


def claim_stale(
    client: redis.Redis,
    stream: str,
    group: str,
    consumer: str,
    *,
    idle_ms: int,
    count: int,
    owned: set[str],
) -> list[Claimed]:
    """Take over up to `count` entries another consumer left pending longer than `idle_ms`.

    XPENDING (with IDLE) names the candidates and their delivery counts; XCLAIM then
    takes each only if it is still idle, so two workers never both win one. Entries in
    `owned` (this worker's own, still in hand) are left alone.
    """
    stale: Any = client.xpending_range(
        stream, group, min="-", max="+", count=count + len(owned), idle=idle_ms
    )
    candidates = {
        p["message_id"].decode(): int(p["times_delivered"])
        for p in stale
        if p["message_id"].decode() not in owned
    }
    if not candidates:
        return []
    claimed: Any = client.xclaim(stream, group, consumer, idle_ms, list(candidates)[:count])
    # XCLAIM counted one more delivery than XPENDING reported.
    return [
        Claimed(raw_id.decode(), raw or {}, candidates[raw_id.decode()] + 1)
        for raw_id, raw in claimed
    ]
