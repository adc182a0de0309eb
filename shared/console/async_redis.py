"""An asyncio Redis client from the same URLs `shared.redis_conn.connect` accepts.

The console's live stream reads Redis on the event loop (`feed.AlertFeed`), so it needs
`redis.asyncio` clients for every scheme the synchronous `connect` serves: redis://,
rediss:// (TLS options in the query), unix://, redis+sentinel:// and redis+cluster://.
Options match `connect`: bytes replies, RESP2, no retries of its own (the feed backs off).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from shared.redis_conn import DEFAULT_URL, check_url, parse_nodes, parse_sentinel_url

AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster


def connect_async(url: str | None = None, **kw: Any) -> AsyncClient:
    """Open an asyncio client for `url`, configured as `shared.redis_conn.connect` would.

    Nothing connects until the first command, which must run on the event loop that
    will use the client.

    Raises:
        ValueError: the URL has an unknown scheme or query parameter.
    """
    url = check_url(url or DEFAULT_URL)
    options: dict[str, Any] = {
        "decode_responses": False,
        "protocol": 2,
        "health_check_interval": 15,
        "socket_timeout": 30.0,
        "socket_connect_timeout": 5.0,
        "retry": Retry(NoBackoff(), 0),
    }
    if not url.startswith("unix://"):
        options["socket_keepalive"] = True
    options.update(kw)
    if url.startswith("redis+sentinel://"):
        return _sentinel_master(url, options)
    if url.startswith("redis+cluster://"):
        return _cluster(url, options)
    return redis.asyncio.Redis.from_url(url, **options)


def _cluster(url: str, options: dict[str, Any]) -> redis.asyncio.RedisCluster:
    from redis.asyncio.cluster import ClusterNode

    username, password, nodes = parse_nodes(urlsplit(url).netloc, 6379)
    options = {k: v for k, v in options.items() if k != "retry"}
    return redis.asyncio.RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        username=username or None,
        password=password or None,
        **options,
    )


def _sentinel_master(url: str, options: dict[str, Any]) -> redis.asyncio.Redis:
    from redis.asyncio.sentinel import Sentinel

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
