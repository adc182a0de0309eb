"""Load: a 10,000-frame burst against a slower worker, with block and drop backpressure."""

from __future__ import annotations

import signal
import threading

import cv2
import numpy as np
import pytest

from producer.producer import Producer
from producer.sources import SourceFrame
from tests.pipeline_fixtures import heartbeat, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow]
N_BURST = 10_000


def small_frames(count: int) -> list[SourceFrame]:
    """`count` distinct 32x32 JPEG frames (about 700 bytes each)."""
    rng = np.random.default_rng(3)
    base = [
        cv2.imencode(".jpg", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))[1].tobytes()
        for _ in range(16)
    ]
    return [SourceFrame(base[i % 16], "image/jpeg", {"i": i}) for i in range(count)]


class Sampler(threading.Thread):
    """Samples the backlog and Redis memory until stopped."""

    def __init__(self, client, stream: str) -> None:
        super().__init__(daemon=True)
        self.client, self.stream = client, stream
        self.max_backlog = 0
        self.max_memory = 0
        self.max_stream_bytes = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.02):
            self.max_backlog = max(self.max_backlog, self.client.xlen(self.stream))
            self.max_memory = max(self.max_memory, int(self.client.info("memory")["used_memory"]))
            stream_bytes = int(self.client.memory_usage(self.stream, samples=0) or 0)
            self.max_stream_bytes = max(self.max_stream_bytes, stream_bytes)


def decided(client, keys) -> int:
    return int(client.xlen(keys.results))


def test_burst_in_block_mode_stays_bounded_and_decides_every_frame(
    redis_factory, keys, spawn_worker, reliability
):
    """10,000 frames into a 300-frame backlog bound: backlog and memory stay bounded, all decided."""
    server = redis_factory()
    client = server.client()
    # One erasing step per frame at most: the point here is volume, not iterations.
    worker = spawn_worker(
        server.url, keys, "slow", SCANGUARD_MODEL__MAX_BATCH="8", SCANGUARD_ERASING__MAX_ITER="1"
    )
    wait_for(heartbeat(client, keys, "slow"), 60, "the worker to start")
    baseline = int(client.info("memory")["used_memory"])
    sampler = Sampler(server.client(), keys.frames)
    sampler.start()

    producer = Producer(server.client(), keys, "burst", max_backlog=300, backpressure="block")
    summary = producer.run(small_frames(N_BURST))
    wait_for(lambda: decided(client, keys) >= N_BURST, 600, "every decision")
    sampler.halt.set()
    sampler.join()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0

    events_bytes = int(client.memory_usage(keys.results, samples=0) or 0)
    growth = sampler.max_memory - baseline
    reliability.record(
        "burst of 10,000 frames, block mode, max_backlog 300",
        "producer waits; nothing dropped",
        sent=summary.sent,
        decided=decided(client, keys),
        dead=int(client.xlen(keys.dead)),
        duplicated=0,
        lost=summary.sent - decided(client, keys),
        note=f"peak backlog {sampler.max_backlog} frames ({sampler.max_stream_bytes / 2**20:.2f} MiB), "
        f"producer blocked {summary.blocked_s:.1f} s; Redis memory +{growth / 2**20:.1f} MiB, "
        f"of which results history {events_bytes / 2**20:.1f} MiB (the rest: artefacts and "
        "dedupe markers, both with a TTL)",
    )
    assert summary.sent == N_BURST and summary.dropped == 0
    assert summary.blocked_s > 0, "the worker was never slower than the producer"
    assert sampler.max_backlog <= 300
    assert client.xpending(keys.frames, "workers")["pending"] == 0 and client.xlen(keys.frames) == 0
    # Frames waiting are bounded by the backlog (about 1 kB each here); what grows is
    # history with a TTL or a stream cap (results, artefacts, dedupe markers).
    assert sampler.max_stream_bytes < 2 * 2**20


def test_drop_mode_counts_every_dropped_frame(redis_factory, keys, spawn_worker, reliability):
    """With backpressure=drop, sent + dropped == offered, drops are in the stats hash, sent are decided."""
    server = redis_factory()
    client = server.client()
    worker = spawn_worker(
        server.url, keys, "slow", SCANGUARD_MODEL__MAX_BATCH="4", SCANGUARD_ERASING__MAX_ITER="1"
    )
    wait_for(heartbeat(client, keys, "slow"), 60, "the worker to start")

    producer = Producer(server.client(), keys, "dropper", max_backlog=50, backpressure="drop")
    summary = producer.run(small_frames(3_000))
    wait_for(lambda: decided(client, keys) >= summary.sent, 300, "every sent frame decided")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0

    stats = {k.decode(): v.decode() for k, v in client.hgetall(keys.stats).items()}
    reliability.record(
        "3,000 frames, drop mode, max_backlog 50",
        "newest frames dropped and counted",
        sent=summary.sent,
        decided=decided(client, keys),
        dead=0,
        duplicated=0,
        lost=summary.offered - summary.sent - summary.dropped,
        note=f"dropped {summary.dropped} (stats hash: {stats.get('dropped')})",
    )
    assert summary.dropped > 0
    assert summary.sent + summary.dropped == summary.offered == 3_000
    assert int(stats["dropped"]) == summary.dropped and int(stats["sent"]) == summary.sent
    assert decided(client, keys) == summary.sent
