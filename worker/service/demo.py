"""`python -m worker demo`: the whole line on one machine, with the embedded Redis.

A producer thread feeds dual-view bags from the synthetic scanner's cluttered target
domain at a steady rate, a worker decides every view in this process and closes each
bag, a follower prints alerts as they arrive and saves their artefacts, and two summary
tables (views, then bags against the ground truth) close the run.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from producer.producer import Producer
from producer.sources import SyntheticSource
from shared.client import EventClient, format_event
from shared.keys import Keys
from shared.redis_conn import connect, describe_url, embedded_redis
from shared.schemas import BagEvent, DecisionEvent
from shared.settings import Settings
from shared.vocab import BagReason, Verdict
from worker.service.bootstrap import build_worker


def _follow(
    events: EventClient, out_dir: Path, total: int, seen: list[DecisionEvent], stop: threading.Event
) -> None:
    """Print every alert as it lands and a progress line every tenth decision."""
    for received in events.follow("results", last_id="0", block_ms=500, stop=stop):
        event = received.event
        seen.append(event)
        if event.decision == Verdict.THREAT:
            saved = events.save_artefacts(event, out_dir)
            print(f"ALERT {format_event(received)}  [{len(saved)} artefacts saved]", flush=True)
        if len(seen) % 10 == 0 or len(seen) == total:
            print(f"  … {len(seen)}/{total} views decided", flush=True)
        if len(seen) >= total:
            return


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def _bag_summary(bags: list[BagEvent], truth: dict[str, int]) -> str:
    """Bag decisions by outcome and reason, scored against the bags' ground truth."""
    decisions = Counter(b.decision for b in bags)
    reasons = Counter(b.reason for b in bags)
    scored = [(truth[b.bag_id], b) for b in bags if b.bag_id in truth]
    threat_bags = [b for label, b in scored if label != 0]
    benign_bags = [b for label, b in scored if label == 0]
    rows = [
        ("bags closed", f"{len(bags)}"),
        *((f"  {v}", f"{decisions.get(v, 0)}") for v in Verdict),
        *((f"  reason {r}", f"{reasons.get(r, 0)}") for r in BagReason),
        (
            "threat bags flagged threat (ground truth)",
            f"{sum(b.decision == Verdict.THREAT for b in threat_bags)}/{len(threat_bags)}",
        ),
        (
            "threat bags sent to review",
            f"{sum(b.decision != Verdict.CLEAR for b in threat_bags)}/{len(threat_bags)}",
        ),
        (
            "benign bags flagged threat (false alarms)",
            f"{sum(b.decision == Verdict.THREAT for b in benign_bags)}/{len(benign_bags)}",
        ),
        (
            "benign bags sent to review",
            f"{sum(b.decision != Verdict.CLEAR for b in benign_bags)}/{len(benign_bags)}",
        ),
    ]
    return _table(rows)


def _summary(events: list[DecisionEvent], elapsed_s: float, labels: tuple[str, ...]) -> str:
    """View decisions, throughput and latency, scored against each view's ground truth."""
    verdicts = Counter(e.decision for e in events)
    by_class = Counter(d.label for e in events for d in e.detections)
    latency = np.array([e.latency_ms for e in events]) if events else np.zeros(1)
    truth = [(e.meta.get("label"), e) for e in events if "label" in e.meta]
    flagged = sum(1 for label, e in truth if label != 0 and e.decision == "threat")
    threats = sum(1 for label, _ in truth if label != 0)
    false_alarms = sum(1 for label, e in truth if label == 0 and e.decision == "threat")
    benign = sum(1 for label, _ in truth if label == 0)
    rows = [
        ("views decided", f"{len(events)}"),
        *((f"  {v}", f"{verdicts.get(v, 0)}") for v in Verdict),
        *((f"  threat: {name}", f"{by_class.get(name, 0)}") for name in labels[1:]),
        ("throughput", f"{len(events) / max(elapsed_s, 1e-9):.1f} views/s"),
        (
            "latency p50 / p99",
            f"{np.percentile(latency, 50):.0f} / {np.percentile(latency, 99):.0f} ms",
        ),
        ("mean iterations", f"{np.mean([e.iterations for e in events]) if events else 0:.2f}"),
        ("threat views flagged (ground truth)", f"{flagged}/{threats}"),
        ("benign views flagged (ground truth)", f"{false_alarms}/{benign}"),
    ]
    return _table(rows)


def _closed_bags(client: Any, keys: Keys) -> list[BagEvent]:
    return [BagEvent.model_validate_json(f[b"event"]) for _id, f in client.xrange(keys.bags)]


def run_demo(settings: Settings, *, bags: int, views: int, fps: float, out_dir: str) -> int:
    """Run producer, worker and alert follower until every view of `bags` bags is decided."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = bags * views
    with contextlib.ExitStack() as stack:
        url = (
            settings.redis_url.get_secret_value()
            if settings.redis_url
            else stack.enter_context(embedded_redis())
        )
        namespace = f"demo{int(time.time())}"
        run = settings.model_copy(update={"namespace": namespace})
        keys = Keys(namespace)
        print(
            f"scanguard demo: {bags} synthetic target-domain bags × {views} views at {fps:g} "
            f"views/s, Redis {describe_url(url)}, namespace {namespace}; "
            f"alert artefacts go to {out}/",
            flush=True,
        )
        worker = build_worker(run, url)
        print(
            f"model {worker.model.model_id} on {worker.engine.device}, "
            f"detect_th={worker.policy.detect_th} reconsider_th={worker.policy.reconsider_th} "
            f"max_iter={worker.policy.max_iter} fill={worker.policy.fill} "
            f"mask={worker.policy.mask_shape}:{worker.policy.mask_param:g} "
            f"on_exhausted={worker.policy.on_exhausted}"
            + (
                " (the card's operating point)"
                if worker.model.operating_point is not None and run.erasing.preset == "card"
                else ""
            ),
            flush=True,
        )
        client = connect(url)
        producer = Producer(
            client,
            keys,
            scanner_id="demo-lane",
            fps=fps,
            count=frames,
            max_backlog=settings.producer.max_backlog,
        )
        source = SyntheticSource("target", seed=int(time.time()) % 10_000, views=views)
        feeder = threading.Thread(target=producer.run, args=(source,), name="producer", daemon=True)
        seen: list[DecisionEvent] = []
        stop = threading.Event()
        follower = threading.Thread(
            target=_follow,
            args=(EventClient(connect(url), keys), out, frames, seen, stop),
            name="alerts",
            daemon=True,
        )
        follower.start()
        started = time.perf_counter()
        feeder.start()
        worker.run(burst=True, until=lambda: not feeder.is_alive())
        elapsed = time.perf_counter() - started
        follower.join(timeout=10)
        stop.set()
        closed = _closed_bags(client, keys)
    truth = {e.bag_id: int(e.meta["label"]) for e in seen if e.bag_id and "label" in e.meta}
    print("\nviews", flush=True)
    print(_summary(seen, elapsed, worker.model.labels), flush=True)
    print("\nbags", flush=True)
    print(_bag_summary(closed, truth), flush=True)
    if producer.summary.dropped:
        print(f"  producer dropped {producer.summary.dropped} frames (backpressure)", flush=True)
    return 0 if len(seen) == frames and len(closed) == bags else 1


if __name__ == "__main__":
    sys.exit("run it as: python -m worker demo")
