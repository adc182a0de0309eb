"""Downstream delivery: dispatcher, RQ worker processes in burst mode, webhook and archive sinks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shared.delivery.dispatcher import Dispatcher
from shared.delivery.jobs import job_id, make_queue, run_delivery
from shared.delivery.signatures import WebhookVerificationError, verify
from shared.delivery.sinks import ArchiveSink, resolve_sink
from shared.keys import Keys
from shared.settings import load_settings
from tests.test_client import make_event, publish

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-shared-secret"


@dataclass
class Hook:
    """What the local webhook receiver saw: every call, and the bodies it accepted."""

    fail_first: int
    calls: list[dict[str, str]] = field(default_factory=list)
    accepted: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def webhook() -> Iterator[tuple[str, Hook]]:
    """An HTTP server on 127.0.0.1 that answers 500 to the first two POSTs and 200 after."""
    hook = Hook(fail_first=2)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with hook.lock:
                hook.calls.append(dict(self.headers))
                ok = len(hook.calls) > hook.fail_first
                if ok:
                    hook.accepted.append(body)
            self.send_response(200 if ok else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", hook
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def delivery_env(server, keys: Keys, tmp_path: Path, **delivery: str) -> dict[str, str]:
    """Environment for dispatcher settings and the RQ worker process alike."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANGUARD_")}
    env |= {
        "SCANGUARD_REDIS_URL": server.url,
        "SCANGUARD_NAMESPACE": keys.namespace,
        "SCANGUARD_LOG_FORMAT": "json",
        "SCANGUARD_DELIVERY__QUEUE": f"q-{keys.namespace}",
        "SCANGUARD_DELIVERY__ARCHIVE_DIR": str(tmp_path / "archive"),
        "SCANGUARD_DELIVERY__RETRY_BASE_S": "1",
        "SCANGUARD_DELIVERY__RETRIES": "3",
        "SCANGUARD_DELIVERY__FROM_START": "true",
    }
    env |= {f"SCANGUARD_DELIVERY__{k.upper()}": v for k, v in delivery.items()}
    return env


def dispatch(server, env: dict[str, str], monkeypatch) -> Dispatcher:
    """Run a dispatcher in this process until no new entries wait; return it."""
    for name, value in env.items():
        if name.startswith("SCANGUARD_"):
            monkeypatch.setenv(name, value)
    dispatcher = Dispatcher(load_settings(), server.client())
    dispatcher.run(burst=True)
    return dispatcher


# A burst worker with the scheduler enqueues the retries that are due, works the queue and
# returns; this loop runs it again until no job waits in the queue or in the retry schedule.
DRAIN = """
import sys, time
from redis import Redis
from rq import Queue, Worker
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer
url, name, deadline = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
queue = Queue(name, connection=Redis.from_url(url), serializer=JSONSerializer)
while time.monotonic() < deadline:
    Worker([queue], connection=queue.connection, serializer=JSONSerializer).work(
        burst=True, with_scheduler=True, logging_level="WARNING")
    if queue.count == 0 and ScheduledJobRegistry(queue=queue).count == 0:
        sys.exit(0)
    time.sleep(0.2)
sys.exit("delivery jobs still waiting after the deadline")
"""


def run_rq_workers(server, env: dict[str, str], deadline_s: float = 30.0) -> None:
    """Run an RQ burst worker (with its scheduler) in a child process until all jobs are done."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            DRAIN,
            server.url,
            env["SCANGUARD_DELIVERY__QUEUE"],
            str(deadline_s),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=deadline_s + 30,
    )
    assert done.returncode == 0, done.stderr


def rq_info(server, env: dict[str, str]) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "info",
            "--raw",
            "--only-queues",
            "-u",
            server.url,
            env["SCANGUARD_DELIVERY__QUEUE"],
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_webhook_gets_each_event_once_with_a_valid_signature(
    redis_server, keys, tmp_path, webhook, monkeypatch
):
    """Two failed calls are retried with back-off; the event arrives once, signed, even when redelivered."""
    url, hook = webhook
    client = redis_server.client()
    event = make_event(keys, 1)
    publish(client, keys, event)
    env = delivery_env(
        redis_server, keys, tmp_path, sinks='["webhook"]', webhook_url=url, webhook_secret=SECRET
    )

    first = dispatch(redis_server, env, monkeypatch)
    run_rq_workers(redis_server, env)
    # The dispatcher's group is rewound, as after a crash between enqueue and ack.
    client.xgroup_setid(keys.alerts, "dispatch", "0")
    again = dispatch(redis_server, env, monkeypatch)
    run_rq_workers(redis_server, env)

    assert (first.enqueued, again.enqueued, again.duplicates) == (1, 0, 1)
    assert len(hook.calls) == 3 and len(hook.accepted) == 1
    body = hook.accepted[0]
    assert json.loads(body)["event_id"] == event.event_id
    headers = hook.calls[-1]
    delivery_id = job_id(keys.namespace, "webhook", event.event_id)
    assert verify(SECRET, body, headers) == delivery_id
    with pytest.raises(WebhookVerificationError):
        verify("another-secret", body, headers)
    # Every attempt carries the same webhook-id (the receiver's idempotency key).
    assert {{k.lower(): v for k, v in call.items()}["webhook-id"] for call in hook.calls} == {
        delivery_id
    }
    assert client.xpending(keys.alerts, "dispatch")["pending"] == 0
    assert "1 finished, 0 failed" in rq_info(redis_server, env)


def test_failed_jobs_show_in_rq_info(redis_server, keys, tmp_path, webhook, monkeypatch):
    """A webhook that keeps failing leaves the job in RQ's failed registry once retries run out."""
    url, hook = webhook
    hook.fail_first = 100
    client = redis_server.client()
    publish(client, keys, make_event(keys, 7))
    env = delivery_env(
        redis_server,
        keys,
        tmp_path,
        sinks='["webhook"]',
        webhook_url=url,
        webhook_secret=SECRET,
        retries="1",
    )

    dispatch(redis_server, env, monkeypatch)
    run_rq_workers(redis_server, env)

    assert len(hook.calls) == 2 and hook.accepted == []
    assert "0 finished, 1 failed" in rq_info(redis_server, env)


def test_archive_holds_every_event_once(redis_server, keys, tmp_path, monkeypatch):
    """Events from both streams land once each in a dated folder with their artefacts."""
    client = redis_server.client()
    sent = []
    for n in range(5):
        event = make_event(keys, n, threat=n % 2 == 0, artefacts=n % 2 == 0)
        publish(client, keys, event, stream="results")
        if n % 2 == 0:
            publish(client, keys, event, stream="alerts")
        sent.append(event)
    env = delivery_env(
        redis_server, keys, tmp_path, sinks='["archive"]', streams='["results", "alerts"]'
    )

    dispatch(redis_server, env, monkeypatch)
    run_rq_workers(redis_server, env)
    client.xgroup_setid(keys.results, "dispatch", "0")
    dispatch(redis_server, env, monkeypatch)
    run_rq_workers(redis_server, env)

    root = tmp_path / "archive"
    folders = sorted(
        p for p in root.rglob("*") if p.is_dir() and len(p.relative_to(root).parts) == 4
    )
    assert [p.name for p in folders] == sorted(e.event_id for e in sent)
    assert all(p.relative_to(root).parts[:3] == ("2026", "05", "01") for p in folders)
    for event in sent:
        folder = root / "2026" / "05" / "01" / event.event_id
        assert json.loads((folder / "event.json").read_text())["event_id"] == event.event_id
        expected = (
            {"event.json", "masked.jpg", "heatmap.png"} if event.artefacts else {"event.json"}
        )
        assert {p.name for p in folder.iterdir()} == expected
    assert not [p for p in root.rglob(".*")], "no staging folders may be left behind"


def test_archive_is_idempotent_in_process(redis_client, keys, tmp_path):
    """Delivering the same event twice to the archive writes it once and reports the second."""
    event = make_event(keys, 3, artefacts=True)
    publish(redis_client, keys, event)
    sink = ArchiveSink(tmp_path)
    first = run_delivery(sink, event.to_json(), keys.namespace, redis_client, "d1")
    second = run_delivery(sink, event.to_json(), keys.namespace, redis_client, "d1")
    assert first.startswith("archived in") and second.startswith("already archived")
    assert (sink.folder(event) / "masked.jpg").read_bytes().startswith(b"\xff\xd8")


def test_sinks_resolve_by_name_or_dotted_path():
    """Built-in names and dotted paths resolve to factories; a bad path is a clear error."""
    assert resolve_sink("archive") is resolve_sink("shared.delivery.sinks.archive_from_settings")
    with pytest.raises(ValueError, match="cannot import"):
        resolve_sink("no_such_package.sinks.Sink")
    with pytest.raises(ValueError, match="dotted path"):
        resolve_sink("ftp")


def test_dispatcher_resumes_its_own_pending_entries(redis_server, keys, tmp_path, monkeypatch):
    """Entries a dispatcher read but never acknowledged are enqueued on restart; an unreadable one is acknowledged, counted and left on the stream."""
    client = redis_server.client()
    for n in range(3):
        publish(client, keys, make_event(keys, n))
    client.xgroup_create(keys.alerts, "dispatch", id="0")
    client.xreadgroup("dispatch", "d1", {keys.alerts: ">"}, count=2)  # then it died
    client.xadd(keys.alerts, {"event": "{not json"})
    env = delivery_env(redis_server, keys, tmp_path, sinks='["archive"]', consumer="d1")

    first = dispatch(redis_server, env, monkeypatch)
    second = dispatch(redis_server, env, monkeypatch)

    assert (first.enqueued, second.enqueued) == (3, 0)
    assert make_queue(client, env["SCANGUARD_DELIVERY__QUEUE"]).count == 3
    assert (first.unreadable, second.unreadable) == (1, 0)
    assert client.xpending(keys.alerts, "dispatch")["pending"] == 0  # none left to wedge the group
    assert client.xlen(keys.alerts) == 4  # the unreadable entry stays for inspection
