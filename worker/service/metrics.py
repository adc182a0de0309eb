"""Prometheus metrics of one worker, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerMetrics:
    """Counters and histograms the worker updates; served over HTTP when a port is set."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("scanguard_frames_total", "Frames decided", ["decision"], registry=r)
        self.dead = Counter(
            "scanguard_dead_letters_total", "Frames dead-lettered, by kind", ["kind"], registry=r
        )
        self.redeliveries = Counter(
            "scanguard_redeliveries_total", "Frames reclaimed from another consumer", registry=r
        )
        self.discarded = Counter(
            "scanguard_discarded_publishes_total",
            "Publishes skipped: frame acked elsewhere",
            registry=r,
        )
        self.batch_size = Histogram(
            "scanguard_batch_size",
            "Active frames per engine step",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.iterations = Histogram(
            "scanguard_iterations",
            "Erasing iterations per frame",
            buckets=tuple(range(0, 11)),
            registry=r,
        )
        self.forwards = Counter("scanguard_forward_passes_total", "Forward passes", registry=r)
        self.step_seconds = Histogram(
            "scanguard_step_seconds", "Engine step wall time", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.latency_seconds = Histogram(
            "scanguard_end_to_end_seconds",
            "Capture to decision",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.backlog = Gauge("scanguard_backlog", "Entries in the frames stream", registry=r)
        self.bags = Counter(
            "scanguard_bags_total",
            "Bags closed by this worker, by decision and reason",
            ["decision", "reason"],
            registry=r,
        )
        self.refusals = Counter(
            "scanguard_redis_refusals_total",
            "Redis write refusals (out of memory, MISCONF, read-only), by kind",
            ["kind"],
            registry=r,
        )
        self.reconnects = Counter(
            "scanguard_redis_reconnects_total", "Redis connection losses", registry=r
        )
