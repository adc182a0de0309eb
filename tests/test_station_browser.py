"""The operator station in a real headless Chromium, on bags a real worker decided with the
demo model: two operators, a lease that runs out, a TIP bag, and the supervisor's figures.

Needs Debian's `chromium` on PATH (driven with the playwright library; no browser download).
Screenshots go to $SCANGUARD_TEST_ARTEFACTS (default build/test-artefacts/); with
SCANGUARD_TEST_UPDATE_SCREENSHOT=1 they also replace docs/station.png and docs/supervisor.png.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from producer.producer import Producer
from producer.sources import SyntheticSource
from shared.console.app import create_app
from shared.keys import Keys
from shared.schemas import BagEvent
from shared.settings import load_settings
from tests.pipeline_fixtures import serve_app
from tests.test_station import push_bag, records, take, verdict

CHROMIUM = shutil.which("chromium")
ROOT = Path(__file__).resolve().parent.parent
DEMO_CARD = ROOT / "models" / "scanguard-demo" / "card.json"
TOKENS = {"ana": "ana-token-1", "ben": "ben-token-2"}
BOSS = "boss-token-3"
LEASE_S = 4
BAGS = 5
pytestmark = [
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no `chromium` on PATH: apt-get install -y chromium"
    ),
]
IMAGES_LOADED = """() => {
  const images = [...document.querySelectorAll('#views .view img.image')];
  return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""
WATCH_CSP = (
    "document.addEventListener('securitypolicyviolation',"
    " (e) => console.error('csp violation: ' + e.violatedDirective))"
)


def to_fixed(value: float, digits: int) -> str:
    """JavaScript's `value.toFixed(digits)`: the double's exact value, ties away from zero
    (Python's format rounds ties to even, so 0.25 s would read 0.2 here and 0.3 in the page)."""
    step = Decimal(1).scaleb(-digits)
    return str(Decimal(value).quantize(step, rounding=ROUND_HALF_UP))


class Scripted(random.Random):
    """The station's dice, loaded by the test: each "next bag" draws one value (< rate: TIP)."""

    def __init__(self) -> None:
        super().__init__(0)
        self.draws: list[float] = []

    def random(self) -> float:
        return self.draws.pop(0) if self.draws else 1.0


EVERY_BAG_TO_REVIEW = {
    "detect_th": 0.999,
    "reconsider_th": 1e-6,
    "max_iter": 1,
    "on_exhausted": "undetermined",
}


def decide_bags(server, keys: Keys, make_worker, bags: int = BAGS, seed: int = 0) -> list[BagEvent]:
    """Dual-view target bags through a real worker with the demo model (burst); the review bags.

    The thresholds leave every view undetermined after one step unless a threat is all but
    certain, so every bag goes to review whatever the shipped model's operating point.
    """
    worker = make_worker(
        {
            "redis_url": server.url,
            "namespace": keys.namespace,
            "model": {"max_batch": 8},
            "worker": {"max_wait_ms": 50},
            "erasing": EVERY_BAG_TO_REVIEW,
        },
        server.client(),
        card=DEMO_CARD,
    )
    Producer(server.client(), keys, scanner_id="lane-1", count=2 * bags).run(
        SyntheticSource("target", seed=seed, views=2)
    )
    worker.run(burst=True)
    client = server.client()
    return [BagEvent.model_validate_json(f[b"event"]) for _id, f in client.xrange(keys.review)]


def label_of(server: Any, keys: Keys, bag_id: str) -> int:
    """The synthetic scanner's class of a bag (0 benign), from its views' ground truth on
    the results stream (the bag id is opaque on purpose)."""
    for _id, fields in server.client().xrange(keys.results):
        event = json.loads(fields[b"event"])
        if event.get("bag_id") == bag_id:
            return int(event["meta"]["label"])
    raise AssertionError(f"no decided view of bag {bag_id}")


class LABELS_FROM:
    client: Any = None
    keys: Any = None


def keep_screenshot(page, name: str) -> Path:
    folder = Path(os.environ.get("SCANGUARD_TEST_ARTEFACTS", ROOT / "build" / "test-artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("SCANGUARD_TEST_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(path, ROOT / "docs" / name)
    return path


def open_page(browser, url: str, token: str, problems: list[str], path: str = "/") -> Any:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if "csp violation" in m.text else None)
    page.add_init_script(WATCH_CSP)
    page.goto(f"{url}{path}?token={token}")  # the gate sets the cookie and drops the token
    return page


def take_in_page(page) -> str:
    page.click("#next")
    page.wait_for_selector("#bag:not([hidden]) #views .view", timeout=10_000)
    page.wait_for_function(IMAGES_LOADED, timeout=10_000)
    return str(page.get_attribute("#bag", "data-bag-id"))


def test_two_operators_a_returned_lease_a_tip_bag_and_the_report(redis_server, keys, make_worker):
    """Ana and Ben take different bags; Ana's verdict lands with her id and time; Ben's lapsed
    lease returns his bag to Ana; a TIP bag's answer shows only after the verdict; the
    supervisor's counts and d′ match a hand count."""
    sync_api = pytest.importorskip("playwright.sync_api")
    review = decide_bags(redis_server, keys, make_worker)
    assert len(review) == BAGS, "every dual-view bag goes to review under these thresholds"
    client = redis_server.client()
    settings = load_settings(
        redis_url=redis_server.url,
        namespace=keys.namespace,
        console={
            "operators": TOKENS,
            "token": BOSS,
            "lease_s": LEASE_S,
            "tip_rate": {"main": 0.5},
        },
    )
    app = create_app(settings, client)
    dice = Scripted()
    app.state.station.rng = dice
    problems: list[str] = []
    with serve_app(app) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        ana = open_page(browser, url, TOKENS["ana"], problems)
        ana.wait_for_selector("#who:has-text('operator ana')")
        ben = open_page(browser, url, TOKENS["ben"], problems)

        # Ana takes the oldest bag: both views, each original with the machine's boxes.
        started = time.monotonic()
        first = take_in_page(ana)
        assert first == review[0].bag_id
        assert ana.locator("#views .view").count() == 2
        assert ana.locator(".roi").count() == sum(len(v.rois) for v in review[0].views) > 0
        assert ana.locator(".view .trace tbody tr").count() == sum(
            len(v.trace) for v in review[0].views
        )
        keep_screenshot(ana, "station.png")

        # Ben gets the next bag, never Ana's; a verdict on Ana's bag from his page is refused.
        second = take_in_page(ben)
        assert second == review[1].bag_id != first
        status = ben.evaluate(
            """(bag) => fetch('/api/station/verdict', {method: 'POST',
                 headers: {'Content-Type': 'application/json'},
                 body: JSON.stringify({bag_id: bag, decision: 'clear'})}).then((r) => r.status)""",
            first,
        )
        assert status == 409 and client.xlen(keys.verdicts) == 0

        # The heat-map and erased images swap in over the original; boxes show on the original.
        ana.click("button[data-mode='heatmap']")
        kinds = ana.eval_on_selector_all(
            ".view img.image", "(imgs) => imgs.map((i) => i.dataset.kind)"
        )
        assert kinds == ["heatmap", "heatmap"] and ana.is_hidden(".roi >> nth=0")
        ana.click("button[data-mode='masked']")
        ana.wait_for_function(IMAGES_LOADED, timeout=10_000)
        ana.click("button[data-mode='original']")
        assert ana.is_visible(".roi >> nth=0")

        # Ana's verdict lands with her id, the time she took and the box she confirmed.
        time.sleep(0.5)
        ana.click(".view[data-view='0'] .roi >> nth=0")
        ana.click("#search")
        ana.wait_for_selector("#feedback:not([hidden])")
        elapsed_ms = (time.monotonic() - started) * 1000
        ((_, raw),) = client.xrange(keys.verdicts)
        record = {k.decode(): v.decode() for k, v in raw.items()}
        assert (record["bag_id"], record["operator"], record["decision"]) == (
            first,
            "ana",
            "search",
        )
        assert 500 <= int(record["time_to_decision_ms"]) <= elapsed_ms
        assert json.loads(record["rois"]) == [{"view": 0, "roi": 0, "mark": "confirm"}]
        assert "search by ana" in ana.text_content("#verdict-line")

        # Ben's lease runs out: his page says so, and the bag goes to the next who asks.
        ben.wait_for_selector("#message:has-text('expired')", timeout=(LEASE_S + 4) * 1000)
        assert ben.is_disabled("#clear")
        assert take_in_page(ana) == second
        assert client.hget(keys.station_counters, "returns:main") == b"1"
        ana.click("#clear")
        ana.wait_for_selector("#feedback:not([hidden])")

        # A TIP bag: its answer is nowhere in the page or its traffic until the verdict.
        replies: list[Any] = []
        ana.on("response", lambda r: replies.append(r) if "/api/" in r.url else None)
        dice.draws = [0.1]
        tip_bag = take_in_page(ana)
        truth = {k.decode(): v.decode() for k, v in client.hgetall(keys.tip(tip_bag)).items()}
        assert truth["kind"] and truth["label"] in ("gun", "knife")
        html = ana.content()
        assert truth["kind"] not in html and "TIP" not in html.replace('id="tip-line"', "")
        assert ana.is_hidden("#tip-line")
        for reply in replies:
            if reply.headers.get("content-type", "").startswith("application/json"):
                body = reply.text()
                assert truth["kind"] not in body and "tip" not in body.lower(), reply.url
        ana.click("#search")
        ana.wait_for_selector("#tip-line:not([hidden])")
        assert ana.text_content("#tip-line") == f"TIP: {truth['label']} ({truth['kind']}) — found"
        assert ana.get_attribute("#feedback", "data-tip-result") == "hit"

        # The supervisor's figures for Ana, counted by hand.
        boss = open_page(browser, url, BOSS, problems, "/supervisor")
        boss.wait_for_selector("#report tbody tr[data-operator='ana']")
        row = boss.locator("#report tbody tr[data-operator='ana']")
        cell = lambda field: row.locator(f"td[data-field='{field}']").text_content()  # noqa: E731
        benign = [b for b in (first, second) if label_of(redis_server, keys, b) == 0]
        false_alarms = int(
            label_of(redis_server, keys, first) == 0
        )  # she searched the first, cleared the second
        norm = statistics.NormalDist()
        hand = norm.inv_cdf((1 + 0.5) / (1 + 1)) - norm.inv_cdf(
            (false_alarms + 0.5) / (len(benign) + 1)
        )
        assert (cell("decided"), cell("tip_hits"), cell("tip_misses")) == ("3", "1", "0")
        assert (cell("benign"), cell("false_alarms")) == (str(len(benign)), str(false_alarms))
        assert cell("d_prime") == (to_fixed(hand, 2) if benign else "–")
        times = [int(r[b"time_to_decision_ms"]) for _id, r in client.xrange(keys.verdicts)]
        median_s = statistics.median(times) / 1000
        assert cell("median_time_to_decision_ms") == f"{to_fixed(median_s, 1)} s"
        queued = boss.locator("#open tbody tr[data-state='queued']")
        assert queued.count() == BAGS - 2
        assert boss.text_content("#s-returns") == "1"
        keep_screenshot(boss, "supervisor.png")
        browser.close()
    assert problems == []


def test_a_loopback_page_chooses_its_operator(redis_server, redis_client, keys):
    """In Chromium without tokens: the operator id typed in the page is the one the verdict carries."""
    sync_api = pytest.importorskip("playwright.sync_api")
    bag = push_bag(redis_client, keys, 1)
    settings = load_settings(redis_url=redis_server.url, namespace=keys.namespace)
    with (
        serve_app(create_app(settings, redis_server.client())) as url,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.fill("#operator", "zoe")
        page.dispatch_event("#operator", "change")
        page.click("#next")
        page.wait_for_selector(f"#bag[data-bag-id='{bag.bag_id}']:not([hidden])")
        assert page.locator(".roi").count() == 2
        page.click("#clear")
        page.wait_for_selector("#feedback:not([hidden])")
        browser.close()
    assert errors == []
    assert [(r["operator"], r["decision"]) for r in records(redis_client, keys)] == [
        ("zoe", "clear")
    ]


@pytest.mark.skipif(
    os.environ.get("SCANGUARD_TEST_UPDATE_SCREENSHOT") != "1",
    reason="makes docs/station.png and docs/supervisor.png (SCANGUARD_TEST_UPDATE_SCREENSHOT=1)",
)
def test_docs_screenshots(redis_server, keys, make_worker):
    """A busy shift for the docs: three operators, TIP bags, held bags, overdue ones waiting."""
    sync_api = pytest.importorskip("playwright.sync_api")
    review = decide_bags(redis_server, keys, make_worker, bags=8)
    tokens = {**TOKENS, "cy": "cy-token-4"}
    settings = load_settings(
        redis_url=redis_server.url,
        namespace=keys.namespace,
        console={
            "operators": tokens,
            "token": BOSS,
            "review_deadline_s": 6,
            "tip_rate": {"main": 0.1},
        },
    )
    app = create_app(settings, redis_server.client())
    dice = Scripted()
    app.state.station.rng = dice
    problems: list[str] = []
    with serve_app(app) as url:
        import httpx

        def http(who: str) -> httpx.Client:
            return httpx.Client(base_url=url, headers={"authorization": f"Bearer {tokens[who]}"})

        shift = [  # who, TIP?, decision: bags 0-3 decided, 4 held by cy, 5 by ana (shown)
            ("ana", False, "search"),
            ("ana", True, "search"),
            ("ben", False, "search"),
            ("ana", False, "search"),
            ("ben", True, "clear"),
            ("ben", False, "clear"),
        ]
        started = time.monotonic()
        for who, is_tip, decision in shift:
            dice.draws = [0.05 if is_tip else 0.9]
            with http(who) as client:
                bag = take(client)
                time.sleep(0.4 + random.random())
                assert verdict(client, bag["bag_id"], decision).status_code == 201
        with http("cy") as client:
            take(client)
        with http("ana") as client:
            shown = take(client)
        assert (
            shown["bag_id"] == review[5].bag_id
            and label_of(redis_server, keys, shown["bag_id"]) != 0
        )
        time.sleep(max(0.0, 6.5 - (time.monotonic() - started)))  # the first bags are overdue
        decide_bags(redis_server, keys, make_worker, bags=3, seed=1)  # fresh ones arrive
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            ana = open_page(browser, url, tokens["ana"], problems)
            ana.wait_for_selector("#bag:not([hidden]) #views .view")
            ana.wait_for_function(IMAGES_LOADED, timeout=10_000)
            keep_screenshot(ana, "station.png")
            boss = open_page(browser, url, BOSS, problems, "/supervisor")
            boss.wait_for_selector("#report tbody tr[data-operator='ben']")
            boss.wait_for_selector("#open tbody tr[data-state='taken']")
            keep_screenshot(boss, "supervisor.png")
            browser.close()
    assert problems == []


def test_a_refresh_answered_before_next_does_not_take_the_bag_away(
    redis_server, redis_client, keys
):
    """A periodic refresh that was in flight when the operator took a bag answers "no bag";
    the page drops that answer instead of calling the lease lost and locking the buttons."""
    sync_api = pytest.importorskip("playwright.sync_api")
    bag = push_bag(redis_client, keys, 1)
    settings = load_settings(redis_url=redis_server.url, namespace=keys.namespace)
    held: list[Any] = []
    armed = False

    def hold_one_refresh(route: Any) -> None:
        if armed and not held and route.request.method == "GET":
            held.append(route)
        else:
            route.continue_()

    def is_refresh(request: Any) -> bool:
        return request.method == "GET" and request.url.endswith("/api/station")

    with (
        serve_app(create_app(settings, redis_server.client())) as url,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page()
        page.route("**/api/station", hold_one_refresh)
        page.goto(url)
        page.wait_for_selector("#next:enabled")
        armed = True
        with page.expect_request(is_refresh):
            page.dispatch_event("#operator", "change")  # the page refreshes
        while not held:
            page.wait_for_timeout(20)
        stale = held[0].fetch()  # what the station says before the bag is taken
        page.click("#next")
        page.wait_for_selector(f"#bag[data-bag-id='{bag.bag_id}']:not([hidden])")
        page.wait_for_selector("#clear:enabled")
        with page.expect_request(is_refresh) as later:  # the next periodic refresh
            held[0].fulfill(response=stale)
        later.value.response()
        assert page.is_enabled("#clear") and page.is_enabled("#search")
        assert "lease" not in (page.text_content("#message") or "")
        page.click("#clear")
        page.wait_for_selector("#feedback:not([hidden])")
        browser.close()
    assert [r["decision"] for r in records(redis_client, keys)] == ["clear"]
