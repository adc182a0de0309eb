"""Exporting operators' bag verdicts as a labelled image folder, against a real redis-server.

Everything the export reads is written by the project's own code: views are published
and their bags closed by the worker's `Publisher` and `BagCloser` (the originals stored by
`publish.lua`, their lifetime extended for review by `close_bag.lua`), bags are taken and
judged through the station (`Station.next_bag`, `verdicts.record`, which runs
`decide.lua`), the TIP bag is made by the station itself, and the alert monitor's verdict
comes from `data.record_verdict`. Only the decision events are built by hand, so each
view's classes and boxes are known.
"""

from __future__ import annotations

import json
import random
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.console.data import VerdictIn, record_verdict
from shared.console.station import Station
from shared.console.verdicts import BagVerdictIn, RoiMark, record
from shared.keys import Keys
from shared.schemas import (
    ArtefactRef,
    DecisionEvent,
    Detection,
    FrameFields,
    ModelRef,
    Roi,
    Thresholds,
)
from shared.settings import ConsoleSettings
from shared.streams import ensure_group
from tests.pipeline_fixtures import encode, frame_image
from worker.service.bags import BagCloser
from worker.service.publish import Lifetimes, Outcome, Publisher, PublishStatus
from worker.training.data import load_imagefolder
from worker.training.export_verdicts import (
    MANIFEST,
    OTHER_KIND,
    UNCONFIRMED,
    UNCONFIRMED_VIEW,
    Tally,
    export,
    main,
)

pytestmark = pytest.mark.redis

LABELS = ("benign", "gun", "knife")
MODEL = ModelRef(id="vit-demo", checksum="abc", labels=list(LABELS))
THRESHOLDS = Thresholds(
    detect_th=0.5,
    reconsider_th=0.001,
    max_iter=5,
    on_exhausted="undetermined",
    judge_original=False,
    head_fusion="mean",
    fill=1.0,
)
GROUP = "workers"
FIRST = {"benign": 0.5, "gun": 0.3, "knife": 0.2}  # every view's forward on the original
GUN = {"benign": 0.1, "gun": 0.8, "knife": 0.1}
KNIFE = {"benign": 0.1, "gun": 0.15, "knife": 0.75}
UNSURE = {"benign": 0.6, "gun": 0.25, "knife": 0.15}
OPERATOR, POOL, TIP_POOL = "ana", "main", "tip"


# -- the line: views published and bags closed by the worker's own code ---------------------


def decision(
    keys: Keys, fields: FrameFields, entry_id: str, image: bytes, last: dict[str, float]
) -> DecisionEvent:
    """The decision event a worker would publish for a frame whose last forward gave `last`."""
    now = datetime.now(timezone.utc)
    event_id = uuid.uuid4().hex
    threats = [
        Detection(class_id=i, label=label, probability=last[label])
        for i, label in enumerate(LABELS)
        if i > 0 and last[label] > THRESHOLDS.detect_th
    ]
    bag_id, view, views = fields.bag
    return DecisionEvent(
        event_id=event_id,
        frame_id=fields.frame_id,
        entry_id=entry_id,
        scanner_id=fields.scanner_id,
        captured_at=fields.captured_at,
        enqueued_at=now,
        decided_at=now,
        latency_ms=20.0,
        decision="threat" if threats else "undetermined",
        detections=threats,
        probabilities=last,
        trace=[FIRST, last],
        iterations=1,
        forward_passes=2,
        thresholds=THRESHOLDS,
        model=MODEL,
        worker_id="w1",
        artefacts=[
            ArtefactRef(
                kind="original",
                key=keys.artefact(event_id, "original"),
                content_type=fields.content_type,
                bytes=len(image),
                width=128,
                height=96,
                expires_at=now + timedelta(hours=1),
            )
        ],
        meta=fields.meta,
        rois=[
            Roi(x=10 + view, y=12, w=30, h=20, peak=0.97, mean=0.6),
            Roi(x=60, y=40, w=16, h=12, peak=0.7, mean=0.5),
        ],
        bag_id=bag_id,
        view=view,
        views=views,
    )


@dataclass
class Line:
    """A worker's publisher and bag closer on one namespace, and what it stored."""

    client: redis.Redis
    keys: Keys
    originals: dict[tuple[str, int], bytes]  # (bag id, view) -> the bytes as sent
    event_ids: dict[tuple[str, int], str]

    def __post_init__(self) -> None:
        lifetimes = Lifetimes(artefact_ttl_s=3600, dedupe_ttl_s=3600, bag_deadline_ms=60_000)
        self.publisher = Publisher(
            self.client, self.keys, GROUP, lifetimes=lifetimes, stream_maxlen=10_000
        )
        self.closer = BagCloser(
            self.client,
            self.keys,
            "w1",
            review_ttl_s=3600,
            closed_ttl_s=3600,
            stream_maxlen=10_000,
        )
        ensure_group(self.client, self.keys.frames, GROUP, "0")

    def bag(
        self, bag_id: str, lasts: list[dict[str, float]], content_type: str = "image/jpeg"
    ) -> None:
        """Send, decide and publish every view of a bag, then close it (to review)."""
        for view, last in enumerate(lasts):
            image = encode(frame_image(len(self.originals)), content_type)
            fields = FrameFields(
                frame_id=f"{bag_id}-v{view}",
                scanner_id="lane-1",
                captured_at=datetime.now(timezone.utc),
                content_type=content_type,
                bag_id=bag_id,
                view=view,
                views=len(lasts),
            )
            entry: Any = fields.to_fields(image)  # redis-py's stubs want an invariant dict
            self.client.xadd(self.keys.frames, entry)
            reply: Any = self.client.xreadgroup(GROUP, "w1", {self.keys.frames: ">"}, count=1)
            entry_id = reply[0][1][0][0].decode()
            event = decision(self.keys, fields, entry_id, image, last)
            status = self.publisher.decision(Outcome(event, image, None, None))
            assert status.published, status
            self.originals[(bag_id, view)] = image
            self.event_ids[(bag_id, view)] = event.event_id
        assert status is PublishStatus.BAG_COMPLETE
        closed = self.closer.close(bag_id)
        assert closed is not None and closed.decision != "clear", "the bag must go to review"


# -- the station: bags taken and judged as operators do ----------------------------------------


GUN_BAG = "lane-1:run1:gun"  # search, view 0's box confirmed, view 1's rejected
BENIGN_BAG = "lane-1:run1:benign"  # clear
MIXED_BAG = "lane-1:run1:mixed"  # PNG; search, a gun box in view 0 and a knife box in view 1
EXPIRED_BAG = "lane-1:run1:expired"  # clear; view 1's original gone before the export
UNMARKED_BAG = "lane-1:run1:unmarked"  # search without confirming any box


@dataclass
class Scenario:
    url: str
    keys: Keys
    line: Line
    tip_bag: str
    verdict_ids: list[str]


def judge(station: Station, operator: str, pool: str, decision_: str, marks: list[RoiMark]) -> str:
    """Take the pool's next bag and record the verdict on it; the bag's id."""
    held = station.next_bag(operator, pool)
    assert held is not None
    verdict = BagVerdictIn(bag_id=held.bag.bag_id, decision=decision_, rois=marks)
    record(station, operator, pool, verdict)
    return held.bag.bag_id


@pytest.fixture(scope="module")
def scenario(redis_server: Any) -> Iterator[Scenario]:
    """Five reviewed bags, a TIP bag, an alert verdict; one view's original then expires."""
    client = redis_server.client()
    keys = Keys(f"t{uuid.uuid4().hex[:12]}")
    line = Line(client, keys, {}, {})
    line.bag(GUN_BAG, [GUN, GUN])
    line.bag(BENIGN_BAG, [UNSURE, UNSURE])
    line.bag(MIXED_BAG, [GUN, KNIFE], "image/png")
    line.bag(EXPIRED_BAG, [UNSURE, GUN])
    line.bag(UNMARKED_BAG, [GUN])
    settings = ConsoleSettings(pools=[POOL, TIP_POOL], tip_rate={TIP_POOL: 1.0})
    station = Station(client, keys, settings, rng=random.Random(7))
    confirm = [RoiMark(view=0, roi=0, mark="confirm"), RoiMark(view=1, roi=0, mark="reject")]
    both = [RoiMark(view=0, roi=1, mark="confirm"), RoiMark(view=1, roi=0, mark="confirm")]
    assert judge(station, OPERATOR, POOL, "search", confirm) == GUN_BAG
    assert judge(station, OPERATOR, POOL, "clear", []) == BENIGN_BAG
    assert judge(station, OPERATOR, POOL, "search", both) == MIXED_BAG
    assert judge(station, OPERATOR, POOL, "clear", []) == EXPIRED_BAG
    assert judge(station, OPERATOR, POOL, "search", []) == UNMARKED_BAG
    # Pool "tip" hands out a TIP bag first; the operator finds the projected threat.
    tip_bag = judge(station, "ben", TIP_POOL, "search", [])
    assert client.hexists(keys.tip(tip_bag), "label")
    alert_id, alert = client.xrange(keys.alerts, count=1)[0]
    event = json.loads(alert[b"event"])
    assert record_verdict(
        client,
        keys,
        VerdictIn(
            entry_id=alert_id.decode(),
            event_id=event["event_id"],
            verdict="confirmed",
            operator=OPERATOR,
        ),
        maxlen=10_000,
    )
    # The review TTL running out, for one view.
    client.delete(keys.artefact(line.event_ids[(EXPIRED_BAG, 1)], "original"))
    verdict_ids = [raw.decode() for raw, _ in client.xrange(keys.verdicts)]
    yield Scenario(redis_server.url, keys, line, tip_bag, verdict_ids)
    client.close()


@pytest.fixture(scope="module")
def exported(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tally]:
    """The whole verdict stream exported once into a fresh folder."""
    out = tmp_path_factory.mktemp("export")
    return out, export(scenario.line.client, scenario.keys, out)


def files(out: Path) -> dict[str, bytes]:
    """Every file under the label folders, by path relative to `out`."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


# -- the labels -----------------------------------------------------------------------------


def test_a_searched_bag_files_its_confirmed_view_under_the_class_shown_on_its_box(
    scenario, exported
):
    """A search verdict files the view with a confirmed gun box under gun/, bytes as stored."""
    out, _ = exported
    assert files(out)[f"gun/{GUN_BAG}-0.jpg"] == scenario.line.originals[(GUN_BAG, 0)]


def test_a_view_of_a_searched_bag_without_a_confirmed_box_is_left_out(exported):
    """The view whose box was rejected is neither a threat nor benign: it is not written."""
    out, tally = exported
    assert not [name for name in files(out) if f"{GUN_BAG}-1" in name]
    assert tally.skipped[UNCONFIRMED_VIEW] == 1


def test_views_showing_different_classes_go_under_their_own(scenario, exported):
    """Confirmed boxes on a gun view and a knife view of one bag give one file under each,
    PNG originals kept as PNG."""
    out, _ = exported
    written = files(out)
    assert written[f"gun/{MIXED_BAG}-0.png"] == scenario.line.originals[(MIXED_BAG, 0)]
    assert written[f"knife/{MIXED_BAG}-1.png"] == scenario.line.originals[(MIXED_BAG, 1)]


def test_a_cleared_bag_files_every_view_as_benign(scenario, exported):
    """A clear verdict files each view under benign/, bytes as stored."""
    out, _ = exported
    written = files(out)
    for view in (0, 1):
        assert (
            written[f"benign/{BENIGN_BAG}-{view}.jpg"]
            == scenario.line.originals[(BENIGN_BAG, view)]
        )


def test_tip_bags_are_never_exported(scenario, exported):
    """The TIP bag's verdict is counted as excluded and nothing of it is written."""
    out, tally = exported
    assert tally.tip == 1
    assert not [name for name in files(out) if scenario.tip_bag in name]
    assert scenario.tip_bag not in (out / MANIFEST).read_text()


def test_an_expired_original_is_counted_as_missing(exported):
    """The view whose original expired is counted; its bag's other view is still written."""
    out, tally = exported
    assert tally.missing == 1
    written = files(out)
    assert f"benign/{EXPIRED_BAG}-0.jpg" in written
    assert not [name for name in written if f"{EXPIRED_BAG}-1" in name]


def test_every_verdict_is_accounted_for(exported):
    """Written per label, TIP, missing and skipped add up to the verdicts read; the alert
    monitor's verdict and the unconfirmed search are skipped with their reasons."""
    out, tally = exported
    assert tally.verdicts == 7
    assert tally.written == Counter(benign=3, gun=2, knife=1)
    assert dict(tally.skipped) == {OTHER_KIND: 1, UNCONFIRMED: 1, UNCONFIRMED_VIEW: 1}
    assert (tally.tip, tally.missing, tally.bags_gone, tally.already) == (1, 1, 0, 0)
    assert len(files(out)) == 6


# -- the manifest and re-runs -----------------------------------------------------------------


def test_the_manifest_has_one_line_per_file_with_its_verdict(scenario, exported):
    """Each line names its file, bag, view, label, verdict entry, operator, time and boxes."""
    out, _ = exported
    rows = manifest(out)
    assert sorted(row["file"] for row in rows) == sorted(files(out))
    gun = next(row for row in rows if row["file"] == f"gun/{GUN_BAG}-0.jpg")
    assert (gun["bag_id"], gun["view"], gun["label"]) == (GUN_BAG, 0, "gun")
    assert gun["verdict_id"] == scenario.verdict_ids[0]
    assert (gun["operator"], gun["pool"], gun["decision"]) == (OPERATOR, POOL, "search")
    assert datetime.fromisoformat(gun["decided_at"]).tzinfo is not None
    assert gun["rois"] == [
        {"roi": 0, "x": 10, "y": 12, "w": 30, "h": 20, "peak": 0.97, "mean": 0.6}
    ]
    assert all(row["rois"] == [] for row in rows if row["label"] == "benign")


def test_a_second_run_into_the_same_folder_adds_nothing(scenario, exported, tmp_path):
    """Re-running writes no file and no manifest line; every view is already exported."""
    out = tmp_path / "again"
    shutil.copytree(exported[0], out)
    before, lines = files(out), manifest(out)
    tally = export(scenario.line.client, scenario.keys, out)
    assert files(out) == before
    assert manifest(out) == lines
    assert sum(tally.written.values()) == 0
    assert tally.already == 6


def test_a_run_cut_off_before_its_manifest_line_adds_only_the_line(scenario, exported, tmp_path):
    """A file on disk without its manifest line gets the line and keeps its bytes."""
    out = tmp_path / "cut"
    shutil.copytree(exported[0], out)
    rows = manifest(out)
    (out / MANIFEST).write_text("".join(json.dumps(row) + "\n" for row in rows[:-1]))
    tally = export(scenario.line.client, scenario.keys, out)
    assert sum(tally.written.values()) == 1
    assert sorted(r["file"] for r in manifest(out)) == sorted(r["file"] for r in rows)
    assert files(out) == files(exported[0])


def test_since_and_limit_split_a_run_without_changing_the_result(scenario, exported, tmp_path):
    """Three verdicts, then the rest from the last id read, give the same folder as one run."""
    out = tmp_path / "split"
    first = export(scenario.line.client, scenario.keys, out, limit=3)
    assert first.verdicts == 3 and first.last_id == scenario.verdict_ids[2]
    rest = export(scenario.line.client, scenario.keys, out, since=first.last_id)
    assert rest.verdicts == 5  # `since` is inclusive: the third is read again
    assert files(out) == files(exported[0])
    assert len(manifest(out)) == len(manifest(exported[0]))


# -- what reads it ----------------------------------------------------------------------------


def test_training_reads_the_folder_back_with_its_labels(exported):
    """`imagefolder:DIR` loading finds every exported file under the right label."""
    out, _ = exported
    frames = load_imagefolder(out, LABELS, (128, 160))
    assert frames.images.shape == (6, 128, 160, 3)
    assert Counter(LABELS[i] for i in frames.labels.tolist()) == Counter(benign=3, gun=2, knife=1)


def test_the_command_prints_one_summary_line(scenario, tmp_path, capsys):
    """The CLI takes the Redis URL and namespace as flags and ends with one summary line."""
    out = tmp_path / "cli"
    code = main(
        ["--out", str(out), "--redis-url", scenario.url, "--namespace", scenario.keys.namespace]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    summary = lines[0]
    assert "written 6 (benign 3, gun 2, knife 1)" in summary
    assert "TIP excluded 1" in summary and "views with expired originals 1" in summary
    assert len(files(out)) == 6


def test_the_command_refuses_to_run_without_a_redis_url(tmp_path, capsys):
    """Without a URL there is no line to read: the command says which setting to give."""
    assert main(["--out", str(tmp_path / "none")]) == 2
    assert "SCANGUARD_REDIS_URL" in capsys.readouterr().err
