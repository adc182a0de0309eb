"""Redis Cluster: a namespace's keys share one slot, so the whole line runs on a cluster."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from producer.producer import Producer
from producer.sources import SyntheticSource
from shared.keys import Keys
from shared.redis_conn import connect
from tests.pipeline_fixtures import ERASING, events
from tests.redis_procs import free_cluster_port

pytestmark = pytest.mark.redis


@pytest.fixture
def cluster_url(tmp_path):
    """Three real redis-server primaries joined into a cluster; yields a redis+cluster:// URL."""
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.skip("needs redis-server and redis-cli on PATH")
    ports: list[int] = []
    for _ in range(3):
        ports.append(free_cluster_port(set(ports)))
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    for port in ports:
        folder = tmp_path / str(port)
        folder.mkdir()
        logs.append(open(folder / "redis.log", "wb"))  # noqa: SIM115 - closed below
        procs.append(
            subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(folder / "nodes.conf"),
                    "--dir",
                    str(folder),
                    "--save",
                    "",
                ],
                stdout=logs[-1],
                stderr=subprocess.STDOUT,
            )
        )
    try:
        for port, proc in zip(ports, procs, strict=True):
            _wait(
                lambda port=port: redis.Redis(port=port, socket_timeout=1).ping(),
                proc,
                tmp_path / str(port) / "redis.log",
            )
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *[f"127.0.0.1:{p}" for p in ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _wait(
            lambda: all(redis.Redis(port=p).cluster("info")["cluster_state"] == "ok" for p in ports)
        )
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for log in logs:
            log.close()


def _wait(
    condition,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    timeout_s: float = 15.0,
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-400:] if log else ""
            raise RuntimeError(f"redis-server exited with {proc.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise RuntimeError("cluster did not come up")
        time.sleep(0.05)


def test_producer_and_worker_run_on_a_cluster(cluster_url, make_worker):
    """Frames produced into a cluster are all decided there, with alerts and nothing pending."""
    keys = Keys("lane-c")
    client = connect(cluster_url)
    summary = Producer(connect(cluster_url), keys, "lane-c", count=12).run(
        SyntheticSource("source", seed=3, size=(96, 64))
    )
    worker = make_worker(
        {
            "redis_url": cluster_url,
            "namespace": keys.namespace,
            "erasing": ERASING,
            "model": {"max_batch": 8},
        },
        client,
    )

    worker.run(burst=True)

    results = events(client, keys.results)
    assert summary.sent == 12 and len(results) == 12
    assert len({e["frame_id"] for e in results}) == 12
    assert client.xlen(keys.frames) == 0
    assert client.xpending(keys.frames, "workers")["pending"] == 0
    threats = [e for e in results if e["decision"] == "threat"]
    assert len(events(client, keys.alerts)) == len(threats)
    for alert in threats:
        assert all(client.get(ref["key"]) for ref in alert["artefacts"])
