"""The operator console over real HTTP (uvicorn in a thread) against a real redis-server."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from shared import alerts_cli
from shared.console.app import create_app
from shared.console.data import RateMeter
from shared.keys import Keys
from shared.schemas import Detection
from shared.settings import Settings, SettingsError, load_settings
from tests.pipeline_fixtures import serve_app
from tests.test_client import JPEG_BYTES, PNG_BYTES, make_event, publish

pytestmark = pytest.mark.redis


@contextmanager
def serve_console(settings: Settings, server) -> Iterator[str]:
    """Run the console app with uvicorn on a free loopback port; yield its base URL."""
    client = server.client()
    try:
        with serve_app(create_app(settings, client), timeout_graceful_shutdown=2) as url:
            yield url
    finally:
        client.close()


def console_settings(server, keys: Keys, **console: object) -> Settings:
    return load_settings(redis_url=server.url, namespace=keys.namespace, console=console)


@pytest.fixture
def console(redis_server, keys) -> Iterator[httpx.Client]:
    """An HTTP client on a console for this test's namespace."""
    with (
        serve_console(console_settings(redis_server, keys), redis_server) as url,
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        yield http


def alert(keys: Keys, n: int, scanner: str = "lane-1", label: str = "gun"):
    event = make_event(keys, n, artefacts=True)
    event.scanner_id = scanner
    event.detections = [
        Detection(class_id=2 if label == "knife" else 1, label=label, probability=0.9)
    ]
    event.decided_at = datetime(2026, 5, 1, 8, 0, tzinfo=timezone.utc) + timedelta(seconds=n)
    return event


def test_alerts_come_newest_first_and_filter_by_scanner_and_class(console, redis_client, keys):
    """The alert list is newest first and narrows by scanner and by detected class."""
    for n, (scanner, label) in enumerate(
        [("lane-1", "gun"), ("lane-2", "knife"), ("lane-1", "knife")]
    ):
        publish(redis_client, keys, alert(keys, n, scanner, label))

    def ids(**params: str) -> list[str]:
        reply = console.get("/api/alerts", params=params)
        assert reply.status_code == 200
        return [a["event"]["event_id"] for a in reply.json()["alerts"]]

    assert ids() == ["ev-2", "ev-1", "ev-0"]
    assert ids(scanner="lane-1") == ["ev-2", "ev-0"]
    assert ids(label="knife") == ["ev-2", "ev-1"]
    assert ids(scanner="lane-2", label="gun") == []
    assert ids(limit="1") == ["ev-2"]
    assert console.get("/api/alerts", params={"scanner": "lane-1*"}).status_code == 400


def test_detail_carries_the_probability_trace(console, redis_client, keys):
    """One alert by entry id returns its full event with the per-iteration trace."""
    entry = publish(redis_client, keys, alert(keys, 1))
    reply = console.get(f"/api/alerts/{entry}")
    assert reply.status_code == 200
    assert reply.json()["event"]["trace"] == [{"gun": 0.4}, {"gun": 0.93}]
    assert console.get("/api/alerts/1-999").status_code == 404
    assert console.get("/api/alerts/*").status_code == 400


def test_artefacts_are_served_only_by_their_keys(console, redis_client, keys):
    """Artefacts come back by event id and kind; other kinds, ids or paths never reach Redis."""
    publish(redis_client, keys, alert(keys, 4))
    redis_client.set(keys.prefix + ":secret", b"do not serve")
    masked = console.get("/api/artefacts/ev-4/masked")
    assert masked.status_code == 200 and masked.content == JPEG_BYTES
    assert masked.headers["content-type"] == "image/jpeg"
    assert console.get("/api/artefacts/ev-4/heatmap").content == PNG_BYTES
    for path in (
        "/api/artefacts/ev-4/secret",
        "/api/artefacts/ev-4/..%2Fsecret",
        "/api/artefacts/ev%2A/masked",
        "/api/artefacts/ev-404/masked",
    ):
        reply = console.get(path)
        assert reply.status_code == 404 and b"do not serve" not in reply.content


def test_verdicts_are_appended_to_the_verdicts_stream(console, redis_client, keys):
    """A valid verdict lands in {ns}:verdicts with alert id, verdict, operator and time; bad ones do not."""
    entry = publish(redis_client, keys, alert(keys, 2))
    body = {"entry_id": entry, "event_id": "ev-2", "verdict": "false_alarm", "operator": "ana"}
    assert console.post("/api/verdicts", json=body).status_code == 201

    ((_, fields),) = redis_client.xrange(keys.verdicts)
    record = {k.decode(): v.decode() for k, v in fields.items()}
    assert (record["alert_id"], record["verdict"], record["operator"]) == (
        "ev-2",
        "false_alarm",
        "ana",
    )
    assert datetime.fromisoformat(record["at"]).tzinfo is not None
    assert console.get("/api/alerts").json()["alerts"][0]["verdict"]["verdict"] == "false_alarm"
    assert console.post("/api/verdicts", json={**body, "verdict": "maybe"}).status_code == 422
    assert console.post("/api/verdicts", json={**body, "event_id": "ev-9"}).status_code == 404
    assert console.post("/api/verdicts", json={**body, "extra": 1}).status_code == 422
    assert (
        console.post(
            "/api/verdicts", content=json.dumps(body), headers={"content-type": "text/plain"}
        ).status_code
        == 415
    )
    assert console.put("/api/verdicts", json=body).status_code == 405
    assert console.delete(f"/api/alerts/{entry}").status_code == 405
    assert redis_client.xlen(keys.verdicts) == 1


def test_status_strip_counts_backlog_workers_and_dead_letters(console, redis_client, keys):
    """Status reports the frames backlog, live workers from heartbeats and the dead-letter count."""
    for n in range(3):
        redis_client.xadd(keys.frames, {"frame_id": f"f{n}"})
    redis_client.xadd(keys.dead, {"event": "{}"})
    now = datetime.now(timezone.utc).isoformat()
    for wid in ("w1", "w2"):
        beat = {"worker_id": wid, "decided": 5, "at": now}
        redis_client.set(keys.worker(wid), json.dumps(beat), ex=30)
    status = console.get("/api/status").json()
    assert (status["backlog"], status["workers"], status["dead_letters"]) == (3, 2, 1)


def test_rate_meter_uses_heartbeat_counters():
    """Decisions per second is the growth of each worker's counter over its heartbeat times."""
    meter = RateMeter(window_s=30)
    t0 = datetime(2026, 5, 1, tzinfo=timezone.utc)

    def beat(wid: str, s: int, n: int) -> dict[str, object]:
        return {"worker_id": wid, "decided": n, "at": (t0 + timedelta(seconds=s)).isoformat()}

    assert meter.update([beat("a", 0, 100), beat("b", 0, 0)]) == 0.0
    assert meter.update([beat("a", 5, 150), beat("b", 5, 25)]) == pytest.approx(15.0)
    assert meter.update([beat("b", 10, 50)]) == pytest.approx(5.0)  # a stopped beating


def test_event_stream_pushes_new_alerts(console, redis_client, keys):
    """The SSE stream sends a status event, then each alert published after the given id."""
    first = publish(redis_client, keys, alert(keys, 1))
    seen: list[tuple[str, dict]] = []
    with console.stream("GET", "/api/stream", params={"after": first}) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in reply.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                seen.append((kind or "", json.loads(line[6:])))
                if kind == "status":
                    publish(redis_client, keys, alert(keys, 2))
                if kind == "alert":
                    break
    assert seen[0][0] == "status"
    assert seen[-1][1]["event"]["event_id"] == "ev-2"


def test_loopback_only_without_a_token(redis_server, keys):
    """Binding off loopback needs a token, and a foreign Host header is refused without one."""
    with pytest.raises(SettingsError, match="TOKEN"):
        console_settings(redis_server, keys, host="0.0.0.0")
    with serve_console(console_settings(redis_server, keys), redis_server) as url:
        reply = httpx.get(f"{url}/api/status", headers={"host": "attacker.example"})
        assert reply.status_code == 400


def test_token_gate(redis_server, keys):
    """With a token, requests need it as bearer header or cookie; ?token= sets the cookie once."""
    settings = console_settings(redis_server, keys, host="0.0.0.0", token="s3cret")
    with serve_console(settings, redis_server) as url, httpx.Client(base_url=url) as http:
        assert http.get("/api/status").status_code == 401
        assert http.get("/api/status", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert (
            http.get("/api/status", headers={"authorization": "Bearer s3cret"}).status_code == 200
        )
        login = http.get("/", params={"token": "s3cret"})
        assert login.status_code == 303 and "token" not in login.headers["location"]
        assert http.get("/api/status").status_code == 200  # the cookie from the redirect


# -- the terminal side: scanguard-alerts tail filters, --since, --json, show ----------------


def run_cli(redis_server, keys: Keys, monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """Run `scanguard-alerts` in this process; return its exit code and stdout."""
    monkeypatch.setenv("SCANGUARD_REDIS_URL", redis_server.url)
    monkeypatch.setenv("SCANGUARD_NAMESPACE", keys.namespace)
    # Logging set-up binds the stream it writes to once per process; here that would be
    # pytest's capture, closed after this test, so the in-process run skips it.
    monkeypatch.setattr(alerts_cli, "configure_logging", lambda *args: None)
    code = alerts_cli.main(list(argv))
    return code, capsys.readouterr().out


def test_tail_filters_and_prints_json(redis_server, redis_client, keys, monkeypatch, capsys):
    """`tail --json --scanner --class` prints only matching events, one JSON object per line."""
    for n, (scanner, label) in enumerate(
        [("lane-1", "gun"), ("lane-2", "knife"), ("lane-2", "gun")]
    ):
        publish(redis_client, keys, alert(keys, n, scanner, label))
    code, out = run_cli(
        redis_server,
        keys,
        monkeypatch,
        capsys,
        "tail",
        "--from-start",
        "--json",
        "--scanner",
        "lane-2",
        "--class",
        "gun",
        "--count",
        "1",
        "--block-ms",
        "200",
    )
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["event"]["event_id"] for r in records] == ["ev-2"]
    assert records[0]["entry_id"].count("-") == 1


def test_tail_since_starts_at_a_time(redis_server, redis_client, keys, monkeypatch, capsys):
    """`--since` accepts a duration or an ISO time and maps it to the entry id just before it."""
    assert alerts_cli.since_entry_id("10m", now=1_000.0) == "399999-0"
    assert alerts_cli.since_entry_id("1970-01-01T00:00:01+00:00") == "999-0"
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        alerts_cli.since_entry_id("yesterday")
    publish(redis_client, keys, alert(keys, 1))
    code, out = run_cli(
        redis_server, keys, monkeypatch, capsys, "tail", "--since", "1h", "--count", "1"
    )
    assert code == 0 and "event ev-1" in out


def test_show_prints_the_trace_and_saves_artefacts(
    redis_server, redis_client, keys, monkeypatch, capsys, tmp_path
):
    """`show <event id>` and `show <entry id>` print the event with its trace and save both images."""
    entry = publish(redis_client, keys, alert(keys, 5))
    publish(redis_client, keys, alert(keys, 6))
    code, out = run_cli(
        redis_server, keys, monkeypatch, capsys, "show", "ev-5", "--out", str(tmp_path)
    )
    assert code == 0 and "event      ev-5" in out and "iter 1" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev-5-heatmap.png", "ev-5-masked.jpg"]
    code, out = run_cli(
        redis_server, keys, monkeypatch, capsys, "show", entry, "--json", "--out", str(tmp_path)
    )
    assert code == 0 and json.loads(out)["event"]["event_id"] == "ev-5"
    code, _ = run_cli(
        redis_server, keys, monkeypatch, capsys, "show", "ev-404", "--out", str(tmp_path)
    )
    assert code == 1
