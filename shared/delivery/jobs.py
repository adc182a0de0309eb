"""The RQ side of delivery: job ids, enqueueing, and the job function workers import.

RQ runs with its JSON serializer, so a job is plain data: the sink spec, the event
JSON and the namespace. The job id is derived from those, which makes enqueueing
idempotent: a redelivered event maps to the job that already exists.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

import redis
import structlog
from rq import Queue, Retry, get_current_job
from rq.exceptions import DuplicateJobError
from rq.serializers import JSONSerializer

from shared.delivery.sinks import Delivery, Sink, build_sink
from shared.keys import Keys
from shared.logs import configure_logging
from shared.schemas import ArtefactRef, DecisionEvent
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
    secret, folder) from its own environment.
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("deliver runs inside an RQ worker; call run_delivery directly otherwise")
    return run_delivery(_sink(sink), body, namespace, job.connection, delivery_id=job.id)


def run_delivery(
    sink: Sink, body: str, namespace: str, client: redis.Redis, delivery_id: str
) -> str:
    """Deliver `body` (a decision event's JSON) to `sink`, fetching artefacts from `client`."""
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


@lru_cache(maxsize=1)
def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    return settings


@lru_cache(maxsize=16)
def _sink(spec: str) -> Sink:
    return build_sink(spec, _settings())
