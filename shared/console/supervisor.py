"""The supervisor's view of the queue: every open bag of a pool with its state.

States: `queued` (never delivered), `taken` (an operator holds the lease), `returned`
(the lease expired; the next "next bag" of any operator of the pool takes it). A bag is
`overdue` once it has waited `review_deadline_s` since it entered review (its review
entry id's time; a TIP bag's creation). TIP bags are listed like real ones, without a
TIP mark: an operator who opens this view learns nothing about the bag in front of them.
"""

from __future__ import annotations

from typing import Any

from shared.console.station import Lease, Station, entry_ms, parse_bag, utc
from shared.schemas import BagEvent

LIMIT = 500  # most bags listed per state and pool


def public_counters(counters: dict[bytes, bytes]) -> dict[str, int]:
    """The station counters anyone may see: all but `tip_made`, which rises the moment an
    operator is handed a TIP bag (counts of TIP results only change after a verdict)."""
    return {k.decode(): int(v) for k, v in counters.items() if not k.startswith(b"tip_made:")}


def _row(
    pool: str,
    bag: BagEvent,
    queued_ms: int,
    lease: Lease | None,
    state: str,
    now: int,
    deadline_ms: int,
) -> dict[str, Any]:
    return {
        "pool": pool,
        "bag_id": bag.bag_id,
        "scanner_id": bag.scanner_id,
        "decision": bag.decision.value,
        "classes": [c.label for c in bag.classes],
        "state": state,
        "operator": lease.operator if lease else None,
        "queued_at": utc(queued_ms).isoformat(),
        "taken_at": utc(lease.taken_ms).isoformat() if lease else None,
        "waiting_s": round((now - queued_ms) / 1000, 1),
        "overdue": now - queued_ms > deadline_ms,
    }


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def open_bags(station: Station, pool: str, now: int) -> list[dict[str, Any]]:
    """Every open bag of `pool` (up to LIMIT per state), oldest first (in stream order)."""
    deadline_ms = station.settings.review_deadline_s * 1000
    rows = [
        (_order(entry_id), _row(pool, bag, entry_ms(entry_id), None, "queued", now, deadline_ms))
        for entry_id, bag in station.undelivered(pool, LIMIT)
    ]
    client, keys = station.client, station.keys
    pending: Any = client.xpending_range(keys.review, pool, min="-", max="+", count=LIMIT)
    pipe = client.pipeline(transaction=False)
    for p in pending:
        pipe.xrange(keys.review, min=p["message_id"], max=p["message_id"], count=1)
    bags = [parse_bag(found[0][1]) if found else None for found in pipe.execute()]
    tips: Any = client.zrange(keys.tip_open(pool), 0, LIMIT - 1, withscores=True)
    for tip_id, _score in tips:
        pipe.hget(keys.tip(tip_id.decode()), "bag")
    tip_bags = [BagEvent.model_validate_json(raw) if raw else None for raw in pipe.execute()]
    held = [
        (bag, p["consumer"].decode(), p["message_id"].decode())
        for p, bag in zip(pending, bags, strict=True)
    ]
    held += [
        (bag, None, f"{int(score)}-0") for (_id, score), bag in zip(tips, tip_bags, strict=True)
    ]
    for bag, _consumer, _entry in held:
        if bag is not None:
            pipe.get(keys.lease(pool, bag.bag_id))
    leases = iter(pipe.execute())
    for bag, consumer, entry in held:
        if bag is None:
            continue
        raw = next(leases)
        lease = Lease.parse(raw) if raw is not None else None
        taken = lease is not None and (consumer is None or lease.operator == consumer)
        state = "taken" if taken else "returned"
        row = _row(pool, bag, entry_ms(entry), lease if taken else None, state, now, deadline_ms)
        rows.append((_order(entry), row))
    return [row for _key, row in sorted(rows, key=lambda pair: pair[0])]


def queue_overview(station: Station, now: int) -> dict[str, Any]:
    """Open bags of every pool, counted by state, with the overdue count per pool."""
    pools = {}
    bags = []
    for pool in station.settings.pools:
        rows = open_bags(station, pool, now)
        bags += rows
        counts = {
            state: sum(r["state"] == state for r in rows)
            for state in ("queued", "taken", "returned")
        }
        pools[pool] = counts | {"overdue": sum(r["overdue"] for r in rows)}
    counters: Any = station.client.hgetall(station.keys.station_counters)
    return {
        "at": utc(now).isoformat(),
        "review_deadline_s": station.settings.review_deadline_s,
        "lease_s": station.settings.lease_s,
        "pools": pools,
        "bags": bags,
        "counters": public_counters(counters),
    }
