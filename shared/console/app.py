"""The console's web app: the operator station (`/`), the supervisor view (`/supervisor`)
and the alert monitor (`/monitor`), their JSON API, artefacts and the alert event stream.

The station's routes live in `station_api`; the monitor's here. Every Redis call goes
through `data`, `station`, `verdicts` or `supervisor`, which check request values before
they touch a key name, or through `feed`, the one reader behind every open event stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis
import structlog
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from shared.console import data, station_api
from shared.console.auth import TokenGate
from shared.console.feed import AlertFeed
from shared.console.headers import SecurityHeaders, server_error
from shared.console.identity import identity_of, token_identities
from shared.console.metrics import ConsoleMetrics, RequestMetrics, station_registry
from shared.console.station import Station
from shared.console.stream import PageStream
from shared.keys import Keys, check_id
from shared.settings import ConsoleSettings, Settings

log = structlog.get_logger("scanguard.console")
STATIC = Path(__file__).resolve().parent / "static"
NO_STORE = {"Cache-Control": "no-store"}


class Console:
    """The monitor's shared state: one Redis client, the namespace, the rate meter, the feed."""

    def __init__(self, settings: Settings, client: redis.Redis, feed: AlertFeed) -> None:
        self.settings = settings.console
        self.client = client
        self.keys = Keys(settings.namespace)
        self.meter = feed.meter  # one meter: the status strip and /api/status agree
        self.hidden = frozenset(settings.console.hidden_meta_keys)
        self.feed = feed


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _bad(message: str, status_code: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code)


def _filters(request: Request) -> tuple[str | None, str | None]:
    scanner = request.query_params.get("scanner") or None
    label = request.query_params.get("label") or None
    if scanner is not None:
        check_id(scanner, "scanner")
    if label is not None and not data.LABEL.match(label):
        raise ValueError(f"class {label!r} may only hold letters, digits, space and _ . -")
    return scanner, label


def list_alerts(request: Request) -> Response:
    """GET /api/alerts?scanner=&label=&limit=&before=: alerts newest first."""
    console = _console(request)
    try:
        scanner, label = _filters(request)
        limit = int(request.query_params.get("limit", console.settings.page_size))
        before = request.query_params.get("before") or None
        if before is not None:
            data.check_entry_id(before)
    except ValueError as exc:
        return _bad(str(exc))
    limit = max(1, min(limit, 1_000))
    alerts = data.recent_alerts(
        console.client, console.keys, limit, scanner, label, before, hidden=console.hidden
    )
    return JSONResponse({"alerts": alerts}, headers=NO_STORE)


def get_alert(request: Request) -> Response:
    """GET /api/alerts/{entry_id}: one alert with its trace and verdict."""
    console = _console(request)
    try:
        alert = data.one_alert(
            console.client, console.keys, request.path_params["entry_id"], console.hidden
        )
    except ValueError as exc:
        return _bad(str(exc))
    if alert is None:
        return _bad("no such alert", 404)
    return JSONResponse(alert, headers=NO_STORE)


def get_artefact(request: Request) -> Response:
    """GET /api/artefacts/{event_id}/{kind}: the image stored under that artefact key."""
    console = _console(request)
    try:
        image = data.artefact(
            console.client,
            console.keys,
            request.path_params["event_id"],
            request.path_params["kind"],
        )
    except ValueError as exc:
        return _bad(str(exc), 404)
    if image is None:
        return _bad("artefact expired or unknown", 404)
    media = "image/png" if image.startswith(b"\x89PNG") else "image/jpeg"
    return Response(image, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


def get_status(request: Request) -> Response:
    """GET /api/status: backlog, live workers, decisions per second, dead letters."""
    console = _console(request)
    return JSONResponse(data.status(console.client, console.keys, console.meter), headers=NO_STORE)


async def post_verdict(request: Request) -> Response:
    """POST /api/verdicts (JSON): append an operator's verdict to the verdicts stream."""
    console = _console(request)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        # Browsers cannot send JSON cross-site without a preflight, which we never grant.
        return _bad("send application/json", 415)
    try:
        verdict = data.VerdictIn.model_validate_json(await request.body())
    except ValidationError as exc:
        return _bad(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), 422
        )
    who = identity_of(request)
    if who.role == "supervisor":
        return _bad("the shared console token has no operator id: use an operator token", 403)
    if who.operator is not None:  # an operator's token: their id, whatever the page typed
        verdict = verdict.model_copy(update={"operator": who.operator})
    entry = await run_in_threadpool(
        data.record_verdict,
        console.client,
        console.keys,
        verdict,
        maxlen=console.settings.verdicts_maxlen,
    )
    if entry is None:
        return _bad("no such alert", 404)
    log.info(
        "verdict_recorded",
        alert_id=verdict.event_id,
        verdict=verdict.verdict,
        operator=verdict.operator,
    )
    return JSONResponse({"verdict_entry_id": entry}, status_code=201)


async def stream(request: Request) -> Response:
    """GET /api/stream: server-sent events (alert, status) from Last-Event-ID, `after` or now."""
    console = _console(request)
    after = request.headers.get("last-event-id") or request.query_params.get("after") or "$"
    if after != "$":
        try:
            data.check_entry_id(after)
        except ValueError as exc:
            return _bad(str(exc))
    return PageStream(console.feed, after)


async def config(request: Request) -> Response:
    """GET /api/config: what the page needs to know about this console."""
    console = _console(request)
    body: dict[str, Any] = {
        "namespace": console.keys.namespace,
        "operator": console.settings.operator_default,
        "identity": station_api.whoami(request),
        "lease_s": console.settings.lease_s,
    }
    return JSONResponse(body, headers=NO_STORE)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """At shutdown: end the open event streams and stop the alert feed's reader."""
    yield
    await app.state.feed.close()


def create_app(settings: Settings, client: redis.Redis) -> Starlette:
    """The console app for one namespace, reading through `client`.

    The live stream follows `settings.redis_url` through an asyncio client of its own.
    """
    cs = settings.console
    if settings.redis_url is None:
        raise ValueError("the console needs SCANGUARD_REDIS_URL (the Redis the workers publish to)")
    keys = Keys(settings.namespace)
    station = Station(client, keys, cs)
    registry = station_registry(station)
    metrics = ConsoleMetrics(registry)
    feed = AlertFeed(settings.redis_url.get_secret_value(), client, keys, cs, metrics)
    routes: list[BaseRoute] = [
        *station_api.routes(STATIC),
        Route("/api/config", config),
        Route("/api/alerts", list_alerts),
        Route("/api/alerts/{entry_id}", get_alert),
        Route("/api/artefacts/{event_id}/{kind}", get_artefact),
        Route("/api/status", get_status),
        Route("/api/stream", stream),
        Route("/api/verdicts", post_verdict, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=_middleware(cs, metrics, routes),
        exception_handlers={Exception: server_error},
        lifespan=lifespan,
    )
    app.state.console = Console(settings, client, feed)
    app.state.station = station
    app.state.metrics = registry
    app.state.feed = feed
    return app


def _middleware(
    cs: ConsoleSettings, metrics: ConsoleMetrics, routes: list[BaseRoute]
) -> list[Middleware]:
    # The headers outermost, so the gate's 401 and the host check's 400 carry them too;
    # the request metrics next, so they count those answers as well.
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(RequestMetrics, metrics=metrics, templates=_templates(routes)),
    ]
    tokens = token_identities(cs)
    if tokens:
        middleware.append(Middleware(TokenGate, tokens=tokens))
    else:
        # Without a token only loopback names are served, so a page elsewhere cannot
        # rebind its own host name to 127.0.0.1 and read the console.
        middleware.append(
            Middleware(TrustedHostMiddleware, allowed_hosts=_host_names(cs.allowed_hosts))
        )
    return middleware


def _templates(routes: list[BaseRoute]) -> dict[Any, str]:
    """Each route's endpoint (what the router puts in the scope) -> the route's template."""
    found: dict[Any, str] = {}
    for route in routes:
        if isinstance(route, Route):
            found[route.endpoint] = route.path
        elif isinstance(route, Mount):
            found[route.app] = route.path + "/{path}"
    return found


def _host_names(hosts: list[str]) -> list[str]:
    # IPv6 literals arrive bracketed in the Host header.
    return [f"[{h}]" if ":" in h and not h.startswith("[") else h for h in hosts]
