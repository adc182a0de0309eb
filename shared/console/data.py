"""What the alert monitor reads from Redis (alerts, artefacts, status) and its alert verdicts.

Every key name comes from `shared.keys.Keys`; request values are checked before
they reach one (event ids with `check_id`, kinds against the artefact kinds,
entry ids against the stream-id shape).
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from shared.client import EventError, parse_event
from shared.console.present import strip_meta
from shared.keys import ARTEFACT_KINDS, Keys, check_id
from shared.schemas import DecisionEvent, utc_now
from shared.vocab import OperatorVerdict

VERDICT_SCHEMA = "scanguard.verdict/1"
ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
LABEL = re.compile(r"^[A-Za-z0-9_. -]{1,64}$")


def check_entry_id(value: str) -> str:
    """Return a stream entry id `ms-seq`, else raise `ValueError`."""
    if not ENTRY_ID.match(value):
        raise ValueError(f"entry id {value!r} is not of the form <ms>-<seq>")
    return value


class VerdictIn(BaseModel):
    """An operator's verdict on one alert, as the browser posts it."""

    model_config = ConfigDict(extra="forbid")

    entry_id: str = Field(pattern=ENTRY_ID.pattern)
    event_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    verdict: OperatorVerdict
    operator: str = Field(pattern=r"^[A-Za-z0-9_.@ -]{1,64}$")


def alert_payload(
    entry_id: str,
    event: DecisionEvent,
    verdict: dict[str, str] | None,
    hidden: Collection[str] = (),
) -> dict[str, Any]:
    """An alert as the page gets it: the event without the hidden meta keys."""
    return {
        "entry_id": entry_id,
        "event": strip_meta(event.model_dump(mode="json", by_alias=True), hidden),
        "verdict": verdict,
    }


def _matches(event: DecisionEvent, scanner: str | None, label: str | None) -> bool:
    if scanner is not None and event.scanner_id != scanner:
        return False
    return label is None or any(d.label == label for d in event.detections)


def _newest_first(
    client: redis.Redis, key: str, before: str | None, page: int
) -> Iterator[tuple[str, dict[bytes, bytes]]]:
    upper = f"({before}" if before else "+"
    while True:
        entries: Any = client.xrevrange(key, max=upper, min="-", count=page)
        for raw_id, fields in entries:
            yield raw_id.decode(), fields
        if len(entries) < page:
            return
        upper = "(" + entries[-1][0].decode()


def recent_alerts(
    client: redis.Redis,
    keys: Keys,
    limit: int,
    scanner: str | None = None,
    label: str | None = None,
    before: str | None = None,
    scan_max: int = 5_000,
    hidden: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Up to `limit` alerts, newest first, optionally of one scanner and/or class.

    Looks at no more than `scan_max` entries, so a rare filter cannot make one
    request read the whole stream.
    """
    found: list[tuple[str, DecisionEvent]] = []
    for scanned, (entry_id, fields) in enumerate(_newest_first(client, keys.alerts, before, 200)):
        if len(found) >= limit or scanned >= scan_max:
            break
        try:
            event = parse_event(fields)
        except EventError:
            continue
        if _matches(event, scanner, label):
            found.append((entry_id, event))
    verdicts = latest_verdicts(client, keys)
    return [alert_payload(eid, ev, verdicts.get(ev.event_id), hidden) for eid, ev in found]


def one_alert(
    client: redis.Redis, keys: Keys, entry_id: str, hidden: Collection[str] = ()
) -> dict[str, Any] | None:
    """The alert stored under stream entry `entry_id`, or None."""
    event = _event_at(client, keys, check_entry_id(entry_id))
    if event is None:
        return None
    verdict = latest_verdicts(client, keys).get(event.event_id)
    return alert_payload(entry_id, event, verdict, hidden)


def _event_at(client: redis.Redis, keys: Keys, entry_id: str) -> DecisionEvent | None:
    entries: Any = client.xrange(keys.alerts, min=entry_id, max=entry_id, count=1)
    if not entries:
        return None
    try:
        return parse_event(entries[0][1])
    except EventError:
        return None


def artefact(client: redis.Redis, keys: Keys, event_id: str, kind: str) -> bytes | None:
    """The artefact bytes of one alert (None if unknown or expired); bad names raise `ValueError`."""
    if kind not in ARTEFACT_KINDS:
        raise ValueError(f"unknown artefact kind {kind!r}")
    data: Any = client.get(keys.artefact(check_id(event_id, "event id"), kind))
    return bytes(data) if data is not None else None


def newest_alert_id(client: redis.Redis, keys: Keys) -> str:
    """The id of the newest alert entry, or "0-0" for an empty stream."""
    newest: Any = client.xrevrange(keys.alerts, count=1)
    return newest[0][0].decode() if newest else "0-0"


# -- verdicts ---------------------------------------------------------------------------


def record_verdict(
    client: redis.Redis, keys: Keys, verdict: VerdictIn, *, maxlen: int
) -> str | None:
    """Append the verdict to `{ns}:verdicts`, kept near `maxlen` entries; None if no such alert.

    The entry carries the alert id, verdict, operator and time, plus the frame,
    scanner, detected classes and model, so it is usable as a label on its own.
    """
    event = _event_at(client, keys, verdict.entry_id)
    if event is None or event.event_id != verdict.event_id:
        return None
    fields = {
        "schema": VERDICT_SCHEMA,
        "alert_id": event.event_id,
        "alert_entry_id": verdict.entry_id,
        "verdict": verdict.verdict.value,
        "operator": verdict.operator,
        "at": utc_now().isoformat(),
        "frame_id": event.frame_id,
        "scanner_id": event.scanner_id,
        "classes": ",".join(d.label for d in event.detections),
        "model_id": event.model.id,
    }
    # `~`: Redis trims whole nodes only, which keeps the trim cheap on every append.
    entry: Any = client.xadd(
        keys.verdicts,
        fields,  # type: ignore[arg-type]
        maxlen=maxlen,
        approximate=True,
    )
    return bytes(entry).decode()


def latest_verdicts(
    client: redis.Redis, keys: Keys, count: int = 2_000
) -> dict[str, dict[str, str]]:
    """The newest verdict per alert id among the last `count` verdicts."""
    entries: Any = client.xrevrange(keys.verdicts, count=count)
    latest: dict[str, dict[str, str]] = {}
    for _raw_id, fields in entries:
        text = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
        latest.setdefault(
            text.get("alert_id", ""), {k: text.get(k, "") for k in ("verdict", "operator", "at")}
        )
    return latest


# -- status -----------------------------------------------------------------------------


class RateMeter:
    """Decisions per second from the `decided` counters in the workers' heartbeats.

    Each worker's counter is compared with its own oldest sample inside the
    window, using the heartbeat's own timestamps, so the figure needs no extra
    counter in Redis and works on any server version.
    """

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def update(self, beats: list[dict[str, Any]]) -> float:
        rate = 0.0
        with self._lock:
            live = set()
            for beat in beats:
                try:
                    wid, decided = str(beat["worker_id"]), int(beat["decided"])
                    at = datetime.fromisoformat(str(beat["at"])).timestamp()
                except (KeyError, TypeError, ValueError):
                    continue
                live.add(wid)
                samples = self._samples.setdefault(wid, deque())
                if not samples or samples[-1][0] < at:
                    samples.append((at, decided))
                while len(samples) > 2 and at - samples[0][0] > self.window_s:
                    samples.popleft()
                (t0, d0), (t1, d1) = samples[0], samples[-1]
                if t1 > t0 and d1 >= d0:
                    rate += (d1 - d0) / (t1 - t0)
            for gone in set(self._samples) - live:
                del self._samples[gone]
        return rate


def heartbeats(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """The live workers' heartbeat records (keys expire when a worker stops beating)."""
    names = list(client.scan_iter(match=keys.worker_pattern, count=500))
    if not names:
        return []
    beats = []
    for raw in client.mget(names):
        if raw is None:
            continue
        try:
            beat = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(beat, dict):
            beats.append(beat)
    return beats


def status(client: redis.Redis, keys: Keys, meter: RateMeter) -> dict[str, Any]:
    """The status strip: backlog, live workers, decisions per second, dead letters."""
    beats = heartbeats(client, keys)
    pipe = client.pipeline(transaction=False)
    pipe.xlen(keys.frames)
    pipe.xlen(keys.dead)
    backlog, dead = pipe.execute()
    return {
        "backlog": int(backlog),
        "workers": len(beats),
        "decisions_per_s": round(meter.update(beats), 2),
        "dead_letters": int(dead),
        "at": utc_now().isoformat(),
    }
