"""The producer: frames from a source into the frames stream, paced, with backpressure."""

from __future__ import annotations

import hashlib
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Literal, TypeVar

import numpy as np
import redis
import structlog

from producer.sources import SourceFrame
from shared.backoff import Backoff
from shared.images import encode_image
from shared.keys import Keys, check_id
from shared.schemas import CONTENT_TYPES, FrameFields, utc_now
from shared.streams import REDIS_DOWN, refusal

log = structlog.get_logger(__name__)
T = TypeVar("T")
Backpressure = Literal["block", "drop"]
# How often a blocked producer re-reads the backlog: short enough to follow the workers.
BLOCK_POLL_MIN_S = 0.005
BLOCK_POLL_MAX_S = 0.2
MAX_ID = 128  # the longest id `check_id` accepts
REFUSAL_KINDS = ("out_of_memory", "misconf", "read_only")  # what `refusal` names


@dataclass
class ProducerSummary:
    """What happened to every frame the source offered.

    offered == sent + dropped + abandoned, always.
    """

    offered: int = 0
    sent: int = 0
    dropped: int = 0
    abandoned: int = 0  # taken from the source, then stopped before Redis took it
    blocked_s: float = 0.0
    reconnects: int = 0
    backlog: int = 0
    last_frame_id: str | None = None
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Producer:
    """Pushes frames with XADD to `keys.frames`, one entry per frame (DESIGN §4).

    Frame ids are `{scanner_id}:{run}:{sequence}`; the random run part keeps a
    restarted producer from reusing ids that workers already marked as done. A view
    of a bag (DESIGN §9) goes out with bag id `{scanner_id}:{run}:{source's bag id}`
    (scoped the same way, so a rerun of a seed or a folder opens new bags) and frame
    id `{bag id}-v{view}`. Every count here is in frames: `count` stops after that
    many, and under `drop` backpressure one dropped view leaves its bag incomplete,
    which the workers' bag deadline closes as undetermined.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        scanner_id: str = "lane-1",
        *,
        fps: float | None = None,
        count: int | None = None,
        max_backlog: int = 1_000,
        backpressure: Backpressure = "block",
        jpeg_quality: int = 90,
        backoff: Backoff | None = None,
        on_progress: Callable[[ProducerSummary], None] | None = None,
    ):
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive finite number, got {fps}")
        if count is not None and count < 0:
            raise ValueError(f"count must be zero or more, got {count}")
        if max_backlog < 1:
            raise ValueError(f"max_backlog must be at least 1, got {max_backlog}")
        if backpressure not in ("block", "drop"):
            raise ValueError(f"backpressure must be 'block' or 'drop', not {backpressure!r}")
        self.client = client
        self.keys = keys
        self.scanner_id = check_id(scanner_id, "scanner id")
        self.run_id = uuid.uuid4().hex[:8]
        self.fps = fps
        self.count = count
        self.max_backlog = max_backlog
        self.backpressure = backpressure
        self.jpeg_quality = jpeg_quality
        self.backoff = backoff or Backoff(0.05, 10.0)
        self.on_progress = on_progress
        self.stop_event = threading.Event()
        self.summary = ProducerSummary()
        # Refused write attempts by kind; every known kind is there from the start, so a
        # first refusal is a rise from 0 (the metrics thread reads it with `.copy()`).
        self.refusals = dict.fromkeys(REFUSAL_KINDS, 0)
        self._blocked_since: float | None = None  # monotonic start of the wait in progress
        # Ends a wait and reads one as a unit: the counter must never seem to fall back.
        self._blocked_lock = threading.Lock()
        self._backlog_full = False  # log when backpressure starts and ends, not per frame
        self._log = log.bind(scanner_id=scanner_id, run_id=self.run_id, stream=keys.frames)

    def blocked_s(self) -> float:
        """Seconds spent waiting for room so far, including a wait still in progress."""
        with self._blocked_lock:
            since = self._blocked_since
            ongoing = time.monotonic() - since if since is not None else 0.0
            return self.summary.blocked_s + ongoing

    def stop(self) -> None:
        """Ask `run` to return after the frame in hand (safe from a signal handler)."""
        self.stop_event.set()

    def run(self, source: Iterable[SourceFrame]) -> ProducerSummary:
        """Send frames until the source ends, `count` is reached or `stop` is called."""
        started = time.monotonic()
        pace_start, paced = started, 0
        self._log.info(
            "producer_started",
            fps=self.fps,
            count=self.count,
            max_backlog=self.max_backlog,
            backpressure=self.backpressure,
        )
        frames = iter(source)
        reason: str | None = None
        try:
            while (reason := self._stop_reason()) is None:
                frame = next(frames, None)
                if frame is None:
                    break
                if self.fps is not None:
                    pace_start, paced = self._pace(pace_start, paced)
                self.summary.offered += 1
                self._offer(frame)
                self.summary.elapsed_s = time.monotonic() - started
                if self.on_progress is not None:
                    self.on_progress(self.summary)
        finally:
            self._account_for_frame_in_hand()
            self.summary.elapsed_s = time.monotonic() - started
        self._log.info(
            "producer_done", reason=reason or "source_exhausted", **self.summary.as_dict()
        )
        return self.summary

    def _account_for_frame_in_hand(self) -> None:
        """Count a frame that an exception left neither sent nor dropped as abandoned.

        A second signal (KeyboardInterrupt) or a Redis reply no rung handles can leave
        `_offer` half-way; counting the frame here keeps
        offered == sent + dropped + abandoned on every way out of `run`.
        """
        summary = self.summary
        unaccounted = summary.offered - summary.sent - summary.dropped - summary.abandoned
        if unaccounted > 0:
            summary.abandoned += unaccounted
            self._log.warning("frame_abandoned", reason="interrupted", frames=unaccounted)

    def _stop_reason(self) -> str | None:
        if self.stop_event.is_set():
            return "stop_requested"
        if self.count is not None and self.summary.offered >= self.count:
            return "count_reached"
        return None

    def _pace(self, pace_start: float, paced: int) -> tuple[float, int]:
        """Wait for the next frame slot; a producer that fell behind restarts its clock."""
        assert self.fps is not None
        due = pace_start + paced / self.fps
        now = time.monotonic()
        if now > due + 1.0 / self.fps:
            return now, 1  # late (e.g. after an outage): no burst to catch up
        self.stop_event.wait(max(0.0, due - now))
        return pace_start, paced + 1

    def _offer(self, frame: SourceFrame) -> None:
        image, content_type = self._encoded(frame)
        frame_id, bag = self._ids(frame)
        fields = FrameFields.model_validate(
            {
                "frame_id": frame_id,
                "scanner_id": self.scanner_id,
                "captured_at": utc_now(),
                "content_type": content_type,
                "meta": frame.meta,
                **bag,
            }
        )
        if not self._room_for_one():
            self._record_drop()
            return
        entry = fields.to_fields(image)
        if self._redis(lambda: self._send(entry)) is None:
            self.summary.abandoned += 1
            self._log.warning(
                "frame_abandoned", frame_id=frame_id, reason="stopped before Redis took it"
            )
            return
        self.summary.sent += 1
        self.summary.last_frame_id = frame_id

    def _ids(self, frame: SourceFrame) -> tuple[str, dict[str, str | int]]:
        """The frame's id on the wire and its bag fields (none for a one-view frame)."""
        if frame.bag_id is None or frame.view is None or frame.views is None:
            frame_id = f"{self.scanner_id}:{self.run_id}:{self.summary.offered}"
            return (frame_id if len(frame_id) <= MAX_ID else uuid.uuid4().hex), {}
        bag_id = f"{self.scanner_id}:{self.run_id}:{frame.bag_id}"
        suffix = f"-v{frame.view}"
        if len(bag_id) + len(suffix) > MAX_ID:
            # Stable for the bag's other views, unlike a fresh uuid.
            bag_id = f"{self.run_id}:{hashlib.sha256(bag_id.encode()).hexdigest()[:32]}"
        return bag_id + suffix, {"bag_id": bag_id, "view": frame.view, "views": frame.views}

    def _encoded(self, frame: SourceFrame) -> tuple[bytes, str]:
        if frame.content_type not in CONTENT_TYPES:
            raise ValueError(
                f"source gave content type {frame.content_type!r}; expected one of {CONTENT_TYPES}"
            )
        if isinstance(frame.image, np.ndarray):
            image = encode_image(frame.image, frame.content_type, self.jpeg_quality)
            return image, frame.content_type
        return bytes(frame.image), frame.content_type

    def _send(self, entry: dict[str, bytes | str]) -> bool:
        # XADD and the counter in one MULTI: the stats never claim a frame the stream lacks.
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.keys.frames, entry)  # type: ignore[arg-type]
        pipe.hincrby(self.keys.stats, "sent", 1)
        pipe.hincrby(self.keys.stats, f"sent:{self.scanner_id}", 1)
        pipe.execute()
        return True

    def _room_for_one(self) -> bool:
        """Apply backpressure; True when the frame may be sent, False when it is dropped."""
        backlog = self._backlog()
        if backlog is None or backlog < self.max_backlog:
            return True
        if not self._backlog_full:
            # Logged once per episode; the counters carry the per-frame detail.
            self._log.warning(
                "backlog_full",
                backlog=backlog,
                max_backlog=self.max_backlog,
                action=self.backpressure,
            )
            self._backlog_full = True
        if self.backpressure == "drop":
            return False
        self._wait_for_room()
        # Even when stopped while blocked, the frame in hand goes out: it is not lost.
        return True

    def _wait_for_room(self) -> None:
        waited_from = self._blocked_since = time.monotonic()
        delay = BLOCK_POLL_MIN_S
        try:
            while not self.stop_event.wait(delay):
                backlog = self._redis(self._xlen)
                if backlog is None or backlog < self.max_backlog:
                    break
                delay = min(delay * 2, BLOCK_POLL_MAX_S)
        finally:
            with self._blocked_lock:
                waited = time.monotonic() - waited_from
                self.summary.blocked_s += waited
                self._blocked_since = None
        self._redis(
            lambda: self.client.hincrbyfloat(self.keys.stats, "blocked_s", round(waited, 6))
        )

    def _backlog(self) -> int | None:
        backlog = self._redis(self._xlen)
        if backlog is not None and backlog < self.max_backlog and self._backlog_full:
            self._log.info(
                "backlog_drained",
                backlog=backlog,
                dropped=self.summary.dropped,
                blocked_s=round(self.summary.blocked_s, 3),
            )
            self._backlog_full = False
        return backlog

    def _xlen(self) -> int:
        backlog = int(self.client.xlen(self.keys.frames))
        self.summary.backlog = backlog
        return backlog

    def _record_drop(self) -> None:
        self.summary.dropped += 1
        self._redis(self._incr_dropped)

    def _incr_dropped(self) -> bool:
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(self.keys.stats, "dropped", 1)
        pipe.hincrby(self.keys.stats, f"dropped:{self.scanner_id}", 1)
        pipe.execute()
        return True

    def _redis(self, call: Callable[[], T]) -> T | None:
        """Run `call`, waiting out an outage or a write refusal; None only if stopped meanwhile.

        A refusal (out of memory under `noeviction`, MISCONF, a read-only replica) is
        a rung of its own but is waited out like an outage, with the same capped
        back-off and the frame kept in hand: it clears once workers drain the stream
        or an operator frees memory, and crashing would lose the frame in hand.
        """
        failures = 0
        met: list[str] = []  # what failed attempts met, in order; each change logged once
        while True:
            try:
                result = call()
            except REDIS_DOWN as exc:
                self._trouble(met, "unavailable", error=str(exc))
            except redis.ResponseError as exc:
                kind = refusal(exc)
                if kind is None:
                    raise  # a broken key or a bug: nothing that waiting would fix
                # Not str(exc): a refused pipeline's message quotes the whole frame.
                self.refusals[kind] = self.refusals.get(kind, 0) + 1
                self._trouble(met, kind)
            else:
                if failures:
                    self._recovered(met, failures)
                return result
            failures += 1
            if self.stop_event.wait(self.backoff.next_delay()):
                return None

    def _trouble(self, met: list[str], kind: str, **fields: str) -> None:
        """Log the start of an outage or refusal, once per episode rather than per attempt."""
        if met and met[-1] == kind:
            return
        met.append(kind)
        if kind == "unavailable":
            self._log.warning("redis_unavailable", **fields)
        else:
            self._log.warning("redis_refusing", kind=kind)

    def _recovered(self, met: list[str], failures: int) -> None:
        self.backoff.reset()
        if "unavailable" in met:
            self.summary.reconnects += 1
            self._log.info("redis_reconnected", failed_attempts=failures)
        else:
            self._log.info("redis_accepting", refused=met[-1], failed_attempts=failures)
