"""The station's Prometheus metrics, read from Redis at each scrape (`GET /metrics`).

Counters live in `{ns}:station:counters`, shared by every console process, so any one
of them reports the whole station; gauges count the open bags of each pool by state,
and those past `review_deadline_s` (escalation). `tip_made` is left out: it rises the
moment an operator is handed a TIP bag.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.console.station import Station
from shared.console.supervisor import open_bags, public_counters


class StationCollector(Collector):
    """Open bags per pool and state, overdue bags, lease returns, verdicts and TIP results."""

    def __init__(self, station: Station) -> None:
        self.station = station

    def collect(self) -> Iterator[Metric]:
        station = self.station
        now = station.now_ms()
        open_gauge = GaugeMetricFamily(
            "scanguard_station_open_bags",
            "Open review bags by pool and state",
            labels=["pool", "state"],
        )
        overdue = GaugeMetricFamily(
            "scanguard_station_overdue_bags",
            "Open review bags undecided past review_deadline_s",
            labels=["pool"],
        )
        for pool in station.settings.pools:
            rows = open_bags(station, pool, now)
            for state in ("queued", "taken", "returned"):
                open_gauge.add_metric([pool, state], sum(r["state"] == state for r in rows))
            overdue.add_metric([pool], sum(r["overdue"] for r in rows))
        yield open_gauge
        yield overdue
        raw: Any = station.client.hgetall(station.keys.station_counters)
        families = {
            "returns": CounterMetricFamily(
                "scanguard_station_lease_returns",
                "Bags whose lease expired and went back to the pool",
                labels=["pool"],
            ),
            "verdicts": CounterMetricFamily(
                "scanguard_station_verdicts",
                "Operator verdicts on bags",
                labels=["pool", "decision"],
            ),
            "overdue_decided": CounterMetricFamily(
                "scanguard_station_overdue_verdicts",
                "Verdicts given after review_deadline_s",
                labels=["pool"],
            ),
            "tip_hit": CounterMetricFamily(
                "scanguard_station_tip_hits", "TIP bags searched (found)", labels=["pool"]
            ),
            "tip_miss": CounterMetricFamily(
                "scanguard_station_tip_misses", "TIP bags cleared (missed)", labels=["pool"]
            ),
        }
        for name, value in public_counters(raw).items():
            kind, _, labels = name.partition(":")
            if kind in families:
                families[kind].add_metric(labels.split(":"), value)
        yield from families.values()


def station_registry(station: Station) -> CollectorRegistry:
    """A registry of its own (one per app), holding only the station collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StationCollector(station))
    return registry
