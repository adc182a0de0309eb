"""The console's live stream at scale: one shared reader fans out to every open page.

Each test runs a real console (uvicorn in a thread, as `python -m shared.console` runs
it) against a real redis-server, and reads its event streams over HTTP the way a
browser does.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from shared.console.app import create_app
from shared.console.async_redis import connect_async
from shared.console.serving import ConsoleServer
from shared.keys import Keys
from shared.redis_conn import connect, embedded_redis
from shared.settings import load_settings
from tests.redis_procs import find_binary, free_port
from tests.test_client import publish
from tests.test_cluster import cluster_url  # noqa: F401 - a fixture, asked for by name below
from tests.test_console import alert
from tests.test_redis_conn import sentinel_url  # noqa: F401 - a fixture, asked for by name below

pytestmark = pytest.mark.redis
PAGES = 50
DROPPED = "scanguard_console_stream_dropped_clients_total"


@dataclass
class Running:
    url: str
    app: Any
    server: ConsoleServer
    client: Any

    def sample(self, name: str, **labels: str) -> float:
        value = self.app.state.metrics.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextmanager
def running(url: str, keys: Keys, **console: Any) -> Iterator[Running]:
    """A console on `url` served as in production (lifespan on, `ConsoleServer`)."""
    settings = load_settings(redis_url=url, namespace=keys.namespace, console=console)
    client = connect(url)
    app = create_app(settings, client)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=10
    )
    server = ConsoleServer(config, app.state.feed)
    thread = threading.Thread(target=server.run, name="console", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "console did not start"
        time.sleep(0.02)
    try:
        yield Running(f"http://127.0.0.1:{port}", app, server, client)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        client.close()
        assert not thread.is_alive(), "console did not stop"


@dataclass
class Page:
    """One open event stream, read as a browser reads it: (event type, data) in order."""

    events: list[tuple[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, http: httpx.AsyncClient, **params: str) -> Page:
        page = cls()
        page.task = asyncio.create_task(page._read(http, params))
        return page

    async def _read(self, http: httpx.AsyncClient, params: dict[str, str]) -> None:
        async with http.stream("GET", "/api/stream", params=params) as reply:
            assert reply.status_code == 200
            self.headers = dict(reply.headers)
            kind = ""
            async for line in reply.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.events.append((kind, json.loads(line[6:])))
                    if kind == "status":
                        self.connected.set()

    def alerts(self) -> list[str]:
        return [data["event"]["event_id"] for kind, data in self.events if kind == "alert"]

    async def close(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def http_client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=10, limits=httpx.Limits(max_connections=None))


async def open_pages(http: httpx.AsyncClient, n: int, **params: str) -> list[Page]:
    """`n` pages, returned once every one has its first status event."""
    pages = [Page.open(http, **params) for _ in range(n)]
    await asyncio.wait_for(asyncio.gather(*(p.connected.wait() for p in pages)), timeout=20)
    return pages


async def until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_api_answers_fast_while_fifty_streams_are_open(redis_server, keys):
    """With 50 pages connected and streaming, each API call is answered within half a second."""

    async def scenario(url: str) -> list[float]:
        async with http_client(url) as http:
            pages = await open_pages(http, PAGES)
            took = []
            for path in ["/api/status", "/api/supervisor/queue", "/api/alerts"] * 5:
                started = time.perf_counter()
                assert (await http.get(path)).status_code == 200
                took.append(time.perf_counter() - started)
            for page in pages:
                await page.close()
            return took

    with running(redis_server.url, keys) as console:
        took = asyncio.run(scenario(console.url))
    # A blocking XREAD per page in the thread pool (40 threads) keeps API calls queued
    # behind the reads for up to a block (1 s) each; one shared reader leaves the pool free.
    assert max(took) < 0.5, took


def test_every_open_stream_receives_a_new_alert_from_one_shared_reader(redis_server, keys):
    """50 pages all get an alert added after they connected, read by one reader connection."""
    name = f"console-{keys.namespace}"
    url = f"{redis_server.url}?client_name={name}"

    async def scenario(console: Running) -> int:
        async with http_client(console.url) as http:
            pages = await open_pages(http, PAGES)
            await asyncio.to_thread(publish, console.client, keys, alert(keys, 7))
            await until(lambda: all(p.alerts() == ["ev-7"] for p in pages), 5, "the alert")
            clients = await asyncio.to_thread(console.client.client_list)
            readers = [c for c in clients if c["name"] == name and c["cmd"] == "xread"]
            for page in pages:
                await page.close()
            return len(readers)

    with running(url, keys) as console:
        readers = asyncio.run(scenario(console))
        assert console.app.state.feed.reader_starts == 1
    assert readers == 1


def test_a_page_that_reconnects_gets_what_it_missed_without_hidden_meta(
    redis_server, redis_client, keys
):
    """A page asking for alerts after an id gets the ones already stored, then the new ones,
    each once, with the synthetic scanner's ground truth taken out of the meta; the stream
    carries the security headers."""
    ids = []
    for n in range(1, 4):
        event = alert(keys, n)
        event.meta = {"label": 1, "seed": 9, "lane": "A"}
        ids.append(publish(redis_client, keys, event))

    async def scenario(console: Running) -> Page:
        async with http_client(console.url) as http:
            (watching,) = await open_pages(http, 1)  # the reader starts at ev-3
            (page,) = await open_pages(http, 1, after=ids[0])
            await asyncio.to_thread(publish, console.client, keys, alert(keys, 4))
            await until(lambda: page.alerts()[-1:] == ["ev-4"], 5, "the live alert")
            await watching.close()
            await page.close()
            return page

    with running(redis_server.url, keys) as console:
        page = asyncio.run(scenario(console))
    assert page.alerts() == ["ev-2", "ev-3", "ev-4"]
    metas = [data["event"]["meta"] for kind, data in page.events if kind == "alert"]
    assert metas[:2] == [{"lane": "A"}, {"lane": "A"}]
    assert page.headers["content-type"].startswith("text/event-stream")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def stuck_page(url: str) -> socket.socket:
    """A page that asks for the stream and never reads a byte (a tiny receive window)."""
    port = int(url.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock


def test_a_stuck_client_is_dropped_without_delaying_the_others(redis_server, keys):
    """A page that stops reading is dropped once its queue fills; the others get every alert
    at once, the drop is counted, and the open-streams gauge falls back."""

    async def scenario(console: Running) -> tuple[list[Page], float]:
        async with http_client(console.url) as http:
            pages = await open_pages(http, 5)
            stuck = stuck_page(console.url)
            await until(lambda: console.sample("scanguard_console_open_streams") == 6, 5, "6 open")
            n = 0
            while console.sample(DROPPED, reason="queue_full") == 0:
                assert n < 2_000, "the stuck page was never dropped"
                for _ in range(10):
                    n += 1
                    event = alert(keys, n)
                    event.meta = {"note": "x" * 50_000}  # fills the stuck page's buffers fast
                    await asyncio.to_thread(publish, console.client, keys, event)
            await asyncio.to_thread(publish, console.client, keys, alert(keys, n + 1))
            started = time.perf_counter()
            await until(
                lambda: all(p.alerts()[-1:] == [f"ev-{n + 1}"] for p in pages), 5, "the last alert"
            )
            delay = time.perf_counter() - started
            await until(lambda: console.sample("scanguard_console_open_streams") == 5, 5, "5 open")
            stuck.close()
            for page in pages:
                await page.close()
            return pages, delay

    with running(redis_server.url, keys, stream_queue=16, stream_send_timeout_s=60) as console:
        pages, delay = asyncio.run(scenario(console))
        assert console.sample(DROPPED, reason="queue_full") == 1
        assert console.sample(DROPPED, reason="send_timeout") == 0
    last = int(pages[0].alerts()[-1].removeprefix("ev-"))
    for page in pages:
        assert page.alerts() == [f"ev-{n}" for n in range(1, last + 1)]
    assert delay < 1.0


def test_a_stream_whose_writes_stall_ends_after_the_send_timeout(redis_server, keys):
    """A stuck page whose queue never fills is cut off once a write waits stream_send_timeout_s."""

    async def scenario(console: Running) -> None:
        stuck = stuck_page(console.url)
        await until(lambda: console.sample("scanguard_console_open_streams") == 1, 5, "1 open")
        for n in range(100):
            event = alert(keys, n)
            event.meta = {"note": "x" * 50_000}
            await asyncio.to_thread(publish, console.client, keys, event)
        await until(lambda: console.sample("scanguard_console_open_streams") == 0, 10, "0 open")
        stuck.close()

    with running(redis_server.url, keys, stream_send_timeout_s=1) as console:
        asyncio.run(scenario(console))
        assert console.sample(DROPPED, reason="send_timeout") == 1
        assert console.sample(DROPPED, reason="queue_full") == 0


def test_shutdown_ends_open_streams_cleanly(redis_server, keys):
    """Stopping the console ends every open stream with a complete response, well before the
    graceful-shutdown timeout, and the lifespan leaves the feed closed."""
    errors: list[BaseException | None] = []

    async def scenario(console: Running) -> float:
        async with http_client(console.url) as http:
            pages = await open_pages(http, 10)
            started = time.perf_counter()
            console.server.should_exit = True
            assert all(p.task is not None for p in pages)
            done = await asyncio.wait_for(
                asyncio.gather(*(p.task for p in pages if p.task), return_exceptions=True), 8
            )
            errors.extend(done)
            return time.perf_counter() - started

    with running(redis_server.url, keys) as console:
        took = asyncio.run(scenario(console))
        feed = console.app.state.feed
    assert errors == [None] * 10  # each stream ended as a whole response, none cut off
    assert took < 3.0  # the graceful-shutdown timeout is 10 s: nothing was cancelled
    assert feed.closed and feed.subscribers == 0


def test_metrics_count_requests_streams_and_the_review_queue(redis_server, keys):
    """/metrics holds requests by route template and status, open streams, and queue depth."""

    async def scenario(console: Running) -> str:
        async with http_client(console.url) as http:
            (page,) = await open_pages(http, 1)
            assert (await http.get("/api/alerts/1-1")).status_code == 404
            text = (await http.get("/metrics")).text
            await page.close()
            return text

    with running(redis_server.url, keys) as console:
        text = asyncio.run(scenario(console))
    assert (
        'scanguard_console_requests_total{route="/api/alerts/{entry_id}",status="404"} 1.0' in text
    )
    assert "scanguard_console_open_streams 1.0" in text
    assert 'scanguard_console_stream_dropped_clients_total{reason="queue_full"} 0.0' in text
    assert 'scanguard_console_queue_depth{pool="main"} 0.0' in text
    assert 'scanguard_console_overdue_bags{pool="main"} 0.0' in text


# -- every kind of URL `shared.redis_conn.connect` takes ---------------------------------


@pytest.fixture
def tls_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server that speaks TLS only and wants client certificates; yields a rediss:// URL."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make certificates")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    new_key = ["-newkey", "rsa:2048", "-nodes"]
    openssl(
        "req",
        "-x509",
        *new_key,
        "-days",
        "1",
        "-subj",
        "/CN=ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl(
            "req", *new_key, "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr"
        )
        openssl(
            *["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key"],
            *["-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", f"{name}.pem"],
        )
    port = free_port()
    proc = subprocess.Popen(
        [
            find_binary("path"),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.pem",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = (
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path}/ca.pem&ssl_cert_reqs=required"
        f"&ssl_certfile={tmp_path}/client.pem&ssl_keyfile={tmp_path}/client.key"
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with connect(url, socket_timeout=1) as probe:
                    probe.ping()
                break
            except Exception:
                assert time.monotonic() < deadline and proc.poll() is None, "no TLS redis-server"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def unix_url() -> Iterator[str]:
    with embedded_redis() as url:
        yield url


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "rediss", "unix", "sentinel", "cluster"])
def test_the_shared_reader_follows_every_kind_of_url(kind, request, redis_server, keys):
    """Over redis://, rediss:// (TLS, client certificates), unix://, redis+sentinel:// and
    redis+cluster://, two pages get a new alert through the asyncio reader."""
    url = {
        "redis": lambda: redis_server.url,
        "rediss": lambda: request.getfixturevalue("tls_url"),
        "unix": lambda: request.getfixturevalue("unix_url"),
        "sentinel": lambda: request.getfixturevalue("sentinel_url")[0],
        "cluster": lambda: request.getfixturevalue("cluster_url"),
    }[kind]()

    async def scenario(console: Running) -> list[Page]:
        async with http_client(console.url) as http:
            pages = await open_pages(http, 2)
            await asyncio.to_thread(publish, console.client, keys, alert(keys, 1))
            await until(lambda: all(p.alerts() == ["ev-1"] for p in pages), 10, "the alert")
            for page in pages:
                await page.close()
            return pages

    with running(url, keys) as console:
        asyncio.run(scenario(console))
        assert console.app.state.feed.reader_starts == 1


def test_async_client_takes_the_tls_options_of_the_url():
    """rediss:// query options reach the asyncio client as they reach the synchronous one."""
    url = "rediss://u:pw@cache.example:6380/2?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
    made = connect_async(url).connection_pool.connection_kwargs
    wanted = connect(url).connection_pool.connection_kwargs
    for key in ("ssl_cert_reqs", "ssl_ca_certs", "host", "port", "db", "username", "password"):
        assert made[key] == wanted[key]
    with pytest.raises(ValueError, match="unknown Redis URL option"):
        connect_async("redis://localhost/0?retries=3")
