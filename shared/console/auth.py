"""Access control: tokens (each one someone's), and Host-header checks while there is none."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.console.identity import Identity

COOKIE = "scanguard_console"


class TokenGate:
    """Let a request through only with a token: bearer header, cookie, or `?token=` once.

    A browser opens `/?token=…`; the gate answers with a cookie (HttpOnly,
    SameSite=Strict) and a redirect that drops the token from the address bar.
    Images and the event stream then carry the cookie; scripts use the header.
    The identity the token belongs to goes into the request scope (`state.identity`).
    """

    def __init__(self, app: ASGIApp, tokens: Mapping[str, Identity]) -> None:
        self.app = app
        self.tokens = [(token.encode(), who) for token, who in tokens.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        from_query = parse_qs(scope.get("query_string", b"").decode()).get("token", [""])[0]
        if from_query and self._identity(from_query) is not None:
            response: Response = RedirectResponse(same_site_path(scope["path"]), status_code=303)
            response.set_cookie(
                COOKIE,
                from_query,
                httponly=True,
                samesite="strict",
                secure=scope["scheme"] == "https",
            )
            await response(scope, receive, send)
            return
        auth = headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else ""
        cookie = Request(scope).cookies.get(COOKIE, "")
        who = self._identity(bearer) or self._identity(cookie)
        if who is None:
            denied = PlainTextResponse(
                "a valid token is required (open /?token=…)", status_code=401
            )
            await denied(scope, receive, send)
            return
        scope.setdefault("state", {})["identity"] = who
        await self.app(scope, receive, send)

    def _identity(self, supplied: str) -> Identity | None:
        """Whose token `supplied` is; every token is compared, in constant time each."""
        if not supplied:
            return None
        found = None
        for token, who in self.tokens:
            if hmac.compare_digest(supplied.encode(), token):
                found = who
        return found


def same_site_path(path: str) -> str:
    """`path` if a browser reads it as a path on this site, else `/`.

    `//host/…` is a link to another site, and browsers read `/\\host/…` the same way
    (they take `\\` for `/` and drop tabs and new lines), so only one leading `/`
    followed by anything but `/` or `\\`, without control characters, is kept.
    """
    if (
        not path.startswith("/")
        or path[1:2] in ("/", "\\")
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)
    ):
        return "/"
    return path
