"""The console against a hostile browser or page: open redirects, framing, unbounded verdicts."""

from __future__ import annotations

import http.client
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from shared.console.data import VerdictIn, record_verdict
from shared.keys import Keys
from tests.pipeline_fixtures import encode, frame_image
from tests.redis_procs import free_port
from tests.test_client import publish
from tests.test_console import alert, console_settings, serve_console

pytestmark = pytest.mark.redis
TOKEN = "s3cret"
SECURITY_HEADERS = ("X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy")
CHROMIUM = shutil.which("chromium")


def raw_get(base_url: str, target: str) -> http.client.HTTPResponse:
    """GET with `target` sent exactly as written (no client-side URL clean-up)."""
    address = urlsplit(base_url)
    conn = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    conn.request("GET", target)
    reply = conn.getresponse()
    reply.read()
    conn.close()
    return reply


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/?token=" + TOKEN,
        "//evil.example?token=" + TOKEN,
        "/\\evil.example/?token=" + TOKEN,
        "/%2F%2Fevil.example/?token=" + TOKEN,
        "/%5Cevil.example/?token=" + TOKEN,
        "https://evil.example/?token=" + TOKEN,
    ],
)
def test_token_login_never_redirects_off_site(redis_server, keys, target):
    """After `?token=`, a path a browser would read as another site redirects to `/` instead."""
    settings = console_settings(redis_server, keys, host="0.0.0.0", token=TOKEN)
    with serve_console(settings, redis_server) as url:
        reply = raw_get(url, target)
    assert reply.status == 303
    assert reply.headers["location"] == "/"
    assert "scanguard_console=" in reply.headers["set-cookie"]


def test_token_login_keeps_a_same_site_path(redis_server, keys):
    """After `?token=`, an ordinary path on the console is kept, without the token."""
    settings = console_settings(redis_server, keys, host="0.0.0.0", token=TOKEN)
    with serve_console(settings, redis_server) as url:
        reply = raw_get(url, f"/static/console.css?token={TOKEN}")
    assert (reply.status, reply.headers["location"]) == (303, "/static/console.css")


def assert_secured(reply: httpx.Response | http.client.HTTPResponse, what: str) -> None:
    headers = reply.headers
    policy = headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in policy, what
    assert "default-src 'self'" in policy, what
    assert headers.get("x-frame-options") == "DENY", what
    assert headers.get("x-content-type-options") == "nosniff", what
    assert headers.get("referrer-policy") == "no-referrer", what


@contextmanager
def token_console(redis_server, keys: Keys) -> Iterator[httpx.Client]:
    settings = console_settings(redis_server, keys, host="0.0.0.0", token=TOKEN)
    with (
        serve_console(settings, redis_server) as url,
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        yield http


def test_every_kind_of_response_forbids_framing_and_sniffing(redis_server, redis_client, keys):
    """Pages, API, images, static files, errors, the event stream and the gate's 401 carry the headers."""
    shown = alert(keys, 1)
    entry = publish(redis_client, keys, shown)
    bearer = {"authorization": f"Bearer {TOKEN}"}
    with token_console(redis_server, keys) as http:
        replies = {
            "token gate 401": http.get("/api/status"),
            "login redirect 303": http.get("/", params={"token": TOKEN}),
            "page": http.get("/", headers=bearer),
            "api": http.get("/api/alerts", headers=bearer),
            "one alert": http.get(f"/api/alerts/{entry}", headers=bearer),
            "artefact image": http.get(f"/api/artefacts/{shown.event_id}/masked", headers=bearer),
            "static script": http.get("/static/console.js", headers=bearer),
            "static 404": http.get("/static/missing.js", headers=bearer),
            "route 404": http.get("/no/such/page", headers=bearer),
            "bad request 400": http.get("/api/alerts?limit=many", headers=bearer),
            "method 405": http.get("/api/verdicts", headers=bearer),
            "media type 415": http.post("/api/verdicts", content=b"x", headers=bearer),
        }
        with http.stream("GET", "/api/stream", headers=bearer) as sse:
            replies["event stream"] = sse
    expected = {"token gate 401": 401, "login redirect 303": 303, "static 404": 404}
    expected |= {"route 404": 404, "bad request 400": 400, "method 405": 405}
    expected |= {"media type 415": 415}
    for what, reply in replies.items():
        assert reply.status_code == expected.get(what, 200), what
        assert_secured(reply, what)


@pytest.mark.parametrize("break_redis", [False, True], ids=["foreign host 400", "server 500"])
def test_errors_outside_the_routes_carry_the_headers_too(redis_server, keys, break_redis):
    """The host check's 400 and an unhandled error's 500 carry the security headers as well."""

    class Unreachable:
        """A Redis nobody listens on, so every call the console makes fails."""

        url = f"redis://127.0.0.1:{free_port()}/0"

        def client(self) -> redis.Redis:
            return redis.Redis.from_url(self.url, socket_connect_timeout=1)

    server = Unreachable() if break_redis else redis_server
    with serve_console(console_settings(redis_server, keys), server) as url:
        if break_redis:
            reply = httpx.get(f"{url}/api/status", timeout=10)
            assert reply.status_code == 500
        else:
            reply = httpx.get(f"{url}/api/status", headers={"host": "attacker.example"})
            assert reply.status_code == 400
    assert_secured(reply, "error")


def test_verdicts_stream_is_trimmed_to_about_its_maxlen(redis_server, redis_client, keys):
    """3,000 verdicts under verdicts_maxlen=1,000 leave about 1,000 entries, trimmed in whole nodes."""
    maxlen = console_settings(redis_server, keys, verdicts_maxlen=1_000).console.verdicts_maxlen
    shown = alert(keys, 1)
    entry = publish(redis_client, keys, shown)
    verdict = VerdictIn(entry_id=entry, event_id=shown.event_id, verdict="confirmed", operator="a")

    for _ in range(3_000):
        assert record_verdict(redis_client, keys, verdict, maxlen=maxlen) is not None

    # `~` trims only whole macro nodes (100 entries each by default): never below maxlen.
    assert maxlen <= redis_client.xlen(keys.verdicts) <= 1_500


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH: apt-get install -y chromium")
def test_the_page_works_under_its_content_security_policy(redis_server, redis_client, keys):
    """In Chromium the page loads, shows alerts with their images and a detail chart, with no CSP violation."""
    sync_api = pytest.importorskip("playwright.sync_api")
    for n in (1, 2):
        shown = alert(keys, n)
        publish(redis_client, keys, shown)
        for ref in shown.artefacts:
            image = encode(frame_image(n), ref.content_type)
            redis_client.set(ref.key, image, ex=3600)
    problems: list[str] = []  # CSP violations and script errors; a missing favicon is no problem
    with (
        serve_console(console_settings(redis_server, keys), redis_server) as url,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page()
        page.on(
            "console",
            lambda message: (
                problems.append(message.text)
                if "csp violation" in message.text or "Content Security Policy" in message.text
                else None
            ),
        )
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.add_init_script(
            "document.addEventListener('securitypolicyviolation',"
            " (e) => console.error('csp violation: ' + e.violatedDirective))"
        )
        reply = page.goto(f"{url}/monitor")  # the alert monitor; `/` is the operator station
        assert reply is not None and "frame-ancestors 'none'" in reply.headers.get(
            "content-security-policy", ""
        )
        page.wait_for_selector("#live.on", timeout=10_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#alerts .alert img')]"
            ".every((img) => img.complete && img.naturalWidth > 0)"
            " && document.querySelectorAll('#alerts .alert').length === 2",
            timeout=10_000,
        )
        page.locator("#alerts .alert").nth(0).click()
        page.wait_for_selector("#detail:not([hidden]) #d-chart polyline", timeout=10_000)
        browser.close()
    assert problems == []
