"""Security: authenticated and TLS Redis, secrets kept out of logs, no unpickling."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from shared.redis_conn import connect
from tests.pipeline_fixtures import heartbeat, wait_for
from tests.redis_procs import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-Pa55word"


def run_producer(url: str, namespace: str, count: int, log: Path) -> dict:
    env = {
        "PATH": "/usr/bin:/bin",
        "SCANGUARD_REDIS_URL": url,
        "SCANGUARD_NAMESPACE": namespace,
        "SCANGUARD_LOG_FORMAT": "json",
    }
    with open(log, "wb") as err:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "producer",
                "--source",
                "synthetic:target",
                "--size",
                "96x64",
                "--count",
                str(count),
                "--no-progress",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            timeout=120,
            check=True,
        ).stdout
    return json.loads(out.decode().strip().splitlines()[-1])


def run_line(url: str, keys, spawn_worker, tmp_path: Path) -> None:
    """Producer and worker processes on `url`: all frames decided, no secret in any log."""
    client = connect(url)
    worker = spawn_worker(url, keys, "secure")
    wait_for(heartbeat(client, keys, "secure"), 60, "the worker to start")
    summary = run_producer(url, keys.namespace, 8, tmp_path / "producer.log")
    wait_for(lambda: client.xlen(keys.results) >= summary["sent"] == 8, 60, "every decision")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    for log in (tmp_path / "secure.log", tmp_path / "producer.log"):
        text = log.read_text()
        assert text, f"{log.name} is empty"
        assert SECRET not in text, f"the password leaked into {log.name}"


@pytest.mark.redis
@pytest.mark.slow
def test_acl_user_with_password(redis_factory, keys, spawn_worker, tmp_path):
    """With an ACL user and password every component connects, and the password is never logged."""
    server = redis_factory(password=SECRET, username="scanguard")
    if not server.controllable:
        pytest.skip("an external server has its own authentication")
    with pytest.raises(redis.RedisError, match=r"(?i)auth|NOPERM|WRONGPASS|invalid"):
        connect(server.url.replace(SECRET, "wrong")).ping()
    run_line(server.url, keys, spawn_worker, tmp_path)


@pytest.fixture
def tls_server(tmp_path):
    """A redis-server speaking only TLS, with a CA and server certificate made here."""
    if not shutil.which("openssl") or not shutil.which("redis-server"):
        pytest.skip("needs openssl and redis-server on PATH")

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=scanguard-test-ca",
    )
    ssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    )
    (tmp_path / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
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
            "--tls-auth-clients",
            "no",
            "--requirepass",
            SECRET,
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}&ssl_cert_reqs=required"
    wait_for(lambda: _pings(url), 10, "the TLS server")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _pings(url: str) -> bool:
    try:
        return bool(connect(url, socket_timeout=1).ping())
    except Exception:
        return False


@pytest.mark.redis
@pytest.mark.slow
def test_tls_with_a_private_ca(tls_server, keys, spawn_worker, tmp_path):
    """Over rediss:// with a CA made by the test, producer and worker work; plain TCP is refused."""
    plain = re.sub(r"^rediss://", "redis://", tls_server.split("?")[0])
    assert not _pings(plain)
    run_line(tls_server, keys, spawn_worker, tmp_path)


def project_sources() -> list[Path]:
    return [p for d in ("worker", "producer", "shared", "bench") for p in (ROOT / d).rglob("*.py")]


def test_nothing_unpickles():
    """No project module imports pickle; torch.load is only called with weights_only=True."""
    for path in project_sources():
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"


def test_rq_uses_the_json_serializer():
    """Every RQ queue the project builds, and every RQ worker it deploys, uses the JSON serializer."""
    for path in (ROOT / "shared" / "delivery").rglob("*.py"):
        for call in re.findall(r"\bQueue\([^)]*\)", path.read_text()):
            assert "serializer=JSONSerializer" in call, f"{path}: {call}"
    deployed = [
        p
        for p in (ROOT / "deploy").rglob("*.y*ml")
        if re.search(r"^\s*(- )?rq\s*$|rq worker", p.read_text(), re.M)
    ]
    assert deployed, "no RQ worker found in deploy/"
    for path in deployed:
        assert "rq.serializers.JSONSerializer" in path.read_text(), path
