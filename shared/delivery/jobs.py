"""The RQ side of delivery: job ids, enqueueing, and the job function workers import.

RQ runs with its JSON serializer, so a job is plain data: the sink spec, the event
JSON and the namespace. The job id is derived from those, which makes enqueueing
idempotent: a redelivered event maps to the job that already exists. The event is a
decision event or, by its `schema`, a bag event (`{ns}:bags`, for bag sinks).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import timedelta
from functools import lru_cache
from typing import Any

import redis
import structlog
from rq import Queue, Retry, get_current_job
from rq.exceptions import DuplicateJobError
from rq.serializers import JSONSerializer

from shared.delivery.metrics import record_attempt
from shared.delivery.sinks import BagDelivery, BagSink, Delivery, Sink, build_sink
from shared.keys import Keys
from shared.logs import configure_logging
from shared.schemas import BAG_SCHEMA, ArtefactRef, BagEvent, BagView, DecisionEvent
from shared.settings import DeliverySettings, Settings, load_settings

log = structlog.get_logger("scanguard.delivery")
JOB_FUNCTION = "shared.delivery.jobs.deliver"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def job_id(namespace: str, sink: str, event_id: str) -> str:
    """The one job id for this event and sink (RQ allows letters, digits, _ and -)."""
    digest = hashlib.sha256(f"{namespace}\n{sink}\n{event_id}".encode()).hexdigest()[:32]
    return f"sg-{_UNSAFE.sub('_', sink)[-24:]}-{digest}"


def make_queue(client: redis.Redis, name: str) -> Queue:
    """The delivery queue, with the JSON serializer (no pickle on either side)."""
    return Queue(name, connection=client, serializer=JSONSerializer)


def retry_policy(ds: DeliverySettings) -> Retry | None:
    """`retries` attempts after the first, waiting base, 2×base, … up to retry_max_s."""
    if ds.retries == 0:
        return None
    intervals = [min(ds.retry_max_s, ds.retry_base_s * 2**n) for n in range(ds.retries)]
    return Retry(max=ds.retries, interval=intervals)


def enqueue(
    queue: Queue, ds: DeliverySettings, namespace: str, sink: str, event_id: str, body: str
) -> bool:
    """Enqueue one delivery; False if a job for this event and sink already exists."""
    try:
        queue.enqueue_call(
            JOB_FUNCTION,
            args=[sink, body, namespace],
            job_id=job_id(namespace, sink, event_id),
            description=f"deliver {event_id} to {sink}",
            retry=retry_policy(ds),
            timeout=ds.job_timeout_s,
            result_ttl=ds.dedupe_ttl_s,  # the finished job keeps its id taken this long
            failure_ttl=ds.failure_ttl_s,  # a failed job stays for `rq info`, then goes
            unique=True,
        )
    except DuplicateJobError:
        return False
    return True


def deliver(sink: str, body: str, namespace: str) -> str:
    """RQ job: hand one event to one sink; raising makes RQ retry it later.

    Runs inside an RQ worker process, which reads the sink's settings (URL,
    secret, folder) from its own environment. Each attempt's outcome is counted in
    `{ns}:delivery:stats` (see `shared.delivery.metrics`).
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("deliver runs inside an RQ worker; call run_delivery directly otherwise")
    try:
        summary = run_delivery(_sink(sink), body, namespace, job.connection, delivery_id=job.id)
    except Exception:
        # RQ retries a job that raises while it has retries left; only the job itself can
        # count the attempt, since the work horse running it has no metrics of its own.
        outcome = "retried" if job.retries_left else "failed"
        record_attempt(job.connection, namespace, sink, outcome)
        raise
    record_attempt(job.connection, namespace, sink, "succeeded")
    return summary


def run_delivery(
    sink: Sink | BagSink, body: str, namespace: str, client: redis.Redis, delivery_id: str
) -> str:
    """Deliver `body` (a decision or bag event's JSON) to `sink`, reading Redis via `client`."""
    if _schema(body) == BAG_SCHEMA:
        return _deliver_bag(sink, body, namespace, client, delivery_id)
    if not isinstance(sink, Sink):
        raise TypeError(f"{type(sink).__name__} takes no decision events")
    event = DecisionEvent.model_validate_json(body)
    keys = Keys(namespace)

    def artefact(ref: ArtefactRef) -> bytes | None:
        # Only keys this namespace would have built for this event are read.
        if ref.key != keys.artefact(event.event_id, ref.kind):
            raise ValueError(f"artefact key {ref.key!r} does not belong to event {event.event_id}")
        data: Any = client.get(ref.key)
        return bytes(data) if data is not None else None

    summary = sink.deliver(Delivery(event, body, delivery_id, artefact))
    log.info("event_delivered", event_id=event.event_id, delivery_id=delivery_id, result=summary)
    return summary


def _schema(body: str) -> object:
    try:
        record = json.loads(body)
    except ValueError:
        return None  # the model's own validation says what is wrong
    return record.get("schema") if isinstance(record, dict) else None


def _deliver_bag(
    sink: Sink | BagSink, body: str, namespace: str, client: redis.Redis, delivery_id: str
) -> str:
    if not isinstance(sink, BagSink):
        raise TypeError(f"{type(sink).__name__} takes no bag events")
    event = BagEvent.model_validate_json(body)
    finder = view_event_finder(client, Keys(namespace), event)
    summary = sink.deliver_bag(BagDelivery(event, body, delivery_id, finder))
    log.info("bag_delivered", event_id=event.event_id, delivery_id=delivery_id, result=summary)
    return summary


# How far around a view's frame entry and its bag's close its decision event is looked for:
# stream ids are Redis time, `decided_at` is the closing worker's clock.
CLOCK_SLACK = timedelta(minutes=5)


def view_event_finder(
    client: redis.Redis, keys: Keys, bag: BagEvent, page: int = 500
) -> Callable[[BagView], DecisionEvent | None]:
    """Look up a view's decision event on `{ns}:results`.

    It was published after its frame entry (`view.entry_id`, Redis time) and before the bag
    closed, so only that stretch of the stream is read, a page at a time.
    """
    until_ms = int((bag.decided_at + CLOCK_SLACK).timestamp() * 1000)
    slack_ms = int(CLOCK_SLACK.total_seconds() * 1000)

    def find(view: BagView) -> DecisionEvent | None:
        head = view.entry_id.partition("-")[0]
        start_ms = max(0, int(head) - slack_ms) if head.isdigit() else 0
        lower: str = f"{start_ms}-0"
        while True:
            entries: Any = client.xrange(keys.results, min=lower, max=f"{until_ms}-0", count=page)
            for _entry_id, fields in entries:
                raw = fields.get(b"event", b"")
                if view.event_id.encode() in raw:  # cheap test before parsing
                    event = DecisionEvent.model_validate_json(raw)
                    if event.event_id == view.event_id:
                        return event
            if len(entries) < page:
                return None
            lower = "(" + entries[-1][0].decode()

    return find


@lru_cache(maxsize=1)
def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    return settings


@lru_cache(maxsize=16)
def _sink(spec: str) -> Sink | BagSink:
    return build_sink(spec, _settings())
