"""Server-sent events: new alerts as they land on `{ns}:alerts`, and the status strip."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Collection
from typing import Any

import anyio
import redis
import structlog
from starlette.concurrency import run_in_threadpool

from shared.client import EventError, parse_event
from shared.console.data import RateMeter, alert_payload, newest_alert_id, status
from shared.keys import Keys
from shared.streams import REDIS_DOWN

log = structlog.get_logger("scanguard.console")
BLOCK_MS = 1_000  # one read's longest wait; also how soon a closed page frees its thread


def sse(event: str, data: Any, entry_id: str | None = None) -> str:
    """One event in the text/event-stream format."""
    head = f"id: {entry_id}\n" if entry_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def alert_events(
    client: redis.Redis,
    keys: Keys,
    meter: RateMeter,
    after: str,
    status_every_s: float,
    hidden: Collection[str] = (),
) -> AsyncIterator[str]:
    """Alerts after entry `after` ("$": from now on), with a status event every few seconds.

    The entry id goes out as the SSE id, so a browser that reconnects sends it
    back as Last-Event-ID and misses nothing in between.
    """
    last = after
    next_status = 0.0
    yield "retry: 2000\n\n"
    while True:
        try:
            if last == "$":
                last = await run_in_threadpool(newest_alert_id, client, keys)
            if time.monotonic() >= next_status:
                yield sse("status", await run_in_threadpool(status, client, keys, meter))
                next_status = time.monotonic() + status_every_s
            reply: Any = await run_in_threadpool(
                client.xread, {keys.alerts: last}, count=50, block=BLOCK_MS
            )
        except REDIS_DOWN as exc:
            log.warning("redis_unavailable", error=str(exc))
            yield sse("status", {"error": "redis unavailable"})
            await anyio.sleep(2.0)
            continue
        if not reply:
            yield ": keep-alive\n\n"
            continue
        for raw_id, fields in reply[0][1]:
            last = raw_id.decode()
            try:
                event = parse_event(fields)
            except EventError:
                continue
            yield sse("alert", alert_payload(last, event, None, hidden), entry_id=last)
