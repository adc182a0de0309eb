"""Server-sent events for one page: new alerts as they land on `{ns}:alerts`, and the status strip.

Every page is served from the process's one `feed.AlertFeed`; this module turns a
subscription into the page's stream (sse-starlette's `EventSourceResponse`: keep-alive
comments, a send timeout for a stuck client, the end of the stream at shutdown).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import redis
import structlog
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from shared.console.feed import REDIS_DOWN_FRAME, SEP, AlertFeed, FeedClosed, entry_order

log = structlog.get_logger("scanguard.console")
RETRY_MS = 2_000  # how long a browser waits before it reconnects a closed stream
RETRY_FRAME = ServerSentEvent(retry=RETRY_MS, sep=SEP).encode()


async def alert_events(feed: AlertFeed, after: str) -> AsyncIterator[bytes]:
    """The frames of one page: alerts after entry `after` ("$": from now on), and the status.

    The entry id goes out as the SSE id, so a browser that reconnects sends it back as
    Last-Event-ID and misses nothing in between: alerts up to where the feed stood when
    the page joined are read from the stream, the later ones come from the feed.
    """
    yield RETRY_FRAME
    while True:
        try:
            sub = await feed.subscribe()
            break
        except FeedClosed:
            return
        except redis.RedisError as exc:
            log.warning("redis_unavailable", error=str(exc))
            yield REDIS_DOWN_FRAME.data
            await anyio.sleep(RETRY_MS / 1000)
    try:
        if feed.status is not None:
            yield feed.status.data
        last = sub.start_id if after == "$" else after
        if entry_order(last) < entry_order(sub.start_id):
            try:
                async for missed in feed.backfill(last, sub.start_id):
                    yield missed.data
            except redis.RedisError as exc:
                # Ending the stream makes the browser reconnect from the last id it got.
                log.warning("redis_unavailable", error=str(exc))
                yield REDIS_DOWN_FRAME.data
                return
            last = sub.start_id
        floor = entry_order(last)
        while (frames := await sub.take()) is not None:
            data = b"".join(
                f.data for f in frames if f.entry_id is None or entry_order(f.entry_id) > floor
            )
            if data:
                yield data
    finally:
        feed.unsubscribe(sub)


def keep_alive() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive", sep=SEP)


class PageStream(EventSourceResponse):
    """The response of `GET /api/stream`: the page's frames, kept alive, cut off when stuck.

    A write that waits `stream_send_timeout_s` means the page stopped reading: the stream
    ends there, counted as a dropped client, rather than as an error with a traceback.
    """

    def __init__(self, feed: AlertFeed, after: str) -> None:
        super().__init__(
            alert_events(feed, after),
            headers={"Cache-Control": "no-store"},
            ping=feed.settings.stream_ping_s,
            ping_message_factory=keep_alive,
            send_timeout=feed.settings.stream_send_timeout_s,
            sep=SEP,
        )
        self.feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            self.feed.metrics.dropped_clients.labels("send_timeout").inc()
            log.warning("stream_client_dropped", reason="send_timeout")
