"""Who is asking: an operator (by personal token, or on loopback by the page's choice), the
supervisor (the shared console token), and which pool an operator works in.

The token gate (`auth.TokenGate`) puts the `Identity` of a valid token into the request
scope. Without any token configured the console serves loopback only, and the page names
its operator and pool in two headers; a verdict then carries that chosen id. With tokens, a
verdict carries the id the token belongs to and the headers are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request

from shared.keys import check_id
from shared.settings import ConsoleSettings

OPERATOR_HEADER = "x-scanguard-operator"
POOL_HEADER = "x-scanguard-pool"
Role = Literal["operator", "supervisor", "local"]


@dataclass(frozen=True)
class Identity:
    """An authenticated operator, the supervisor token, or the local (loopback) user."""

    role: Role
    operator: str | None = None  # set for role "operator"


LOCAL = Identity("local")
SUPERVISOR = Identity("supervisor")


class Refused(Exception):
    """A request the station turns down; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def token_identities(settings: ConsoleSettings) -> dict[str, Identity]:
    """Every valid token and whose it is (empty: no token gate)."""
    tokens = {
        t.get_secret_value(): Identity("operator", op) for op, t in settings.operators.items()
    }
    if settings.token is not None:
        tokens[settings.token.get_secret_value()] = SUPERVISOR
    return tokens


def identity_of(request: Request) -> Identity:
    """The identity the gate found; the local user when no gate runs (loopback only)."""
    found = getattr(request.state, "identity", None)
    return found if isinstance(found, Identity) else LOCAL


def operator_and_pool(request: Request, settings: ConsoleSettings) -> tuple[str, str]:
    """The operator id a station request acts for, and their pool; `Refused` if none may.

    An operator token fixes both (the pool from `operator_pools`); the local user names
    them in the page (headers), checked like every id that reaches a key name.
    """
    who = identity_of(request)
    if who.role == "supervisor":
        raise Refused(403, "the shared console token has no operator id: use an operator token")
    if who.role == "operator":
        assert who.operator is not None  # set for every operator identity
        return who.operator, settings.operator_pools.get(who.operator, settings.pools[0])
    operator = request.headers.get(OPERATOR_HEADER, "").strip()
    if not operator:
        raise Refused(401, "choose an operator id first")
    try:
        check_id(operator, "operator id")
    except ValueError as exc:
        raise Refused(401, str(exc)) from None
    pool = request.headers.get(POOL_HEADER, "").strip() or settings.pools[0]
    if pool not in settings.pools:
        raise Refused(400, f"unknown pool {pool!r}; pools: {', '.join(settings.pools)}")
    return operator, pool


def may_supervise(request: Request, settings: ConsoleSettings) -> bool:
    """The supervisor token, the local user, or an operator listed in `supervisors`."""
    who = identity_of(request)
    return who.role in ("supervisor", "local") or who.operator in settings.supervisors
