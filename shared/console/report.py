"""The supervisor's report per operator: bags decided, TIP hits and misses, false alarms, d′.

Signal detection on the verdict records of a window:

- hits / misses: `search` / `clear` on TIP bags (every TIP bag holds a threat);
- false alarms: `search` on real bags whose ground truth is benign (`truth.py`: the views'
  frame meta, where the line knows it); real bags of unknown truth count as decided only;
- H = hits / TIP bags, F = false alarms / benign bags;
- d′ = Z(H′) − Z(F′) with the log-linear correction (Hautus 1995) applied to every rate,
  H′ = (hits + 0.5) / (TIP bags + 1) and F′ = (false alarms + 0.5) / (benign bags + 1), so
  rates of 0 or 1 stay finite; d′ is None without a TIP bag or a benign bag.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis

from shared.console.verdicts import BAG_VERDICT_SCHEMA
from shared.keys import Keys

_NORMAL = statistics.NormalDist()
MAX_RECORDS = 200_000  # most verdict records one report reads


def loglinear(count: int, trials: int) -> float:
    """(count + 0.5) / (trials + 1): a rate that is never exactly 0 or 1."""
    return (count + 0.5) / (trials + 1)


def d_prime(hits: int, tips: int, false_alarms: int, benign: int) -> float | None:
    """Z(H′) − Z(F′) with log-linear corrected rates; None if either count is empty."""
    if tips == 0 or benign == 0:
        return None
    return _NORMAL.inv_cdf(loglinear(hits, tips)) - _NORMAL.inv_cdf(loglinear(false_alarms, benign))


@dataclass(frozen=True)
class OperatorReport:
    operator: str
    decided: int
    searched: int
    tip_hits: int
    tip_misses: int
    benign: int  # real bags of known benign truth
    false_alarms: int
    unknown_truth: int  # real bags the line has no ground truth for
    hit_rate: float | None
    false_alarm_rate: float | None
    d_prime: float | None
    median_time_to_decision_ms: float | None
    overdue_decided: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def operator_report(operator: str, records: list[Mapping[str, str]]) -> OperatorReport:
    """One operator's (or everyone's) figures over their verdict records."""
    tips = [r for r in records if r.get("tip") == "1"]
    real = [r for r in records if r.get("tip") != "1"]
    hits = sum(r.get("decision") == "search" for r in tips)
    benign = [r for r in real if r.get("truth") == "benign"]
    false_alarms = sum(r.get("decision") == "search" for r in benign)
    times = [int(r["time_to_decision_ms"]) for r in records if r.get("time_to_decision_ms")]
    return OperatorReport(
        operator=operator,
        decided=len(records),
        searched=sum(r.get("decision") == "search" for r in records),
        tip_hits=hits,
        tip_misses=len(tips) - hits,
        benign=len(benign),
        false_alarms=false_alarms,
        unknown_truth=sum(r.get("truth", "") == "" for r in real),
        hit_rate=hits / len(tips) if tips else None,
        false_alarm_rate=false_alarms / len(benign) if benign else None,
        d_prime=d_prime(hits, len(tips), false_alarms, len(benign)),
        median_time_to_decision_ms=statistics.median(times) if times else None,
        overdue_decided=sum(r.get("overdue") == "1" for r in records),
    )


def report(records: Iterable[Mapping[str, str]]) -> dict[str, Any]:
    """Per operator (sorted by id) and for everyone together."""
    by_operator: dict[str, list[Mapping[str, str]]] = {}
    every = []
    for record in records:
        by_operator.setdefault(record.get("operator", ""), []).append(record)
        every.append(record)
    return {
        "operators": [operator_report(op, rs).as_dict() for op, rs in sorted(by_operator.items())],
        "all": operator_report("all", every).as_dict(),
        "correction": "log-linear: H' = (hits + 0.5) / (TIP bags + 1), "
        "F' = (false alarms + 0.5) / (benign bags + 1)",
        "truth": "TIP bags: threat; real bags: the views' frame meta on the results stream",
    }


def read_verdicts(
    client: redis.Redis, keys: Keys, since_ms: int, until_ms: int, pool: str | None = None
) -> list[dict[str, str]]:
    """Bag verdict records whose entry ids lie in [since_ms, until_ms], of one pool or all."""
    found: list[dict[str, str]] = []
    cursor, read = f"{since_ms}-0", 0
    while read < MAX_RECORDS:
        entries: Any = client.xrange(keys.verdicts, min=cursor, max=str(until_ms), count=1_000)
        for _raw_id, fields in entries:
            record = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
            if record.get("schema") == BAG_VERDICT_SCHEMA and pool in (None, record.get("pool")):
                found.append(record)
        read += len(entries)
        if len(entries) < 1_000:
            break
        cursor = "(" + entries[-1][0].decode()
    return found
