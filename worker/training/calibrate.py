"""Choose the model's operating point on validation data and write it into its card.

    python -m worker.training.calibrate --card models/scanguard-demo/card.json
    python -m worker.training.calibrate --card my-model/card.json --data imagefolder:scans/val \\
        --target-fa 0.02

The erasing policy (detect_th, reconsider_th, max_iter, on_exhausted, fill, mask shape)
that gives the best mean threat recall with a false-alarm rate within `--target-fa` is
chosen on one half of the validation frames (alternate frames in label order) and
measured on the other half, so the rates the card promises were not the ones it was
chosen for; they are written with 95 % Wilson intervals. A frame counts as flagged when
the policy does not clear it (threat or undetermined: either way a person looks at it). Only the thresholds are replayed from traces (one
engine run per fill and mask shape that never stops early), so the sweep is cheap.

The worker runs the card's operating point unless settings override it
(`SCANGUARD_ERASING__PRESET=seed` for the seed's thresholds).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from shared.vocab import ExhaustedOutcome, MaskShape, check_mask_shape
from worker.engine.decision import DecisionPolicy, Verdict
from worker.engine.model import LoadedModel, OperatingPoint, load_model, read_card
from worker.training.data import FrameSet, concat_sets, load_or_exit, parse_data_spec
from worker.training.evaluate import engine_run, traces_of
from worker.training.metrics import (
    Rate,
    SweepGrid,
    policy_dict,
    replay,
    tracing_policy,
)

# Mask shapes tried by default: the seed's, and one of each kind that keeps more of the peak.
DEFAULT_SHAPES = ("rollout:1", "power:2", "top_k:0.25", "peak:1")


PROG = "worker.training.calibrate"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.training.calibrate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--card", type=Path, default=Path("models/scanguard-demo/card.json"))
    parser.add_argument(
        "--data",
        nargs="+",
        default=["randomised:150", "target:150"],
        metavar="SPEC",
        help="validation frames: DOMAIN:PER_CLASS or imagefolder:DIR (see worker.training.data)",
    )
    parser.add_argument("--seed", type=int, default=5, help="scanner seed of synthetic frames")
    parser.add_argument(
        "--target-fa", type=float, default=0.05, help="false-alarm rate the policy may reach"
    )
    parser.add_argument("--fills", type=float, nargs="+", default=None, help="default: the card's")
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=list(DEFAULT_SHAPES),
        metavar="SHAPE:PARAM",
        help="mask shapes to choose among (rollout:1 is the seed's mask)",
    )
    parser.add_argument("--detect-th", type=float, nargs="+", default=None)
    parser.add_argument("--reconsider-th", type=float, nargs="+", default=None)
    parser.add_argument("--max-iters", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument(
        "--on-exhausted",
        nargs="+",
        choices=get_args(ExhaustedOutcome),
        default=["undetermined", "argmax"],
        help="outcomes for a spent budget to choose among (undetermined sends the frame to a person)",
    )
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the operating point, leave the card alone"
    )
    return parser.parse_args(argv)


def parse_shape(text: str) -> tuple[MaskShape, float]:
    name, _, param = text.partition(":")
    value = float(param) if param else 1.0
    check_mask_shape(name, value)
    return name, value  # type: ignore[return-value]


DETECT_TH = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
RECONSIDER_TH = (0.0001, 0.001, 0.01, 0.03)


def traces_for(
    model: LoadedModel, frames: FrameSet, policy: DecisionPolicy, max_batch: int
) -> list[tuple[tuple[float, ...], ...]]:
    """Probability traces of every frame under `policy` (run with thresholds that never fire)."""
    return traces_of(engine_run(model, frames, policy, max_batch))


def candidates(
    model: LoadedModel, frames: FrameSet, args: argparse.Namespace
) -> list[tuple[DecisionPolicy, list[tuple[tuple[float, ...], ...]]]]:
    """(tracing policy, traces) per fill and mask shape."""
    fills = args.fills if args.fills is not None else [model.fill]
    out = []
    for fill in fills:
        for text in args.shapes:
            shape, param = parse_shape(text)
            tracing = tracing_policy(max(args.max_iters), fill)
            tracing = DecisionPolicy(
                **{**policy_dict(tracing), "mask_shape": shape, "mask_param": param}
            )
            started = time.perf_counter()
            out.append((tracing, traces_for(model, frames, tracing, args.max_batch)))
            print(
                f"traced fill {fill:g} mask {shape}:{param:g} in {time.perf_counter() - started:.0f}s",
                flush=True,
            )
    return out


def rates(
    labels: np.ndarray, traces: list, policy: DecisionPolicy, model: LoadedModel
) -> dict[str, Any]:
    """What `policy` replayed on `traces` sends to a person, with Wilson intervals.

    A frame the policy does not clear (a threat or undetermined verdict) is flagged: on a
    screening line it goes to an operator. Threat recall is the share of threat frames
    flagged, the false-alarm rate the share of benign frames flagged; `mean_recall`
    averages the recall over the threat classes.
    """
    decisions = [replay(t, policy, model.threat_indices, model.benign_index) for t in traces]
    flags = np.array([d.verdict is not Verdict.CLEAR for d in decisions])
    benign = labels == model.benign_index
    per_class = {model.labels[c]: float(flags[labels == c].mean()) for c in model.threat_indices}
    right_class = sum(
        d.verdict is Verdict.THREAT and int(y) in d.classes
        for d, y in zip(decisions, labels, strict=True)
        if y != model.benign_index
    )
    return {
        "mean_recall": float(np.mean(list(per_class.values()))),
        "recall": per_class,
        "threat_recall": Rate.of(int(flags[~benign].sum()), int((~benign).sum())).to_dict(),
        "false_alarm": Rate.of(int(flags[benign].sum()), int(benign.sum())).to_dict(),
        "threat_with_the_right_class": Rate.of(right_class, int((~benign).sum())).to_dict(),
        "undetermined": float(np.mean([d.verdict is Verdict.UNDETERMINED for d in decisions])),
        "mean_forwards": float(np.mean([d.forwards for d in decisions])),
    }


def calibrate(
    model: LoadedModel, frames: FrameSet, args: argparse.Namespace
) -> tuple[DecisionPolicy, dict[str, Any]]:
    """Choose on the even half, measure on the odd half; returns the policy and the record."""
    grid = SweepGrid(
        tuple(args.detect_th or DETECT_TH),
        tuple(args.reconsider_th or RECONSIDER_TH),
        tuple(args.max_iters),
    )
    order = np.argsort(frames.labels, kind="stable")
    rank = np.empty(len(order), int)
    rank[order] = np.arange(len(order))
    choose_rows = np.flatnonzero(rank % 2 == 0)
    check_rows = np.flatnonzero(rank % 2 == 1)
    missing = [
        model.labels[c]
        for c in range(len(model.labels))
        if min((frames.labels[rows] == c).sum() for rows in (choose_rows, check_rows)) == 0
    ]
    if missing:
        raise SystemExit(
            f"calibration needs frames of every label in both halves; none of {missing}"
        )
    best: tuple[tuple[float, float], DecisionPolicy, Any] | None = None
    per_shape: dict[str, tuple[tuple[float, float], DecisionPolicy]] = {}
    tried = 0
    candidates_run = candidates(model, frames, args)
    for (tracing, traces), on_exhausted in itertools.product(candidates_run, args.on_exhausted):
        shape_name = f"{tracing.mask_shape}:{tracing.mask_param:g}"
        for policy in grid.policies(tracing.fill, on_exhausted):
            policy = DecisionPolicy(
                **{
                    **policy_dict(policy),
                    "mask_shape": tracing.mask_shape,
                    "mask_param": tracing.mask_param,
                }
            )
            tried += 1
            chosen_half = [traces[i] for i in choose_rows]
            got = rates(frames.labels[choose_rows], chosen_half, policy, model)
            if got["false_alarm"]["value"] > args.target_fa + 1e-12:
                continue
            key = (round(got["mean_recall"], 6), -got["mean_forwards"])
            if best is None or key > best[0]:
                best = (key, policy, traces)
            if shape_name not in per_shape or key > per_shape[shape_name][0]:
                per_shape[shape_name] = (key, policy)
    if best is None:
        raise SystemExit(
            f"no policy of the {tried} tried keeps the false-alarm rate within {args.target_fa} "
            "on the validation frames; raise --target-fa or widen --detect-th"
        )
    _, policy, traces = best
    measured = rates(frames.labels[check_rows], [traces[i] for i in check_rows], policy, model)
    chosen_on = rates(frames.labels[choose_rows], [traces[i] for i in choose_rows], policy, model)
    return policy, {
        "per_shape": {name: policy_dict(p) for name, (_, p) in per_shape.items()},
        "policies_tried": tried,
        "chosen_half": chosen_on,
        "measured_half": measured,
    }


def operating_point(
    policy: DecisionPolicy, record: dict[str, Any], frames: FrameSet, args: argparse.Namespace
) -> OperatingPoint:
    measured = record["measured_half"]
    return OperatingPoint.model_validate(
        {
            "policy": policy_dict(policy),
            "target_false_alarm": args.target_fa,
            "chosen_on": {
                "data": list(args.data),
                "seed": args.seed,
                "frames": len(frames),
                "split": "chosen on even frames of each class, measured on odd frames",
                "policies_tried": record["policies_tried"],
                "shapes": list(args.shapes),
            },
            "expected": {
                "mean_recall": measured["mean_recall"],
                "recall": measured["recall"],
                "threat_recall": measured["threat_recall"],
                "threat_with_the_right_class": measured["threat_with_the_right_class"],
                "undetermined": measured["undetermined"],
                "false_alarm": measured["false_alarm"],
                "mean_forwards": measured["mean_forwards"],
            },
            "per_shape": {name: {"policy": shaped} for name, shaped in record["per_shape"].items()},
            "command": "python -m worker.training.calibrate "
            + shlex.join(sys.argv[1:] if args.argv is None else args.argv),
        }
    )


def write_card(card_path: Path, point: OperatingPoint) -> None:
    """Put `point` into the card, keeping every other field as it is."""
    read_card(card_path)  # refuse a card that does not validate before touching it
    card = json.loads(card_path.read_text())
    card["operating_point"] = point.model_dump(mode="json")
    tmp = card_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(card_path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = argv
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0.0 < args.target_fa < 1.0:
        raise SystemExit(f"--target-fa must lie in (0, 1), not {args.target_fa}")
    try:
        specs = [parse_data_spec(text) for text in args.data]
        for text in args.shapes:
            parse_shape(text)
    except ValueError as exc:
        raise SystemExit(f"python -m worker.training.calibrate: {exc}") from None
    model = load_model(args.card)
    frames = concat_sets(
        [load_or_exit(PROG, spec, args.seed, model.input_hw, model.labels) for spec in specs]
    )
    if len(set(frames.labels.tolist())) < 2 or not (frames.labels == model.benign_index).any():
        raise SystemExit("calibration needs benign and threat frames")
    policy, record = calibrate(model, frames, args)
    point = operating_point(policy, record, frames, args)
    detected, alarms = (point.expected[k] for k in ("threat_recall", "false_alarm"))
    print(
        f"operating point: {json.dumps(point.policy.model_dump())}\n"
        "measured on the held-back half: threat recall (frames not cleared) "
        f"{Rate.of(detected['successes'], detected['trials'])}, "
        f"false alarms {Rate.of(alarms['successes'], alarms['trials'])}",
        flush=True,
    )
    if not args.dry_run:
        write_card(Path(args.card), point)
        print(f"wrote the operating point into {args.card}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
