"""Stream plumbing every Redis component shares: outage errors, groups, consumer names."""

from __future__ import annotations

import os
import socket

import redis

# Errors that mean "Redis is not reachable right now": back off and retry, keep the work.
REDIS_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)

# Replies that mean "Redis is up but refuses writes for now": out of memory under
# `noeviction`, a failed RDB save with stop-writes-on-bgsave-error, or a replica that a
# fail-over left read-only. Scripts on Redis 6.2 wrap them in an ERR reply, so the
# message is matched as well as the exception class.
_REFUSALS = {
    "command not allowed when used memory": "out_of_memory",
    "MISCONF": "misconf",
    "READONLY": "read_only",
}


def refusal(exc: BaseException) -> str | None:
    """The kind of write refusal `exc` is (`out_of_memory`, `misconf`, `read_only`), or None."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "out_of_memory"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "read_only"
    if isinstance(exc, redis.ResponseError):
        text = str(exc)
        for marker, kind in _REFUSALS.items():
            if marker in text:
                return kind
    return None


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
