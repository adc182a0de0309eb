"""An operator's verdict on the bag they hold: checked, recorded once, the lease ended.

The record on `{ns}:verdicts` (`scanguard.bag-verdict/1`, flat string fields so any Redis
client reads it) holds the bag, the authenticated operator and pool, when the bag was
queued, taken and decided, the time to decision, the machine's decision, classes and
model, the TIP flag with the TIP class, kind and result, and the bag's ground truth where
the line knows it. `decide.lua` writes it, acknowledges the review entry and deletes the
lease in one step, and only if the lease is still the one read here.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.console.identity import Refused
from shared.console.station import Lease, Station, utc
from shared.console.truth import bag_truth
from shared.schemas import BagEvent
from shared.vocab import Word

BAG_VERDICT_SCHEMA = "scanguard.bag-verdict/1"


class Decision(Word):
    """What an operator says of a bag."""

    CLEAR = "clear"  # let it go
    SEARCH = "search"  # open it (a hand search)


class RoiMark(BaseModel):
    """An operator's word on one machine box."""

    model_config = ConfigDict(extra="forbid")

    view: int = Field(ge=0, le=63)
    roi: int = Field(ge=0, le=63)
    mark: Literal["confirm", "reject"]


class BagVerdictIn(BaseModel):
    """A verdict as the page posts it; the operator comes from the request's identity."""

    model_config = ConfigDict(extra="forbid")

    bag_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    decision: Decision
    rois: list[RoiMark] = Field(default_factory=list, max_length=512)


class Outcome(enum.IntEnum):
    """`decide.lua`'s first return value."""

    RECORDED = 0
    HELD_BY_OTHER = 1
    LEASE_EXPIRED = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class Recorded:
    """A verdict that landed, and what the page may show about it now."""

    entry_id: str
    time_to_decision_ms: int
    tip: dict[str, str] | None  # TIP feedback: label, kind, result ("hit"/"miss")


REFUSALS = {
    Outcome.HELD_BY_OTHER: (409, "another operator holds this bag"),
    Outcome.LEASE_EXPIRED: (409, "your lease on this bag expired; it went back to the queue"),
    Outcome.UNKNOWN: (404, "no such bag in your pool's queue"),
}


def record(station: Station, operator: str, pool: str, verdict: BagVerdictIn) -> Recorded:
    """Record `verdict` for `operator`; `Refused` (404/409) if they do not hold the bag."""
    lease = station.lease(pool, verdict.bag_id)
    if lease is None:
        known = station.client.hexists(station.keys.station_bags(pool), verdict.bag_id)
        raise Refused(*REFUSALS[Outcome.LEASE_EXPIRED if known else Outcome.UNKNOWN])
    if lease.operator != operator:
        raise Refused(*REFUSALS[Outcome.HELD_BY_OTHER])
    bag = station.bag_of(lease)
    if bag is None:
        raise Refused(*REFUSALS[Outcome.UNKNOWN])
    now = station.now_ms()
    fields, counters, tip = _record_fields(station, pool, lease, bag, verdict, now)
    keys = station.keys
    reply: Any = station.decide_script(
        keys=[
            keys.lease(pool, verdict.bag_id),
            keys.holding(pool, operator),
            keys.review,
            keys.verdicts,
            keys.station_bags(pool),
            keys.tip_open(pool),
            keys.station_counters,
        ],
        args=[
            lease.raw,
            pool,
            lease.entry_id,
            station.settings.verdicts_maxlen,
            verdict.bag_id,
            len(counters),
            *counters,
            *[item for pair in fields.items() for item in pair],
        ],
    )
    outcome = Outcome(int(reply[0]))
    if outcome is not Outcome.RECORDED:
        raise Refused(*REFUSALS[outcome])
    entry = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
    return Recorded(entry, now - lease.taken_ms, tip)


def _record_fields(
    station: Station, pool: str, lease: Lease, bag: BagEvent, verdict: BagVerdictIn, now: int
) -> tuple[dict[str, str], list[str], dict[str, str] | None]:
    """The verdict record, the counters it bumps, and the TIP feedback (None: not TIP)."""
    overdue = now - lease.queued_ms > station.settings.review_deadline_s * 1000
    tip = None
    if lease.is_tip:
        truth: Any = station.client.hgetall(station.keys.tip(bag.bag_id))
        found = verdict.decision is Decision.SEARCH
        tip = {
            "label": truth.get(b"label", b"").decode(),
            "kind": truth.get(b"kind", b"").decode(),
            "result": "hit" if found else "miss",
        }
        ground = "threat"
    else:
        ground = bag_truth(station.client, station.keys, bag, station.settings.truth_meta_key)
    fields = {
        "schema": BAG_VERDICT_SCHEMA,
        "bag_id": bag.bag_id,
        "bag_event_id": bag.event_id,
        "review_entry_id": lease.entry_id,
        "scanner_id": bag.scanner_id,
        "operator": lease.operator,
        "pool": pool,
        "decision": verdict.decision.value,
        "queued_at": utc(lease.queued_ms).isoformat(),
        "taken_at": utc(lease.taken_ms).isoformat(),
        "decided_at": utc(now).isoformat(),
        "time_to_decision_ms": str(now - lease.taken_ms),
        "overdue": "1" if overdue else "0",
        "machine_decision": bag.decision.value,
        "machine_classes": ",".join(c.label for c in bag.classes),
        "model_id": bag.model.id if bag.model is not None else "",
        "tip": "1" if tip else "0",
        "tip_label": tip["label"] if tip else "",
        "tip_kind": tip["kind"] if tip else "",
        "tip_result": tip["result"] if tip else "",
        "truth": ground,
        "rois": json.dumps([m.model_dump() for m in verdict.rois], separators=(",", ":")),
    }
    counters = [f"verdicts:{pool}:{verdict.decision.value}"]
    if overdue:
        counters.append(f"overdue_decided:{pool}")
    if tip:
        counters.append(f"tip_{tip['result']}:{pool}")
    return fields, counters, tip
