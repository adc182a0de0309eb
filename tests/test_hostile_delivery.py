"""Delivery under hostile input: unsafe event ids, unreadable entries, a dribbling webhook."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from shared.delivery.jobs import enqueue, job_id, make_queue
from shared.delivery.sinks import ArchiveSink, Delivery, SinkError, webhook_from_settings
from shared.settings import load_settings
from tests.test_client import make_event, publish
from tests.test_delivery import delivery_env, run_rq_workers

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parent.parent
DRIBBLE_S = 1.5  # the slow receiver's pause between two bytes of its answer
RECEIVER_LIMIT_S = 12.0  # the slow receiver hangs up by then, whatever the client does


def with_event_id(body: str, event_id: str) -> str:
    """The event JSON `body` with its event_id replaced, as a hostile producer would write it."""
    record = json.loads(body)
    record["event_id"] = event_id
    return json.dumps(record)


def files_outside(tmp_path: Path, root: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if p != root and not p.is_relative_to(root)]


def run_dispatcher(env: dict[str, str]) -> list[dict]:
    """Run `python -m shared.delivery --burst` as a child process; return its JSON log lines."""
    done = subprocess.run(
        [sys.executable, "-m", "shared.delivery", "--burst"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]


def test_unsafe_ids_and_unreadable_events_are_acknowledged_and_never_archived(
    redis_server, keys, tmp_path
):
    """Events with an absolute or `..` id, or JSON nested too deep, are acked and logged; good ones are archived."""
    client = redis_server.client()
    good = [make_event(keys, n) for n in range(2)]
    publish(client, keys, good[0])
    template = good[0].to_json()
    hostile = {
        "absolute id": with_event_id(template, str(tmp_path / "escaped-absolute")),
        "relative id": with_event_id(template, "../../../../escaped-relative"),
        "dot-dot id": with_event_id(template, ".."),
        "too deep": "[" * 5_000 + "]" * 5_000,
    }
    bad_ids = [client.xadd(keys.alerts, {"event": text}).decode() for text in hostile.values()]
    publish(client, keys, good[1])
    env = delivery_env(redis_server, keys, tmp_path, sinks='["archive"]')
    root = tmp_path / "archive"

    logs = run_dispatcher(env)
    run_rq_workers(redis_server, env)

    assert client.xpending(keys.alerts, "dispatch")["pending"] == 0
    assert client.xlen(keys.alerts) == 2 + len(hostile), "acked entries stay for inspection"
    archived = sorted(p.parent.name for p in root.rglob("event.json"))
    assert archived == sorted(e.event_id for e in good)
    assert files_outside(tmp_path, root) == []
    unreadable = [e for e in logs if e["event"] == "event_unreadable"]
    assert [e["entry_id"] for e in unreadable] == bad_ids
    assert all(e["reason"] for e in unreadable)
    (stopped,) = [e for e in logs if e["event"] == "dispatcher_stopped"]
    assert (stopped["enqueued"], stopped["unreadable"]) == (2, len(hostile))


@pytest.mark.parametrize("event_id", ["/abs/escaped", "../../../../escaped", "..", "a/../../b"])
def test_archive_sink_refuses_ids_that_leave_its_root(redis_client, keys, tmp_path, event_id):
    """An event built without validation still cannot make the archive write outside its root."""
    root = tmp_path / "archive"
    sink = ArchiveSink(root)
    base = make_event(keys, 1)
    if event_id.startswith("/"):
        event_id = str(tmp_path / event_id.lstrip("/"))
    event = base.model_copy(update={"event_id": event_id})  # model_copy skips validation
    delivery = Delivery(event, with_event_id(base.to_json(), event_id), "d1", lambda ref: None)

    with pytest.raises(ValueError, match="event id"):
        sink.folder(event)
    with pytest.raises(ValueError, match="event id"):
        sink.deliver(delivery)
    assert files_outside(tmp_path, root) == []


@pytest.fixture
def dribbling_receiver() -> Iterator[str]:
    """An HTTP receiver on 127.0.0.1 that answers 200 one byte every DRIBBLE_S seconds.

    It serves one connection and hangs up after RECEIVER_LIMIT_S, or as soon as the
    client has gone, so a client without a deadline is not held for ever either.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(RECEIVER_LIMIT_S)
    stop = threading.Event()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\naccepted-slowly\n"

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:  # nobody came, or the listener was closed
            return
        with conn:
            conn.settimeout(RECEIVER_LIMIT_S)
            try:
                conn.recv(65_536)  # the request; its content does not matter here
                until = time.monotonic() + RECEIVER_LIMIT_S
                for byte in answer:
                    if stop.wait(DRIBBLE_S) or time.monotonic() > until:
                        return
                    conn.sendall(bytes([byte]))
            except OSError:  # the client hung up: the point of the test
                return

    thread = threading.Thread(target=serve, name="dribbling-receiver", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    stop.set()
    listener.close()
    thread.join(timeout=RECEIVER_LIMIT_S + 5)


def test_webhook_deadline_bounds_a_dribbling_receiver(keys, dribbling_receiver):
    """A receiver that sends one byte every 1.5 s fails the delivery at webhook_deadline_s, not per read."""
    settings = load_settings(
        delivery={
            "webhook_url": dribbling_receiver,
            "webhook_secret": "s",
            "webhook_timeout_s": 5.0,
            "webhook_deadline_s": 2.0,
        }
    )
    sink = webhook_from_settings(settings)
    event = make_event(keys, 1)

    started = time.monotonic()
    with pytest.raises(SinkError, match="unreachable"):
        sink.deliver(Delivery(event, event.to_json(), "d1", lambda ref: None))
    elapsed = time.monotonic() - started

    assert 1.9 <= elapsed < 4.0, f"the delivery took {elapsed:.1f} s"


def test_delivery_jobs_keep_their_failure_ttl(redis_client, keys):
    """An enqueued delivery job carries failure_ttl_s (failed jobs expire) next to its result TTL."""
    ds = load_settings(delivery={"failure_ttl_s": 3_600, "dedupe_ttl_s": 7_200}).delivery
    queue = make_queue(redis_client, f"q-{keys.namespace}")
    event = make_event(keys, 1)

    assert enqueue(queue, ds, keys.namespace, "archive", event.event_id, event.to_json())

    job = Job.fetch(
        job_id(keys.namespace, "archive", event.event_id),
        connection=redis_client,
        serializer=JSONSerializer,
    )
    assert (job.failure_ttl, job.result_ttl) == (3_600, 7_200)
