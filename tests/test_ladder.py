"""The failure ladder on real worker processes: one action per failure class.

A bug tied to one frame dead-letters that frame alone (kind `internal`) and the worker
lives on; an engine failure exits non-zero with nothing half-published, and another
worker decides the frames it left pending.
"""

from __future__ import annotations

import json
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.pipeline_fixtures import events, heartbeat, push_frames, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow]
FAULT_WORKER = [sys.executable, str(Path(__file__).resolve().parent / "fault_worker.py")]


@pytest.mark.parametrize("point", ["decode", "render"])
def test_a_frame_that_breaks_one_stage_is_dead_lettered_alone(
    point, redis_server, keys, spawn_worker, tmp_path
):
    """An exception while decoding or rendering one frame dead-letters it as `internal`; its batch-mates are decided once and the worker keeps running."""
    client = redis_server.client()
    worker = spawn_worker(
        redis_server.url,
        keys,
        "w1",
        point,
        "raise",
        command=FAULT_WORKER,
        SCANGUARD_TEST_FAULT_FRAME="frame-5",
    )
    wait_for(heartbeat(client, keys, "w1"), 60, "the worker to start")
    sent = push_frames(client, keys, 12)
    wait_for(
        lambda: client.xlen(keys.results) + client.xlen(keys.dead) >= len(sent),
        90,
        "every frame to end",
    )

    dead = client.xrange(keys.dead)
    assert len(dead) == 1
    letter = json.loads(dead[0][1][b"event"])
    assert letter["frame_id"] == "frame-5"
    assert letter["kind"] == "internal"
    assert letter["reason"] == "RuntimeError: injected fault (frame frame-5)"
    assert dead[0][1][b"frame_image"], "the frame's own bytes are kept with the letter"

    decided = Counter(e["frame_id"] for e in events(client, keys.results))
    assert set(decided) == set(sent) - {"frame-5"}
    assert max(decided.values()) == 1
    assert client.xpending(keys.frames, "workers")["pending"] == 0

    assert worker.poll() is None, "the worker died on one frame's bug"
    log = (tmp_path / "w1.log").read_text()
    assert log.count(f'"{point}_failed"') == 1, "the traceback is logged once"
    assert "Traceback" in log
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0


def test_an_engine_failure_exits_non_zero_and_leaves_frames_for_others(
    redis_server, keys, spawn_worker, tmp_path
):
    """An exception from the engine step exits 1 with nothing published for that step; another worker decides every frame exactly once."""
    client = redis_server.client()
    fast_claim = {"SCANGUARD_WORKER__CLAIM_IDLE_MS": "1000"}
    victim = spawn_worker(
        redis_server.url, keys, "victim", "step", "raise", command=FAULT_WORKER, **fast_claim
    )
    wait_for(heartbeat(client, keys, "victim"), 60, "the victim to start")
    sent = push_frames(client, keys, 8)
    assert victim.wait(timeout=60) == 1
    log = (tmp_path / "victim.log").read_text()
    assert '"engine_failed"' in log
    assert client.xlen(keys.dead) == 0
    assert client.xlen(keys.results) == 0, "a failed step published a decision"
    assert client.exists(keys.worker("victim")) == 0, "the heartbeat outlived the process"

    rescuer = spawn_worker(redis_server.url, keys, "rescuer", **fast_claim)
    wait_for(lambda: client.xlen(keys.results) >= len(sent), 90, "every decision")
    rescuer.send_signal(signal.SIGTERM)
    assert rescuer.wait(timeout=60) == 0
    decided = Counter(e["frame_id"] for e in events(client, keys.results))
    assert set(decided) == set(sent)
    assert max(decided.values()) == 1
    assert client.xlen(keys.dead) == 0
    assert client.xlen(keys.frames) == 0
