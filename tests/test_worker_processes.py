"""Real worker processes (`python -m worker run`) against a real redis-server."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from tests.pipeline_fixtures import events, heartbeat, push_frames, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_two_workers_share_the_stream_without_duplicates(redis_server, keys, spawn_worker):
    """Two worker processes on one group split the frames; every frame is decided exactly once."""
    client = redis_server.client()
    workers = [spawn_worker(redis_server.url, keys, f"w{i}") for i in range(2)]
    for i in range(2):
        wait_for(heartbeat(client, keys, f"w{i}"), 60, f"worker w{i} to start")
    sent = push_frames(client, keys, 120)
    wait_for(lambda: client.xlen(keys.results) >= len(sent), 90, "all decisions")
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(timeout=30) for proc in workers] == [0, 0]

    results = events(client, keys.results)
    assert Counter(e["frame_id"] for e in results) == Counter(sent)
    by_worker = Counter(e["worker_id"] for e in results)
    assert set(by_worker) == {"w0", "w1"}, f"work was not shared: {by_worker}"
    assert client.xpending(keys.frames, "workers")["pending"] == 0


def test_sigterm_drains_in_flight_frames(redis_server, keys, spawn_worker, tmp_path):
    """After SIGTERM the worker publishes what it read, exits 0, and leaves nothing pending."""
    client = redis_server.client()
    proc = spawn_worker(redis_server.url, keys, "drainer")
    wait_for(heartbeat(client, keys, "drainer"), 60, "worker to start")
    sent = push_frames(client, keys, 200, size_hw=(480, 640))
    wait_for(lambda: client.xlen(keys.results) >= 5, 60, "the first decisions")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0

    decided = [e["frame_id"] for e in events(client, keys.results)]
    assert len(decided) == len(set(decided))
    assert client.xpending(keys.frames, "workers")["pending"] == 0
    # Nothing lost: each frame is either decided or still waiting, unread, in the stream.
    assert len(decided) + client.xlen(keys.frames) == len(sent)
    assert "warm_shutdown" in (tmp_path / "drainer.log").read_text()


def test_worker_survives_a_redis_restart(redis_factory, keys, spawn_worker, tmp_path):
    """Redis killed and restarted (AOF on): the worker backs off, reconnects and decides the rest."""
    server = redis_factory(appendonly=True)
    client = server.client()
    proc = spawn_worker(server.url, keys, "survivor")
    wait_for(heartbeat(client, keys, "survivor"), 60, "worker to start")
    first = push_frames(client, keys, 20)
    wait_for(lambda: client.xlen(keys.results) >= len(first), 60, "the first decisions")

    server.kill()
    time.sleep(1.0)  # the worker meets a dead server for a while
    server.restart()
    client = server.client()
    second = push_frames(client, keys, 20, start=20)
    wait_for(
        lambda: client.xlen(keys.results) >= len(first) + len(second), 60, "decisions after restart"
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0

    assert Counter(e["frame_id"] for e in events(client, keys.results)) == Counter(first + second)
    assert "redis_unavailable" in (tmp_path / "survivor.log").read_text()
