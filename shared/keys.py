"""Every Redis key and channel name, built from the namespace; nothing else formats a key."""

from __future__ import annotations

import re
from dataclasses import dataclass

ARTEFACT_KINDS = ("original", "masked", "heatmap")
# Ids that may stand inside key names, file paths and URLs; matched whole (`fullmatch`:
# `$` would let a trailing newline through).
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def check_id(value: str, what: str = "id") -> str:
    """Return `value` if it may appear inside a key name or a path, else raise `ValueError`.

    `.` and `..` are refused as well: they are safe in a key but not as a folder name.
    """
    if not isinstance(value, str) or not _SAFE_ID.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"{what} {value!r} may only hold letters, digits and _ . : - (1-128 chars)"
        )
    return value


@dataclass(frozen=True)
class Keys:
    """Key names of one namespace.

    The namespace sits in braces (a Redis Cluster hash tag) so every key of a
    namespace lands in one slot and the publish script may touch them all.
    """

    namespace: str = "scanguard"

    @property
    def prefix(self) -> str:
        return "{" + self.namespace + "}"

    @property
    def frames(self) -> str:
        return f"{self.prefix}:frames"

    @property
    def results(self) -> str:
        return f"{self.prefix}:results"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}:alerts"

    @property
    def alert_channel(self) -> str:
        return f"{self.prefix}:alerts:live"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def verdicts(self) -> str:
        """Operators' verdicts on alerts (the console appends; labelled data for the next model)."""
        return f"{self.prefix}:verdicts"

    @property
    def bags(self) -> str:
        """One `scanguard.bag/1` event per bag, exactly once."""
        return f"{self.prefix}:bags"

    @property
    def bags_open(self) -> str:
        """Sorted set of open bags, scored by their deadline (ms since the epoch)."""
        return f"{self.prefix}:bags:open"

    def bag(self, bag_id: str) -> str:
        """Hash of one bag's state: expected views, each decided view, closed marker."""
        return f"{self.prefix}:bag:{check_id(bag_id, 'bag id')}"

    @property
    def review(self) -> str:
        """Threat and undetermined bags: the operators' work queue."""
        return f"{self.prefix}:review"

    @property
    def stats(self) -> str:
        """Hash of producer counters (sent, dropped)."""
        return f"{self.prefix}:stats"

    @property
    def delivery_stats(self) -> str:
        """Hash of delivery attempt counters, `{outcome}:{sink}` -> count (RQ jobs write it)."""
        return f"{self.prefix}:delivery:stats"

    def artefact(self, event_id: str, kind: str) -> str:
        if kind not in ARTEFACT_KINDS:
            raise ValueError(f"unknown artefact kind {kind!r}; expected one of {ARTEFACT_KINDS}")
        return f"{self.prefix}:artefact:{check_id(event_id, 'event id')}:{kind}"

    def done(self, frame_id: str) -> str:
        """Dedupe marker: set once a frame's decision is published."""
        return f"{self.prefix}:done:{check_id(frame_id, 'frame id')}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{check_id(worker_id, 'worker id')}"

    @property
    def worker_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    # -- the operator station (shared.console) -------------------------------------------

    @staticmethod
    def _pool(pool: str) -> str:
        # A pool name sits before another id in a key: a ':' in it would make two keys meet.
        if ":" in check_id(pool, "pool"):
            raise ValueError(f"pool {pool!r} may not hold ':'")
        return pool

    def lease(self, pool: str, bag_id: str) -> str:
        """String with a TTL: which operator of a pool holds a bag, and since when."""
        return f"{self.prefix}:lease:{self._pool(pool)}:{check_id(bag_id, 'bag id')}"

    def holding(self, pool: str, operator: str) -> str:
        """String with the lease's TTL: the bag an operator of a pool holds now."""
        return f"{self.prefix}:holding:{self._pool(pool)}:{check_id(operator, 'operator id')}"

    def station_bags(self, pool: str) -> str:
        """Hash of the bags a pool has taken and not decided: bag id -> review entry id
        ("" for a TIP bag)."""
        return f"{self.prefix}:station:bags:{self._pool(pool)}"

    @property
    def station_counters(self) -> str:
        """Hash of station counters every console process shares (returns, verdicts, TIP)."""
        return f"{self.prefix}:station:counters"

    def tip(self, bag_id: str) -> str:
        """Hash of one TIP bag: the bag as shown and its ground truth; never sent to a browser."""
        return f"{self.prefix}:tip:bag:{check_id(bag_id, 'bag id')}"

    def tip_open(self, pool: str) -> str:
        """Sorted set of a pool's undecided TIP bags, scored by creation (ms since the epoch)."""
        return f"{self.prefix}:tip:open:{self._pool(pool)}"
