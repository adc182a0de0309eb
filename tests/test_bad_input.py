"""Hostile and odd frames: each ends decided or dead-lettered with a reason, never lost."""

from __future__ import annotations

import json
import struct
from datetime import datetime, timezone

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.keys import Keys
from tests.pipeline_fixtures import ERASING, encode, events, frame_image, push_frames
from worker.service.intake import IntakeLimits, Rejected, decode_entry

NOW = datetime.now(timezone.utc).isoformat()
JPEG = encode(frame_image(1))
PNG = encode(frame_image(2), "image/png")
LIMITS = IntakeLimits(max_frame_bytes=256 * 1024, max_pixels=4_000_000, input_hw=(64, 64))


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def bomb_png() -> bytes:
    """A real PNG whose header claims 60000 x 60000 pixels."""
    data = bytearray(PNG)
    data[16:24] = struct.pack(">II", 60_000, 60_000)
    return bytes(data)


def fields(
    image: bytes, content_type: str = "image/jpeg", **extra: str | bytes
) -> dict[str, str | bytes]:
    base: dict[str, str | bytes] = {
        "frame_id": extra.pop("frame_id", "f"),
        "scanner_id": "lane-1",
        "captured_at": NOW,
        "content_type": content_type,
        "image": image,
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


BAD_FRAMES = {
    "truncated JPEG": (fields(JPEG[: len(JPEG) // 2]), "JPEG is truncated"),
    "truncated PNG": (fields(PNG[: len(PNG) // 2], "image/png"), "PNG is truncated"),
    "corrupt JPEG body": (
        fields(JPEG[:4] + bytes(range(256)) * 8 + JPEG[-2:]),
        "JPEG marker expected",
    ),
    "corrupt PNG body": (fields(PNG[:33] + b"\x00" * 300 + PNG[-12:], "image/png"), "corrupt"),
    "zero bytes": (fields(b""), "empty"),
    "not an image": (fields(b"%PDF-1.7 this is not a picture at all"), "neither PNG nor JPEG"),
    "PNG declared as JPEG": (
        fields(PNG, "image/jpeg"),
        "declared image/jpeg but the bytes are image/png",
    ),
    "decompression bomb": (fields(bomb_png(), "image/png"), "pixel limit"),
    "oversized payload": (fields(JPEG + b"\x00" * (300 * 1024)), "byte limit"),
    "missing frame_id": (fields(JPEG, frame_id=None), "frame_id: Field required"),
    "missing image": (
        {k: v for k, v in fields(JPEG).items() if k != "image"},
        "missing field 'image'",
    ),
    "malformed captured_at": (fields(JPEG, captured_at="yesterday"), "captured_at"),
    "meta not JSON": (fields(JPEG, meta="{oops"), "meta"),
    "unsafe frame id": (fields(JPEG, frame_id="a b\nc"), "may only hold letters"),
    "unknown content type": (fields(JPEG, content_type="image/gif"), "content_type"),
    "unknown schema version": (fields(JPEG, schema="scanguard.frame/9"), "unknown frame schema"),
}

ODD_BUT_VALID = {
    "grayscale PNG": fields(png_bytes(frame_image(3)[..., 0]), "image/png"),
    "16-bit PNG": fields(png_bytes(frame_image(4).astype(np.uint16) * 257), "image/png"),
    "alpha PNG": fields(
        png_bytes(np.dstack([frame_image(5), np.full((96, 128), 200, np.uint8)])), "image/png"
    ),
    "16-bit grayscale PNG": fields(
        png_bytes(frame_image(6)[..., 1].astype(np.uint16) * 100), "image/png"
    ),
    "tiny 1x1 JPEG": fields(encode(np.zeros((1, 1, 3), np.uint8))),
}


def as_raw(entry: dict[str, str | bytes]) -> dict[bytes, bytes]:
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in entry.items()}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frame_is_rejected_with_its_reason(case):
    """Each kind of bad frame is rejected by the decoder with a reason that says what is wrong."""
    entry, reason = BAD_FRAMES[case]
    outcome = decode_entry("1-0", as_raw(entry), 1, LIMITS)
    assert isinstance(outcome, Rejected), case
    assert reason in outcome.reason


@pytest.mark.parametrize("case", list(ODD_BUT_VALID))
def test_odd_but_valid_images_are_accepted(case):
    """Grayscale, 16-bit, alpha and tiny images decode to RGB uint8 at the model's input size."""
    outcome = decode_entry("1-0", as_raw(ODD_BUT_VALID[case]), 1, LIMITS)
    assert not isinstance(outcome, Rejected), getattr(outcome, "reason", "")
    frame, engine_input = outcome
    image = frame.full_image()
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert engine_input.pixels.shape == (64, 64, 3)


@pytest.mark.redis
def test_worker_dead_letters_bad_frames_and_decides_the_rest(
    redis_server, keys: Keys, make_worker, reliability
):
    """Bad frames mixed into a stream go to {ns}:dead with reasons; every other frame is decided."""
    client = redis_server.client()
    worker = make_worker(
        {
            "redis_url": redis_server.url,
            "namespace": keys.namespace,
            "erasing": ERASING,
            "worker": {"max_frame_bytes": 256 * 1024, "max_pixels": 4_000_000},
        },
        client,
    )
    good = push_frames(client, keys, 4)
    for index, case in enumerate([*BAD_FRAMES, *ODD_BUT_VALID]):
        entry = BAD_FRAMES[case][0] if case in BAD_FRAMES else ODD_BUT_VALID[case]
        frame_id = (
            {"frame_id": f"case-{index}"}
            if "frame_id" in entry and case != "unsafe frame id"
            else {}
        )
        client.xadd(keys.frames, {**entry, **frame_id})
    good += push_frames(client, keys, 4, start=4)

    worker.run(burst=True)

    decided = {e["frame_id"] for e in events(client, keys.results)}
    dead = events(client, keys.dead)
    assert len(dead) == len(BAD_FRAMES)
    assert set(good) <= decided and len(decided) == len(good) + len(ODD_BUT_VALID)
    assert all(d["reason"] for d in dead)
    assert client.xpending(keys.frames, "workers")["pending"] == 0 and client.xlen(keys.frames) == 0
    by_entry = {json.loads(f[b"event"])["reason"] for _, f in client.xrange(keys.dead)}
    for case, (_, reason) in BAD_FRAMES.items():
        matched = [r for r in by_entry if reason in r]
        assert matched, f"{case}: no dead letter mentions {reason!r}"
        reliability.record(
            f"bad input: {case}",
            "dead letter with reason, worker goes on",
            sent=1,
            decided=0,
            dead=1,
            duplicated=0,
            lost=0,
            note=matched[0],
        )
    for case in ODD_BUT_VALID:
        reliability.record(
            f"odd input: {case}",
            "decided like any frame",
            sent=1,
            decided=1,
            dead=0,
            duplicated=0,
            lost=0,
        )


def entry_strategy() -> st.SearchStrategy[dict[bytes, bytes]]:
    """Field maps mixing valid values, junk and missing fields, with images from real to garbage."""
    image = st.one_of(
        st.just(JPEG),
        st.just(PNG),
        st.binary(max_size=200),
        st.integers(0, len(JPEG)).map(lambda n: JPEG[:n]),
        st.integers(0, len(PNG)).map(lambda n: PNG[:n]),
        st.binary(min_size=1, max_size=64).map(lambda b: JPEG[:20] + b + JPEG[-2:]),
    )
    text = st.one_of(
        st.text(max_size=20), st.sampled_from(["f-1", NOW, "image/png", "image/jpeg", "{}"])
    )
    value = st.one_of(text.map(str.encode), st.binary(max_size=20))
    names = st.sampled_from(
        [
            "frame_id",
            "scanner_id",
            "captured_at",
            "content_type",
            "meta",
            "schema",
            "enqueued_at",
            "extra",
        ]
    )
    valid = st.sampled_from([as_raw(fields(JPEG)), as_raw(fields(PNG, "image/png"))])
    junk = st.tuples(st.dictionaries(names, value, max_size=8), image, st.booleans()).map(
        lambda t: {**{k.encode(): v for k, v in t[0].items()}, **({b"image": t[1]} if t[2] else {})}
    )
    # Valid entries with one field replaced by junk sit between the two extremes.
    mutated = st.tuples(valid, names, value).map(lambda t: {**t[0], t[1].encode(): t[2]})
    return st.one_of(valid, junk, mutated)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=entry_strategy())
def test_decoder_never_raises(raw):
    """Any field map and bytes give a decodable frame or a Rejected with a reason, never an exception."""
    outcome = decode_entry("1-0", raw, 1, LIMITS)
    if isinstance(outcome, Rejected):
        assert outcome.reason
    else:
        frame, engine_input = outcome
        assert engine_input.pixels.shape == (64, 64, 3) and engine_input.pixels.dtype == np.uint8
        assert frame.fields.frame_id


@pytest.mark.redis
@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(entry_strategy(), min_size=1, max_size=12))
def test_every_hostile_entry_ends_decided_or_dead(batch, redis_server, make_worker):
    """Through a real worker, each arbitrary entry ends as one decision or one dead letter."""
    keys = Keys(f"h{np.random.default_rng().integers(1 << 40):x}")
    client = redis_server.client()
    worker = make_worker({"redis_url": redis_server.url, "namespace": keys.namespace}, client)
    ids = [client.xadd(keys.frames, raw or {b"empty": b""}).decode() for raw in batch]

    worker.run(burst=True)

    outcomes = [e["entry_id"] for e in events(client, keys.results)]
    outcomes += [e["entry_id"] for e in events(client, keys.dead)]
    assert sorted(outcomes) == sorted(ids)
    assert client.xpending(keys.frames, "workers")["pending"] == 0
