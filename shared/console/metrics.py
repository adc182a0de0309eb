"""The console's Prometheus metrics (`GET /metrics`): the station's, and this process's own.

The station's are read from Redis at each scrape. Counters live in
`{ns}:station:counters`, shared by every console process, so any one of them reports
the whole station; gauges count the open bags of each pool by state, the review queue's
depth and the bags past `review_deadline_s` (escalation: `scanguard_console_overdue_bags`,
which the deploy's alert rule reads). `tip_made` is left out: it rises the moment an operator is
handed a TIP bag.

The process's own (`ConsoleMetrics`) count HTTP requests by route and status, time to
the first byte by route, open event streams and event-stream clients dropped as stuck;
sum them over the console processes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
        depth = GaugeMetricFamily(
            "scanguard_console_queue_depth",
            "Review bags waiting for an operator (never delivered, or returned by an "
            "expired lease), by pool",
            labels=["pool"],
        )
        overdue = GaugeMetricFamily(
            "scanguard_console_overdue_bags",
            "Open review bags undecided past review_deadline_s, by pool",
            labels=["pool"],
        )
        for pool in station.settings.pools:
            rows = open_bags(station, pool, now)
            for state in ("queued", "taken", "returned"):
                open_gauge.add_metric([pool, state], sum(r["state"] == state for r in rows))
            late = sum(r["overdue"] for r in rows)
            overdue.add_metric([pool], late)
            depth.add_metric([pool], station.depth(pool)["total"])
        yield open_gauge
        yield depth
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
    """A registry of its own (one per app), holding the station collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StationCollector(station))
    return registry


# Time to first byte, in seconds: an API answer should take milliseconds; seconds mean a
# starved thread pool or a slow Redis.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNROUTED = "unrouted"  # the route label of requests that matched no route (404, or refused first)


class ConsoleMetrics:
    """This process's figures, registered in the app's registry next to the station's."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "scanguard_console_requests",
            "HTTP requests answered by this console process, by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.first_byte = Histogram(
            "scanguard_console_response_start_seconds",
            "Time from request to the response's status line, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.open_streams = Gauge(
            "scanguard_console_open_streams",
            "Event streams (/api/stream) this console process feeds (dropped ones not counted)",
            registry=registry,
        )
        self.dropped_clients = Counter(
            "scanguard_console_stream_dropped_clients",
            "Event-stream clients dropped as stuck: stream_queue events behind (queue_full) "
            "or a write waiting stream_send_timeout_s (send_timeout)",
            ["reason"],
            registry=registry,
        )
        for reason in ("queue_full", "send_timeout"):
            self.dropped_clients.labels(reason)  # both series from the start, at 0


class RequestMetrics:
    """ASGI middleware: count each HTTP request by route template and status, and time it.

    The route label is the matched route's template (`/api/alerts/{entry_id}`), never the
    raw path, so a client cannot grow the number of series.
    """

    def __init__(self, app: ASGIApp, metrics: ConsoleMetrics, templates: dict[Any, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates  # endpoint -> its route's template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.first_byte.labels(self._route(scope)).observe(
                    time.perf_counter() - started
                )
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            # The router writes the matched endpoint into this same scope.
            self.metrics.requests.labels(self._route(scope), str(status)).inc()

    def _route(self, scope: Scope) -> str:
        return self.templates.get(scope.get("endpoint"), UNROUTED)
