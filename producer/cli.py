"""`python -m producer`: push frames from a folder, a video, DICOS files or the synthetic
scanner; `python -m producer export`: write synthetic bags as DICOS DX files."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import structlog

from producer.metrics import producer_registry
from producer.producer import Producer, ProducerSummary
from producer.sources import parse_source
from producer.synthetic.pose import MAX_VIEWS
from shared.keys import Keys, check_id
from shared.logs import configure_logging
from shared.metrics_http import MetricsPortError, serve
from shared.redis_conn import redis_from_settings
from shared.settings import Settings, SettingsError, load_settings

log = structlog.get_logger(__name__)
CLEAR_TO_END = "\x1b[K"  # ANSI: erase from the cursor to the end of the line


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line on stderr naming the option, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, not {value}")
    return value


def _views(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_VIEWS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_VIEWS}, not {value}")
    return value


def _fps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, not {text!r}")
    return value


def _jpeg_quality(text: str) -> int:
    value = _positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m producer",
        description="Push scanner frames into the Redis frames stream. Redis and defaults "
        "come from SCANGUARD_* environment variables; flags win over them.",
        epilog="Bags (several views of one object): a dir: folder makes a bag of each "
        f"sub-folder that holds only files, 1 to {MAX_VIEWS} of them (sorted by name = "
        "views), and of each group of files named BAG_vK.png/.jpg (ordered by K); any other "
        "file is a one-view frame. Video and camera frames are one-view frames.",
    )
    parser.add_argument(
        "--source",
        default="synthetic:source",
        help="dir:PATH | video:PATH_OR_URL_OR_INDEX | synthetic:source|target | dicos:PATH "
        "(a DICOS file or folder; see docs/DICOS.md) (default %(default)s)",
    )
    parser.add_argument(
        "--views",
        type=_views,
        default=None,
        help=f"views per bag of a synthetic source, 1 to {MAX_VIEWS} (default 1: plain "
        "frames); 2 is top and side",
    )
    parser.add_argument(
        "--fps", type=_fps, default=None, help="frames per second (default: as fast as allowed)"
    )
    parser.add_argument(
        "--count",
        type=_positive_int,
        default=None,
        help="stop after this many frames, at least 1; with --views N, this many bags "
        "(N frames each) (default: run until the source ends)",
    )
    parser.add_argument(
        "--loop", action="store_true", help="start a folder or video file again at its end"
    )
    parser.add_argument(
        "--scanner-id", default=None, help="scanner id (default SCANGUARD_PRODUCER__SCANNER_ID)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="synthetic scanner seed (default %(default)s)"
    )
    parser.add_argument(
        "--size", default=None, help="synthetic frame WIDTHxHEIGHT (default: the scanner's)"
    )
    parser.add_argument(
        "--max-backlog",
        type=_positive_int,
        default=None,
        help="frames-stream length that triggers backpressure",
    )
    parser.add_argument(
        "--backpressure",
        choices=("block", "drop"),
        default=None,
        help="when the backlog is full: wait, or drop the newest frame (a bag missing a "
        "dropped view closes undetermined at the workers' bag deadline)",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=_jpeg_quality,
        default=None,
        help="quality (1-100) of JPEGs the producer encodes",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="serve Prometheus /metrics on this port while running, 0 = off "
        "(default SCANGUARD_PRODUCER__METRICS_PORT, off)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress line even on a terminal"
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {
        "scanner_id": args.scanner_id,
        "max_backlog": args.max_backlog,
        "backpressure": args.backpressure,
        "jpeg_quality": args.jpeg_quality,
        "metrics_port": args.metrics_port,
    }
    producer = {name: value for name, value in flags.items() if value is not None}
    return {"producer": producer} if producer else {}


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise ValueError(f"--size must look like 224x224, not {text!r}")
    return int(width), int(height)


class ProgressLine:
    """A one-line progress display on a terminal, redrawn with a carriage return.

    The cursor is left at the start of the line, so a log line written meanwhile
    simply replaces the progress text instead of being glued to its end.
    """

    def __init__(self, stream: TextIO, every_s: float = 0.2):
        self.stream = stream
        self.every_s = every_s
        self._last = 0.0

    def __call__(self, summary: ProducerSummary) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        rate = summary.sent / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
        self.stream.write(
            f"\rsent {summary.sent}  dropped {summary.dropped}  backlog {summary.backlog}"
            f"  {rate:.1f} frames/s{CLEAR_TO_END}\r"
        )
        self.stream.flush()

    def close(self) -> None:
        """Wipe the progress text (the summary is printed on stdout)."""
        self.stream.write(f"\r{CLEAR_TO_END}")
        self.stream.flush()


def build_export_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m producer export",
        description="Write synthetic bags as files: one DICOS DX object per view, the views "
        "of a bag sharing its Object of Inspection ID and scan (see docs/DICOS.md).",
    )
    parser.add_argument("--source", default="synthetic:target", help="synthetic:source|target")
    parser.add_argument("--views", type=_views, default=2, help="views per bag (default 2)")
    parser.add_argument("--count", type=_positive_int, default=10, help="bags (default 10)")
    parser.add_argument("--start", type=int, default=0, help="index of the first bag")
    parser.add_argument("--seed", type=int, default=0, help="synthetic scanner seed")
    parser.add_argument("--size", default=None, help="view WIDTHxHEIGHT (default: the scanner's)")
    parser.add_argument("--format", choices=("dicos",), default="dicos", help="file format")
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    return parser


def export_main(argv: Sequence[str]) -> int:
    """`export`: write the bags, print a JSON summary; exit 2 on bad arguments."""
    args = build_export_parser().parse_args(argv)
    kind, _, domain = args.source.partition(":")
    if kind != "synthetic" or domain not in ("source", "target"):
        print("error: --source: only synthetic:source|target can be exported", file=sys.stderr)
        return 2
    try:
        size = _size(args.size)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from producer.dicos import export_synthetic  # pydicom loads for an export only

    paths = export_synthetic(args.out, domain, args.seed, args.views, args.count, size, args.start)
    print(json.dumps({"format": args.format, "bags": args.count, "files": len(paths)}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the producer; exit 0 when done, 2 on bad settings or arguments, 1 on a failure.

    Once frames flow, the summary is printed on every way out, so that
    offered == sent + dropped + abandoned can be checked whatever happened.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.views is not None and not args.source.startswith("synthetic:"):
        print(
            "error: --views: only a synthetic: source makes views; a dir: folder's bags "
            "come from its layout (see --help)",
            file=sys.stderr,
        )
        return 2
    try:
        settings = load_settings(**_overrides(args))
        check_id(settings.producer.scanner_id, "scanner id")
        size = _size(args.size)
    except (SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        source = parse_source(
            args.source,
            loop=args.loop,
            seed=args.seed,
            jpeg_quality=settings.producer.jpeg_quality,
            size=size,
            views=args.views or 1,
        )
    except ValueError as exc:
        print(f"error: --source: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    return _run(settings, source, args)


def _stop_handler(producer: Producer) -> Any:
    """First signal: finish the frame in hand and exit; a second one interrupts at once."""

    def handle(signum: int, frame: Any) -> None:
        if producer.stop_event.is_set():
            raise KeyboardInterrupt
        producer.stop()

    return handle


def _run(settings: Settings, source: Any, args: argparse.Namespace) -> int:
    progress = ProgressLine(sys.stderr) if sys.stderr.isatty() and not args.no_progress else None
    if settings.redis_url is None:
        log.warning(
            "embedded_redis",
            detail="SCANGUARD_REDIS_URL is unset; frames vanish when this process exits",
        )
    with redis_from_settings(settings) as client:
        producer = Producer(
            client,
            Keys(settings.namespace),
            settings.producer.scanner_id,
            fps=args.fps,
            # The producer counts frames; a synthetic bag is always all its views.
            count=None if args.count is None else args.count * (args.views or 1),
            max_backlog=settings.producer.max_backlog,
            backpressure=settings.producer.backpressure,
            jpeg_quality=settings.producer.jpeg_quality,
            on_progress=progress,
        )
        try:
            metrics = serve(
                producer_registry(producer),
                settings.producer.metrics_port,
                "SCANGUARD_PRODUCER__METRICS_PORT (--metrics-port)",
            )
        except MetricsPortError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        previous = {
            sig: signal.signal(sig, _stop_handler(producer))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        status = 1
        try:
            producer.run(source)
            status = 0
        except KeyboardInterrupt:
            log.warning("producer_interrupted", detail="second signal: stopped at once")
            status = 130  # the shell's code for death by SIGINT
        except Exception:
            # Anything no rung handles (a source that breaks, an unexpected Redis reply):
            # the traceback goes to the log, and the summary below still comes out.
            log.exception("producer_failed")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if metrics is not None:
                metrics.close()
            if progress is not None:
                progress.close()
            print(json.dumps(producer.summary.as_dict()), flush=True)
        return status
