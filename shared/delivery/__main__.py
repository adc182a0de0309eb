"""`python -m shared.delivery`: run the dispatcher (RQ workers run with `rq worker`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from shared.delivery.dispatcher import Dispatcher
from shared.logs import configure_logging
from shared.metrics_http import serve
from shared.redis_conn import connect
from shared.settings import SettingsError, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.delivery",
        description="Enqueue one RQ job per decision event and sink. Settings come from "
        "SCANGUARD_* (SCANGUARD_DELIVERY__SINKS, __WEBHOOK_URL, __WEBHOOK_SECRET, __ARCHIVE_DIR). "
        "Run the jobs with: rq worker --with-scheduler --serializer rq.serializers.JSONSerializer "
        "-u $SCANGUARD_REDIS_URL scanguard-delivery",
    )
    parser.add_argument(
        "--sink",
        action="append",
        dest="sinks",
        metavar="SINK",
        help="webhook, archive or a dotted path (repeat; default: settings)",
    )
    parser.add_argument(
        "--stream",
        action="append",
        dest="streams",
        choices=("results", "alerts"),
        help="stream to read (repeat; default: settings, alerts)",
    )
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="a new consumer group also delivers the stored history",
    )
    parser.add_argument("--burst", action="store_true", help="exit once no new entries are waiting")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve /metrics on this port, 0 = off (default: SCANGUARD_DELIVERY__METRICS_PORT)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.sinks:
        overrides["sinks"] = args.sinks
    if args.streams:
        overrides["streams"] = args.streams
    if args.from_start:
        overrides["from_start"] = True
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    try:
        settings = load_settings(delivery=overrides) if overrides else load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if settings.redis_url is None:
        print(
            "the dispatcher needs SCANGUARD_REDIS_URL (RQ workers must reach the same Redis)",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_format, settings.log_level)
    client = connect(
        settings.redis_url.get_secret_value(),
        socket_timeout=max(30.0, settings.delivery.block_ms / 1000 + 5),
    )
    try:
        dispatcher = Dispatcher(settings, client)
        server = serve(
            dispatcher.metrics.registry,
            settings.delivery.metrics_port,
            "SCANGUARD_DELIVERY__METRICS_PORT (--metrics-port)",
        )
    except ValueError as exc:  # a bad sink, or the metrics port taken (MetricsPortError)
        print(f"error: {exc}", file=sys.stderr)
        client.close()
        return 2
    try:
        return dispatcher.run(burst=args.burst)
    finally:
        if server is not None:
            server.close()
        client.close()


if __name__ == "__main__":
    sys.exit(main())
