"""Delivery metrics: the dispatcher's counters, and the outcome of every RQ delivery attempt.

A delivery runs inside `rq worker`, in a work horse forked for each job: there is no
HTTP server to scrape there, and a counter in a horse dies with it. So the job function
adds each attempt's outcome to the hash `{ns}:delivery:stats` (HINCRBY, atomic and shared
by every RQ worker), and the dispatcher, which serves `/metrics` anyway, exports that
hash at each scrape. RQ's own registries were the other candidate, but they are not
counters: finished and failed jobs leave them when their TTLs run out (so a rate over
them goes negative), and they cannot tell a failed attempt that RQ will retry from the
last one. Kept in Redis, the totals also survive restarts of the dispatcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import redis
import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rq import Queue

from shared.keys import Keys

log = structlog.get_logger("scanguard.delivery")
# succeeded: the sink took it; retried: it raised and RQ will try again; failed: it
# raised with no tries left (the job is in RQ's failed registry).
OUTCOMES = ("succeeded", "retried", "failed")


def record_attempt(client: redis.Redis, namespace: str, sink: str, outcome: str) -> None:
    """Count one delivery attempt of `sink` in `{ns}:delivery:stats`.

    Never raises for Redis trouble: after a delivery that went through, an exception
    here would make RQ deliver the event again just to fix a counter.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r} is not one of {OUTCOMES}")
    try:
        client.hincrby(Keys(namespace).delivery_stats, f"{outcome}:{sink}", 1)
    except redis.RedisError as exc:
        log.warning("delivery_stats_unrecorded", sink=sink, outcome=outcome, error=str(exc))


class DeliveryStatsCollector(Collector):
    """Attempts by sink and outcome (from Redis) and the jobs waiting in the RQ queue."""

    def __init__(self, client: redis.Redis, keys: Keys, queue: Queue, sinks: Iterable[str]):
        self.client = client
        self.keys = keys
        self.queue = queue
        self.sinks = list(sinks)

    def collect(self) -> Iterator[Metric]:
        try:
            raw: Any = self.client.hgetall(self.keys.delivery_stats)
            queued = self.queue.count
        except redis.RedisError as exc:
            # No numbers rather than wrong ones; the dispatcher's own counters still show.
            log.warning("delivery_stats_unavailable", error=str(exc))
            return
        counts: dict[tuple[str, str], int] = {}
        for field, value in raw.items():
            outcome, _, sink = field.decode().partition(":")
            if outcome in OUTCOMES and sink:
                counts[(sink, outcome)] = int(value)
        attempts = CounterMetricFamily(
            "scanguard_delivery_attempts",
            "Delivery attempts by RQ workers, by sink and outcome (succeeded, retried: "
            "failed and tried again later, failed: no tries left)",
            labels=["sink", "outcome"],
        )
        sinks = sorted(set(self.sinks) | {sink for sink, _ in counts})
        for sink in sinks:
            for outcome in OUTCOMES:  # every series from the start: rate() sees the first one
                attempts.add_metric([sink, outcome], counts.get((sink, outcome), 0))
        yield attempts
        yield GaugeMetricFamily(
            "scanguard_delivery_queued_jobs",
            "Delivery jobs waiting in the RQ queue for a worker",
            value=queued,
        )


class DispatcherMetrics:
    """The dispatcher's registry: its own counters and the delivery stats collector."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        queue: Queue,
        sinks: Iterable[str],
        streams: Iterable[str],
    ) -> None:
        sinks = list(sinks)
        self.registry = CollectorRegistry()
        r = self.registry
        self.enqueued = Counter(
            "scanguard_delivery_enqueued_total",
            "Delivery jobs enqueued, by sink",
            ["sink"],
            registry=r,
        )
        self.duplicates = Counter(
            "scanguard_delivery_duplicates_total",
            "Events skipped because a job for that event and sink already existed, by sink",
            ["sink"],
            registry=r,
        )
        self.unreadable = Counter(
            "scanguard_delivery_unreadable_total",
            "Stream entries that were not a readable event (acknowledged, left on the stream)",
            ["stream"],
            registry=r,
        )
        for sink in sinks:
            self.enqueued.labels(sink)
            self.duplicates.labels(sink)
        for stream in streams:
            self.unreadable.labels(stream)
        r.register(DeliveryStatsCollector(client, keys, queue, sinks))
