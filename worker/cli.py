"""`python -m worker`: run a worker, check its health, run the demo, or explain image files."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import structlog

from shared.logs import configure_logging
from shared.redis_conn import describe_url
from shared.settings import Settings, SettingsError, load_settings
from shared.vocab import ErasingPreset
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
    _add_explain(sub)
    parser.add_argument("--check", action="store_true", help="same as the check command")
    return parser


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, not {text}")
    return value


def _iterations(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must lie in 0..64, not {text}")
    return value


def _add_explain(sub: Any) -> None:
    explain = sub.add_parser(
        "explain",
        help="erase image files without Redis: montage, heat-map, ROIs, CSV and JSONL",
        description="Run iterative erasing on JPEG/PNG files and folders and draw every step "
        "(see worker/service/explain.py). Exit 1 if any file failed.",
    )
    explain.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    explain.add_argument("--card", help="model card (default: SCANGUARD_MODEL__CARD)")
    explain.add_argument("--out", default="explain-out", help="results folder (explain-out)")
    explain.add_argument("--recursive", action="store_true", help="also look in subfolders")
    explain.add_argument("--device", help="auto, cpu, cuda or cuda:N (SCANGUARD_MODEL__DEVICE)")
    explain.add_argument(
        "--preset",
        choices=get_args(ErasingPreset),
        help="card: the card's operating point; seed: the seed's values "
        "(SCANGUARD_ERASING__PRESET and the like; flags win)",
    )
    explain.add_argument(
        "--detect-th", type=_threshold, help="threat probability that detects (…__DETECT_TH)"
    )
    explain.add_argument(
        "--max-iter", type=_iterations, help="erasing steps before giving up (…__MAX_ITER)"
    )


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The explain flags given, as settings over the environment."""
    if args.command != "explain":
        return {}
    model = {"card": args.card, "device": args.device}
    erasing = {"preset": args.preset, "detect_th": args.detect_th, "max_iter": args.max_iter}
    sections = {"model": model, "erasing": erasing}
    given = {
        section: {name: value for name, value in fields.items() if value is not None}
        for section, fields in sections.items()
    }
    return {section: fields for section, fields in given.items() if fields}


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
        settings = load_settings(**_overrides(args))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    command = "check" if args.check else (args.command or "run")
    # The demo and explain print their own progress; log lines would bury it unless asked for.
    quiet = command in ("demo", "explain") and "SCANGUARD_LOG_LEVEL" not in os.environ
    configure_logging(settings.log_format, "warning" if quiet else settings.log_level)
    if command == "check":
        return check(settings, getattr(args, "id", None))
    if command == "demo":
        # Imported here: torch loads in seconds, and `check` (a liveness probe) needs none of it.
        from worker.service.demo import run_demo

        return run_demo(settings, bags=args.bags, views=args.views, fps=args.fps, out_dir=args.out)
    if command == "explain":
        from worker.service.explain import run_explain

        return run_explain(settings, args.inputs, out_dir=Path(args.out), recursive=args.recursive)
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
