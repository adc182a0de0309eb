"""Every process's metrics show on its /metrics after real traffic: dispatcher, RQ side, producer."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from shared.delivery.metrics import record_attempt
from shared.keys import Keys
from shared.metrics_http import serve
from tests.redis_procs import free_port
from tests.test_client import make_event, publish
from tests.test_delivery import delivery_env, run_rq_workers

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 30.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """GET /metrics on 127.0.0.1:port, as {(sample name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@dataclass
class Child:
    """A scanguard process with its output in files."""

    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, port: int, ready: Callable[[Samples], bool]) -> Samples:
        """Scrape until `ready` holds; fail if the process exits or time runs out first."""
        deadline = time.monotonic() + WAIT_S
        samples: Samples = {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"exited {self.process.returncode}:\n{self.stderr()}")
            try:
                samples = scrape(port)
            except OSError:  # not listening yet
                samples = {}
            if samples and ready(samples):
                return samples
            time.sleep(0.1)  # polling an HTTP endpoint; nothing to block on
        raise AssertionError(f"not ready in {WAIT_S} s; last scrape {samples}\n{self.stderr()}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=WAIT_S)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Start `python -m MODULE ARGS` with an environment; leftovers are killed."""
    children: list[Child] = []

    def run(module: str, args: list[str], env: dict[str, str]) -> Child:
        full = {k: v for k, v in os.environ.items() if not k.startswith("SCANGUARD_")} | env
        n = len(children)
        out, err = tmp_path / f"child{n}.out", tmp_path / f"child{n}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=ROOT,
                env=full,
                stdout=stdout,
                stderr=stderr,
            )
        children.append(Child(process, out, err))
        return children[-1]

    yield run
    for child in children:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()


@pytest.fixture
def picky_webhook() -> Iterator[str]:
    """A receiver that fails each delivery's first attempt, and every attempt of event `ev-2`."""
    seen: set[str] = set()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                first = self.headers["webhook-id"] not in seen
                seen.add(self.headers["webhook-id"])
            ok = not first and self.headers["X-Scanguard-Event-Id"] != "ev-2"
            self.send_response(200 if ok else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# -- the dispatcher and the RQ workers ------------------------------------------------


def test_dispatcher_metrics_count_enqueues_duplicates_unreadable_and_rq_outcomes(
    redis_server, keys, tmp_path, picky_webhook, start
):
    """A real dispatcher and RQ worker: every delivery metric moves as the traffic says."""
    client = redis_server.client()
    for n in (1, 2):
        publish(client, keys, make_event(keys, n))
    client.xadd(keys.alerts, {"event": "{not json"})
    env = delivery_env(
        redis_server,
        keys,
        tmp_path,
        sinks='["webhook", "archive"]',
        webhook_url=picky_webhook,
        webhook_secret="a-raw-shared-secret",
        retries="1",
    )
    port = free_port()
    dispatcher = start("shared.delivery", ["--metrics-port", str(port)], env)

    def enqueued(samples: Samples) -> bool:
        return all(
            value(samples, "scanguard_delivery_enqueued_total", sink=sink) == 2
            for sink in ("webhook", "archive")
        )

    before = dispatcher.wait_for(port, enqueued)
    assert value(before, "scanguard_delivery_unreadable_total", stream="alerts") == 1
    assert value(before, "scanguard_delivery_queued_jobs") == 4
    for sink in ("webhook", "archive"):
        assert value(before, "scanguard_delivery_duplicates_total", sink=sink) == 0
        for outcome in ("succeeded", "retried", "failed"):
            assert (
                value(before, "scanguard_delivery_attempts_total", sink=sink, outcome=outcome) == 0
            )

    run_rq_workers(redis_server, env)
    client.xgroup_setid(keys.alerts, "dispatch", "0")  # every entry comes round again

    def redelivered(samples: Samples) -> bool:
        return all(
            value(samples, "scanguard_delivery_duplicates_total", sink=sink) == 2
            for sink in ("webhook", "archive")
        )

    after = dispatcher.wait_for(port, redelivered)
    assert dispatcher.stop() == 0, dispatcher.stderr()

    attempts = {
        (sink, outcome): value(
            after, "scanguard_delivery_attempts_total", sink=sink, outcome=outcome
        )
        for sink in ("webhook", "archive")
        for outcome in ("succeeded", "retried", "failed")
    }
    # ev-1: failed once, retried, delivered; ev-2: failed, retried, failed for good.
    assert attempts == {
        ("webhook", "succeeded"): 1,
        ("webhook", "retried"): 2,
        ("webhook", "failed"): 1,
        ("archive", "succeeded"): 2,
        ("archive", "retried"): 0,
        ("archive", "failed"): 0,
    }
    assert value(after, "scanguard_delivery_enqueued_total", sink="webhook") == 2
    assert value(after, "scanguard_delivery_unreadable_total", stream="alerts") == 2
    assert value(after, "scanguard_delivery_queued_jobs") == 0


def test_attempt_counts_never_fail_a_delivery(keys):
    """Recording an outcome with Redis unreachable logs and returns: the delivery stands."""
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    record_attempt(dead, keys.namespace, "webhook", "succeeded")
    with pytest.raises(ValueError, match="outcome"):
        record_attempt(dead, keys.namespace, "webhook", "lost")


# -- the producer ---------------------------------------------------------------------


def producer_env(url: str, keys: Keys) -> dict[str, str]:
    return {
        "SCANGUARD_REDIS_URL": url,
        "SCANGUARD_NAMESPACE": keys.namespace,
        "SCANGUARD_LOG_FORMAT": "json",
    }


SYNTHETIC = [
    "--source",
    "synthetic:target",
    "--size",
    "64x64",
    "--no-progress",
    "--max-backlog",
    "3",
]


def frames(samples: Samples, outcome: str) -> float | None:
    return value(samples, "scanguard_producer_frames_total", scanner="lane-1", outcome=outcome)


def test_producer_metrics_under_drop_backpressure(redis_server, keys, start):
    """With no workers and 'drop', 3 frames go out, the rest are dropped, and /metrics says so."""
    port = free_port()
    args = [*SYNTHETIC, "--backpressure", "drop", "--fps", "100", "--metrics-port", str(port)]
    producer = start("producer", args, producer_env(redis_server.url, keys))

    samples = producer.wait_for(port, lambda s: (frames(s, "dropped") or 0) >= 5)

    assert frames(samples, "sent") == 3 and frames(samples, "abandoned") == 0
    assert value(samples, "scanguard_producer_backlog") == 3
    assert value(samples, "scanguard_producer_blocked_seconds_total") == 0
    assert value(samples, "scanguard_producer_reconnects_total") == 0
    for kind in ("out_of_memory", "misconf", "read_only"):
        assert value(samples, "scanguard_redis_refusals_total", kind=kind) == 0
    assert producer.stop() == 0, producer.stderr()
    summary = json.loads(producer.out.read_text().splitlines()[-1])
    assert summary["sent"] == 3 and summary["dropped"] >= frames(samples, "dropped")


def test_producer_metrics_while_blocked_and_refused(redis_factory, keys, start):
    """Blocked seconds grow while the producer waits; a refused XADD is counted by kind."""
    server = redis_factory()
    if not server.controllable:
        pytest.skip("needs a server of its own to refuse writes (SCANGUARD_TEST_REDIS_URL is set)")
    client = server.client()
    port = free_port()
    args = [*SYNTHETIC, "--backpressure", "block", "--metrics-port", str(port)]
    producer = start("producer", args, producer_env(server.url, keys))

    blocked = producer.wait_for(
        port, lambda s: (value(s, "scanguard_producer_blocked_seconds_total") or 0) > 0
    )
    time.sleep(0.3)  # the wait goes on: the counter grows while it does
    later = scrape(port)
    assert frames(blocked, "sent") == 3 and value(blocked, "scanguard_producer_backlog") == 3
    assert value(later, "scanguard_producer_blocked_seconds_total") > value(
        blocked, "scanguard_producer_blocked_seconds_total"
    )

    # Out of memory under noeviction: XTRIM still runs (it frees memory), XADD is refused.
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        client.xtrim(keys.frames, maxlen=0)
        refused = producer.wait_for(
            port,
            lambda s: (value(s, "scanguard_redis_refusals_total", kind="out_of_memory") or 0) > 0,
        )
    finally:
        client.config_set("maxmemory", 0)
    assert frames(refused, "sent") == 3
    producer.wait_for(port, lambda s: (frames(s, "sent") or 0) > 3)
    assert producer.stop() == 0, producer.stderr()
    client.close()


# -- start-up errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "setting"),
    [
        ("producer", "SCANGUARD_PRODUCER__METRICS_PORT"),
        ("shared.delivery", "SCANGUARD_DELIVERY__METRICS_PORT"),
    ],
)
def test_a_taken_metrics_port_is_one_line_naming_the_setting(
    redis_server, keys, tmp_path, start, module, setting
):
    """Another process on the port: exit 2 with one line that names the setting."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = delivery_env(redis_server, keys, tmp_path, sinks='["archive"]')
        child = start(module, ["--metrics-port", str(port)], env)
        assert child.process.wait(timeout=WAIT_S) == 2
    (line,) = child.stderr().strip().splitlines()
    assert setting in line and f"port {port}" in line
    assert child.out.read_text() == ""


def test_port_zero_serves_nothing():
    """Port 0 is metrics off, not a port chosen by the kernel."""
    assert serve(CollectorRegistry(), 0, "SOME_SETTING") is None
