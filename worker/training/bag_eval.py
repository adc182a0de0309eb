"""Bag-level evaluation: dual-view synthetic bags decided view by view, as the worker does.

    python -m worker.training.bag_eval --card models/scanguard-demo/card.json --out eval

Every view goes through the erasing engine at the policy the worker runs with (by
default the card's operating point) and at vanilla argmax. A bag is a
threat if any view is, else undetermined if any view is, else clear (the bag rule of
`worker.service.bags`). Bag decisions are compared with view 0 alone, and the ROIs the
worker would publish are scored against each threat view's ground-truth box. Writes
bags.json and the "Bags and views" section of REPORT.md into `--out`;
`python -m worker.training.report` keeps that section when it rewrites REPORT.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from producer.synthetic import DEFAULT_SIZE, SyntheticBagScanner
from shared.schemas import Roi
from shared.settings import load_settings
from shared.vocab import Verdict
from worker.engine.decision import DecisionPolicy
from worker.engine.erasing import EngineInput, ErasingEngine, FrameResult
from worker.engine.model import LoadedModel, load_model
from worker.engine.preprocess import to_model_input
from worker.service.bags import bag_decision
from worker.service.bootstrap import policy_from_settings
from worker.service.rois import rois_from_mask
from worker.training.bag_report import BAGS_FILE, render_section, splice_section
from worker.training.metrics import policy_dict, wilson_interval

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), end-exclusive


@dataclass(frozen=True)
class ViewTruth:
    """What the evaluation keeps of one synthetic view besides its model input."""

    bag: int
    view: int
    label: int  # the bag's class: 0 benign
    box: Box | None  # threat footprint in frame pixels; None if benign
    occluded: bool
    frame_hw: tuple[int, int]


def share(k: int, n: int) -> dict[str, Any]:
    """A count, its share and its 95 % Wilson interval (None where n is 0, to stay valid JSON)."""
    if n == 0:
        return {"k": k, "n": n, "rate": None, "lo": None, "hi": None}
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n, "lo": lo, "hi": hi}


def box_centre(box: Box) -> tuple[float, float]:
    """The centre of an end-exclusive pixel box, in continuous pixel coordinates."""
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2


def roi_contains(roi: Roi, point: tuple[float, float]) -> bool:
    """Whether the ROI's box (pixels x .. x+w-1, i.e. [x, x+w] continuous) holds the point."""
    px, py = point
    return roi.x <= px <= roi.x + roi.w and roi.y <= py <= roi.y + roi.h


def box_iou(roi: Roi, box: Box) -> float:
    """Intersection over union of a ROI and an end-exclusive box, both as pixel sets."""
    x0, y0, x1, y1 = box
    ix = max(0, min(roi.x + roi.w, x1) - max(roi.x, x0))
    iy = max(0, min(roi.y + roi.h, y1) - max(roi.y, y0))
    inter = ix * iy
    union = roi.w * roi.h + (x1 - x0) * (y1 - y0) - inter
    return inter / union if union > 0 else 0.0


def roi_scores(rois: Sequence[Roi], box: Box) -> tuple[bool, bool, float]:
    """(top ROI holds the box centre, any ROI does, best IoU of a ROI with the box)."""
    centre = box_centre(box)
    top = bool(rois) and roi_contains(rois[0], centre)
    anywhere = any(roi_contains(r, centre) for r in rois)
    best = max((box_iou(r, box) for r in rois), default=0.0)
    return top, anywhere, best


def generate_views(
    domain: str, seed: int, bags: int, input_hw: tuple[int, int]
) -> tuple[list[ViewTruth], list[np.ndarray]]:
    """Bags 0 .. bags-1 (class index % 3), every view resized as the worker's intake does."""
    scanner = SyntheticBagScanner(domain, seed, size=DEFAULT_SIZE, views=2)
    truths: list[ViewTruth] = []
    pixels: list[np.ndarray] = []
    for bag in scanner.bags(0, bags):
        for view in bag.views:
            hw = (int(view.image.shape[0]), int(view.image.shape[1]))
            truths.append(ViewTruth(bag.index, view.view, bag.label, view.box, view.occluded, hw))
            pixels.append(to_model_input(view.image, input_hw))
    return truths, pixels


def decide(
    model: LoadedModel, policy: DecisionPolicy, pixels: Sequence[np.ndarray], max_batch: int
) -> list[FrameResult]:
    """Every view through a fresh engine; results in input order."""
    engine = ErasingEngine(model, policy, max_batch=max_batch)
    try:
        results = engine.run([EngineInput(i, p) for i, p in enumerate(pixels)])
    finally:
        engine.close()
    return sorted(results, key=lambda r: int(r.key))  # type: ignore[call-overload]


def decision_rates(truths: Sequence[ViewTruth], results: Sequence[FrameResult]) -> dict[str, Any]:
    """Recall, false alarms and review shares for whole bags and for each view alone."""
    by_bag: dict[int, list[tuple[ViewTruth, FrameResult]]] = {}
    for truth, result in zip(truths, results, strict=True):
        by_bag.setdefault(truth.bag, []).append((truth, result))
    out: dict[str, Any] = {}
    for level in ("bag", "view0", "view1"):
        rows = []  # (label, verdict, classes)
        for views in by_bag.values():
            if level == "bag":
                verdict = bag_decision((r.verdict for _, r in views), len(views))
                classes = {c for _, r in views for c in r.classes}
            else:
                alone = next(r for t, r in views if t.view == int(level[-1]))
                verdict, classes = alone.verdict, set(alone.classes)
            rows.append((views[0][0].label, verdict, classes))
        threats = [(v, c, y) for y, v, c in rows if y != 0]
        benign = [v for y, v, _ in rows if y == 0]
        out[level] = {
            "threat_recall": share(sum(v is Verdict.THREAT for v, _, _ in threats), len(threats)),
            "threat_right_class": share(
                sum(v is Verdict.THREAT and y in c for v, c, y in threats), len(threats)
            ),
            "threat_review": share(
                sum(v is not Verdict.CLEAR for v, _, _ in threats), len(threats)
            ),
            "false_alarm": share(sum(v is Verdict.THREAT for v in benign), len(benign)),
            "benign_review": share(sum(v is not Verdict.CLEAR for v in benign), len(benign)),
        }
    return out


def roi_quality(
    truths: Sequence[ViewTruth],
    results: Sequence[FrameResult],
    roi_threshold: float,
    max_rois: int,
) -> dict[str, Any]:
    """Pointing game and best IoU of the worker's ROIs on threat views: all, occluded, plain."""
    scored = []  # (occluded, top hit, any hit, best IoU, had ROIs)
    for truth, result in zip(truths, results, strict=True):
        if truth.box is None:
            continue
        rois = rois_from_mask(result.mask_grid, truth.frame_hw, roi_threshold, max_rois)
        top, anywhere, iou = roi_scores(rois, truth.box)
        scored.append((truth.occluded, top, anywhere, iou, bool(rois)))
    out: dict[str, Any] = {}
    for split, keep in (("all", None), ("occluded", True), ("plain", False)):
        part = [s for s in scored if keep is None or s[0] is keep]
        out[split] = {
            "views": len(part),
            "pointing_top": share(sum(s[1] for s in part), len(part)),
            "pointing_any": share(sum(s[2] for s in part), len(part)),
            "mean_best_iou": float(np.mean([s[3] for s in part])) if part else None,
            "without_roi": sum(not s[4] for s in part),
        }
    return out


def evaluate_domain(
    model: LoadedModel, domain: str, policies: dict[str, DecisionPolicy], args: argparse.Namespace
) -> dict[str, Any]:
    """Generate one domain's bags and score them under every policy."""
    started = time.perf_counter()
    truths, pixels = generate_views(domain, args.seed, args.bags, model.input_hw)
    seconds = {"generate": round(time.perf_counter() - started, 2)}
    labels = [t.label for t in truths if t.view == 0]
    result: dict[str, Any] = {
        "bags": len(labels),
        "per_class": {name: labels.count(i) for i, name in enumerate(model.labels)},
        "views": len(truths),
        "threat_views": sum(t.box is not None for t in truths),
        "occluded_views": sum(t.occluded for t in truths),
        "policies": {},
    }
    for name, policy in policies.items():
        started = time.perf_counter()
        results = decide(model, policy, pixels, args.max_batch)
        seconds[name] = round(time.perf_counter() - started, 2)
        result["policies"][name] = {
            "mean_forwards": float(np.mean([r.forwards for r in results])),
            **decision_rates(truths, results),
            "rois": roi_quality(truths, results, args.roi_threshold, args.max_rois),
        }
    result["seconds"] = seconds
    return result


# -- the command ----------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.training.bag_eval", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--card", type=Path, default=Path("models/scanguard-demo/card.json"))
    parser.add_argument("--out", type=Path, default=Path("eval"))
    parser.add_argument(
        "--seed", type=int, default=515151, help="bag scanner seed; held out from all training"
    )
    parser.add_argument(
        "--bags", type=int, default=300, help="bags per domain (class = index %% 3)"
    )
    parser.add_argument(
        "--domains", nargs="+", default=["source", "target"], choices=["source", "target"]
    )
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bags < 1:
        raise SystemExit("--bags must be at least 1")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    started = time.monotonic()
    settings = load_settings()
    model = load_model(args.card)
    args.roi_threshold, args.max_rois = settings.worker.roi_threshold, settings.worker.max_rois
    policies = {
        "worker": policy_from_settings(settings.erasing, model),
        "vanilla": DecisionPolicy.vanilla(),
    }
    domains = {}
    for domain in args.domains:
        domains[domain] = evaluate_domain(model, domain, policies, args)
        print(f"{domain}: {json.dumps(domains[domain]['seconds'])}", flush=True)
    report = {
        "command": "python -m worker.training.bag_eval "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "model": {"card": str(args.card), "name": model.model_id, "sha256": model.checksum},
        "seed": args.seed,
        "policies": {name: policy_dict(p) for name, p in policies.items()},
        "rois": {"threshold": args.roi_threshold, "max_rois": args.max_rois},
        "domains": domains,
        "environment": {
            "torch": torch.__version__,
            "threads": args.threads,
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / BAGS_FILE).write_text(json.dumps(report, indent=1) + "\n")
    path = args.out / "REPORT.md"
    text = path.read_text() if path.exists() else ""
    path.write_text(splice_section(text, render_section(report)))
    print(f"wrote {args.out / BAGS_FILE} and {path} after {report['wall_time_s']}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
