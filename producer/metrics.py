"""The producer's Prometheus metrics, read from its summary at each scrape.

Nothing is counted twice: the collector reports `ProducerSummary`'s own numbers, so
`/metrics` keeps offered == sent + dropped + abandoned exactly as the summary does.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from producer.producer import Producer

OUTCOMES = ("sent", "dropped", "abandoned")


class ProducerCollector(Collector):
    """Frames by outcome, seconds blocked, backlog, and Redis refusals and reconnects."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def collect(self) -> Iterator[Metric]:
        producer = self.producer
        summary = producer.summary
        frames = CounterMetricFamily(
            "scanguard_producer_frames",
            "Frames the source offered, by outcome: sent, dropped (backpressure 'drop'), "
            "abandoned (stopped before Redis took it)",
            labels=["scanner", "outcome"],
        )
        for outcome in OUTCOMES:
            frames.add_metric([producer.scanner_id, outcome], getattr(summary, outcome))
        yield frames
        yield CounterMetricFamily(
            "scanguard_producer_blocked_seconds",
            "Seconds spent waiting for the frames stream to fall below max_backlog",
            value=producer.blocked_s(),
        )
        yield GaugeMetricFamily(
            "scanguard_producer_backlog",
            "Length of the frames stream when the producer last looked",
            value=summary.backlog,
        )
        refusals = CounterMetricFamily(
            "scanguard_redis_refusals",
            "Redis write refusals (out of memory, MISCONF, read-only), by kind",
            labels=["kind"],
        )
        for kind, count in sorted(producer.refusals.copy().items()):
            refusals.add_metric([kind], count)
        yield refusals
        yield CounterMetricFamily(
            "scanguard_producer_reconnects",
            "Redis outages the producer rode out (connection back after failing)",
            value=summary.reconnects,
        )


def producer_registry(producer: Producer) -> CollectorRegistry:
    """A registry of its own holding only the producer's collector."""
    registry = CollectorRegistry()
    registry.register(ProducerCollector(producer))
    return registry
