"""Stream plumbing every Redis component shares: outage errors, groups, consumer names."""

from __future__ import annotations

import os
import socket

import redis

# Errors that mean "Redis is not reachable right now": back off and retry, keep the work.
REDIS_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)


def default_consumer_id() -> str:
    """A consumer (or worker) name unique to this process: host name and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


def ensure_group(client: redis.Redis, stream: str, group: str, start_id: str = "0") -> bool:
    """Create `group` on `stream` (and the stream); False if the group already existed."""
    try:
        client.xgroup_create(stream, group, id=start_id, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True
