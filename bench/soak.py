"""Soak: a worker process under a steady frame rate for minutes; is anything drifting?

    python -m bench.soak [--minutes 5] [--fps 8] [--window-s 30]

Starts one worker process (`python -m worker run`) against the embedded Redis (or
--redis-url), then a producer in this process sends target-domain JPEG frames at a
fixed rate. Every `--window-s` seconds of decisions becomes one row: frames decided,
end-to-end latency p50/p99 and the worker's resident memory. The first window holds
the model load and warm-up, so the drift figures compare the second window with the
last. Last line:
`p50_last_vs_second=<x> p99_last_vs_second=<y> rss_growth_mib=<z> rss_slope_mib_per_min=<w>`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from producer.producer import Producer
from producer.sources import SourceFrame
from producer.synthetic import SyntheticScanner
from shared.images import encode_image
from shared.keys import Keys
from shared.logs import configure_logging
from shared.redis_conn import connect, embedded_redis


@dataclass
class Window:
    start_s: float
    frames: int
    p50_ms: float
    p99_ms: float
    rss_mib: float


def rss_mib(pid: int) -> float | None:
    """Resident set size of a process from /proc (None where /proc is missing)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def steady_frames(jpegs: list[bytes], until: float) -> Iterator[SourceFrame]:
    """Cycle over pre-encoded frames until the monotonic deadline (the producer paces them)."""
    for data in itertools.cycle(jpegs):
        if time.monotonic() >= until:
            return
        yield SourceFrame(data, "image/jpeg", {})


def start_worker(url: str, namespace: str, card: str | None, threads: int, health: str):
    env = {
        **os.environ,
        "SCANGUARD_REDIS_URL": url,
        "SCANGUARD_NAMESPACE": namespace,
        "SCANGUARD_WORKER__METRICS_PORT": "0",
        "SCANGUARD_WORKER__HEALTH_DIR": health,
        "SCANGUARD_MODEL__CPU_THREADS": str(threads),
        "SCANGUARD_LOG_LEVEL": "warning",
    }
    if card:
        env["SCANGUARD_MODEL__CARD"] = card
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "--id", "soak-1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def windows(
    events: list[dict], samples: list[tuple[float, float]], t0: float, width: float, end_s: float
) -> list[Window]:
    """Group decisions by when they were decided; RSS is the last sample in each window.

    Only whole windows inside the producing period count (the drain after it is not steady).
    """
    decided = np.array([datetime.fromisoformat(e["decided_at"]).timestamp() - t0 for e in events])
    latency = np.array([e["latency_ms"] for e in events])
    rows = []
    for k in range(int(end_s // width)):
        lo, hi = k * width, (k + 1) * width
        inside = latency[(decided >= lo) & (decided < hi)]
        if len(inside) == 0:
            continue
        rss = [r for t, r in samples if t < hi]
        rows.append(
            Window(
                lo,
                len(inside),
                float(np.percentile(inside, 50)),
                float(np.percentile(inside, 99)),
                rss[-1] if rss else float("nan"),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--fps", type=float, default=8.0, help="steady producer rate")
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--pool", type=int, default=120, help="distinct frames cycled over")
    parser.add_argument("--card", default=None, help="model card (default: the settings' model)")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--worker-threads", type=int, default=1, help="torch threads of the worker")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    configure_logging("json", "warning")

    scanner = SyntheticScanner("target", seed=args.seed)
    jpegs = [encode_image(scanner.frame(i).image, quality=90) for i in range(args.pool)]
    keys = Keys(f"soak{int(time.time())}")
    group = "workers"

    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(embedded_redis())
        health = stack.enter_context(tempfile.TemporaryDirectory(prefix="scanguard-soak-"))
        client = connect(url)
        client.xgroup_create(keys.frames, group, id="0", mkstream=True)
        worker = start_worker(url, keys.namespace, args.card, args.worker_threads, health)
        stack.callback(worker.kill)

        t0 = time.time()
        until = time.monotonic() + args.minutes * 60
        producer = Producer(connect(url), keys, "soak", fps=args.fps, max_backlog=10_000)
        sent: list[int] = []
        thread = threading.Thread(
            target=lambda: sent.append(producer.run(steady_frames(jpegs, until)).sent),
            daemon=True,
        )
        thread.start()

        samples: list[tuple[float, float]] = []
        drain_deadline = None
        while True:
            rss = rss_mib(worker.pid)
            if rss is not None:
                samples.append((time.time() - t0, rss))
            if worker.poll() is not None:
                err = worker.stderr.read().decode(errors="replace") if worker.stderr else ""
                raise SystemExit(f"worker exited with {worker.returncode}: {err[-2000:]}")
            if not thread.is_alive():
                drain_deadline = drain_deadline or time.monotonic() + 120
                if client.xlen(keys.results) >= sent[0] or time.monotonic() > drain_deadline:
                    break
            time.sleep(2.0)

        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        events = [json.loads(f[b"event"]) for _, f in client.xrange(keys.results)]

    rows = windows(events, samples, t0, args.window_s, args.minutes * 60)
    print(
        f"model={args.card or 'settings default'} fps={args.fps:g} minutes={args.minutes:g} "
        f"frames_sent={sent[0]} decided={len(events)} worker_threads={args.worker_threads}"
    )
    print(f"{'window':>8}{'frames':>8}{'p50 ms':>9}{'p99 ms':>9}{'RSS MiB':>10}")
    for row in rows:
        print(
            f"{row.start_s:>7.0f}s{row.frames:>8}{row.p50_ms:>9.0f}{row.p99_ms:>9.0f}{row.rss_mib:>10.1f}"
        )
    if len(events) != sent[0]:
        raise SystemExit(f"{sent[0]} frames sent but {len(events)} decided")
    if len(rows) < 3:
        raise SystemExit("too short for drift figures: need at least three windows")
    second, last = rows[1], rows[-1]
    steady = rows[1:]
    slope = np.polyfit([r.start_s / 60 for r in steady], [r.rss_mib for r in steady], 1)[0]
    print(
        f"p50_last_vs_second={last.p50_ms / second.p50_ms:.2f} "
        f"p99_last_vs_second={last.p99_ms / second.p99_ms:.2f} "
        f"rss_growth_mib={last.rss_mib - second.rss_mib:.1f} rss_slope_mib_per_min={slope:.2f}"
    )


if __name__ == "__main__":
    main()
