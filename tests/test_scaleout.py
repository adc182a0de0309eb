"""Scale-out: 4, 2 and 1 worker processes on one redis-server, throughput and exactly-once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from shared.keys import Keys
from shared.schemas import FrameFields
from tests.pipeline_fixtures import ERASING_ENV, encode, events, frame_image, write_tiny_card

pytestmark = [pytest.mark.redis, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = Path(__file__).resolve().parent / "scaleout_worker.py"
# Simulated device time per engine step: large next to the tiny model's CPU cost, so
# four processes on two cores scale as GPU workers would.
STEP_SLEEP_MS = 80
MAX_BATCH = 4
FRAMES = 96


@pytest.fixture
def fleet(redis_server, tmp_path) -> Iterator[Callable[[Keys, int], list[subprocess.Popen]]]:
    """Start N launcher processes on one namespace; any left running are killed at the end."""
    card = write_tiny_card(tmp_path / "model")
    procs: list[subprocess.Popen] = []

    def start(keys: Keys, size: int) -> list[subprocess.Popen]:
        for index in range(size):
            worker_id = f"w{index}"
            env = {
                **os.environ,
                **ERASING_ENV,
                "PYTHONPATH": str(ROOT),
                "OMP_NUM_THREADS": "1",
                "SCANGUARD_REDIS_URL": redis_server.url,
                "SCANGUARD_NAMESPACE": keys.namespace,
                "SCANGUARD_MODEL__CARD": str(card),
                "SCANGUARD_MODEL__DEVICE": "cpu",
                "SCANGUARD_MODEL__MAX_BATCH": str(MAX_BATCH),
                "SCANGUARD_WORKER__ID": worker_id,
                "SCANGUARD_WORKER__METRICS_PORT": "0",
                "SCANGUARD_WORKER__MAX_WAIT_MS": "50",
                "SCANGUARD_WORKER__HEALTH_DIR": str(tmp_path),
                "SCANGUARD_LOG_FORMAT": "json",
                "SCANGUARD_LOG_LEVEL": "warning",
            }
            log = open(tmp_path / f"{worker_id}.log", "ab")  # noqa: SIM115 - the child owns it
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(LAUNCHER), "--step-sleep-ms", str(STEP_SLEEP_MS)],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=log,
                )
            )
            log.close()
        return list(procs)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def push_run(client, keys: Keys, run: str) -> list[str]:
    """XADD the same FRAMES images under frame ids of their own for this run."""
    ids = []
    pipe = client.pipeline(transaction=False)
    for index in range(FRAMES):
        fields = FrameFields(
            frame_id=f"{run}-{index}",
            scanner_id="lane-1",
            captured_at=datetime.now(timezone.utc),
            content_type="image/jpeg",
        )
        pipe.xadd(keys.frames, fields.to_fields(encode(frame_image(index, (64, 64)))))
        ids.append(fields.frame_id)
    pipe.execute()
    return ids


def measure(client, keys: Keys, run: str) -> tuple[float, list[str]]:
    """Push one run of frames; frames/s until the last is decided, and the frame ids."""
    before = client.xlen(keys.results)
    start = time.perf_counter()
    ids = push_run(client, keys, run)
    wait_for(lambda: client.xlen(keys.results) >= before + FRAMES, 120, f"decisions of {run}")
    return FRAMES / (time.perf_counter() - start), ids


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(timeout=30) for proc in procs] == [0] * len(procs)


def test_throughput_rises_with_workers_and_no_frame_is_lost(redis_server, fleet):
    """4, 2 and 1 workers each decide every frame exactly once, all share it, and more decide faster."""
    client = redis_server.client()
    keys = Keys(f"scale{os.getpid()}")
    procs = fleet(keys, 4)
    for index in range(4):
        wait_for(lambda i=index: client.exists(keys.worker(f"w{i}")) == 1, 180, f"worker w{index}")

    # One fleet shrinks between runs: each run's workers are all warm, and no process
    # start (the slow part on a small machine) sits inside a measurement.
    rate, sent = {}, {}
    rate[4], sent[4] = measure(client, keys, "four")
    stop(procs[2:])
    rate[2], sent[2] = measure(client, keys, "two")
    stop(procs[1:2])
    rate[1], sent[1] = measure(client, keys, "one")
    stop(procs[:1])

    decided = events(client, keys.results)
    assert Counter(e["frame_id"] for e in decided) == Counter(
        i for ids in sent.values() for i in ids
    )
    for size, ids in sent.items():
        run = set(ids)
        shares = Counter(e["worker_id"] for e in decided if e["frame_id"] in run)
        assert set(shares) == {f"w{i}" for i in range(size)}, (
            f"run of {size}: shares {dict(shares)}"
        )
    assert client.xpending(keys.frames, "workers")["pending"] == 0
    assert client.xlen(keys.frames) == 0
    summary = {size: round(value, 1) for size, value in rate.items()}
    assert rate[2] >= 1.4 * rate[1], f"frames/s by workers: {summary}"
    assert rate[4] >= 2.0 * rate[1], f"frames/s by workers: {summary}"
