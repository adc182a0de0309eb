"""The worker's Lua scripts, and many calls to them in one network round trip.

Each script is atomic on its own; a batch of calls goes out as one pipeline (not a
transaction), so a step's publishes cost one round trip whatever their number. Calls go
out as EVALSHA; only if Redis has lost the scripts (a restart, SCRIPT FLUSH) are they
loaded and the batch sent again, which is safe: a call that met NOSCRIPT ran nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError


class LuaScript:
    """One script of `worker/service/lua/` with the SHA1 that EVALSHA names it by."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = resources.files("worker.service").joinpath("lua", name).read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


@dataclass(frozen=True)
class Call:
    """One call of a script, ready to queue."""

    script: LuaScript
    keys: Sequence[str]
    args: Sequence[bytes | str | int | float]


def run_calls(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    """Run `calls` in one round trip; their replies in order, an exception object in
    place of a call that failed (the caller decides what a failure means)."""
    if not calls:
        return []
    if isinstance(client, RedisCluster):
        # redis-py refuses EVALSHA in cluster pipelines; a cluster pays a round trip a call.
        return [_call_alone(client, call) for call in calls]
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        if attempt == 2 or not any(isinstance(r, NoScriptError) for r in replies):
            return replies
        for script in {call.script.sha: call.script for call in calls}.values():
            client.script_load(script.source)
    raise AssertionError("unreachable")  # the loop returns on its second pass


def _call_alone(client: redis.Redis, call: Call) -> Any:
    """One call on its own, loading the script if Redis has lost it; an error is returned."""
    for attempt in (1, 2):
        try:
            return client.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        except NoScriptError:
            if attempt == 2:
                raise
            client.script_load(call.script.source)
        except redis.ResponseError as exc:
            return exc
    raise AssertionError("unreachable")  # the loop returns or raises on its second pass
