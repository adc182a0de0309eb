"""The live alert feed: one reader of `{ns}:alerts` per console process, fanned out to every page.

Each open event stream (`stream.alert_events`) subscribes with a bounded queue. One task
follows the alerts stream with a blocking XREAD on an asyncio Redis client and puts each
new alert, encoded once as an SSE frame, on every queue, a few pages at a time; a child
task reads the status strip every `status_interval_s` and does the same. Pages cost no
thread and no Redis connection each, so any number of them leave the thread pool to the
API routes.

A page whose queue is full has stopped reading (a stuck client, or one far too slow):
it is dropped at once, so it never holds back the others, and its browser reconnects
with Last-Event-ID and resumes from the last alert it got.

The reader starts with the first subscriber, stops at its next read after the last one
leaves, and `close()` (app shutdown) stops it and ends every open stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from sse_starlette import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from shared.backoff import Backoff
from shared.client import EventError, parse_event
from shared.console.async_redis import AsyncClient, connect_async
from shared.console.data import RateMeter, alert_payload, status
from shared.console.metrics import ConsoleMetrics
from shared.keys import Keys
from shared.settings import ConsoleSettings

log = structlog.get_logger("scanguard.console")
BLOCK_MS = 1_000  # one read's longest wait: how soon the reader notices it has no pages left
READ_COUNT = 100  # most alerts per read (fewer with a short stream_queue: see _read)
BACKFILL_PAGE = 200
FANOUT_SLICE = 4  # pages woken at once (see AlertFeed._broadcast)
FANOUT_PAUSE_S = 0.001  # after each slice: 200 pages get an alert within about 60 ms
SEP = "\n"  # the line end of every frame (the browser accepts \n, \r\n and \r alike)


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair (ms, seq)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Frame:
    """One encoded SSE event; `entry_id` is an alert's stream entry id (None for a status)."""

    data: bytes
    entry_id: str | None = None


def encode(event: str, body: Any, entry_id: str | None = None) -> Frame:
    """`body` as an SSE event of type `event`, its JSON compact, with `entry_id` as the SSE id."""
    text = json.dumps(body, separators=(",", ":"))
    return Frame(ServerSentEvent(text, event=event, id=entry_id, sep=SEP).encode(), entry_id)


def alert_frame(entry_id: str, fields: dict[bytes, bytes], hidden: Collection[str]) -> Frame | None:
    """The alert stored under `entry_id` as the page gets it (hidden meta keys dropped);
    None for an entry that is not a readable event."""
    try:
        event = parse_event(fields)
    except EventError:
        return None
    return encode("alert", alert_payload(entry_id, event, None, hidden), entry_id)


REDIS_DOWN_FRAME = encode("status", {"error": "redis unavailable"})


class FeedClosed(Exception):
    """The console is shutting down: no new page may join."""


class Subscription:
    """One open page: its queue of frames, and where the feed stood when it joined."""

    def __init__(self, size: int, start_id: str) -> None:
        self.queue: asyncio.Queue[Frame | None] = asyncio.Queue(size)
        self.start_id = start_id  # every frame the queue gets is of a later alert

    async def take(self) -> list[Frame] | None:
        """Every frame queued (waiting for the first), or None once the stream must end.

        A page that fell behind gets its backlog in one write instead of one each, so
        the busier the console, the fewer writes each frame costs.
        """
        frames = []
        item = await self.queue.get()
        while item is not None:
            frames.append(item)
            if self.queue.empty():
                return frames
            item = self.queue.get_nowait()
        return None  # `end` empties the queue first: nothing came before the end mark

    def end(self) -> None:
        """Replace whatever is queued with the end mark (None): the stream ends at once."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class AlertFeed:
    """The shared reader of one namespace's alerts and status, and its subscribers.

    `client` (synchronous) reads the status strip in the thread pool, once per interval
    for all pages; the alerts are read through an asyncio client for `url`.
    """

    def __init__(
        self,
        url: str,
        client: redis.Redis,
        keys: Keys,
        settings: ConsoleSettings,
        metrics: ConsoleMetrics,
        connect: Callable[[str], AsyncClient] = connect_async,
    ) -> None:
        self.url = url
        self.client = client
        self.keys = keys
        self.settings = settings
        self.metrics = metrics
        self.meter = RateMeter()
        self.hidden = frozenset(settings.hidden_meta_keys)
        self._connect = connect
        self._async: AsyncClient | None = None
        self._subs: set[Subscription] = set()
        self._reader: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self.last_id = "0-0"  # the newest alert the reader has fanned out
        self.status: Frame | None = None  # the newest status frame, for pages that join
        self.closed = False
        self.reader_starts = 0  # readers started so far (one serves any number of pages)
        metrics.open_streams.set_function(lambda: len(self._subs))

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def _redis(self) -> AsyncClient:
        if self._async is None:
            self._async = self._connect(self.url)
        return self._async

    async def subscribe(self) -> Subscription:
        """Join the feed, starting its reader for the first page.

        Raises:
            FeedClosed: the feed was closed (the app is shutting down).
            redis.RedisError: Redis did not answer while the reader was starting.
        """
        async with self._starting:
            if self.closed:
                raise FeedClosed("the console is shutting down")
            if self._reader is None:
                newest: Any = await self._redis().xrevrange(self.keys.alerts, count=1)
                self.last_id = newest[0][0].decode() if newest else "0-0"
                self.status = None
                self._reader = asyncio.create_task(self._read(), name="alert-feed")
                self.reader_starts += 1
                log.info("alert_feed_started", after=self.last_id)
            # No await between reading last_id and joining: the reader moves last_id and
            # takes its list of pages together, so this page gets the alerts after start_id.
            sub = Subscription(self.settings.stream_queue, self.last_id)
            self._subs.add(sub)
            return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    async def backfill(self, after: str, upto: str) -> AsyncIterator[Frame]:
        """The alerts after entry `after` up to `upto` included, oldest first (a page catching up)."""
        lower = after
        while entry_order(lower) < entry_order(upto):
            entries: Any = await self._redis().xrange(
                self.keys.alerts, min=f"({lower}", max=upto, count=BACKFILL_PAGE
            )
            for raw_id, fields in entries:
                lower = raw_id.decode()
                frame = alert_frame(lower, fields, self.hidden)
                if frame is not None:
                    yield frame
            if len(entries) < BACKFILL_PAGE:
                return

    async def close(self) -> None:
        """End every open stream, stop the reader and close the asyncio client; idempotent."""
        self.closed = True
        for sub in list(self._subs):
            sub.end()
        self._subs.clear()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        client, self._async = self._async, None
        if client is not None:
            await client.aclose()

    # -- the reader ------------------------------------------------------------------------

    async def _read(self) -> None:
        """Follow the alerts stream while anyone listens; the status strip in a child task."""
        reporter = asyncio.create_task(self._report_status(), name="alert-feed-status")
        backoff = Backoff(base_s=0.5, max_s=10.0)
        # A whole read lands in a page's queue at once: a quarter of a queue per read
        # leaves a healthy page room for a burst.
        count = min(READ_COUNT, max(1, self.settings.stream_queue // 4))
        try:
            while self._subs:
                try:
                    reply: Any = await self._redis().xread(
                        {self.keys.alerts: self.last_id}, count=count, block=BLOCK_MS
                    )
                except redis.RedisError as exc:
                    log.warning("alert_feed_read_failed", error=str(exc))
                    await self._broadcast([REDIS_DOWN_FRAME])
                    await asyncio.sleep(backoff.next_delay())
                    continue
                backoff.reset()
                if reply:
                    await self._fan_out(reply[0][1])
            log.info("alert_feed_idle")
        except Exception:
            # A bug, not an outage: end the pages so their browsers reconnect and the
            # next one starts a fresh reader, instead of leaving them silent.
            log.exception("alert_feed_failed")
            for sub in list(self._subs):
                sub.end()
            self._subs.clear()
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)

    async def _report_status(self) -> None:
        while True:
            try:
                body = await run_in_threadpool(status, self.client, self.keys, self.meter)
                self.status = encode("status", body)
            except redis.RedisError as exc:
                log.warning("redis_unavailable", error=str(exc))
                self.status = REDIS_DOWN_FRAME
            await self._broadcast([self.status])
            await asyncio.sleep(self.settings.status_interval_s)

    async def _fan_out(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        frames = []
        for raw_id, fields in entries:
            frame = alert_frame(raw_id.decode(), fields, self.hidden)
            if frame is not None:
                frames.append(frame)
        # last_id moves before the broadcast takes its list of pages: a page that joins
        # while it runs starts after these entries and reads them in its backfill.
        self.last_id = entries[-1][0].decode()
        await self._broadcast(frames)

    async def _broadcast(self, frames: list[Frame]) -> None:
        """Queue `frames` for every page, FANOUT_SLICE pages at a time.

        Each page woken writes to its socket on the event loop. Waking hundreds at once
        would hold the loop, and every API request waiting on it, for as long as all
        their writes take; a short pause after each slice lets requests in between.
        A whole read goes out together, so a page takes it in one write.
        """
        if not frames:
            return
        for n, sub in enumerate(list(self._subs)):
            if n and n % FANOUT_SLICE == 0:
                await asyncio.sleep(FANOUT_PAUSE_S)
            if sub not in self._subs:  # left or dropped during an earlier slice
                continue
            try:
                for frame in frames:
                    sub.queue.put_nowait(frame)
            except asyncio.QueueFull:
                self._drop(sub)

    def _drop(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.end()
        self.metrics.dropped_clients.labels("queue_full").inc()
        log.warning("stream_client_dropped", reason="queue_full")
