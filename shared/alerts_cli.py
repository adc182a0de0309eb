"""`scanguard-alerts`: follow decision events (`tail`) and fetch one with its artefacts (`show`)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shared.client import (
    EventClient,
    EventError,
    Received,
    StreamName,
    format_event,
    parse_event,
)
from shared.keys import Keys, check_id
from shared.logs import configure_logging
from shared.redis_conn import redis_from_settings
from shared.schemas import DecisionEvent
from shared.settings import SettingsError, load_settings

ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanguard-alerts",
        description="Watch scanguard decision events. Redis comes from SCANGUARD_REDIS_URL.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    tail = commands.add_parser("tail", help="print events as they arrive")
    _stream_option(tail)
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--from-start", action="store_true", help="print the stored history first")
    start.add_argument("--from-id", default=None, help="print events after this stream entry id")
    start.add_argument(
        "--since",
        type=since_entry_id,
        default=None,
        metavar="WHEN",
        help="print events from this time on: 30s, 10m, 2h, 1d ago, or ISO-8601",
    )
    tail.add_argument(
        "--scanner",
        action="append",
        default=None,
        metavar="ID",
        help="only events of this scanner (repeat for several)",
    )
    tail.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=None,
        metavar="LABEL",
        help="only events that detected this class (repeat for several)",
    )
    tail.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line: entry_id, event (and saved paths)",
    )
    tail.add_argument("--count", type=int, default=None, help="exit after this many events")
    tail.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each event's artefacts (masked, heatmap) into DIR",
    )
    tail.add_argument("--block-ms", type=int, default=5_000, help="longest wait per read")
    show = commands.add_parser("show", help="print one event in full and save its artefacts")
    show.add_argument("id", help="event id, or the stream entry id (<ms>-<seq>)")
    _stream_option(show)
    show.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="folder for the artefacts (default: the current one)",
    )
    show.add_argument("--json", action="store_true", help="print the event as JSON")
    show.add_argument(
        "--scan-max",
        type=int,
        default=100_000,
        help="newest entries searched for an event id (default 100000)",
    )
    return parser


def _stream_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stream",
        choices=("alerts", "results"),
        default="alerts",
        help="alerts (threats only, default) or results (every decision)",
    )


def since_entry_id(value: str, now: float | None = None) -> str:
    """The stream entry id just before time `value` (a duration ago, or an ISO-8601 time)."""
    match = DURATION.match(value)
    if match:
        seconds = float(match.group(1)) * SECONDS[match.group(2)]
        at_ms = int(((now if now is not None else time.time()) - seconds) * 1000)
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r} is neither a duration (30s, 10m, 2h, 1d) nor an ISO-8601 time"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        at_ms = int(moment.timestamp() * 1000)
    # XREAD returns entries after this id, so start one millisecond earlier.
    return f"{max(at_ms - 1, 0)}-0"


def as_json(received: Received, saved: list[Path] | None = None) -> str:
    """One event as a JSON line for scripts."""
    record: dict[str, Any] = {
        "entry_id": received.entry_id,
        "event": received.event.model_dump(mode="json", by_alias=True),
    }
    if saved is not None:
        record["saved"] = [str(path) for path in saved]
    return json.dumps(record, separators=(",", ":"))


def matches(event: DecisionEvent, scanners: list[str] | None, classes: list[str] | None) -> bool:
    """True if the event passes the scanner and class filters (None lets everything through)."""
    if scanners and event.scanner_id not in scanners:
        return False
    return not classes or any(d.label in classes for d in event.detections)


def tail(events: EventClient, args: argparse.Namespace) -> int:
    """Print (and save) matching events until `--count` is reached or the user interrupts."""
    if args.count is not None and args.count <= 0:
        return 0
    last_id = args.from_id or args.since or ("0-0" if args.from_start else "$")
    follow = events.follow(args.stream, last_id=last_id, block_ms=args.block_ms)
    shown = 0
    for received in follow:
        if not matches(received.event, args.scanner, args.classes):
            continue
        saved = events.save_artefacts(received.event, args.save) if args.save is not None else None
        if args.json:
            print(as_json(received, saved), flush=True)
        else:
            print(format_event(received), flush=True)
            for path in saved or []:
                print(f"  saved {path}", flush=True)
        shown += 1
        if args.count is not None and shown >= args.count:
            break
    return 0


def find(events: EventClient, stream: StreamName, wanted: str, scan_max: int) -> Received | None:
    """The event with stream entry id or event id `wanted`, searching newest first."""
    key = events.stream(stream)
    if ENTRY_ID.match(wanted):
        entries: Any = events.client.xrange(key, min=wanted, max=wanted, count=1)
        return _received(entries[0]) if entries else None
    upper, scanned = "+", 0
    while scanned < scan_max:
        page: Any = events.client.xrevrange(key, max=upper, min="-", count=500)
        for entry in page:
            if b'"event_id":"' + wanted.encode() + b'"' in entry[1].get(b"event", b""):
                found = _received(entry)
                if found is not None and found.event.event_id == wanted:
                    return found
        scanned += len(page)
        if len(page) < 500:
            return None
        upper = "(" + page[-1][0].decode()
    return None


def _received(entry: Any) -> Received | None:
    try:
        return Received(entry[0].decode(), parse_event(entry[1]))
    except EventError:
        return None


def describe(event: DecisionEvent) -> list[str]:
    """A multi-line account of one event, with its probability trace."""
    threats = event.model.labels[1:]
    lines = [
        f"event      {event.event_id}",
        f"decision   {event.decision}",
        f"scanner    {event.scanner_id}   frame {event.frame_id}",
        f"decided    {event.decided_at.isoformat(timespec='milliseconds')}   latency {event.latency_ms:.0f} ms",
        "classes    "
        + (", ".join(f"{d.label} {d.probability:.3f}" for d in event.detections) or "-"),
        f"iterations {event.iterations} ({event.forward_passes} forward passes)",
        f"model      {event.model.id}   worker {event.worker_id}",
        "trace      " + "  ".join(f"{label:>8}" for label in threats),
    ]
    for step, probs in enumerate(event.trace):
        name = "original" if step == 0 else f"iter {step}"
        lines.append(
            f"  {name:<9}" + "  ".join(f"{probs.get(label, 0.0):>8.3f}" for label in threats)
        )
    return lines


def show(events: EventClient, args: argparse.Namespace) -> int:
    """Print one event and save its artefacts into `--out`; 1 if it is not found."""
    if not ENTRY_ID.match(args.id):
        try:
            check_id(args.id, "event id")
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    received = find(events, args.stream, args.id, args.scan_max)
    if received is None:
        print(f"no event {args.id} in the {args.stream} stream", file=sys.stderr)
        return 1
    saved = events.save_artefacts(received.event, args.out)
    if args.json:
        print(as_json(received, saved), flush=True)
        return 0
    print("\n".join(describe(received.event)), flush=True)
    for path in saved:
        print(f"saved {path}", flush=True)
    missing = len(received.event.artefacts) - len(saved)
    if missing:
        print(f"{missing} artefact(s) expired", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `scanguard-alerts` and `python -m shared.alerts_cli`."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    command = tail if args.command == "tail" else show
    try:
        with redis_from_settings(settings) as client:
            return command(EventClient(client, Keys(settings.namespace)), args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
