"""The alert monitor in a real headless Chromium: frames through a real worker, alerts live, a verdict click.

Needs Debian's `chromium` package on PATH (driven with the playwright library; no
browser download). The screenshot is kept in $SCANGUARD_TEST_ARTEFACTS (default
build/test-artefacts/). The README's screenshots are the station's (tests/test_station_browser.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from producer.producer import Producer
from producer.sources import SyntheticSource
from shared.keys import Keys
from tests.pipeline_fixtures import ERASING, write_tiny_card
from tests.test_console import console_settings, serve_console

CHROMIUM = shutil.which("chromium")
ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no `chromium` on PATH: apt-get install -y chromium"
    ),
]
ALL_IMAGES_LOADED = """() => {
  const images = [...document.querySelectorAll('#alerts .alert img')];
  return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


def run_worker(server, keys: Keys, tmp_path: Path, make_worker) -> None:
    """Push synthetic scanner frames from two lanes and decide them with a real worker (burst)."""
    worker = make_worker(
        {
            "redis_url": server.url,
            "namespace": keys.namespace,
            "erasing": ERASING,
            "model": {"max_batch": 8},
            "worker": {"max_wait_ms": 50},
        },
        server.client(),
        card=write_tiny_card(tmp_path / "model"),
    )
    for lane, seed in (("lane-1", 3), ("lane-2", 4)):
        Producer(server.client(), keys, scanner_id=lane, count=6).run(
            SyntheticSource("target", seed=seed)
        )
    worker.run(burst=True)


def keep_screenshot(page) -> Path:
    folder = Path(os.environ.get("SCANGUARD_TEST_ARTEFACTS", ROOT / "build" / "test-artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "monitor.png"
    page.screenshot(path=str(path))
    return path


def test_alerts_appear_live_and_verdicts_land_in_redis(redis_server, keys, tmp_path, make_worker):
    """Alerts from a real worker appear live with both images; a Confirm click lands in {ns}:verdicts."""
    sync_api = pytest.importorskip("playwright.sync_api")
    client = redis_server.client()
    errors: list[str] = []
    with (
        serve_console(console_settings(redis_server, keys), redis_server) as url,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{url}/monitor")  # the alert monitor; `/` is the operator station
        page.wait_for_selector("#live.on", timeout=10_000)

        run_worker(redis_server, keys, tmp_path, make_worker)
        newest_first = [eid.decode() for eid, _ in client.xrevrange(keys.alerts)]
        assert newest_first, "the sharpened tiny model should raise some alerts"
        page.wait_for_function(
            "n => document.querySelectorAll('#alerts .alert').length === n",
            arg=len(newest_first),
            timeout=20_000,
        )
        page.wait_for_function(ALL_IMAGES_LOADED, timeout=10_000)
        cards = page.locator("#alerts .alert")
        assert [
            cards.nth(i).get_attribute("data-entry-id") for i in range(cards.count())
        ] == newest_first
        assert page.locator("#st-workers").text_content() is not None

        lane_2 = sum(
            1 for _, f in client.xrange(keys.alerts) if b'"scanner_id":"lane-2"' in f[b"event"]
        )
        page.select_option("#f-scanner", "lane-2")
        assert page.locator("#alerts .alert:visible").count() == lane_2
        page.select_option("#f-scanner", "")

        first = cards.nth(0)
        page.fill("#operator", "ana")
        first.locator("button[data-verdict=confirmed]").click()
        page.wait_for_selector("#alerts .alert >> nth=0 >> .verdict.confirmed", timeout=10_000)
        ((_, fields),) = client.xrange(keys.verdicts)
        assert fields[b"alert_id"].decode() == first.get_attribute("data-event-id")
        assert (fields[b"verdict"], fields[b"operator"]) == (b"confirmed", b"ana")

        cards.nth(min(1, cards.count() - 1)).click()
        page.wait_for_selector("#detail:not([hidden]) #d-trace tbody tr", timeout=10_000)
        detail_id = page.get_attribute("#detail", "data-entry-id")
        ((_, raw),) = client.xrange(keys.alerts, min=detail_id, max=detail_id)
        forwards = int(raw[b"event"].split(b'"forward_passes":')[1].split(b",")[0])
        assert page.locator("#d-trace tbody tr").count() == forwards
        page.wait_for_function("() => document.getElementById('d-heatmap').naturalWidth > 0")
        shot = keep_screenshot(page)
        browser.close()
    assert shot.stat().st_size > 10_000
    assert errors == []
