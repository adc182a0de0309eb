"""Webhook signatures follow Standard Webhooks: fresh deliveries verify, replays and edits do not."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.delivery.signatures import (
    DEFAULT_TOLERANCE_S,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookVerificationError,
    secret_key,
    sign_headers,
    signature,
    verify,
)
from shared.delivery.sinks import Delivery, webhook_from_settings
from shared.settings import SettingsError, load_settings
from tests.test_client import make_event

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
BODY = b'{"schema":"scanguard.decision/1","event_id":"e-1"}'
MSG_ID = "sg-webhook-0123456789abcdef"
SENT_AT = 1_767_225_600  # 2026-01-01T00:00:00Z


def signed(body: bytes = BODY, at: int = SENT_AT, key: bytes = KEY) -> dict[str, str]:
    return sign_headers(key, MSG_ID, body, now=at)


def test_a_fresh_delivery_verifies_and_yields_its_id():
    """Headers made a few seconds before the receiver's clock verify; the id comes back."""
    assert verify(SECRET, BODY, signed(), now=SENT_AT + 3) == MSG_ID


def test_a_replayed_delivery_is_rejected_once_outside_the_tolerance():
    """The same body and headers sent again after the 5-minute window are refused as too old."""
    headers = signed()
    assert verify(SECRET, BODY, headers, now=SENT_AT + DEFAULT_TOLERANCE_S) == MSG_ID
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(SECRET, BODY, headers, now=SENT_AT + DEFAULT_TOLERANCE_S + 1)


def test_a_replay_with_a_fresh_timestamp_header_is_rejected():
    """Rewriting webhook-timestamp on a captured delivery breaks its signature."""
    replay = signed() | {TIMESTAMP_HEADER: str(SENT_AT + 3_600)}
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify(SECRET, BODY, replay, now=SENT_AT + 3_600)


def test_a_timestamp_from_the_future_is_rejected():
    """A timestamp beyond the tolerance ahead of the receiver's clock is refused too."""
    with pytest.raises(WebhookVerificationError, match="too new"):
        verify(SECRET, BODY, signed(), now=SENT_AT - DEFAULT_TOLERANCE_S - 1)


@pytest.mark.parametrize(
    ("body", "change"),
    [
        (BODY.replace(b"e-1", b"e-2"), {}),
        (BODY + b" ", {}),
        (BODY, {"webhook-id": "sg-webhook-another"}),
    ],
    ids=["body edited", "body padded", "id swapped"],
)
def test_tampered_deliveries_are_rejected(body, change):
    """Any change to the body or the id, however small, fails verification."""
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify(SECRET, body, signed() | change, now=SENT_AT)


def test_a_wrong_secret_is_rejected():
    """A signature made with another key matches nothing."""
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify(SECRET, BODY, signed(key=b"x" * 32), now=SENT_AT)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"webhook-id": MSG_ID, "webhook-timestamp": str(SENT_AT)},
        {"webhook-id": MSG_ID, "webhook-timestamp": "1e9", "webhook-signature": "v1,AAAA"},
        {"webhook-id": MSG_ID, "webhook-timestamp": "²", "webhook-signature": "v1,AAAA"},
        {"webhook-id": MSG_ID, "webhook-timestamp": str(SENT_AT), "webhook-signature": "v1,%%"},
        {"webhook-id": MSG_ID, "webhook-timestamp": str(SENT_AT), "webhook-signature": "v1"},
        {"webhook-id": "a.b", "webhook-timestamp": str(SENT_AT), "webhook-signature": "v1,AA=="},
    ],
    ids=["none", "no signature", "float time", "unicode digit", "bad base64", "no comma", "dot"],
)
def test_malformed_headers_are_a_verification_error(headers):
    """Missing or malformed headers raise WebhookVerificationError, never another exception."""
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, BODY, headers, now=SENT_AT)


def test_rotation_signatures_and_header_case():
    """Of several space-separated signatures one match is enough; v1a and header case are no obstacle."""
    headers = signed()
    old = signature(b"y" * 32, MSG_ID, SENT_AT, BODY)
    combined = {
        "Webhook-Id": MSG_ID,
        "WEBHOOK-TIMESTAMP": str(SENT_AT),
        "webhook-signature": f"v1a,Zm9v {old} {headers[SIGNATURE_HEADER]}",
    }
    assert verify(SECRET, BODY, combined, now=SENT_AT) == MSG_ID


def test_secrets_whsec_base64_or_raw():
    """whsec_ secrets decode (padding optional); a raw secret's UTF-8 bytes are the key."""
    assert secret_key(SECRET) == KEY
    assert secret_key(SECRET.rstrip("=")) == KEY
    assert secret_key("change-me") == b"change-me"
    assert secret_key(b"\x00key") == b"\x00key"
    with pytest.raises(ValueError, match="base64"):
        secret_key("whsec_not*base64")
    with pytest.raises(ValueError, match="empty"):
        secret_key("whsec_")
    with pytest.raises(ValueError, match=r"no '\.'"):
        signature(KEY, "a.b", SENT_AT, BODY)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes"),
        ("whsec_!!!!", "base64"),
        ("", "empty"),
    ],
)
def test_settings_refuse_unusable_secrets_naming_the_variable(secret, problem):
    """A whsec_ secret that is not base64 of 24-64 bytes, or an empty one, is a settings error."""
    with pytest.raises(SettingsError, match="SCANGUARD_DELIVERY__WEBHOOK_SECRET") as err:
        load_settings(delivery={"webhook_secret": secret})
    assert problem in str(err.value)


# -- interoperability with the reference library ----------------------------------------


def test_the_reference_library_verifies_ours_and_we_verify_its():
    """standardwebhooks.Webhook accepts our headers, and we accept what it signs."""
    swh = pytest.importorskip("standardwebhooks")
    hook = swh.Webhook(SECRET)
    now = int(datetime.now(timezone.utc).timestamp())
    hook.verify(BODY, sign_headers(KEY, MSG_ID, BODY, now=now), json_parse=False)
    theirs = hook.sign(MSG_ID, datetime.fromtimestamp(now, timezone.utc), BODY.decode())
    headers = {"webhook-id": MSG_ID, "webhook-timestamp": str(now), "webhook-signature": theirs}
    assert verify(SECRET, BODY, headers) == MSG_ID
    # A raw secret's key goes to the library as bytes (it base64-decodes a string).
    raw = "change-me"
    by_bytes = swh.Webhook(raw.encode())
    by_bytes.verify(BODY, sign_headers(secret_key(raw), MSG_ID, BODY), json_parse=False)


# -- the sink's real request --------------------------------------------------------------


@dataclass
class Received:
    headers: list[dict[str, str]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[tuple[str, Received]]:
    """An HTTP server on 127.0.0.1 that records each POST and answers 204."""
    seen = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            seen.headers.append(dict(self.headers.items()))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", seen
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("secret", [SECRET, "a-raw-shared-secret"], ids=["whsec", "raw"])
def test_the_sinks_request_verifies_with_the_helper(receiver, keys, secret):
    """What the webhook sink posts carries the three headers and verifies under its secret."""
    url, seen = receiver
    sink = webhook_from_settings(
        load_settings(delivery={"webhook_url": url, "webhook_secret": secret})
    )
    event = make_event(keys, 1)
    body = event.to_json()

    assert sink.deliver(Delivery(event, body, MSG_ID, lambda ref: None)) == "HTTP 204"

    (headers,) = seen.headers
    assert seen.bodies == [body.encode()]
    assert verify(secret, seen.bodies[0], headers) == MSG_ID
    lowered = {name.lower(): value for name, value in headers.items()}
    assert lowered["webhook-signature"].startswith("v1,")
    assert lowered["x-scanguard-event-id"] == event.event_id
    assert "x-scanguard-signature" not in lowered
    with pytest.raises(WebhookVerificationError):
        verify(secret, seen.bodies[0] + b"\n", headers)
