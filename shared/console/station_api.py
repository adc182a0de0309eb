"""HTTP routes of the operator station and the supervisor view.

Operators: `GET /api/station` (who am I, my bag, the queue), `POST /api/station/next`
(take the next bag), `POST /api/station/verdict` (clear or search the bag I hold).
Supervisors: `GET /api/supervisor/queue` (open bags by state, overdue), `GET
/api/supervisor/report` (per-operator figures over a window), and `GET /metrics`.
Redis work runs in the thread pool; refusals answer `{"error": ...}` with their status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from shared.console import report, verdicts
from shared.console.identity import (
    Refused,
    identity_of,
    may_supervise,
    operator_and_pool,
)
from shared.console.present import bag_payload
from shared.console.station import Station
from shared.console.supervisor import queue_overview
from shared.settings import ConsoleSettings

log = structlog.get_logger("scanguard.console")
NO_STORE = {"Cache-Control": "no-store"}
Handler = Callable[[Request], Awaitable[Response]]


def _station(request: Request) -> Station:
    station: Station = request.app.state.station
    return station


def _settings(request: Request) -> ConsoleSettings:
    return _station(request).settings


def refusing(handler: Handler) -> Handler:
    """Answer `Refused` with its status and message as JSON."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Refused as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=NO_STORE)

    wrapped.__doc__ = handler.__doc__
    return wrapped


def _me(station: Station, operator: str, pool: str) -> dict[str, Any]:
    now = station.now_ms()
    held = station.current(operator, pool)
    deadline = station.settings.review_deadline_s
    return {
        "operator": operator,
        "pool": pool,
        "bag": bag_payload(held, deadline, now) if held else None,
        "queue": station.depth(pool),
        "lease_s": station.settings.lease_s,
    }


@refusing
async def me(request: Request) -> Response:
    """GET /api/station: the operator, their pool, the bag they hold, the queue depth."""
    operator, pool = operator_and_pool(request, _settings(request))
    body = await run_in_threadpool(_me, _station(request), operator, pool)
    return JSONResponse(body, headers=NO_STORE)


def _json_post(request: Request) -> None:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        # Browsers cannot send JSON cross-site without a preflight, which we never grant.
        raise Refused(415, "send application/json")


@refusing
async def take_next(request: Request) -> Response:
    """POST /api/station/next: the bag the operator holds, else the oldest waiting one."""
    _json_post(request)
    station = _station(request)
    operator, pool = operator_and_pool(request, station.settings)
    held = await run_in_threadpool(station.next_bag, operator, pool)
    body = await run_in_threadpool(_me, station, operator, pool)
    if held is None:
        body["bag"] = None
    log.info("bag_taken" if held else "queue_empty", operator=operator, pool=pool)
    return JSONResponse(body, headers=NO_STORE)


@refusing
async def post_verdict(request: Request) -> Response:
    """POST /api/station/verdict {bag_id, decision, rois?}: 201, or 401/403/404/409/422."""
    _json_post(request)
    station = _station(request)
    operator, pool = operator_and_pool(request, station.settings)
    try:
        verdict = verdicts.BagVerdictIn.model_validate_json(await request.body())
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise Refused(422, reasons) from None
    done = await run_in_threadpool(verdicts.record, station, operator, pool, verdict)
    log.info(
        "bag_verdict",
        operator=operator,
        pool=pool,
        bag_id=verdict.bag_id,
        decision=verdict.decision.value,
        time_to_decision_ms=done.time_to_decision_ms,
    )
    body = {
        "verdict_entry_id": done.entry_id,
        "bag_id": verdict.bag_id,
        "decision": verdict.decision.value,
        "operator": operator,
        "time_to_decision_ms": done.time_to_decision_ms,
        "tip": done.tip,  # only now, after the verdict
    }
    return JSONResponse(body, status_code=201, headers=NO_STORE)


def _supervisor(request: Request) -> None:
    if not may_supervise(request, _settings(request)):
        raise Refused(403, "the supervisor view is for supervisors")


@refusing
async def queue(request: Request) -> Response:
    """GET /api/supervisor/queue: every open bag of every pool, counts, overdue bags."""
    _supervisor(request)
    station = _station(request)
    body = await run_in_threadpool(lambda: queue_overview(station, station.now_ms()))
    return JSONResponse(body, headers=NO_STORE)


def _window(request: Request, now_ms: int) -> tuple[int, int]:
    """[since, until] in ms from `window_s` (back from now) or ISO `since`/`until`."""
    params = request.query_params
    try:
        until = _ms(params["until"]) if params.get("until") else now_ms
        if params.get("since"):
            since = _ms(params["since"])
        else:
            since = until - int(float(params.get("window_s", 86_400)) * 1000)
    except ValueError as exc:
        raise Refused(400, f"bad window: {exc}") from None
    return max(since, 0), until


def _ms(text: str) -> int:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"{text!r} needs a time zone")
    return int(when.timestamp() * 1000)


@refusing
async def get_report(request: Request) -> Response:
    """GET /api/supervisor/report?window_s=|since=&until=&pool=: figures per operator."""
    _supervisor(request)
    station = _station(request)
    since, until = _window(request, await run_in_threadpool(station.now_ms))
    pool = request.query_params.get("pool") or None
    if pool is not None and pool not in station.settings.pools:
        raise Refused(400, f"unknown pool {pool!r}")
    records = await run_in_threadpool(
        report.read_verdicts, station.client, station.keys, since, until, pool
    )
    body = report.report(records)
    body |= {"since_ms": since, "until_ms": until, "pool": pool}
    return JSONResponse(body, headers=NO_STORE)


@refusing
async def metrics(request: Request) -> Response:
    """GET /metrics: the station's Prometheus metrics."""
    _supervisor(request)
    registry = request.app.state.metrics
    text = await run_in_threadpool(generate_latest, registry)
    return Response(text, media_type=CONTENT_TYPE_LATEST, headers=NO_STORE)


def page(name: str, static: Any) -> Handler:
    async def serve(request: Request) -> Response:
        return FileResponse(static / name, headers=NO_STORE)

    return serve


def whoami(request: Request) -> dict[str, Any]:
    """What the page needs to know of the identity: role, fixed operator and pool."""
    settings = _settings(request)
    who = identity_of(request)
    pool = settings.operator_pools.get(who.operator or "", settings.pools[0])
    return {
        "role": who.role,
        "operator": who.operator,
        "pool": pool if who.role == "operator" else None,
        "pools": settings.pools,
        "supervisor": may_supervise(request, settings),
    }


def routes(static: Any) -> list[Route]:
    return [
        Route("/", page("station.html", static)),
        Route("/supervisor", page("supervisor.html", static)),
        Route("/monitor", page("monitor.html", static)),
        Route("/api/station", me),
        Route("/api/station/next", take_next, methods=["POST"]),
        Route("/api/station/verdict", post_verdict, methods=["POST"]),
        Route("/api/supervisor/queue", queue),
        Route("/api/supervisor/report", get_report),
        Route("/metrics", metrics),
    ]
