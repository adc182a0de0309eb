"""Hostile producers and exhausted Redis against real worker processes.

Every case here was reproduced as an attacker or an unlucky operator would meet it:
frames whose `meta` or pixels crash or hide things, a Redis at `maxmemory`, settings and
resources that are wrong at start. The worker must survive its first run, decide every
innocent frame exactly once, and dead-letter each hostile frame with its own reason.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from shared.client import parse_event
from shared.keys import Keys, check_id
from shared.schemas import FrameFields
from tests.pipeline_fixtures import encode, events, frame_image, heartbeat, push_frames, wait_for
from tests.redis_procs import RedisProcess, find_binary, free_port

pytestmark = [pytest.mark.redis]
ROOT = Path(__file__).resolve().parent.parent


def hostile_frame(
    frame_id: str, *, meta_text: str | None = None, image: bytes | None = None
) -> dict[str, bytes | str]:
    """A frame entry whose `meta` text or image bytes are given raw, as an attacker sends them."""
    fields = FrameFields(
        frame_id=frame_id,
        scanner_id="lane-x",
        captured_at=datetime.now(timezone.utc),
        content_type="image/png",
    ).to_fields(image if image is not None else encode(frame_image(7), "image/png"))
    if meta_text is not None:
        fields["meta"] = meta_text
    return fields


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def tall_png(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((height, width, 3), 40, np.uint8))
    assert ok
    return buf.tobytes()


HOSTILE = {
    # case 1: each of these crashed every worker that touched it
    "big-int": dict(meta_text='{"n":' + "7" * 5000 + "}"),
    "deep-5000": dict(meta_text='{"a":' + "[" * 5000 + "]" * 5000 + "}"),
    "surrogate": dict(meta_text='{"s":"\\ud800"}'),
    # case 2: a side the JPEG encoder refuses (70,000 x 57 px, under the pixel limit)
    "tall": dict(image=tall_png(70_000, 57)),
    # case 3: deep enough for the readers to refuse the published event
    "deep-220": dict(meta_text=nested(220)),
    # case 6: 4 MB of meta on a small image
    "fat-meta": dict(meta_text=json.dumps({"pad": "x" * 4_000_000})),
}
REASONS = {
    "big-int": "field 'meta' is not usable JSON: Exceeds the limit (4300 digits)",
    "deep-5000": "field 'meta' nests deeper than 16 levels",
    "surrogate": "field 'meta' cannot travel in a decision event",
    "tall": "image is 70000x57, a side over the 16384-pixel limit",
    "deep-220": "field 'meta' nests 220 levels, over the limit of 16",
    "fat-meta": "field 'meta' is 4000011 bytes, over the 16384-byte limit",
}
KINDS = {"tall": "too_large", "fat-meta": "too_large"}


def test_hostile_frames_are_dead_lettered_and_innocent_ones_decided_once(
    redis_server, keys, spawn_worker, tmp_path
):
    """Frames with poisonous meta or an unencodable side are dead-lettered with their reason; the worker lives and decides every batch-mate once."""
    client = redis_server.client()
    worker = spawn_worker(
        redis_server.url,
        keys,
        "w1",
        # Everything would be an alert: the renderer must meet the tall frame, and the
        # readers every published event.
        SCANGUARD_ERASING__DETECT_TH="0.0002",
        SCANGUARD_ERASING__RECONSIDER_TH="0.0001",
        SCANGUARD_WORKER__MAX_FRAME_BYTES=str(256 * 1024),
    )
    wait_for(heartbeat(client, keys, "w1"), 60, "the worker to start")
    sent = push_frames(client, keys, 6)
    for name, parts in HOSTILE.items():
        client.xadd(keys.frames, hostile_frame(name, **parts))
    sent += push_frames(client, keys, 6, start=6)
    total = len(sent) + len(HOSTILE)
    wait_for(lambda: client.xlen(keys.results) + client.xlen(keys.dead) >= total, 90, "every frame")

    decided = Counter(e["frame_id"] for e in events(client, keys.results))
    assert set(decided) == set(sent) and max(decided.values()) == 1
    assert client.xlen(keys.alerts) > 0
    for stream in (keys.results, keys.alerts):
        for _id, fields in client.xrange(stream):
            parse_event(fields)  # what the console and the dispatcher read

    letters = {}
    for _id, fields in client.xrange(keys.dead):
        letter = json.loads(fields[b"event"])
        letters[letter["frame_id"]] = (letter, fields)
    assert set(letters) == set(HOSTILE)
    for name, (letter, fields) in letters.items():
        assert letter["reason"].startswith(REASONS[name]), letter["reason"]
        assert letter["kind"] == KINDS.get(name, "bad_fields")
        assert all(len(value) <= 65_536 for value in fields.values()), "a dead letter is bounded"
    fat = letters["fat-meta"][1]
    assert json.loads(fat[b"frame_truncated"]) == {"meta": 4_000_011}

    assert worker.poll() is None, "a hostile frame crashed the worker"
    assert client.xpending(keys.frames, "workers")["pending"] == 0
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    assert "Traceback" not in (tmp_path / "w1.log").read_text()


def fill_to_the_brim(client) -> None:
    """Put Redis at `maxmemory` under `noeviction`: every write that needs memory is refused."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(used))
    filler = 0
    while True:  # until a small write is refused
        try:
            client.set(f"filler:{filler}", "x" * 1024)
        except redis.exceptions.OutOfMemoryError:
            return
        filler += 1


def test_a_full_redis_is_waited_out_not_crashed_on(redis_factory, spawn_worker, tmp_path):
    """A worker meeting a Redis at maxmemory (at its heartbeat, and a fresh one at XGROUP CREATE) backs off, reports it, and decides every frame once memory is back."""
    server = redis_factory()
    client = server.client()
    keys = Keys("full")
    env = {"SCANGUARD_WORKER__HEARTBEAT_TTL_S": "3", "SCANGUARD_WORKER__RECONNECT_MAX_S": "0.3"}
    running = spawn_worker(server.url, keys, "running", **env)
    wait_for(heartbeat(client, keys, "running"), 60, "the running worker")
    fill_to_the_brim(client)
    fresh = spawn_worker(server.url, keys, "fresh", **env)
    wait_for(
        lambda: all(
            '"redis_refusing"' in (tmp_path / f"{name}.log").read_text()
            for name in ("running", "fresh")
        ),
        60,
        "both workers to meet the refusal",
    )
    time.sleep(2)  # several heartbeats and group creations refused
    assert running.poll() is None and fresh.poll() is None
    health = tmp_path / "scanguard-worker-fresh.alive"
    assert health.read_text() == "redis refusing writes: out_of_memory"

    client.config_set("maxmemory", "0")
    sent = push_frames(client, keys, 10)
    wait_for(lambda: client.xlen(keys.results) >= len(sent), 90, "every decision")
    decided = Counter(e["frame_id"] for e in events(client, keys.results))
    assert set(decided) == set(sent) and max(decided.values()) == 1
    wait_for(lambda: health.read_text() == "", 30, "the health note to clear")
    for proc in (running, fresh):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def run_worker_cli(env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("SCANGUARD_WORKER__ID", "lane 1 worker", "SCANGUARD_WORKER__ID"),
        ("SCANGUARD_WORKER__ID", "w" * 129, "SCANGUARD_WORKER__ID"),
        ("SCANGUARD_WORKER__HEALTH_DIR", "/nonexistent/health", "SCANGUARD_WORKER__HEALTH_DIR"),
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line(setting, value, named, tiny_card):
    """A worker id that is not a safe id, or a missing health folder, ends start-up with exit 2 and one line naming the setting."""
    done = run_worker_cli(
        {
            "SCANGUARD_REDIS_URL": "redis://127.0.0.1:1/0",
            "SCANGUARD_MODEL__CARD": str(tiny_card),
            "SCANGUARD_WORKER__METRICS_PORT": "0",
            setting: value,
        }
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert any(named in line for line in lines), done.stderr
    assert "Traceback" not in done.stderr


def test_a_taken_metrics_port_stops_start_up_with_one_line(tiny_card, tmp_path):
    """A second worker on a host whose metrics port is taken exits 2 naming the setting, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_worker_cli(
            {
                "SCANGUARD_REDIS_URL": "redis://127.0.0.1:1/0",
                "SCANGUARD_MODEL__CARD": str(tiny_card),
                "SCANGUARD_WORKER__METRICS_PORT": str(port),
                "SCANGUARD_WORKER__HEALTH_DIR": str(tmp_path),
            }
        )
    assert done.returncode == 2
    assert "SCANGUARD_WORKER__METRICS_PORT" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_worker_started_before_redis_waits_for_it(tmp_path, spawn_worker):
    """With Redis refusing connections at start the worker backs off, then decides frames once Redis is up."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    keys = Keys("early")
    worker = spawn_worker(url, keys, "early")
    wait_for(
        lambda: '"redis_unavailable"' in (tmp_path / "early.log").read_text(),
        60,
        "the worker to meet the closed port",
    )
    assert worker.poll() is None
    server = RedisProcess(find_binary(), tmp_path / "late-redis", port, False, None, None)
    (tmp_path / "late-redis").mkdir()
    server.start()
    try:
        client = server.client()
        sent = push_frames(client, keys, 4)
        wait_for(lambda: client.xlen(keys.results) >= len(sent), 90, "every decision")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        server.kill()


def test_sigterm_while_idle_is_quick_with_a_long_read_block(redis_server, keys, spawn_worker):
    """A worker told to block up to 60 s on an idle stream still drains within a few seconds of SIGTERM."""
    client = redis_server.client()
    worker = spawn_worker(redis_server.url, keys, "idle", SCANGUARD_WORKER__MAX_WAIT_MS="60000")
    wait_for(heartbeat(client, keys, "idle"), 60, "the worker to start")
    time.sleep(1.5)  # inside an idle read
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert time.monotonic() - started < 5


def test_stale_consumers_are_removed_at_start(redis_server, keys, spawn_worker):
    """Consumer names left by earlier processes, idle and holding nothing, are removed when a worker starts."""
    client = redis_server.client()
    client.xgroup_create(keys.frames, "workers", id="0", mkstream=True)
    for gone in ("host-101", "host-102"):
        client.execute_command("XGROUP", "CREATECONSUMER", keys.frames, "workers", gone)
    time.sleep(1.2)
    worker = spawn_worker(redis_server.url, keys, "fresh-1", SCANGUARD_WORKER__CONSUMER_IDLE_S="1")
    wait_for(heartbeat(client, keys, "fresh-1"), 60, "the worker to start")

    def names() -> set[str]:
        return {c["name"].decode() for c in client.xinfo_consumers(keys.frames, "workers")}

    # A blocked read on an empty stream need not register the live one: only the
    # stale names are asserted gone.
    wait_for(lambda: not names() & {"host-101", "host-102"}, 30, "the stale consumers to go")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0


@pytest.mark.parametrize("bad", ["lane-1\n", "x" * 129, "..", "../../etc", "/abs/path", "a b"])
def test_unsafe_ids_are_refused(bad):
    """Ids with a trailing newline, over 128 characters, or shaped like paths are refused."""
    with pytest.raises(ValueError, match="may only hold"):
        check_id(bad)
    with pytest.raises(ValueError):
        FrameFields(
            frame_id=bad,
            scanner_id="lane-1",
            captured_at=datetime.now(timezone.utc),
            content_type="image/png",
        )
