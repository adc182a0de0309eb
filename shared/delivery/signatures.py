"""Standard Webhooks signatures: what the webhook sink sends, and the check a receiver runs.

Every webhook POST carries three headers (https://www.standardwebhooks.com):

    webhook-id: <the delivery's id: the same for every retry of one event to one sink>
    webhook-timestamp: <this attempt, integer seconds since the epoch>
    webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>

Signing the id and the timestamp with the body is what stops a replay: a captured
delivery sent again later carries its old timestamp, which `verify` refuses once it is
further than the tolerance (5 minutes) from the receiver's clock; inside the window, the
receiver drops a `webhook-id` it has already processed. The key is the secret's
`whsec_` base64 part decoded, or, for a secret without that prefix (a raw secret), its
UTF-8 bytes.

Only the standard library is used, so a receiver written in Python can copy this file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # whole seconds; fullmatch keeps out "1e9", "+1", "²"


class WebhookVerificationError(ValueError):
    """The request is not a fresh, authentic delivery; the message says which check failed."""


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of a secret: `whsec_<base64>` decoded, a raw string's UTF-8 bytes, or bytes.

    Raises:
        ValueError: a `whsec_` secret whose rest is not base64, or an empty key.
    """
    if isinstance(secret, bytes):
        key = secret
    elif secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        try:  # padding is optional, as in the reference libraries
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ secret must be whsec_ followed by base64") from None
    else:
        key = secret.encode()
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of `body` sent as `msg_id` at `timestamp`.

    Raises:
        ValueError: `msg_id` is empty or holds a `.`, which would let one signed content
            stand for another.
    """
    if not msg_id or "." in msg_id:
        raise ValueError(f"webhook id {msg_id!r} must be non-empty and hold no '.'")
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_headers(key: bytes, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The three headers of one delivery attempt, timestamped `now` (default: the clock)."""
    timestamp = int(time.time() if now is None else now)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(key, msg_id, timestamp, body),
    }


def verify(
    secret: str | bytes,
    body: bytes,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> str:
    """Check a received webhook; return its `webhook-id` (the idempotency key) if authentic.

    Args:
        secret: the shared secret as configured (`whsec_…`, raw, or the key bytes).
        body: the request body exactly as received (not re-serialised JSON).
        headers: the request headers, any case (a dict, `http.server`'s `self.headers`,
            or (name, value) pairs).
        tolerance_s: the most the attempt's timestamp may differ from `now`.
        now: the receiver's clock (seconds since the epoch); default: `time.time()`.

    Raises:
        ValueError: `secret` is not a usable secret (see `secret_key`).
        WebhookVerificationError: a header is missing, the timestamp is malformed or
            outside the tolerance, or no `v1` signature matches.
    """
    key = secret_key(secret)  # a bad secret is the receiver's own error: plain ValueError
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    found = {name.lower(): value for name, value in pairs}
    msg_id = found.get(ID_HEADER, "")
    stamp = found.get(TIMESTAMP_HEADER, "").strip()
    signatures = found.get(SIGNATURE_HEADER, "")
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError(
            f"missing header: needs {ID_HEADER}, {TIMESTAMP_HEADER} and {SIGNATURE_HEADER}"
        )
    if not _TIMESTAMP.fullmatch(stamp):
        raise WebhookVerificationError(f"{TIMESTAMP_HEADER} {stamp[:20]!r} is not whole seconds")
    skew = int(stamp) - (time.time() if now is None else now)
    if skew < -tolerance_s:
        raise WebhookVerificationError(f"timestamp too old: {-skew:.0f} s, over {tolerance_s} s")
    if skew > tolerance_s:
        raise WebhookVerificationError(f"timestamp too new: {skew:.0f} s ahead")
    try:
        expected = base64.b64decode(signature(key, msg_id, int(stamp), body)[3:])
    except ValueError as exc:  # an id holding '.': no signature of ours can match it
        raise WebhookVerificationError(str(exc)) from None
    # Several space-separated signatures: a sender rotating its secret signs with both.
    for candidate in signatures.split():
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue  # another scheme (v1a: asymmetric) this receiver does not check
        try:
            given = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(expected, given):
            return msg_id
    raise WebhookVerificationError("no matching v1 signature (wrong secret or altered body)")
