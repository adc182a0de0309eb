"""The operators' work queue: bags from `{ns}:review`, one consumer group per pool, leases.

Taking a bag ("next bag") is, in this order:

1. the bag the operator already holds, if any (one bag at a time);
2. now and then (`tip_rate`) a TIP bag made for them, while real bags wait;
3. the oldest bag whose lease expired: its review entry is XCLAIMed by the asking operator
   (`reclaim.lua`: only if no lease exists and the entry has been idle for the whole lease,
   so two operators can never both get it); each such return is counted;
4. the next new entry: XREADGROUP delivers it to this operator alone (the delivery is the
   take) and `take.lua` writes the lease (SET NX with a TTL of `lease_s`).

A lease is a string key per (pool, bag) holding who took it, when, and from which review
entry; the operator's holding key points back at the bag with the same TTL. The verdict
(`verdicts.record`) acknowledges the review entry and ends both keys. Entries of scanners
a pool does not serve are acknowledged on delivery and skipped. Times are Redis's clock
(TIME), the clock the review entry ids come from.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import numpy as np
import redis
import structlog
from pydantic import ValidationError

from shared.console.tip import ThreatLibrary, make_tip_bag, threat_library
from shared.keys import Keys
from shared.schemas import BagEvent
from shared.settings import ConsoleSettings
from shared.streams import ensure_group

log = structlog.get_logger("scanguard.console")
SCAN = 200  # most pending entries / TIP bags looked at per request


def load_script(client: redis.Redis, name: str) -> Any:
    """Register one of this package's Lua scripts (documented at their heads)."""
    return client.register_script(
        resources.files("shared.console").joinpath("lua", name).read_text()
    )


def entry_ms(entry_id: str) -> int:
    """The time part (ms since the epoch) of a stream entry id."""
    return int(entry_id.partition("-")[0])


def parse_bag(fields: dict[bytes, bytes] | None) -> BagEvent | None:
    """The bag event in a review entry's fields, or None if it is missing or unreadable."""
    raw = (fields or {}).get(b"event")
    if raw is None:
        return None
    try:
        return BagEvent.model_validate_json(raw)
    except ValidationError:
        return None


@dataclass(frozen=True)
class Lease:
    """Who holds a bag: the lease key's value, and that value as stored (for compare-and-delete)."""

    operator: str
    bag_id: str
    entry_id: str  # the review entry; "" for a TIP bag
    queued_ms: int  # when the bag entered the queue
    taken_ms: int
    raw: str

    @property
    def is_tip(self) -> bool:
        return self.entry_id == ""

    @staticmethod
    def value(operator: str, bag_id: str, entry_id: str, queued_ms: int, taken_ms: int) -> str:
        fields: dict[str, str | int] = {"operator": operator, "bag_id": bag_id}
        fields |= {"entry_id": entry_id, "queued_ms": queued_ms, "taken_ms": taken_ms}
        return json.dumps(fields, separators=(",", ":"))

    @classmethod
    def parse(cls, raw: bytes | str) -> Lease:
        text = raw.decode() if isinstance(raw, bytes) else raw
        d = json.loads(text)
        return cls(d["operator"], d["bag_id"], d["entry_id"], d["queued_ms"], d["taken_ms"], text)


@dataclass(frozen=True)
class Held:
    """A bag an operator holds now."""

    pool: str
    lease: Lease
    bag: BagEvent
    expires_ms: int


class Station:
    """The work queue of every pool, over one Redis client."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        settings: ConsoleSettings,
        library: ThreatLibrary | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.library = library or threat_library(settings.tip_library)
        self.rng = rng or random.SystemRandom()
        self.lease_ms = settings.lease_s * 1000
        self._take = load_script(client, "take.lua")
        self._reclaim = load_script(client, "reclaim.lua")
        self.decide_script = load_script(client, "decide.lua")

    # -- reading --------------------------------------------------------------------------

    def now_ms(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def serves(self, pool: str, scanner_id: str) -> bool:
        scanners = self.settings.pool_scanners.get(pool)
        return scanners is None or scanner_id in scanners

    def ensure_group(self, pool: str) -> None:
        """The pool's group on the review stream, from its start: no bag waits unseen."""
        ensure_group(self.client, self.keys.review, pool, "0")

    def lease(self, pool: str, bag_id: str) -> Lease | None:
        raw: Any = self.client.get(self.keys.lease(pool, bag_id))
        return Lease.parse(raw) if raw is not None else None

    def entry(self, entry_id: str) -> BagEvent | None:
        found: Any = self.client.xrange(self.keys.review, min=entry_id, max=entry_id, count=1)
        return parse_bag(found[0][1]) if found else None

    def tip_bag(self, bag_id: str) -> BagEvent | None:
        raw: Any = self.client.hget(self.keys.tip(bag_id), "bag")
        return BagEvent.model_validate_json(raw) if raw is not None else None

    def bag_of(self, lease: Lease) -> BagEvent | None:
        return self.tip_bag(lease.bag_id) if lease.is_tip else self.entry(lease.entry_id)

    def current(self, operator: str, pool: str) -> Held | None:
        """The bag `operator` holds in `pool` now, or None."""
        raw: Any = self.client.get(self.keys.holding(pool, operator))
        if raw is None:
            return None
        lease = self.lease(pool, raw.decode())
        if lease is None or lease.operator != operator:
            # Set with the lease and expiring with it, so this is a leftover; it must not
            # keep its operator from taking another bag.
            self.client.delete(self.keys.holding(pool, operator))
            return None
        bag = self.bag_of(lease)
        if bag is None:
            self._forget(pool, lease)
            return None
        return Held(pool, lease, bag, lease.taken_ms + self.lease_ms)

    def _forget(self, pool: str, lease: Lease) -> None:
        """Drop a held bag that no longer exists (its review entry trimmed, its TIP expired)."""
        log.warning("held_bag_gone", pool=pool, bag_id=lease.bag_id, operator=lease.operator)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.lease(pool, lease.bag_id), self.keys.holding(pool, lease.operator))
        pipe.hdel(self.keys.station_bags(pool), lease.bag_id)
        if lease.is_tip:
            pipe.zrem(self.keys.tip_open(pool), lease.bag_id)
        else:
            pipe.xack(self.keys.review, pool, lease.entry_id)
        pipe.execute()

    # -- taking ---------------------------------------------------------------------------

    def next_bag(self, operator: str, pool: str) -> Held | None:
        """The operator's bag: the one they hold, a TIP bag, a returned one, or the next new one."""
        held = self.current(operator, pool)
        if held is not None:
            return held
        self.ensure_group(pool)
        now = self.now_ms()
        held = self._maybe_tip(operator, pool, now)
        if held is not None:
            return held
        for queued_ms, entry_id, bag_id in self._returned(pool):
            held = self._claim(operator, pool, now, queued_ms, entry_id, bag_id)
            if held is not None:
                return held
        return self._deliver(operator, pool, now)

    def _returned(self, pool: str) -> list[tuple[int, str, str]]:
        """Candidates whose lease may have expired, oldest first: (queued ms, entry id, TIP id)."""
        pending: Any = self.client.xpending_range(
            self.keys.review, pool, min="-", max="+", count=SCAN, idle=self.lease_ms
        )
        found = [
            (entry_ms(p["message_id"].decode()), p["message_id"].decode(), "") for p in pending
        ]
        found += [(queued, "", tip_id) for tip_id, queued in self._unleased_tips(pool)]
        return sorted(found)

    def _unleased_tips(self, pool: str) -> list[tuple[str, int]]:
        """The pool's open TIP bags nobody holds: (bag id, queued ms)."""
        tips: Any = self.client.zrange(self.keys.tip_open(pool), 0, SCAN - 1, withscores=True)
        pipe = self.client.pipeline(transaction=False)
        for tip_id, _score in tips:
            pipe.exists(self.keys.lease(pool, tip_id.decode()))
        held = pipe.execute()
        return [(t.decode(), int(score)) for (t, score), h in zip(tips, held, strict=True) if not h]

    def _claim(
        self, operator: str, pool: str, now: int, queued_ms: int, entry_id: str, tip_id: str
    ) -> Held | None:
        bag = self.tip_bag(tip_id) if tip_id else self.entry(entry_id)
        if bag is None:  # trimmed from the stream, or a TIP bag past its TTL: forget it
            if entry_id:
                self.client.xack(self.keys.review, pool, entry_id)
            else:
                self.client.zrem(self.keys.tip_open(pool), tip_id)
                self.client.hdel(self.keys.station_bags(pool), tip_id)
            return None
        value = Lease.value(operator, bag.bag_id, entry_id, queued_ms, now)
        status = self._reclaim(
            keys=[
                self.keys.review,
                self.keys.lease(pool, bag.bag_id),
                self.keys.holding(pool, operator),
                self.keys.station_counters,
                self.keys.station_bags(pool),
            ],
            args=[
                pool,
                operator,
                self.lease_ms,
                entry_id,
                value,
                self.lease_ms,
                bag.bag_id,
                f"returns:{pool}",
            ],
        )
        if int(status) != 1:
            return None
        log.info("bag_returned", pool=pool, bag_id=bag.bag_id, operator=operator)
        return Held(pool, Lease.parse(value), bag, now + self.lease_ms)

    def _deliver(self, operator: str, pool: str, now: int) -> Held | None:
        while True:
            reply: Any = self.client.xreadgroup(pool, operator, {self.keys.review: ">"}, count=1)
            if not reply or not reply[0][1]:
                return None
            raw_id, fields = reply[0][1][0]
            entry_id = raw_id.decode()
            bag = parse_bag(fields)
            if bag is None or not self.serves(pool, bag.scanner_id):
                self.client.xack(self.keys.review, pool, entry_id)
                continue
            value = Lease.value(operator, bag.bag_id, entry_id, entry_ms(entry_id), now)
            status = int(self._lease(pool, operator, bag.bag_id, entry_id, value, 0))
            if status == 1:
                return Held(pool, Lease.parse(value), bag, now + self.lease_ms)
            if status == 2:
                # The same operator asked twice at once: they keep the bag they got first;
                # this entry stays pending without a lease and returns after lease_s.
                return self.current(operator, pool)
            # status 0: a bag of the same id is held; this entry waits in the pending list.

    def _lease(
        self, pool: str, operator: str, bag_id: str, entry_id: str, value: str, queued_ms: int
    ) -> Any:
        return self._take(
            keys=[
                self.keys.lease(pool, bag_id),
                self.keys.holding(pool, operator),
                self.keys.station_bags(pool),
                self.keys.tip_open(pool),
            ],
            args=[value, self.lease_ms, bag_id, entry_id, queued_ms],
        )

    # -- TIP ------------------------------------------------------------------------------

    def _maybe_tip(self, operator: str, pool: str, now: int) -> Held | None:
        rate = self.settings.tip_rate.get(pool, 0.0)
        if rate <= 0 or self.rng.random() >= rate:
            return None
        template = self._waiting_bag(pool)
        if template is None:  # a bag out of an empty queue would give TIP away
            return None
        tip = make_tip_bag(
            template,
            self.library,
            np.random.default_rng(self.rng.getrandbits(64)),
            self.keys,
            utc(now),
            self.settings.tip_ttl_s,
        )
        ttl = self.settings.tip_ttl_s
        truth = {
            "pool": pool,
            "bag": tip.bag.to_json(),
            "label": tip.projection.label,
            "kind": tip.projection.kind,
            "boxes": json.dumps(tip.projection.boxes),
            "created_ms": now,
        }
        pipe = self.client.pipeline(transaction=True)
        for view, image in zip(tip.bag.views, tip.images, strict=True):
            pipe.set(view.artefacts[0].key, image, ex=ttl)
        pipe.hset(self.keys.tip(tip.bag.bag_id), mapping=truth)  # type: ignore[arg-type]
        pipe.expire(self.keys.tip(tip.bag.bag_id), ttl)
        pipe.hincrby(self.keys.station_counters, f"tip_made:{pool}", 1)
        pipe.execute()
        value = Lease.value(operator, tip.bag.bag_id, "", now, now)
        if int(self._lease(pool, operator, tip.bag.bag_id, "", value, now)) != 1:
            return self.current(operator, pool)
        log.info("tip_bag_made", pool=pool, operator=operator)  # no id: logs reach operators too
        return Held(pool, Lease.parse(value), tip.bag, now + self.lease_ms)

    def _waiting_bag(self, pool: str) -> BagEvent | None:
        """A real bag waiting in the pool (new or returned), or None."""
        waiting = self.undelivered(pool, SCAN)
        if waiting:
            return waiting[0][1]
        for _queued, entry_id, _tip in self._returned(pool):
            bag = self.entry(entry_id) if entry_id else None
            if bag is not None and self.lease(pool, bag.bag_id) is None:
                return bag
        return None

    # -- the queue as a whole ---------------------------------------------------------------

    def _group(self, pool: str) -> dict[str, Any]:
        self.ensure_group(pool)
        groups: Any = self.client.xinfo_groups(self.keys.review)
        for group in groups:
            name = group["name"]
            if (name.decode() if isinstance(name, bytes) else name) == pool:
                return dict(group)
        return {}

    def _last_delivered(self, pool: str) -> str:
        last = self._group(pool).get("last-delivered-id", b"0-0")
        return last.decode() if isinstance(last, bytes) else str(last)

    def undelivered(self, pool: str, limit: int) -> list[tuple[str, BagEvent]]:
        """Entries not yet delivered to the pool that it serves, oldest first."""
        last = self._last_delivered(pool)
        entries: Any = self.client.xrange(self.keys.review, min=f"({last}", max="+", count=limit)
        out = []
        for raw_id, fields in entries:
            bag = parse_bag(fields)
            if bag is not None and self.serves(pool, bag.scanner_id):
                out.append((raw_id.decode(), bag))
        return out

    def depth(self, pool: str) -> dict[str, int]:
        """Bags waiting in the pool: never delivered, and returned (lease expired)."""
        group = self._group(pool)
        lag = group.get("lag")
        if lag is not None and pool not in self.settings.pool_scanners:
            waiting = int(lag)
        else:
            waiting = len(self.undelivered(pool, 1_000))
        pending: Any = self.client.xpending_range(
            self.keys.review, pool, min="-", max="+", count=1_000, idle=self.lease_ms
        )
        returned = len(pending) + len(self._unleased_tips(pool))
        return {"waiting": waiting, "returned": returned, "total": waiting + returned}


def utc(ms: int) -> datetime:
    """A time in ms since the epoch as an aware datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
