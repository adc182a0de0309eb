"""The worker loop: read frames, decode, step the engine, render, publish, repeat.

Each pass of the loop is a checklist: stop requested and drained? → maintenance
(health, heartbeat, reclaim) → read into free slots and the read-ahead → admit what
has decoded, up to the free slots → one engine step → hand finished frames to the
render pool → publish what has rendered. Decoding and rendering run in a thread pool so
they overlap the engine step. The read-ahead (`worker.read_ahead`, default `max_batch`)
decodes the next frames while the engine is full, so the slots a step frees are filled
at once rather than by the few frames that happen to have decoded by then.

The failure ladder: one action per failure class.

- Redis unreachable (connection refused or lost, time-out), at start or later: back off
  (capped, full jitter), keep every frame in flight and every result not yet published,
  retry.
- Redis up but refusing writes (out of memory under `noeviction`, MISCONF, a read-only
  replica after a fail-over): the same back-off, kept work and retry, reported apart
  (`redis_refusing` log, `scanguard_redis_refusals_total{kind}`, the health file's text).
  A refused heartbeat is reported and skipped, so decisions still flow while Redis
  accepts the publish scripts.
- A bad frame (fields, bytes, sizes): dead letter with its reason and a `DeadKind`
  (`bad_fields`, `undecodable`, `too_large`); the rest of the batch goes on.
- Any other exception while decoding or rendering one frame (a bug tied to that
  frame): that frame alone is dead-lettered with kind `internal`, the exception type
  and message as the reason; the traceback is logged once. Its batch-mates are decided
  normally and the worker keeps running.
- An exception from the engine step (the device or the model: CUDA out of memory, a
  broken checkpoint): log it, publish nothing of that step, publish only results that
  were complete before it, and exit 1 so the orchestrator restarts the process; the
  frames left pending are reclaimed by other workers after `claim_idle_ms`.
- First SIGTERM/SIGINT: stop reading, drain what is in flight, exit 0. Second: exit 1
  at once (pending frames are reclaimed by others).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import redis
import structlog

from shared.backoff import Backoff
from shared.keys import Keys
from shared.schemas import MetaLimits, utc_now
from shared.settings import Settings
from shared.streams import REDIS_DOWN, default_consumer_id, ensure_group, refusal
from shared.vocab import DeadKind
from worker.engine.decision import DecisionPolicy
from worker.engine.erasing import EngineInput, ErasingEngine, FrameResult
from worker.engine.model import LoadedModel
from worker.service.bags import BagCloser
from worker.service.events import InFlight, RenderOptions, render
from worker.service.health import HealthFile
from worker.service.intake import IntakeLimits, Rejected, decode_entry, internal_error
from worker.service.metrics import WorkerMetrics
from worker.service.outbox import Outbox
from worker.service.publish import Lifetimes, Outcome, Publisher
from worker.service.upkeep import claim_stale, prune_consumers

log = structlog.get_logger("scanguard.worker")


class EngineFailure(RuntimeError):
    """The engine step raised: the device or the model is unusable in this process."""


class Worker:
    """One consumer of the frames stream, driving one engine."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        model: LoadedModel,
        policy: DecisionPolicy,
        *,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        ws = settings.worker
        self.settings = settings
        self.client = client
        self.model = model
        self.keys = Keys(settings.namespace)
        self.id = ws.id or default_consumer_id()
        self.metrics = metrics or WorkerMetrics()
        self.policy = policy
        self.engine = ErasingEngine(
            model,
            self.policy,
            max_batch=settings.model.max_batch,
            precision=settings.model.precision,
        )
        lifetimes = Lifetimes(ws.artefact_ttl_s, ws.dedupe_ttl_s, ws.bag_deadline_ms)
        self.publisher = Publisher(
            client,
            self.keys,
            ws.group,
            lifetimes=lifetimes,
            stream_maxlen=ws.stream_maxlen,
            dead_field_bytes=ws.dead_field_bytes,
        )
        self.bags = BagCloser(
            client,
            self.keys,
            self.id,
            review_ttl_s=ws.review_ttl_s,
            closed_ttl_s=ws.dedupe_ttl_s,
            stream_maxlen=ws.stream_maxlen,
        )
        self._render_options = RenderOptions(
            artefact_ttl_s=ws.artefact_ttl_s,
            original_ttl_s=lifetimes.open_bag_ttl_s,
            jpeg_quality=ws.jpeg_quality,
            roi_threshold=ws.roi_threshold,
            max_rois=ws.max_rois,
        )
        self.health = HealthFile(ws.health_dir, self.id)
        self._limits = IntakeLimits(
            ws.max_frame_bytes,
            ws.max_pixels,
            model.input_hw,
            max_side=ws.max_side_px,
            max_views=ws.max_views,
            meta=MetaLimits(ws.max_meta_bytes, ws.max_meta_depth),
        )
        self._pool = ThreadPoolExecutor(ws.decode_threads, thread_name_prefix="scanguard-io")
        self._read_ahead = ws.read_ahead if ws.read_ahead is not None else self.engine.max_batch
        self._decoding: deque[Future[tuple[InFlight, EngineInput] | Rejected]] = deque()
        self._in_engine: dict[str, InFlight] = {}
        self._owned: set[str] = set()  # entry ids read or claimed and not yet published
        self._rendering: deque[Future[Outcome | Rejected]] = deque()
        self._stop = threading.Event()
        self._signals = 0
        self._next_heartbeat = 0.0
        self._next_reclaim = 0.0
        self._next_bag_check = 0.0
        self._group_ready = False
        self.log = log.bind(worker_id=self.id)
        self._outbox = Outbox(client, self.publisher, self.bags, self.metrics, self.id, self.log)

    # -- lifecycle -----------------------------------------------------------------

    def request_stop(self) -> None:
        """Warm shutdown: stop reading, finish and publish what is in flight."""
        self._stop.set()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self._signals == 1:
            self.log.info(
                "warm_shutdown", signal=signal.Signals(signum).name, in_flight=self._in_flight()
            )
            self.request_stop()
        else:
            # Frames still pending here are reclaimed by other workers after claim_idle_ms.
            self.log.warning(
                "cold_shutdown", signal=signal.Signals(signum).name, in_flight=self._in_flight()
            )
            os._exit(1)

    def _install_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    def run(self, *, burst: bool = False, until: Callable[[], bool] | None = None) -> int:
        """Work until stopped (exit code 0 after a drain).

        Args:
            burst: return once the stream is empty and nothing is in flight.
            until: with `burst`, also wait until this returns True (e.g. producer done).
        """
        self._install_signals()
        backoff = Backoff(0.05, self.settings.worker.reconnect_max_s)
        self.log.info(
            "worker_started",
            model=self.model.model_id,
            device=str(self.engine.device),
            max_batch=self.engine.max_batch,
            group=self.settings.worker.group,
        )
        reason = "stopped"
        exit_code = 0
        try:
            while True:
                if self._stop.is_set() and self._in_flight() == 0:
                    reason = "drained"
                    break
                # Asked before reading: a feeder that finishes after an empty read may
                # still have added a frame, which the next pass must pick up.
                upstream_done = until is None or until()
                try:
                    self._maintain()
                    read = self._read()
                    self._admit()
                    self._step()
                    self._publish()
                    backoff.reset()
                except EngineFailure as exc:
                    self.log.error("engine_failed", error=str(exc.__cause__ or exc))
                    self._publish_completed()
                    reason, exit_code = "engine_failed", 1
                    break
                except REDIS_DOWN as exc:
                    delay = backoff.next_delay()
                    self.metrics.reconnects.inc()
                    self.log.warning(
                        "redis_unavailable", error=str(exc), retry_in_s=round(delay, 3)
                    )
                    self.health.touch("redis unavailable")
                    time.sleep(delay)
                    continue
                except redis.ResponseError as exc:
                    kind = refusal(exc)
                    if kind is None:
                        raise
                    delay = backoff.next_delay()
                    self._report_refusal(kind, exc, retry_in_s=round(delay, 3))
                    time.sleep(delay)
                    continue
                if burst and upstream_done and read == 0 and self._in_flight() == 0:
                    reason = "burst_done"
                    break
        finally:
            self._teardown(reason)
        return exit_code

    def _teardown(self, reason: str) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
        self.engine.close()
        with contextlib.suppress(*REDIS_DOWN):
            self.client.delete(self.keys.worker(self.id))
        self.health.remove()
        self.log.info("worker_stopped", reason=reason, decided=self.decided, dead=self.dead)

    def _in_flight(self) -> int:
        return len(self._decoding) + self.engine.active + len(self._rendering) + len(self._outbox)

    # -- maintenance ---------------------------------------------------------------

    def _report_refusal(self, kind: str, exc: Exception, **context: object) -> None:
        self.metrics.refusals.labels(kind).inc()
        self.log.warning("redis_refusing", kind=kind, error=str(exc), **context)
        self.health.touch(f"redis refusing writes: {kind}")

    def _maintain(self) -> None:
        self.health.touch()
        now = time.monotonic()
        ws = self.settings.worker
        if not self._group_ready:
            self._prepare_group()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + ws.heartbeat_ttl_s / 3
            try:
                self._heartbeat()
                self.health.touch("")
            except redis.ResponseError as exc:
                kind = refusal(exc)
                if kind is None:
                    raise
                # Redis may still take the publish scripts; keep deciding frames.
                self._report_refusal(kind, exc, during="heartbeat")
        if now >= self._next_bag_check:
            self._close_due_bags()
            self._next_bag_check = now + min(ws.bag_deadline_ms / 4000, 1.0)
        if now >= self._next_reclaim and not self._stop.is_set():
            self._reclaim()
            self._next_reclaim = now + max(ws.claim_idle_ms / 2000, 0.05)

    def _heartbeat(self) -> None:
        beat = {
            "worker_id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "model": self.model.model_id,
            "device": str(self.engine.device),
            "decided": self.decided,
            "active": self.engine.active,
            "at": utc_now().isoformat(),
        }
        self.client.set(
            self.keys.worker(self.id), json.dumps(beat), ex=self.settings.worker.heartbeat_ttl_s
        )
        backlog = self.client.xlen(self.keys.frames)
        self.metrics.backlog.set(backlog)

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if they do not exist yet."""
        ensure_group(self.client, self.keys.frames, self.settings.worker.group)

    def _prepare_group(self) -> None:
        """First pass: the group exists, and consumers long gone are removed from it."""
        ws = self.settings.worker
        self.ensure_group()
        for name in prune_consumers(
            self.client, self.keys.frames, ws.group, keep=self.id, idle_s=ws.consumer_idle_s
        ):
            self.log.info("stale_consumer_removed", consumer=name)
        self._group_ready = True

    # -- reading and decoding ------------------------------------------------------

    def _slots_to_fill(self) -> int:
        """Entries to read now: the engine's slots plus the read-ahead, less every frame
        this worker already holds (decoding, in the engine, rendering, or waiting to be
        published). Frames a step has finished count until they are acknowledged, so a
        worker never holds more than `max_batch + read_ahead`, and renders that fall
        behind the engine slow the reads down instead of piling up."""
        return self.engine.max_batch + self._read_ahead - self._in_flight()

    def _read(self) -> int | None:
        """Read new entries into free slots and the read-ahead; block only when there is
        nothing else to do.

        Returns how many entries came, or None when there was no room to read (so a
        burst run never mistakes a full engine for an empty stream).
        """
        count = self._slots_to_fill()
        if self._stop.is_set() or count <= 0:
            return None
        idle = self._in_flight() == 0
        # An idle read blocks at most one second at a time, so a stop request (which
        # cannot interrupt the socket read) is seen within a second whatever max_wait_ms.
        block_ms = min(self.settings.worker.max_wait_ms, 1_000) if idle else None
        try:
            reply: Any = self.client.xreadgroup(
                self.settings.worker.group,
                self.id,
                {self.keys.frames: ">"},
                count=count,
                block=block_ms,
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.log.warning("group_missing", stream=self.keys.frames)
            self.ensure_group()
            return None
        entries: list[Any] = reply[0][1] if reply else []
        for raw_id, raw in entries:
            entry_id = raw_id.decode()
            self._owned.add(entry_id)
            self._submit_decode(entry_id, raw, deliveries=1)
        return len(entries)

    def _submit_decode(
        self, entry_id: str, raw: dict[bytes, bytes] | None, deliveries: int
    ) -> None:
        self._decoding.append(self._pool.submit(self._decode, entry_id, raw or {}, deliveries))

    def _decode(
        self, entry_id: str, raw: dict[bytes, bytes], deliveries: int
    ) -> tuple[InFlight, EngineInput] | Rejected:
        try:
            return decode_entry(entry_id, raw, deliveries, self._limits)
        except Exception as exc:  # a bug tied to this frame: it alone is dead-lettered
            self.log.exception("decode_failed", entry_id=entry_id)
            return internal_error(entry_id, raw, deliveries, exc)

    def _render(self, frame: InFlight, result: FrameResult) -> Outcome | Rejected:
        try:
            return render(
                frame,
                result,
                model=self.model,
                policy=self.policy,
                keys=self.keys,
                worker_id=self.id,
                options=self._render_options,
            )
        except Exception as exc:  # a bug tied to this frame: it alone is dead-lettered
            self.log.exception("render_failed", entry_id=frame.entry_id)
            return internal_error(frame.entry_id, frame.raw, frame.deliveries, exc)

    def _admit(self) -> None:
        if self._decoding and self.engine.active == 0 and not self._decoding[0].done():
            wait([self._decoding[0]], timeout=1.0)  # nothing else to do until it decodes
        admitted: list[EngineInput] = []
        free = self.engine.free_slots
        # In arrival order; a decoded frame with no free slot waits for the next step.
        while self._decoding and self._decoding[0].done() and len(admitted) < free:
            outcome = self._decoding.popleft().result()
            if isinstance(outcome, Rejected):
                self._outbox.append(outcome)
                continue
            frame, engine_input = outcome
            self._in_engine[frame.entry_id] = frame
            admitted.append(engine_input)
        self.engine.admit(admitted)

    # -- engine, rendering, publishing ---------------------------------------------

    def _step(self) -> None:
        if self.engine.active == 0:
            return
        active = self.engine.active
        start = time.perf_counter()
        try:
            finished = self.engine.step()
        except Exception as exc:
            self.log.exception("engine_step_failed", active=active)
            raise EngineFailure(f"engine step over {active} frames failed") from exc
        elapsed = time.perf_counter() - start
        self.metrics.batch_size.observe(active)
        self.metrics.step_seconds.observe(elapsed)
        self.metrics.forwards.inc(active)
        for result in finished:
            frame = self._in_engine.pop(str(result.key))
            self._rendering.append(self._pool.submit(self._render, frame, result))
        if finished:
            self.log.debug(
                "step_done", active=active, finished=len(finished), step_ms=round(elapsed * 1e3, 2)
            )

    def _publish(self) -> None:
        if self._rendering and self.engine.active == 0 and not self._decoding:
            wait(list(self._rendering), timeout=1.0, return_when=FIRST_COMPLETED)
        while self._rendering and self._rendering[0].done():
            self._outbox.append(self._rendering.popleft().result())
        self._flush_outbox()

    def _publish_completed(self) -> None:
        """Before an exit on an engine failure: publish the results already rendered."""
        wait(list(self._rendering), timeout=10.0)
        while self._rendering and self._rendering[0].done():
            self._outbox.append(self._rendering.popleft().result())
        with contextlib.suppress(redis.RedisError):  # best effort: pending frames are reclaimed
            self._flush_outbox()

    def _flush_outbox(self) -> None:
        for entry_id in self._outbox.flush():
            self._owned.discard(entry_id)

    def _close_due_bags(self) -> None:
        """Maintenance: bags past their deadline close now (undetermined if views are missing)."""
        for event in self.bags.close_due(int(time.time() * 1000)):
            self._outbox.bag_closed(event)

    @property
    def decided(self) -> int:
        return self._outbox.decided

    @property
    def dead(self) -> int:
        return self._outbox.dead

    # -- reclaiming stale entries --------------------------------------------------

    def _reclaim(self) -> None:
        """Take over frames other consumers left pending longer than claim_idle_ms."""
        ws = self.settings.worker
        count = self._slots_to_fill()
        if count <= 0:
            return
        for item in claim_stale(
            self.client,
            self.keys.frames,
            ws.group,
            self.id,
            idle_ms=ws.claim_idle_ms,
            count=count,
            owned=self._owned,
        ):
            entry_id, deliveries = item.entry_id, item.deliveries
            self.metrics.redeliveries.inc()
            self.log.info("frame_reclaimed", entry_id=entry_id, deliveries=deliveries)
            self._owned.add(entry_id)
            if not item.raw:
                reason = "entry was deleted before it was decided"
                self._outbox.append(Rejected(entry_id, {}, reason, DeadKind.DELETED, deliveries))
            elif deliveries > ws.max_deliveries:
                reason = f"delivered {deliveries} times without a decision (max_deliveries={ws.max_deliveries})"
                self._outbox.append(
                    Rejected(entry_id, item.raw, reason, DeadKind.MAX_DELIVERIES, deliveries)
                )
            else:
                self._submit_decode(entry_id, item.raw, deliveries)
