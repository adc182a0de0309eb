"""`python -m shared.console`: serve the operator console with uvicorn."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from shared.console.app import create_app
from shared.console.serving import ConsoleServer
from shared.logs import configure_logging
from shared.redis_conn import connect, describe_url
from shared.settings import SettingsError, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.console",
        description="Operator console: the operator station (/), the supervisor view "
        "(/supervisor) and the alert monitor (/monitor). Settings come from SCANGUARD_* "
        "(SCANGUARD_REDIS_URL, SCANGUARD_CONSOLE__OPERATORS, SCANGUARD_CONSOLE__TOKEN, ...).",
    )
    parser.add_argument("--host", help="bind address (default 127.0.0.1; others need a token)")
    parser.add_argument("--port", type=int, help="port (default 8080)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {
        k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None
    }
    try:
        settings = load_settings(console=overrides) if overrides else load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if settings.redis_url is None:
        print(
            "the console needs SCANGUARD_REDIS_URL (the Redis the workers publish to)",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_format, settings.log_level)
    url = settings.redis_url.get_secret_value()
    client = connect(url)
    cs = settings.console
    print(
        f"scanguard console on http://{cs.host}:{cs.port}/ (Redis {describe_url(url)}, "
        f"namespace {settings.namespace})",
        file=sys.stderr,
        flush=True,
    )
    try:
        app = create_app(settings, client)
    except ValueError as exc:  # e.g. a TIP library without threats
        print(exc, file=sys.stderr)
        client.close()
        return 2
    config = uvicorn.Config(
        app, host=cs.host, port=cs.port, log_level="warning", timeout_graceful_shutdown=3
    )
    server = ConsoleServer(config, app.state.feed)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
