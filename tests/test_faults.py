"""Faults with real processes: killed and hung workers, a killed Redis, many workers, drain.

Every scenario ends with the same audit: each frame sent has exactly one decision
event, nothing is pending, nothing is left in the frames stream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from shared.keys import Keys
from tests.pipeline_fixtures import events, heartbeat, push_frames, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow]
FAULT_WORKER = [sys.executable, str(Path(__file__).resolve().parent / "fault_worker.py")]
FAST_CLAIM = {"SCANGUARD_WORKER__CLAIM_IDLE_MS": "1000"}


def audit(
    client, keys: Keys, sent: list[str], reliability, scenario: str, expected: str
) -> Counter:
    """Check exactly-once decisions for `sent`; record the counts; return them per frame."""
    decided = Counter(e["frame_id"] for e in events(client, keys.results))
    dead = client.xlen(keys.dead)
    duplicated = sum(n - 1 for n in decided.values() if n > 1)
    lost = len(set(sent) - set(decided)) - dead
    reliability.record(
        scenario,
        expected,
        sent=len(sent),
        decided=len(decided),
        dead=dead,
        duplicated=duplicated,
        lost=lost,
    )
    assert duplicated == 0 and lost == 0 and dead == 0
    assert set(decided) == set(sent)
    assert client.xpending(keys.frames, "workers")["pending"] == 0
    assert client.xlen(keys.frames) == 0
    return decided


def producer_env(url: str, keys: Keys) -> dict[str, str]:
    return {
        **os.environ,
        "SCANGUARD_REDIS_URL": url,
        "SCANGUARD_NAMESPACE": keys.namespace,
        "SCANGUARD_LOG_FORMAT": "json",
    }


def stop_all(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(timeout=60) == 0


@pytest.mark.parametrize("point", ["decode", "step", "render", "publish", "between"])
def test_sigkill_mid_batch_is_recovered_by_another_worker(
    point, redis_server, keys, spawn_worker, tmp_path, reliability
):
    """A worker SIGKILLed while holding frames leaves them pending; another takes them over."""
    client = redis_server.client()
    victim = spawn_worker(
        redis_server.url, keys, "victim", point, "kill", command=FAULT_WORKER, **FAST_CLAIM
    )
    rescuer = spawn_worker(redis_server.url, keys, "rescuer", **FAST_CLAIM)
    for name in ("victim", "rescuer"):
        wait_for(heartbeat(client, keys, name), 60, f"{name} to start")
    sent = push_frames(client, keys, 24)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    wait_for(lambda: client.xlen(keys.results) >= len(sent), 90, "every decision")
    stop_all(rescuer)
    reclaimed = (tmp_path / "rescuer.log").read_text().count('"frame_reclaimed"')
    assert reclaimed > 0, "the victim died holding no frames"
    audit(
        client,
        keys,
        sent,
        reliability,
        f"worker SIGKILL {'between steps' if point == 'between' else 'during ' + point}",
        f"the {reclaimed} frames it held are reclaimed and decided once",
    )


def test_hung_worker_late_publish_is_discarded(
    redis_server, keys, spawn_worker, tmp_path, reliability
):
    """A worker stopped (SIGSTOP) past claim_idle_ms loses its frames; resumed, its publish is discarded."""
    client = redis_server.client()
    sleeper = spawn_worker(
        redis_server.url, keys, "sleeper", "publish", "stop", command=FAULT_WORKER, **FAST_CLAIM
    )
    wait_for(heartbeat(client, keys, "sleeper"), 60, "the sleeper to start")
    sent = push_frames(client, keys, 16)
    wait_for(
        lambda: "fault_strikes" in (tmp_path / "sleeper.log").read_text(), 60, "the sleeper to hang"
    )
    rescuer = spawn_worker(redis_server.url, keys, "rescuer", **FAST_CLAIM)
    wait_for(lambda: client.xlen(keys.results) >= len(sent), 90, "every decision")

    sleeper.send_signal(signal.SIGCONT)
    wait_for(
        lambda: '"publish_discarded"' in (tmp_path / "sleeper.log").read_text(),
        30,
        "the late publish to be refused",
    )
    stop_all(sleeper, rescuer)
    decided = audit(
        client,
        keys,
        sent,
        reliability,
        "worker SIGSTOP > claim_idle_ms, then SIGCONT",
        "frames taken over; late publish discarded",
    )
    assert all(n == 1 for n in decided.values())


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_redis_killed_and_restarted_mid_run(
    fsync, redis_factory, keys, spawn_worker, tmp_path, reliability
):
    """Redis SIGKILLed and restarted with AOF: producer and workers reconnect; no frame lost or redone."""
    server = redis_factory(appendonly=True)
    client = server.client()
    if fsync != "always":
        client.config_set("appendfsync", fsync)
    workers = [spawn_worker(server.url, keys, f"w{i}") for i in range(2)]
    for i in range(2):
        wait_for(heartbeat(client, keys, f"w{i}"), 60, f"worker w{i} to start")
    with open(tmp_path / "producer.log", "wb") as log:
        producer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "producer",
                "--source",
                "synthetic:target",
                "--size",
                "128x96",
                "--count",
                "120",
                "--fps",
                "40",
                "--no-progress",
                "--scanner-id",
                "lane-7",
            ],
            env=producer_env(server.url, keys),
            stdout=subprocess.PIPE,
            stderr=log,
        )
    wait_for(lambda: client.xlen(keys.results) >= 30, 60, "the first decisions")
    server.kill()
    time.sleep(1.0)  # producer and workers meet a dead server
    server.restart()
    client = server.client()
    out, _ = producer.communicate(timeout=120)
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["sent"] == 120 and summary["dropped"] == 0
    _, run, last = summary["last_frame_id"].split(":")
    sent = [f"lane-7:{run}:{seq}" for seq in range(int(last) - 119, int(last) + 1)]
    wait_for(lambda: client.xlen(keys.results) >= 120, 90, "every decision")
    stop_all(*workers)
    decided = Counter(e["frame_id"] for e in events(client, keys.results))
    assert set(decided) <= set(sent)
    audit(
        client,
        keys,
        sent,
        reliability,
        f"Redis SIGKILL + restart, AOF appendfsync {fsync}",
        "reconnect with back-off; acked frames not redone",
    )
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(2))
    assert '"redis_unavailable"' in logs
    assert '"duplicate_frame"' not in logs


def test_three_workers_share_a_burst(redis_server, keys, spawn_worker, reliability):
    """Three workers on one stream split a burst with no duplicates and no losses."""
    client = redis_server.client()
    workers = [spawn_worker(redis_server.url, keys, f"w{i}") for i in range(3)]
    for i in range(3):
        wait_for(heartbeat(client, keys, f"w{i}"), 60, f"worker w{i} to start")
    sent = push_frames(client, keys, 240)
    wait_for(lambda: client.xlen(keys.results) >= len(sent), 120, "every decision")
    stop_all(*workers)
    audit(client, keys, sent, reliability, "3 workers, burst of 240", "shared, exactly once")
    shares = Counter(e["worker_id"] for e in events(client, keys.results))
    assert set(shares) == {"w0", "w1", "w2"}, shares


def test_sigterm_under_load_drains_within_bound(
    redis_server, keys, spawn_worker, tmp_path, reliability
):
    """SIGTERM with a deep backlog: the worker finishes what it holds and exits 0 within 20 s."""
    client = redis_server.client()
    proc = spawn_worker(redis_server.url, keys, "drainer", SCANGUARD_MODEL__MAX_BATCH="16")
    wait_for(heartbeat(client, keys, "drainer"), 60, "the worker to start")
    sent = push_frames(client, keys, 300, size_hw=(480, 640))
    wait_for(lambda: client.xlen(keys.results) >= 10, 60, "the first decisions")
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    drain_s = time.monotonic() - start
    decided = Counter(e["frame_id"] for e in events(client, keys.results))
    left = client.xlen(keys.frames)
    reliability.record(
        "SIGTERM with 300-frame backlog",
        "drain in-flight frames, exit 0",
        sent=len(sent),
        decided=len(decided),
        dead=0,
        duplicated=sum(n - 1 for n in decided.values()),
        lost=len(sent) - len(decided) - left,
        note=f"drained in {drain_s:.1f} s, {left} frames left unread for other workers",
    )
    assert drain_s < 20
    assert client.xpending(keys.frames, "workers")["pending"] == 0
    assert len(decided) + left == len(sent)
