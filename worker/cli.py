"""`python -m worker`: run a worker, check its health, or run the demo."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import structlog

from shared.logs import configure_logging
from shared.redis_conn import describe_url
from shared.settings import Settings, SettingsError, load_settings
from worker.service.health import health_file


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="scanguard GPU worker: ViT iterative erasing on frames from Redis. "
        "Settings come from SCANGUARD_* environment variables.",
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="consume frames until stopped (the default command)")
    run.add_argument("--burst", action="store_true", help="exit once the stream is empty")
    run.add_argument("--id", help="worker id (default: SCANGUARD_WORKER__ID or host-pid)")
    check = sub.add_parser("check", help="liveness probe: exit 0 if the worker loop is alive")
    check.add_argument("--id", help="worker id to check (default: SCANGUARD_WORKER__ID)")
    demo = sub.add_parser("demo", help="embedded Redis + producer + worker on synthetic bags")
    demo.add_argument("--bags", type=int, default=60, help="dual-view bags to screen")
    demo.add_argument("--views", type=int, default=2, choices=range(1, 9), metavar="1..8")
    demo.add_argument("--fps", type=float, default=12.0, help="views per second")
    demo.add_argument("--out", default="demo-out", help="folder for alert artefacts")
    parser.add_argument("--check", action="store_true", help="same as the check command")
    return parser


def check(settings: Settings, worker_id: str | None) -> int:
    """0 if the worker's health file was touched within heartbeat_ttl_s, else 1."""
    wid = worker_id or settings.worker.id
    if wid is None:
        print("check needs the worker id: --id or SCANGUARD_WORKER__ID", file=sys.stderr)
        return 1
    path = health_file(settings.worker.health_dir, wid)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        print(f"worker {wid}: no health file at {path}", file=sys.stderr)
        return 1
    if age > settings.worker.heartbeat_ttl_s:
        print(f"worker {wid}: loop silent for {age:.1f}s", file=sys.stderr)
        return 1
    # Alive but impeded (Redis down or refusing writes): a restart would not help, say it.
    condition = path.read_text().strip()
    if condition:
        print(f"worker {wid}: alive; {condition}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    command = "check" if args.check else (args.command or "run")
    # The demo prints its own progress; worker log lines would bury it unless asked for.
    quiet = command == "demo" and "SCANGUARD_LOG_LEVEL" not in os.environ
    configure_logging(settings.log_format, "warning" if quiet else settings.log_level)
    if command == "check":
        return check(settings, getattr(args, "id", None))
    if command == "demo":
        # Imported here: torch loads in seconds, and `check` (a liveness probe) needs none of it.
        from worker.service.demo import run_demo

        return run_demo(settings, bags=args.bags, views=args.views, fps=args.fps, out_dir=args.out)
    if settings.redis_url is None:
        print(
            "SCANGUARD_REDIS_URL is not set: a worker needs a shared Redis "
            "(`python -m worker demo` runs everything on an embedded one)",
            file=sys.stderr,
        )
        return 2
    if getattr(args, "id", None):
        settings = settings.model_copy(
            update={"worker": settings.worker.model_copy(update={"id": args.id})}
        )
    url = settings.redis_url.get_secret_value()  # type: ignore[union-attr]  # checked above
    from worker.service.bootstrap import build_worker

    try:
        worker = build_worker(settings, url)
    except ValueError as exc:  # ModelLoadError and bad URLs are ValueErrors
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    structlog.get_logger("scanguard.worker").info(
        "connected", redis=describe_url(url), worker_id=worker.id
    )
    return worker.run(burst=args.burst)
