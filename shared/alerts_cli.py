"""`scanguard-alerts tail`: print threat alerts as they arrive and keep their artefacts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.client import EventClient, Received
from shared.keys import Keys
from shared.logs import configure_logging
from shared.redis_conn import redis_from_settings
from shared.settings import SettingsError, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanguard-alerts",
        description="Watch scanguard decision events. Redis comes from SCANGUARD_REDIS_URL.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    tail = commands.add_parser("tail", help="print events as they arrive")
    tail.add_argument(
        "--stream",
        choices=("alerts", "results"),
        default="alerts",
        help="alerts (threats only, default) or results (every decision)",
    )
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--from-start", action="store_true", help="print the stored history first")
    start.add_argument("--from-id", default=None, help="print events after this stream entry id")
    tail.add_argument("--count", type=int, default=None, help="exit after this many events")
    tail.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each event's artefacts (masked, heatmap) into DIR",
    )
    tail.add_argument("--block-ms", type=int, default=5_000, help="longest wait per read")
    return parser


def format_event(received: Received) -> str:
    """One line per event: when, scanner, decision, classes with probabilities, cost."""
    event = received.event
    if event.detections:
        classes = ", ".join(f"{d.label} {d.probability:.3f}" for d in event.detections)
    else:
        classes = "-"
    return (
        f"{event.decided_at.isoformat(timespec='milliseconds')}  {event.scanner_id}  "
        f"{event.decision.upper()}  {classes}  iterations {event.iterations}  "
        f"latency {event.latency_ms:.0f} ms  frame {event.frame_id}  event {event.event_id}"
    )


def tail(events: EventClient, args: argparse.Namespace) -> int:
    """Print (and save) events until `--count` is reached or the user interrupts."""
    if args.count is not None and args.count <= 0:
        return 0
    last_id = args.from_id or ("0-0" if args.from_start else "$")
    follow = events.follow(args.stream, last_id=last_id, block_ms=args.block_ms)
    for shown, received in enumerate(follow, start=1):
        print(format_event(received), flush=True)
        if args.save is not None:
            for path in events.save_artefacts(received.event, args.save):
                print(f"  saved {path}", flush=True)
        if args.count is not None and shown >= args.count:
            break
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
    try:
        with redis_from_settings(settings) as client:
            return tail(EventClient(client, Keys(settings.namespace)), args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
