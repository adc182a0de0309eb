"""Where events go: the sink protocols, the webhook and archive sinks, and sink lookup.

A sink takes decision events (`deliver`, from `{ns}:results` / `{ns}:alerts`), bag events
(`deliver_bag`, from `{ns}:bags`), or both; the dispatcher hands each only its kind.

A sink is built from the settings inside the RQ worker process, so secrets (the
webhook key) never travel through Redis with the job.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from shared.client import EXTENSIONS
from shared.delivery.deadline import Deadline, build_opener
from shared.delivery.signatures import secret_key, sign_headers
from shared.keys import check_id
from shared.schemas import ArtefactRef, BagEvent, BagView, DecisionEvent
from shared.settings import Settings

BUILTIN_SINKS = {
    "webhook": "shared.delivery.sinks.webhook_from_settings",
    "archive": "shared.delivery.sinks.archive_from_settings",
    "dicos": "shared.delivery.dicos.dicos_from_settings",
}


class SinkError(RuntimeError):
    """A delivery attempt failed; the job raises it so RQ retries with back-off."""


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one sink."""

    event: DecisionEvent
    body: str  # the event JSON exactly as it sat on the stream
    delivery_id: str  # the RQ job id: the same for every redelivery of this event to this sink
    artefact: Callable[[ArtefactRef], bytes | None]  # None once the TTL has expired


@dataclass(frozen=True)
class BagDelivery:
    """One bag event on its way to one sink."""

    event: BagEvent
    body: str  # the bag event JSON exactly as it sat on the stream
    delivery_id: str
    # The decision event of one of the bag's views, read back from `{ns}:results`; None
    # if the stream no longer holds it.
    view_event: Callable[[BagView], DecisionEvent | None]


@runtime_checkable
class Sink(Protocol):
    """Anything that takes a delivery and returns a short summary (or raises to retry)."""

    def deliver(self, delivery: Delivery) -> str: ...


@runtime_checkable
class BagSink(Protocol):
    """A sink of bag events: one call per bag event, a short summary (or raises to retry)."""

    def deliver_bag(self, delivery: BagDelivery) -> str: ...


SinkFactory = Callable[[Settings], Sink | BagSink]


def resolve_sink(spec: str) -> SinkFactory:
    """The factory named by `spec`: a built-in name or a dotted path `pkg.module.attr`.

    The attribute is called with the settings and must return a sink.

    Raises:
        ValueError: the path cannot be imported or names nothing callable.
    """
    path = BUILTIN_SINKS.get(spec, spec)
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    if not module_name:
        raise ValueError(f"sink {spec!r} is neither {sorted(BUILTIN_SINKS)} nor a dotted path")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"sink {spec!r}: cannot import {path}: {exc}") from None
    if not callable(factory):
        raise ValueError(f"sink {spec!r}: {path} is not callable")
    return factory


def build_sink(spec: str, settings: Settings) -> Sink | BagSink:
    """Resolve and build one sink from the settings."""
    return resolve_sink(spec)(settings)


def event_kinds(sink: object) -> frozenset[str]:
    """The event streams a sink takes from: "results"/"alerts" (decisions), "bags"."""
    kinds = {"results", "alerts"} if isinstance(sink, Sink) else set()
    return frozenset(kinds | ({"bags"} if isinstance(sink, BagSink) else set()))


# -- webhook ---------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirected POST would be replayed as a GET without the body; treat it as a failure.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class WebhookSink:
    """POST the event JSON, signed per Standard Webhooks (`shared.delivery.signatures`).

    The `webhook-id` is the delivery id, the same for every retry, so a receiver can
    drop a second copy; the timestamp and signature are made afresh for each attempt.
    """

    def __init__(
        self, url: str, key: bytes, timeout_s: float = 5.0, deadline_s: float = 30.0
    ) -> None:
        self.url = url
        self.key = key  # the HMAC key: `secret_key` of the configured secret
        self.timeout_s = timeout_s  # connect and each read
        self.deadline_s = deadline_s  # the whole delivery, however slowly the receiver answers

    def deliver(self, delivery: Delivery) -> str:
        opener = build_opener(Deadline(self.deadline_s, self.timeout_s), _NoRedirects)
        body = delivery.body.encode()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "scanguard-delivery",
                "X-Scanguard-Event-Id": delivery.event.event_id,
                **sign_headers(self.key, delivery.delivery_id, body),
            },
        )
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            raise SinkError(f"webhook answered HTTP {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise SinkError(f"webhook unreachable: {exc}") from None
        return f"HTTP {status}"


def webhook_from_settings(settings: Settings) -> WebhookSink:
    ds = settings.delivery
    if ds.webhook_url is None or ds.webhook_secret is None:
        raise ValueError(
            "the webhook sink needs SCANGUARD_DELIVERY__WEBHOOK_URL and __WEBHOOK_SECRET"
        )
    return WebhookSink(
        ds.webhook_url,
        secret_key(ds.webhook_secret.get_secret_value()),
        ds.webhook_timeout_s,
        ds.webhook_deadline_s,
    )


# -- archive ---------------------------------------------------------------------------


class ArchiveSink:
    """Event JSON and artefacts in `root/YYYY/MM/DD/{event_id}/`, written once per event.

    The folder is assembled under a temporary name beside its final place and
    renamed into it, so a reader (or a crash) never sees half an event, and a
    second delivery of the same event finds the folder and leaves it alone.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, event: DecisionEvent) -> Path:
        """The event's folder, always inside the root.

        Raises:
            ValueError: the event id could not stand as a folder name (`/x`, `../x`).
        """
        day = event.decided_at
        # Checked here as well as in the schema: a sink may be handed an event built
        # without validation, and an absolute or `..` id would leave the root.
        event_id = check_id(event.event_id, "event id")
        final = self.root / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}" / event_id
        if not final.resolve().is_relative_to(self.root.resolve()):
            raise ValueError(f"event {event_id!r} would be archived outside {self.root}")
        return final

    def deliver(self, delivery: Delivery) -> str:
        final = self.folder(delivery.event)
        if final.exists():
            return f"already archived in {final}"
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            missing = self._fill(staging, delivery)
            try:
                os.rename(staging, final)
            except OSError:
                if not final.exists():
                    raise
                return f"already archived in {final}"  # a concurrent delivery won the rename
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        suffix = f" ({len(missing)} artefacts expired)" if missing else ""
        return f"archived in {final}{suffix}"

    def _fill(self, staging: Path, delivery: Delivery) -> list[str]:
        missing: list[str] = []
        for ref in delivery.event.artefacts:
            data = delivery.artefact(ref)
            if data is None:
                missing.append(ref.kind)
                continue
            (staging / f"{ref.kind}{EXTENSIONS.get(ref.content_type, '.bin')}").write_bytes(data)
        record = json.loads(delivery.body)
        (staging / "event.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        return missing


def archive_from_settings(settings: Settings) -> ArchiveSink:
    return ArchiveSink(settings.delivery.archive_dir)
