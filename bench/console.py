"""API latency of the operator console with and without many open live streams.

    python -m bench.console [--clients 200] [--requests 500] [--rate 10] [--redis-url redis://...]

Starts a real console (`python -m shared.console` in a subprocess, on 127.0.0.1 and a
free port) against a real Redis (the embedded server unless --redis-url), then times
GETs of the status and review-queue JSON endpoints one every `--every-ms`: first with no
event stream open, then with `--clients` live SSE streams connected (asyncio + httpx in
a child process at low priority, standing for browsers on other machines) while a
feeder adds `--rate` alerts per second to the alerts stream, so every stream carries
`--rate` alerts and a status event every 2 s. Prints p50/p99 of both phases, how many
alerts the streams got, and as its last line `console_p99_ratio=<x> clients=<n>`.
Everything stops by itself: every wait has a deadline, and `--timeout` bounds the run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from typing import Any

import httpx
import redis

from shared.keys import Keys
from shared.logs import configure_logging
from shared.redis_conn import connect, embedded_redis
from shared.schemas import DecisionEvent, Detection, ModelRef, Thresholds

ENDPOINTS = ("/api/status", "/api/supervisor/queue")
MAX_CLIENTS = 2_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def console_process(redis_url: str, namespace: str, port: int) -> Iterator[str]:
    """`python -m shared.console` on 127.0.0.1:`port`; yields its base URL once it answers."""
    env = {
        **os.environ,
        "SCANGUARD_REDIS_URL": redis_url,
        "SCANGUARD_NAMESPACE": namespace,
        "SCANGUARD_LOG_FORMAT": "json",
        "SCANGUARD_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.console", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the console exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/api/status", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the console did not answer within 30 s")
            time.sleep(0.1)
        yield url
    finally:
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
            # uvicorn raises the signal again once it has shut down: -15 is a clean stop.
            print(f"console stopped {time.monotonic() - started:.2f} s after SIGTERM (exit {code})")
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print("console did not stop within 15 s of SIGTERM: killed")


def latencies(url: str, requests: int, every_s: float) -> list[float]:
    """Seconds per GET, alternating the JSON endpoints, one started every `every_s`.

    Paced rather than back to back, so the GETs sample the whole phase evenly (and the
    alerts added meanwhile) instead of the second or so a tight loop would take.
    """
    took = []
    with httpx.Client(base_url=url, timeout=30) as http:
        next_at = time.perf_counter()
        for n in range(requests + 20):
            time.sleep(max(0.0, next_at - time.perf_counter()))
            started = time.perf_counter()
            http.get(ENDPOINTS[n % len(ENDPOINTS)]).raise_for_status()
            if n >= 20:  # the first few warm connections and caches up
                took.append(time.perf_counter() - started)
            next_at = started + every_s
    return took


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


# -- the pages: a child process holding the SSE streams --------------------------------------


async def _page(http: httpx.AsyncClient, connected: asyncio.Event, got: list[int]) -> None:
    # Counted in the raw bytes, not parsed line by line: the pages share the machine with
    # the console, and the less CPU they take the less they disturb the timing.
    async with http.stream("GET", "/api/stream") as reply:
        reply.raise_for_status()
        tail = b""
        async for chunk in reply.aiter_raw():
            text = tail + chunk
            if not connected.is_set() and b"event: status" in text:
                connected.set()
            got[0] += text.count(b"event: alert\n") - tail.count(b"event: alert\n")
            tail = text[-16:]


async def _pages(url: str, clients: int, pipe: Connection, deadline_s: float) -> None:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        flags = [asyncio.Event() for _ in range(clients)]
        counts = [[0] for _ in range(clients)]
        tasks = [
            asyncio.create_task(_page(http, flag, got))
            for flag, got in zip(flags, counts, strict=True)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), timeout=60)
            pipe.send(("connected", clients))
            # Hold the streams until the parent says stop (or the deadline passes).
            stop = asyncio.get_running_loop().run_in_executor(None, pipe.poll, deadline_s)
            await stop
            failed = sum(t.done() for t in tasks)
            pipe.send(("done", [got[0] for got in counts], failed))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def run_pages(url: str, clients: int, pipe: Connection, deadline_s: float) -> None:
    """Entry point of the pages' process."""
    # The pages stand for browsers on other machines: at low priority they only take
    # CPU time the console and the timing client leave over.
    os.nice(10)
    try:
        asyncio.run(_pages(url, clients, pipe, deadline_s))
    except Exception as exc:  # reported to the parent, which prints it
        pipe.send(("error", repr(exc)))


# -- the feeder ------------------------------------------------------------------------------


def alert_event(n: int) -> DecisionEvent:
    """A plausible alert, about the size a worker publishes."""
    now = datetime.now(timezone.utc)
    return DecisionEvent(
        event_id=f"bench-{n}",
        frame_id=f"lane-1:bench:{n}",
        entry_id=f"{n}-0",
        scanner_id="lane-1",
        captured_at=now,
        enqueued_at=now,
        decided_at=now,
        latency_ms=84.0,
        decision="threat",
        detections=[Detection(class_id=1, label="gun", probability=0.93)],
        probabilities={"benign": 0.05, "gun": 0.93, "knife": 0.02},
        trace=[{"benign": 0.2, "gun": 0.7, "knife": 0.1}, {"benign": 0.05, "gun": 0.93}],
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
        model=ModelRef(id="vit-bench", checksum="abc", labels=["benign", "gun", "knife"]),
        worker_id="w1",
        artefacts=[],
        meta={"label": 1, "seed": 7, "lane": "A"},
    )


def feed(client: redis.Redis, keys: Keys, rate: float, stop: threading.Event) -> list[int]:
    """XADD `rate` alerts a second until `stop`; returns [count added]."""
    added = [0]

    def run() -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            added[0] += 1
            client.xadd(keys.alerts, {"event": alert_event(added[0]).to_json()})
            next_at += 1.0 / rate
            stop.wait(max(0.0, next_at - time.monotonic()))

    threading.Thread(target=run, name="feeder", daemon=True).start()
    return added


# -- the run ---------------------------------------------------------------------------------


def measure(url: str, client: redis.Redis, keys: Keys, args: argparse.Namespace) -> float:
    """Both phases against the console at `url`; prints them and returns the p99 ratio."""
    every_s = args.every_ms / 1000
    quiet = latencies(url, args.requests, every_s)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    pages = ctx.Process(
        target=run_pages, args=(url, args.clients, child, args.timeout), daemon=True
    )
    pages.start()
    stop = threading.Event()
    try:
        if not parent.poll(90):
            raise RuntimeError(f"{args.clients} streams did not connect within 90 s")
        kind, detail = parent.recv()
        if kind != "connected":
            raise RuntimeError(f"the pages failed: {detail}")
        added = feed(client, keys, args.rate, stop)
        time.sleep(1.0)  # the streams carry traffic before the timing starts
        busy = latencies(url, args.requests, every_s)
        stop.set()
        time.sleep(1.0)  # the last alerts reach the pages
        parent.send("stop")
        if not parent.poll(30):
            raise RuntimeError("the pages did not report back")
        _kind, got, failed = parent.recv()
    finally:
        stop.set()
        pages.join(timeout=30)
        if pages.is_alive():
            pages.kill()
    for name, took in (("no streams", quiet), (f"{args.clients} streams", busy)):
        print(
            f"{name:>12}: p50 {percentile(took, 50) * 1000:7.2f} ms  "
            f"p99 {percentile(took, 99) * 1000:7.2f} ms  ({len(took)} GETs)"
        )
    print(
        f"alerts added {added[0]}; per stream received min {min(got)} max {max(got)}; "
        f"streams ended early {failed}"
    )
    return percentile(busy, 99) / percentile(quiet, 99)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.console",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=200, help="open SSE streams")
    parser.add_argument("--requests", type=int, default=500, help="timed GETs per phase")
    parser.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="alerts added per second (default: five times the planning figure of "
        "docs/CAPACITY.md, 100 frames/s at 2 %% threats)",
    )
    parser.add_argument("--every-ms", type=float, default=10.0, help="one timed GET per this")
    parser.add_argument("--redis-url", help="a Redis to use (default: the embedded server)")
    parser.add_argument("--timeout", type=float, default=300.0, help="longest run, seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        print(f"--clients must lie in [1, {MAX_CLIENTS}]", file=sys.stderr)
        return 2
    if args.requests < 100 or args.rate <= 0:
        print("--requests must be at least 100 and --rate above 0", file=sys.stderr)
        return 2
    configure_logging("console", "warning")
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(int(args.timeout))  # every context below cleans up on the way out
    keys = Keys(f"bench{uuid.uuid4().hex[:8]}")
    try:
        with embedded_or(args.redis_url) as redis_url, connect(redis_url) as client:
            try:
                with console_process(redis_url, keys.namespace, free_port()) as url:
                    ratio = measure(url, client, keys, args)
            finally:
                client.delete(keys.alerts)  # the only key this run writes
    finally:
        signal.alarm(0)
    print(f"console_p99_ratio={ratio:.2f} clients={args.clients}")
    return 0


def _out_of_time(signum: int, frame: Any) -> None:
    raise TimeoutError("the run took longer than --timeout")


@contextmanager
def embedded_or(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    with embedded_redis() as embedded:
        yield embedded


if __name__ == "__main__":
    sys.exit(main())
