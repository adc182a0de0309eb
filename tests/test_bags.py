"""Bags and views on real redis-server processes: one bag event per bag, whatever happens.

Views of a bag may be decided by different workers, a worker may die holding one, a view
may never come or come after the deadline; every bag still closes exactly once, with the
bag rule applied to the views that were decided.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared.keys import Keys
from shared.schemas import BagEvent, BagView, Detection, FrameFields, ModelRef
from shared.settings import load_settings
from shared.vocab import Verdict
from tests.engine_fixtures import run_engine
from tests.pipeline_fixtures import (
    ERASING,
    encode,
    events,
    frame_image,
    heartbeat,
    push_frames,
    wait_for,
)
from worker.engine.erasing import EngineInput
from worker.engine.model import load_model
from worker.engine.preprocess import to_model_input
from worker.service.bags import bag_decision, union_classes
from worker.service.bootstrap import policy_from_settings
from worker.service.rois import rois_from_mask, work_scale

FAULT_WORKER = [sys.executable, str(Path(__file__).resolve().parent / "fault_worker.py")]


def push_bag_views(
    client,
    keys: Keys,
    bags: range,
    views: int = 2,
    skip: set[tuple[int, int]] = frozenset(),
    images: dict[tuple[int, int], int] | None = None,
) -> list[str]:
    """XADD every view of each bag as PNG (but the (bag, view) pairs in `skip`); return the
    frame ids. View k of bag b shows `frame_image(images[(b, k)])`, default 3·b + k."""
    sent = []
    for bag in bags:
        for view in range(views):
            if (bag, view) in skip:
                continue
            fields = FrameFields(
                frame_id=f"bag-{bag}-v{view}",
                scanner_id="lane-1",
                captured_at=datetime.now(timezone.utc),
                content_type="image/png",
                bag_id=f"bag-{bag}",
                view=view,
                views=views,
            )
            index = (images or {}).get((bag, view), 3 * bag + view)
            client.xadd(keys.frames, fields.to_fields(encode(frame_image(index), "image/png")))
            sent.append(fields.frame_id)
    return sent


@pytest.fixture(scope="module")
def images_by_decision(tiny_card) -> dict[str, list[int]]:
    """Frame images (by index) the tiny model decides clear, threat and undetermined, as a
    worker with the test thresholds does (PNG is lossless, so the pixels are the same)."""
    model = load_model(tiny_card)
    policy = policy_from_settings(load_settings(erasing=ERASING).erasing, model)
    inputs = [EngineInput(i, to_model_input(frame_image(i), model.input_hw)) for i in range(90)]
    # Batches of other sizes round differently; only images decided alike in all are kept.
    runs = [run_engine(model, policy, inputs, max_batch=size) for size in (1, 3, 4, 32)]
    found: dict[str, list[int]] = {v.value: [] for v in Verdict}
    for key, result in runs[0].items():
        if all(run[key].verdict == result.verdict for run in runs[1:]):
            found[result.verdict.value].append(int(key))
    assert all(len(found[v]) >= 4 for v in found), f"too few of a kind: {found}"
    return found


def combination_plan(found: dict[str, list[int]]) -> dict[tuple[int, int], int]:
    """Bags 0..11 in four pairs each of threat+clear, undetermined+clear and clear+clear."""
    pairs = [("threat", "clear"), ("undetermined", "clear"), ("clear", "clear")] * 4
    used: Counter[str] = Counter()
    plan = {}
    for bag, pair in enumerate(pairs):
        for view, decision in enumerate(pair):
            plan[(bag, view)] = found[decision][used[decision] % len(found[decision])]
            used[decision] += 1
    return plan


def bag_events(client, keys: Keys) -> list[BagEvent]:
    return [BagEvent.model_validate_json(f[b"event"]) for _id, f in client.xrange(keys.bags)]


def check_bags(client, keys: Keys, expected_bags: set[str]) -> dict[str, BagEvent]:
    """Exactly one bag event per bag, its rule right against the views' own decisions, and
    review entries exactly for the bags that are not clear."""
    closed = bag_events(client, keys)
    per_bag = Counter(b.bag_id for b in closed)
    assert set(per_bag) == expected_bags
    assert max(per_bag.values()) == 1, "a bag closed twice"
    decided = {e["frame_id"]: e for e in events(client, keys.results)}
    for bag in closed:
        for view in bag.views:
            assert decided[view.frame_id]["decision"] == view.decision
        assert bag.decision == bag_decision((v.decision for v in bag.views), bag.views_expected)
    review = {
        BagEvent.model_validate_json(f[b"event"]).bag_id for _id, f in client.xrange(keys.review)
    }
    assert review == {b.bag_id for b in closed if b.decision != Verdict.CLEAR}
    return {b.bag_id: b for b in closed}


def test_two_view_bags_over_two_workers_close_once_with_the_bag_rule(
    redis_server, keys, spawn_worker, images_by_decision
):
    """Two-view bags decided by two worker processes: one bag event each, the rule right in every combination, review exactly for threat and undetermined bags."""
    client = redis_server.client()
    workers = [spawn_worker(redis_server.url, keys, name) for name in ("w1", "w2")]
    for name in ("w1", "w2"):
        wait_for(heartbeat(client, keys, name), 60, f"{name} to start")
    sent = push_bag_views(client, keys, range(12), images=combination_plan(images_by_decision))
    wait_for(lambda: client.xlen(keys.bags) >= 12, 120, "every bag to close")
    time.sleep(0.5)  # a second close, if there were one, would land now
    closed = check_bags(client, keys, {f"bag-{b}" for b in range(12)})
    assert Counter(e["frame_id"] for e in events(client, keys.results)) == Counter(sent)

    combos = {tuple(sorted(v.decision.value for v in b.views)) for b in closed.values()}
    assert combos == {("clear", "threat"), ("clear", "undetermined"), ("clear", "clear")}
    workers_per_bag = {
        b.bag_id: {e["worker_id"] for e in events(client, keys.results) if e["bag_id"] == b.bag_id}
        for b in closed.values()
    }
    assert any(len(w) == 2 for w in workers_per_bag.values()), "no bag was split over workers"
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_a_bag_closes_once_when_a_worker_dies_holding_one_view(
    redis_server, keys, spawn_worker, tmp_path
):
    """A worker SIGKILLed while holding views leaves them pending; the rescuer decides them and every bag still closes exactly once."""
    client = redis_server.client()
    fast = {"SCANGUARD_WORKER__CLAIM_IDLE_MS": "1000"}
    victim = spawn_worker(
        redis_server.url, keys, "victim", "publish", "kill", command=FAULT_WORKER, **fast
    )
    rescuer = spawn_worker(redis_server.url, keys, "rescuer", **fast)
    for name in ("victim", "rescuer"):
        wait_for(heartbeat(client, keys, name), 60, f"{name} to start")
    sent = push_bag_views(client, keys, range(12))
    assert victim.wait(timeout=60) == -signal.SIGKILL
    wait_for(lambda: client.xlen(keys.bags) >= 12, 120, "every bag to close")
    time.sleep(0.5)
    closed = check_bags(client, keys, {f"bag-{b}" for b in range(12)})
    assert all(b.reason == "all_views" for b in closed.values())
    assert Counter(e["frame_id"] for e in events(client, keys.results)) == Counter(sent)
    assert (tmp_path / "rescuer.log").read_text().count('"frame_reclaimed"') > 0
    rescuer.send_signal(signal.SIGTERM)
    assert rescuer.wait(timeout=60) == 0


def test_a_missing_view_closes_its_bag_at_the_deadline_and_a_late_one_changes_nothing(
    redis_server, keys, make_worker, images_by_decision
):
    """A bag whose clear first view is alone at the deadline closes undetermined (never a late clear) with reason deadline; the view arriving later is decided but the bag stays closed once."""
    clear = images_by_decision["clear"][0]
    client = redis_server.client()

    def run_worker() -> None:
        overrides = {
            "namespace": keys.namespace,
            "erasing": ERASING,
            "worker": {"bag_deadline_ms": 800},
        }
        assert make_worker(overrides, redis_server.client()).run(burst=True) == 0

    push_bag_views(client, keys, range(1), skip={(0, 1)}, images={(0, 0): clear})
    run_worker()
    assert client.xlen(keys.bags) == 0, "closed before its deadline"
    time.sleep(1.0)
    run_worker()  # maintenance finds the bag overdue
    (bag,) = bag_events(client, keys)
    assert (bag.decision, bag.reason, bag.missing_views) == ("undetermined", "deadline", [1])
    assert [v.view for v in bag.views] == [0]

    push_bag_views(client, keys, range(1), skip={(0, 0)})  # the late view
    run_worker()
    assert {e["frame_id"] for e in events(client, keys.results)} == {"bag-0-v0", "bag-0-v1"}
    check_bags(client, keys, {"bag-0"})
    assert client.xlen(keys.review) == 1
    assert client.xlen(keys.dead) == 0


def test_frames_without_bag_fields_are_one_view_bags(redis_server, keys, make_worker):
    """Frames from an old producer (no bag fields) each close a one-view bag named after the frame."""
    client = redis_server.client()
    worker = make_worker({"namespace": keys.namespace}, redis_server.client())
    sent = push_frames(client, keys, 8)
    assert worker.run(burst=True) == 0
    closed = check_bags(client, keys, set(sent))
    for frame_id, bag in closed.items():
        assert bag.views_expected == 1 and [v.frame_id for v in bag.views] == [frame_id]
        assert bag.reason == "all_views"


def test_views_that_contradict_their_bag_are_dead_lettered(redis_server, keys, make_worker):
    """A view decided twice from two frames, a view count that disagrees, and too many views are dead letters with a reason."""
    client = redis_server.client()

    def run_worker() -> None:
        overrides = {"namespace": keys.namespace, "worker": {"max_views": 4}}
        assert make_worker(overrides, redis_server.client()).run(burst=True) == 0

    now = datetime.now(timezone.utc)
    image = encode(frame_image(1), "image/png")

    def view(frame_id: str, bag_id: str, view: int, views: int) -> None:
        fields = FrameFields(
            frame_id=frame_id,
            scanner_id="lane-1",
            captured_at=now,
            content_type="image/png",
            bag_id=bag_id,
            view=view,
            views=views,
        )
        client.xadd(keys.frames, fields.to_fields(image))

    view("a-v0", "bag-a", 0, 3)
    run_worker()
    view("a-v0-again", "bag-a", 0, 3)  # the same view from another frame
    view("a-v1", "bag-a", 1, 2)  # another view count
    view("b-v0", "bag-b", 0, 9)  # over max_views
    run_worker()
    letters = {
        json.loads(f[b"event"])["frame_id"]: json.loads(f[b"event"])
        for _id, f in client.xrange(keys.dead)
    }
    assert letters["a-v0-again"]["reason"] == (
        "view 0 of bag bag-a was already decided (frame a-v0)"
    )
    assert letters["a-v1"]["reason"] == "bag bag-a has 3 views; this frame says 2"
    assert letters["b-v0"]["reason"] == "bag bag-b declares 9 views, over the limit of 4"
    assert {letter["kind"] for letter in letters.values()} == {"bad_bag"}
    assert {e["frame_id"] for e in events(client, keys.results)} == {"a-v0"}


def test_originals_stay_for_review_bags_and_go_for_clear_ones(
    redis_server, keys, make_worker, images_by_decision
):
    """Every view's original is kept as received until its bag closes; review bags keep it, clear bags drop it."""
    client = redis_server.client()
    worker = make_worker({"namespace": keys.namespace, "erasing": ERASING}, redis_server.client())
    plan = combination_plan(images_by_decision)
    push_bag_views(client, keys, range(12), images=plan)
    assert worker.run(burst=True) == 0
    sent_bytes = {
        f"bag-{bag}-v{v}": encode(frame_image(plan[(bag, v)]), "image/png")
        for bag in range(12)
        for v in range(2)
    }
    closed = check_bags(client, keys, {f"bag-{b}" for b in range(12)})
    kinds = set()
    for bag in closed.values():
        for view in bag.views:
            original = next(a for a in view.artefacts if a.kind == "original")
            stored = client.get(original.key)
            if bag.decision == Verdict.CLEAR:
                assert stored is None
            else:
                assert stored == sent_bytes[view.frame_id], "the original was re-encoded"
                assert client.ttl(original.key) > 3600
            if view.decision != Verdict.CLEAR:
                assert {a.kind for a in view.artefacts} == {"original", "masked", "heatmap"}
            kinds.add(bag.decision)
    assert Verdict.CLEAR in kinds and kinds - {Verdict.CLEAR}


def _view(n: int, decision: str, detections: list[Detection] = ()) -> BagView:
    return BagView(
        view=n,
        frame_id=f"f{n}",
        entry_id=f"{n}-0",
        event_id=f"e{n}",
        captured_at=datetime.now(timezone.utc),
        decision=decision,
        detections=list(detections),
        trace=[],
        iterations=1,
        rois=[],
        artefacts=[],
        model=ModelRef(id="m", checksum="c", labels=["benign", "gun", "knife"]),
    )


@pytest.mark.parametrize(
    ("decisions", "expected", "bag"),
    [
        (["threat", "clear"], 2, "threat"),
        (["undetermined", "clear"], 2, "undetermined"),
        (["clear", "clear"], 2, "clear"),
        (["clear"], 2, "undetermined"),  # a view missing at the deadline
        (["threat"], 2, "threat"),
        (["threat", "undetermined"], 2, "threat"),
        ([], 2, "undetermined"),
    ],
)
def test_the_bag_rule(decisions, expected, bag):
    """Threat if any view is a threat; else undetermined if any is undetermined or missing; else clear."""
    views = [_view(n, d) for n, d in enumerate(decisions)]
    assert bag_decision((v.decision for v in views), expected) == bag


def test_bag_classes_keep_each_class_at_its_highest_probability():
    """The bag's classes are the union over views, each with its highest probability."""
    gun = lambda p: Detection(class_id=1, label="gun", probability=p)  # noqa: E731
    knife = Detection(class_id=2, label="knife", probability=0.4)
    views = [_view(0, "threat", [gun(0.3)]), _view(1, "threat", [gun(0.8), knife])]
    assert union_classes(views) == [gun(0.8), knife]


@settings(max_examples=60, deadline=None)
@given(
    grid=arrays(np.float32, (6, 8), elements=st.floats(0.0, 1.0, width=32)),
    frame_hw=st.tuples(st.integers(20, 300), st.integers(20, 300)),
    threshold=st.floats(0.1, 0.9),
    max_rois=st.integers(1, 4),
)
# A lone peak resized onto a small frame falls between pixels (0.86 of the grid's peak
# here), below a high threshold: the region must still hold it.
@example(np.zeros((6, 8), np.float32), (20, 20), 0.875, 1)
def test_roi_boxes_lie_inside_the_frame_and_cover_the_peak(grid, frame_hw, threshold, max_rois):
    """Every ROI box lies inside the frame, at most max_rois come back, and one box holds the resized mask's peak (to within one working cell)."""
    grid = grid.copy()
    grid[2, 3] = 1.5  # a clear peak, as a rollout mask has
    rois = rois_from_mask(grid, frame_hw, threshold, max_rois)
    rows, cols = frame_hw
    assert 1 <= len(rois) <= max_rois
    for roi in rois:
        assert roi.x >= 0 and roi.y >= 0 and roi.w >= 1 and roi.h >= 1
        assert roi.x + roi.w <= cols and roi.y + roi.h <= rows
        assert threshold - 1e-6 <= roi.mean <= roi.peak <= 1.0 + 1e-6
    resized = cv2.resize(grid / grid.max(), (cols, rows), interpolation=cv2.INTER_LINEAR)
    py, px = np.unravel_index(int(np.argmax(resized)), resized.shape)
    cell = work_scale(frame_hw)
    assert any(
        r.x - cell <= px < r.x + r.w + cell and r.y - cell <= py < r.y + r.h + cell for r in rois
    )
