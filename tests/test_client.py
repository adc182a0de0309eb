"""The event client and the alerts CLI against real streams filled with DecisionEvent JSON."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from shared.backoff import Backoff
from shared.client import EventClient, EventError, parse_event
from shared.keys import Keys
from shared.schemas import ArtefactRef, DecisionEvent, Detection, ModelRef, Thresholds

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=timezone.utc)
JPEG_BYTES = b"\xff\xd8\xff\xe0fake-jpeg"
PNG_BYTES = b"\x89PNG\r\n\x1a\nfake-png"


def make_event(keys: Keys, n: int, threat: bool = True, artefacts: bool = False) -> DecisionEvent:
    """A complete decision event numbered `n` (threats detect a gun at 0.93)."""
    event_id = f"ev-{n}"
    refs = []
    if artefacts:
        for kind, content_type, data in (
            ("masked", "image/jpeg", JPEG_BYTES),
            ("heatmap", "image/png", PNG_BYTES),
        ):
            refs.append(
                ArtefactRef(
                    kind=kind,
                    key=keys.artefact(event_id, kind),
                    content_type=content_type,
                    bytes=len(data),
                    width=8,
                    height=8,
                    expires_at=T0 + timedelta(days=1),
                )
            )
    return DecisionEvent(
        event_id=event_id,
        frame_id=f"lane-1:run:{n}",
        entry_id=f"{n}-0",
        scanner_id="lane-1",
        captured_at=T0,
        enqueued_at=T0,
        decided_at=T0 + timedelta(milliseconds=84),
        latency_ms=84.0,
        decision="threat" if threat else "clear",
        detections=[Detection(class_id=1, label="gun", probability=0.93)] if threat else [],
        probabilities={"benign": 0.05, "gun": 0.93, "knife": 0.02},
        trace=[{"gun": 0.4}, {"gun": 0.93}],
        iterations=2,
        forward_passes=3,
        thresholds=Thresholds(
            detect_th=0.1,
            reconsider_th=0.001,
            max_iter=5,
            on_exhausted="undetermined",
            judge_original=False,
            head_fusion="mean",
            fill=0.0,
        ),
        model=ModelRef(id="vit-tiny", checksum="abc", labels=["benign", "gun", "knife"]),
        worker_id="w1",
        artefacts=refs,
    )


def publish(client: redis.Redis, keys: Keys, event: DecisionEvent, stream: str = "alerts") -> str:
    """Write an event the way a worker does: one `event` field; artefacts as TTL'd strings."""
    for ref in event.artefacts:
        client.set(ref.key, JPEG_BYTES if ref.kind == "masked" else PNG_BYTES, ex=3600)
    key = keys.alerts if stream == "alerts" else keys.results
    return client.xadd(key, {"event": event.to_json()}).decode()


def wait_for_blocked_reader(
    client: redis.Redis, command: str = "xread", timeout_s: float = 10.0
) -> None:
    """Poll CLIENT LIST until some connection is blocked in `command`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(c.get("cmd") == command and "b" in c.get("flags", "") for c in client.client_list()):
            return
        time.sleep(0.005)
    raise AssertionError(f"no client blocked in {command}")


@pytest.mark.redis
def test_replay_pages_through_history_in_order(redis_client, keys):
    """Replay returns every event oldest first across pages, and can start after an id."""
    ids = [publish(redis_client, keys, make_event(keys, n)) for n in range(7)]
    events = EventClient(redis_client, keys)
    assert [r.event.event_id for r in events.replay("alerts", page=3)] == [
        f"ev-{n}" for n in range(7)
    ]
    assert [r.entry_id for r in events.replay("alerts", start=ids[4])] == ids[4:]


@pytest.mark.redis
def test_unreadable_entries_are_skipped(redis_client, keys):
    """An entry that is not a decision event is logged and skipped, not fatal."""
    publish(redis_client, keys, make_event(keys, 1))
    redis_client.xadd(keys.alerts, {"event": "{not json"})
    redis_client.xadd(keys.alerts, {"other": "x"})
    publish(redis_client, keys, make_event(keys, 2))
    got = [r.event.event_id for r in EventClient(redis_client, keys).replay("alerts")]
    assert got == ["ev-1", "ev-2"]
    with pytest.raises(EventError):
        parse_event({b"other": b"x"})


@pytest.mark.redis
def test_follow_yields_only_new_events(redis_client, redis_server, keys):
    """Following from "$" skips the history and yields events published afterwards."""
    publish(redis_client, keys, make_event(keys, 0))
    events = EventClient(redis_client, keys)
    follow = events.follow("alerts", block_ms=5_000)

    def publish_when_blocked() -> None:
        with redis_server.client() as writer:
            wait_for_blocked_reader(writer)
            for n in (1, 2):
                publish(writer, keys, make_event(keys, n))

    writer = threading.Thread(target=publish_when_blocked)
    writer.start()
    got = [next(follow).event.event_id, next(follow).event.event_id]
    writer.join(timeout=10)
    follow.close()
    assert got == ["ev-1", "ev-2"]


@pytest.mark.redis
def test_follow_from_start_then_stop(redis_client, keys):
    """Following from "0" yields the history first, and a set stop event ends the iteration."""
    for n in range(3):
        publish(redis_client, keys, make_event(keys, n), stream="results")
    stop = threading.Event()
    got = []
    for received in EventClient(redis_client, keys).follow(
        "results", last_id="0", block_ms=100, stop=stop
    ):
        got.append(received.event.event_id)
        if len(got) == 3:
            stop.set()
    assert got == ["ev-0", "ev-1", "ev-2"]


@pytest.mark.redis
def test_consumer_group_delivers_once_and_keeps_unacked(redis_client, keys):
    """A group hands each event to one consumer; unacknowledged ones stay pending for it."""
    events = EventClient(redis_client, keys)
    assert events.ensure_group("results", "archive") is True
    assert events.ensure_group("results", "archive") is False
    for n in range(3):
        publish(redis_client, keys, make_event(keys, n), stream="results")
    first = events.read_group("results", "archive", "a1", count=10, block_ms=1_000)
    assert [r.event.event_id for r in first] == ["ev-0", "ev-1", "ev-2"]
    assert events.read_group("results", "archive", "a2", block_ms=50) == []
    assert events.ack("results", "archive", first[0].entry_id, first[1].entry_id) == 2
    pending = events.read_group("results", "archive", "a1", pending=True)
    assert [r.entry_id for r in pending] == [first[2].entry_id]


@pytest.mark.redis
def test_artefacts_fetch_and_save(redis_client, keys, tmp_path):
    """Artefacts are fetched by key and saved by event id and kind; expired ones are skipped."""
    event = make_event(keys, 5, artefacts=True)
    publish(redis_client, keys, event)
    events = EventClient(redis_client, keys)
    received = next(events.replay("alerts"))
    masked, heatmap = received.event.artefacts
    assert events.artefact(masked) == JPEG_BYTES
    assert events.artefact(heatmap.key) == PNG_BYTES
    saved = events.save_artefacts(received.event, tmp_path / "out")
    assert sorted(p.name for p in saved) == ["ev-5-heatmap.png", "ev-5-masked.jpg"]
    assert (tmp_path / "out" / "ev-5-masked.jpg").read_bytes() == JPEG_BYTES
    redis_client.delete(heatmap.key)
    assert events.artefact(heatmap) is None
    assert [p.name for p in events.save_artefacts(received.event, tmp_path / "again")] == [
        "ev-5-masked.jpg"
    ]


@pytest.mark.redis
def test_alerts_cli_prints_and_saves(redis_server, redis_client, keys, tmp_path):
    """`scanguard-alerts tail --from-start --count 2 --save DIR` prints two alerts and their artefacts."""
    publish(redis_client, keys, make_event(keys, 1, artefacts=True))
    publish(redis_client, keys, make_event(keys, 2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANGUARD_")}
    env |= {
        "SCANGUARD_REDIS_URL": redis_server.url,
        "SCANGUARD_NAMESPACE": keys.namespace,
        "SCANGUARD_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.alerts_cli",
            "tail",
            "--from-start",
            "--count",
            "2",
            "--save",
            str(tmp_path / "alerts"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "THREAT" in line]
    assert len(lines) == 2
    assert all(
        "lane-1" in line
        and "gun 0.930" in line
        and "iterations 2" in line
        and "latency 84 ms" in line
        for line in lines
    )
    assert sorted(p.name for p in (tmp_path / "alerts").iterdir()) == [
        "ev-1-heatmap.png",
        "ev-1-masked.jpg",
    ]


@pytest.mark.redis
def test_follow_resumes_after_a_redis_restart(redis_factory, keys):
    """A follower survives a server kill and restart and continues after the last event it saw."""
    server = redis_factory(appendonly=True)
    with server.client() as writer:
        publish(writer, keys, make_event(keys, 1))
    got: list[str] = []
    first, stop = threading.Event(), threading.Event()

    def follow() -> None:
        with server.client() as reader:
            events = EventClient(reader, keys, backoff=Backoff(0.01, 0.2))
            for received in events.follow("alerts", last_id="0", block_ms=1_000, stop=stop):
                got.append(received.event.event_id)
                first.set()
                if len(got) == 2:
                    return

    follower = threading.Thread(target=follow)
    follower.start()
    assert first.wait(timeout=10)
    server.kill()
    server.restart()
    with server.client() as writer:
        publish(writer, keys, make_event(keys, 2))
    follower.join(timeout=15)
    stop.set()
    assert got == ["ev-1", "ev-2"]
