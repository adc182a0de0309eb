"""Real worker processes (`python -m worker run`) against a real redis-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pipeline_fixtures import ERASING_ENV, events, push_frames, write_tiny_card

from shared.keys import Keys

pytestmark = [pytest.mark.redis, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_card(tmp_path_factory.mktemp("model"))


@pytest.fixture
def spawn_worker(tiny_card, tmp_path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start worker processes; any still running at the end are killed."""
    procs: list[subprocess.Popen] = []

    def spawn(url: str, keys: Keys, worker_id: str, *args: str, **env: str) -> subprocess.Popen:
        environ = {
            **os.environ,
            **ERASING_ENV,
            "SCANGUARD_REDIS_URL": url,
            "SCANGUARD_NAMESPACE": keys.namespace,
            "SCANGUARD_MODEL__CARD": str(tiny_card),
            "SCANGUARD_MODEL__MAX_BATCH": "4",
            "SCANGUARD_WORKER__ID": worker_id,
            "SCANGUARD_WORKER__METRICS_PORT": "0",
            "SCANGUARD_WORKER__MAX_WAIT_MS": "100",
            "SCANGUARD_WORKER__RECONNECT_MAX_S": "0.5",
            "SCANGUARD_HEALTH_DIR": str(tmp_path),
            "SCANGUARD_LOG_FORMAT": "json",
            **env,
        }
        log = open(tmp_path / f"{worker_id}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", *args], cwd=ROOT, env=environ, stdout=log, stderr=log
        )
        log.close()
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def heartbeat(client, keys: Keys, worker_id: str) -> Callable[[], bool]:
    return lambda: client.exists(keys.worker(worker_id)) == 1


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
    wait_for(lambda: client.xlen(keys.results) >= len(first) + len(second), 60, "decisions after restart")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0

    assert Counter(e["frame_id"] for e in events(client, keys.results)) == Counter(first + second)
    assert "redis_unavailable" in (tmp_path / "survivor.log").read_text()
