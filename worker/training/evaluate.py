"""Evaluate a model card on held-out scans: vanilla classification vs iterative erasing.

    python -m worker.training.evaluate --card models/scanguard-demo/card.json --out eval/shipped

Per domain (the synthetic "source" and "target", the independent "foreign" generator, or
a labelled `imagefolder:DIR`) it scores, on frames of a held-out seed:

- erasing at the card's operating point (written by `calibrate`; the seed's thresholds
  when the card has none), from a real engine run;
- vanilla classification swept over its threshold, and at the operating point's
  false-alarm rate ("matched false-alarm rate"): the recall erasing gains over vanilla
  there, and the area between erasing's swept curve and vanilla's, both with paired
  bootstrap intervals;
- every mask shape the calibration chose a policy for, against the seed's mask;
- where the first forward's mask falls: the pointing game (its peak on the threat's box,
  ± one patch) and the share of its mass on the threat.

Recall here is the share of threat frames the policy does not clear (threat or
undetermined: a person looks at the bag), the false-alarm rate the same share of benign
frames, so a vanilla threshold and erasing compare on what reaches an operator; rates
carry 95 % Wilson intervals. The policy is not tuned on these frames; vanilla, at a
matched false-alarm rate, gets its best threshold on them, which favours vanilla. Writes
results.json, curves-<set>.png and montage.png into `--out`; `python -m
worker.training.report` builds REPORT.md from eval/<run>/results.json for the runs it
knows (shipped, source-only, control, guidance).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from worker.engine.decision import DecisionPolicy, Verdict
from worker.engine.erasing import EngineInput, ErasingEngine, FrameResult
from worker.engine.model import LoadedModel, load_model
from worker.training.data import FrameSet, load_or_exit, parse_data_spec
from worker.training.metrics import (
    Decision,
    Rate,
    area_between,
    calibration_by_step,
    operating_curve,
    policy_dict,
    recall_at_fa,
    replay,
    score,
    tracing_policy,
)
from worker.training.plots import montage, plot_operating_curves

FA_MAX = 0.3  # false-alarm range over which the curves' area is compared
DETECT_SWEEP = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.995)
BOOTSTRAP = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.training.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--card", type=Path, default=Path("models/scanguard-demo/card.json"))
    parser.add_argument("--out", type=Path, default=Path("eval/shipped"))
    parser.add_argument("--name", default=None, help="what the report calls this model")
    parser.add_argument(
        "--data",
        nargs="+",
        default=["source:300", "target:300", "foreign:300"],
        metavar="SPEC",
        help="held-out sets: DOMAIN:PER_CLASS (source, target, randomised, foreign) or imagefolder:DIR",
    )
    parser.add_argument(
        "--test-seed", type=int, default=424242, help="scanner seed of the held-out sets"
    )
    parser.add_argument(
        "--no-shapes", action="store_true", help="skip the mask-shape comparison (one trace run)"
    )
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help="bootstrap resamples")
    return parser.parse_args(argv)


def engine_run(
    model: LoadedModel, frames: FrameSet, policy: DecisionPolicy, max_batch: int
) -> list[FrameResult]:
    """Run the engine over every frame; results come back in frame order."""
    engine = ErasingEngine(model, policy, max_batch=max_batch)
    try:
        results = engine.run([EngineInput(i, frames.images[i]) for i in range(len(frames))])
    finally:
        engine.close()
    return sorted(results, key=lambda r: int(r.key))  # type: ignore[call-overload]


def as_decisions(results: list[FrameResult]) -> list[Decision]:
    return [Decision(r.verdict, r.classes, r.iterations, r.forwards) for r in results]


def traces_of(results: list[FrameResult]) -> list[tuple[tuple[float, ...], ...]]:
    return [r.trace for r in results]


def card_policy(model: LoadedModel) -> tuple[DecisionPolicy, str]:
    """The card's operating point, or the seed's thresholds (with the card's fill) without one."""
    if model.operating_point is None:
        return DecisionPolicy(fill=model.fill), "seed thresholds (the card has no operating point)"
    return DecisionPolicy(**model.operating_point.policy.model_dump()), "the card's operating point"


def tracing_like(policy: DecisionPolicy, max_iter: int) -> DecisionPolicy:
    """A policy that never stops early, with `policy`'s fill, head fusion and mask shape."""
    base = policy_dict(tracing_policy(max_iter, policy.fill))
    return DecisionPolicy(
        **{
            **base,
            "head_fusion": policy.head_fusion,
            "mask_shape": policy.mask_shape,
            "mask_param": policy.mask_param,
        }
    )


def flagged(decisions: list[Decision]) -> np.ndarray:
    """Per frame: not cleared (threat or undetermined), so a person looks at it."""
    return np.array([d.verdict is not Verdict.CLEAR for d in decisions])


def rate_pair(flags: np.ndarray, threat: np.ndarray) -> tuple[Rate, Rate]:
    """(recall over threat frames, false-alarm rate over benign frames) of per-frame flags."""
    return (
        Rate.of(int(flags[threat].sum()), int(threat.sum())),
        Rate.of(int(flags[~threat].sum()), int((~threat).sum())),
    )


def curve_of(flag_matrix: np.ndarray, threat: np.ndarray) -> list[tuple[float, float]]:
    """(false-alarm rate, recall) per column of a frames × policies flag matrix, plus (0, 0)."""
    recall = flag_matrix[threat].mean(axis=0)
    fa = flag_matrix[~threat].mean(axis=0)
    return [(0.0, 0.0), *sorted(zip(fa.tolist(), recall.tolist(), strict=True))]


def matched_fa(
    scores: np.ndarray,
    erasing: np.ndarray,
    sweep: np.ndarray,
    threat: np.ndarray,
    rng: np.random.Generator,
    resamples: int,
) -> dict[str, Any]:
    """Erasing vs vanilla at erasing's false-alarm rate, and the area between their curves.

    `scores`: vanilla's threat score per frame; `erasing`: the operating point's flag per
    frame; `sweep`: frames × detect thresholds flags of erasing's swept curve. Intervals
    are percentile intervals of a bootstrap that resamples benign and threat frames
    separately, recomputing every quantity (vanilla's matched recall included) each time.
    """

    def measure(rows: np.ndarray) -> tuple[float, float, float, float]:
        t = threat[rows]
        recall = float(erasing[rows][t].mean())
        fa = float(erasing[rows][~t].mean())
        vanilla = operating_curve(scores[rows], t.astype(int))
        at = recall_at_fa(vanilla, fa)
        area = area_between(curve_of(sweep[rows], t), vanilla, FA_MAX)
        return recall, fa, at, area

    everything = np.arange(len(threat))
    recall, fa, vanilla_recall, area = measure(everything)
    benign_rows, threat_rows = np.flatnonzero(~threat), np.flatnonzero(threat)
    gains, areas = [], []
    for _ in range(resamples):
        rows = np.concatenate(
            [
                rng.choice(benign_rows, len(benign_rows)),
                rng.choice(threat_rows, len(threat_rows)),
            ]
        )
        r, _, v, a = measure(rows)
        gains.append(r - v)
        areas.append(a)
    return {
        "erasing_recall": recall,
        "erasing_false_alarm": fa,
        "vanilla_recall_at_that_fa": vanilla_recall,
        "recall_gain": recall - vanilla_recall,
        "recall_gain_interval": [
            float(np.percentile(gains, 2.5)),
            float(np.percentile(gains, 97.5)),
        ],
        "area_between_curves": area,
        "area_interval": [float(np.percentile(areas, 2.5)), float(np.percentile(areas, 97.5))],
        "area_fa_max": FA_MAX,
        "bootstrap_resamples": resamples,
    }


def sweep_flags(
    traces: list, policy: DecisionPolicy, model: LoadedModel
) -> tuple[np.ndarray, list[float]]:
    """Flags of erasing replayed at each detect threshold of DETECT_SWEEP (others as `policy`)."""
    columns, used = [], []
    for th in DETECT_SWEEP:
        if th <= policy.reconsider_th:
            continue
        swept = DecisionPolicy(**{**policy_dict(policy), "detect_th": th})
        decisions = [replay(t, swept, model.threat_indices, model.benign_index) for t in traces]
        columns.append(flagged(decisions))
        used.append(th)
    return np.stack(columns, axis=1), used


def where_the_mask_falls(
    model: LoadedModel, frames: FrameSet, policy: DecisionPolicy, max_batch: int
) -> dict[str, Any]:
    """Pointing game and mass share of the first forward's mask on threat frames with a mask."""
    rows = [
        i
        for i in range(len(frames))
        if frames.labels[i] != model.benign_index and frames.masks[i].any()
    ]
    if not rows:
        return {"frames": 0}
    subset = FrameSet(
        frames.images[rows],
        frames.labels[rows],
        frames.masks[rows],
        frames.domain,
        frames.seed,
        frames.indices[rows],
    )
    first = tracing_like(DecisionPolicy(**{**policy_dict(policy), "mask_shape": "rollout"}), 1)
    results = engine_run(model, subset, first, max_batch)
    rows_hw = model.input_hw
    patch = (rows_hw[0] / model.grid_hw[0], rows_hw[1] / model.grid_hw[1])
    hits = 0
    mass, area = [], []
    for result, mask in zip(results, subset.masks, strict=True):
        grid = result.erase_mask  # (H, W) at the model input: the first mask, resized
        peak_r, peak_c = np.unravel_index(int(np.argmax(grid)), grid.shape)
        ys, xs = np.nonzero(mask)
        hits += bool(
            ys.min() - patch[0] <= peak_r <= ys.max() + patch[0]
            and xs.min() - patch[1] <= peak_c <= xs.max() + patch[1]
        )
        mass.append(float(grid[mask].sum() / grid.sum()))
        area.append(float(mask.mean()))
    return {
        "frames": len(rows),
        "pointing": Rate.of(hits, len(rows)).to_dict(),
        "mask_mass_on_threat": float(np.mean(mass)),
        "threat_area_share": float(np.mean(area)),
    }


def evaluate_set(
    model: LoadedModel,
    frames: FrameSet,
    policy: DecisionPolicy,
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> tuple[dict[str, Any], list[FrameResult], list[tuple]]:
    labels = list(model.labels)
    threat = frames.labels != model.benign_index
    started = time.perf_counter()
    at_point = engine_run(model, frames, policy, args.max_batch)
    erasing_s = time.perf_counter() - started
    steps = max(5, policy.max_iter)  # the calibration table shows five steps at least
    traces = traces_of(engine_run(model, frames, tracing_like(policy, steps), args.max_batch))
    replayed = [replay(t, policy, model.threat_indices, model.benign_index) for t in traces]
    agreement = float(
        np.mean(
            [
                (d.verdict, d.classes) == (r.verdict, r.classes)
                for d, r in zip(replayed, at_point, strict=True)
            ]
        )
    )
    scores = np.array([max(t[0][i] for i in model.threat_indices) for t in traces])
    erasing_flags = flagged(as_decisions(at_point))
    recall, false_alarm = rate_pair(erasing_flags, threat)
    vanilla_argmax = np.array([int(np.argmax(t[0])) != model.benign_index for t in traces])
    argmax_recall, argmax_fa = rate_pair(vanilla_argmax, threat)
    sweep, thresholds = sweep_flags(traces, policy, model)
    compared = matched_fa(scores, erasing_flags, sweep, threat, rng, args.bootstrap)
    vanilla_curve = operating_curve(scores, threat.astype(int))
    result: dict[str, Any] = {
        "frames": len(frames),
        "per_class": {name: int((frames.labels == k).sum()) for k, name in enumerate(labels)},
        "seed": frames.seed,
        "set": frames.domain,
        "vanilla_argmax": {"recall": argmax_recall.to_dict(), "false_alarm": argmax_fa.to_dict()},
        "vanilla_argmax_accuracy": float(
            np.mean([int(np.argmax(t[0])) == y for t, y in zip(traces, frames.labels, strict=True)])
        ),
        "erasing": {
            "recall": recall.to_dict(),
            "false_alarm": false_alarm.to_dict(),
            "by_class": score(frames.labels, as_decisions(at_point), labels, model.benign_index),
        },
        "matched": compared,
        "replay_agreement": agreement,
        "erasing_seconds": round(erasing_s, 2),
        "calibration_by_step": calibration_by_step(
            frames.labels, traces, steps, labels, model.benign_index
        ),
        "curves": {
            "vanilla": vanilla_curve,
            "erasing_swept": curve_of(sweep, threat),
            "erasing_swept_detect_th": thresholds,
        },
        "mask": where_the_mask_falls(model, frames, policy, args.max_batch),
    }
    extra = model.operating_point.model_extra if model.operating_point is not None else None
    shapes = (extra or {}).get("per_shape", {})
    if shapes and not args.no_shapes:
        result["shapes"] = compare_shapes(model, frames, shapes, scores, threat, args, rng)
    return result, at_point, traces


def compare_shapes(
    model: LoadedModel,
    frames: FrameSet,
    shapes: dict[str, Any],
    scores: np.ndarray,
    threat: np.ndarray,
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Each mask shape's calibrated policy on these frames, against vanilla at its false-alarm rate."""
    out = {}
    for name, entry in shapes.items():
        policy = DecisionPolicy(**entry["policy"])
        traces = traces_of(
            engine_run(model, frames, tracing_like(policy, policy.max_iter), args.max_batch)
        )
        decisions = [replay(t, policy, model.threat_indices, model.benign_index) for t in traces]
        flags = flagged(decisions)
        sweep, _ = sweep_flags(traces, policy, model)
        recall, false_alarm = rate_pair(flags, threat)
        out[name] = {
            "policy": entry["policy"],
            "recall": recall.to_dict(),
            "false_alarm": false_alarm.to_dict(),
            "matched": matched_fa(scores, flags, sweep, threat, rng, max(args.bootstrap // 4, 50)),
        }
    return out


def montage_rows(
    model: LoadedModel,
    frames: FrameSet,
    policy: DecisionPolicy,
    at_point: list[FrameResult],
    traces: list[tuple],
    args: argparse.Namespace,
) -> list[dict]:
    """One row per class: preferably a frame erasing got right and plain argmax did not."""
    rows = []
    for cls, name in enumerate(model.labels):
        members = [i for i in range(len(frames)) if frames.labels[i] == cls]
        if not members:
            continue

        def right(r: FrameResult, c: int = cls) -> bool:
            return (
                (r.verdict is Verdict.THREAT and c in r.classes)
                if c
                else r.verdict is Verdict.CLEAR
            )

        def argmax_right(i: int, c: int = cls) -> bool:
            return int(np.argmax(traces[i][0])) == c

        wins = [
            i
            for i in members
            if right(at_point[i]) and not argmax_right(i) and at_point[i].iterations > 1
        ]
        pick = (wins or [i for i in members if at_point[i].iterations > 1] or members)[0]
        steps = max(at_point[pick].iterations, 1)
        single = FrameSet(
            frames.images[pick : pick + 1],
            frames.labels[pick : pick + 1],
            frames.masks[pick : pick + 1],
            frames.domain,
            frames.seed,
            frames.indices[pick : pick + 1],
        )
        original = frames.images[pick].astype(np.float32) / 255.0
        images, probs = [frames.images[pick]], [at_point[pick].trace[0]]
        for k in range(1, steps + 1):
            result = engine_run(model, single, tracing_like(policy, k), 1)[0]
            if result.iterations < k:
                break
            cumulative = result.erase_mask[..., None]
            erased = policy.fill + (original - policy.fill) * cumulative  # x_k − f = (x_0 − f)·∏m
            images.append(np.clip(erased * 255.0 + 0.5, 0, 255).astype(np.uint8))
            probs.append(result.trace[-1])
        verdict = at_point[pick]
        title = (
            f"{frames.domain} frame {int(frames.indices[pick])} (true: {name}); "
            f"erasing: {_verdict_text(verdict, model)} after {verdict.iterations} step(s)"
        )
        rows.append({"title": title, "images": images, "probs": probs})
    return rows


def _verdict_text(result: FrameResult, model: LoadedModel) -> str:
    if result.verdict is Verdict.THREAT:
        return "threat " + "+".join(model.labels[c] for c in result.classes)
    return result.verdict.value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    started = time.monotonic()
    try:
        specs = [parse_data_spec(text) for text in args.data]
    except ValueError as exc:
        raise SystemExit(f"python -m worker.training.evaluate: {exc}") from None
    model = load_model(args.card)
    policy, policy_source = card_policy(model)
    print(f"policy ({policy_source}): {policy_dict(policy)}", flush=True)
    rng = np.random.default_rng(20261202)
    sets: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    rows: list[dict] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        frames = load_or_exit(
            "worker.training.evaluate", spec, args.test_seed, model.input_hw, model.labels
        )
        name = spec.kind if spec.folder is None else str(spec)
        result, at_point, traces = evaluate_set(model, frames, policy, args, rng)
        sets[name] = result
        matched = result["matched"]
        print(
            f"{name}: erasing recall {Rate.of(**_counts(result['erasing']['recall']))}, "
            f"false alarms {Rate.of(**_counts(result['erasing']['false_alarm']))}; "
            f"vanilla at that rate {100 * matched['vanilla_recall_at_that_fa']:.1f} %, "
            f"gain {100 * matched['recall_gain']:+.1f} points "
            f"[{100 * matched['recall_gain_interval'][0]:+.1f}, {100 * matched['recall_gain_interval'][1]:+.1f}]",
            flush=True,
        )
        e = result["erasing"]
        figures[name] = (
            result["curves"],
            (
                e["false_alarm"]["value"],
                e["recall"]["value"],
                (e["false_alarm"]["low"], e["false_alarm"]["high"]),
                (e["recall"]["low"], e["recall"]["high"]),
            ),
        )
        if not rows and spec.kind in ("target", "foreign", "imagefolder"):
            rows = montage_rows(model, frames, policy, at_point, traces, args)
    for name, (curves, point) in figures.items():
        plot_operating_curves(
            args.out / f"curves-{name.replace(':', '_').replace('/', '_')}.png",
            {
                "vanilla (threshold swept)": curves["vanilla"],
                "erasing (detect_th swept)": curves["erasing_swept"],
            },
            {"erasing at the operating point": point},
            f"{args.name or model.model_id}: {name}",
            fa_max=FA_MAX,
        )
    if rows:
        montage(args.out / "montage.png", rows, model.labels)
    report = {
        "command": "python -m worker.training.evaluate "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "model": {
            "name": args.name or model.model_id,
            "card": str(args.card),
            "id": model.model_id,
            "sha256": model.checksum,
            "input_hw": list(model.input_hw),
        },
        "policy": policy_dict(policy),
        "policy_source": policy_source,
        "operating_point": model.operating_point.model_dump(mode="json")
        if model.operating_point
        else None,
        "sets": sets,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"wrote {args.out / 'results.json'} after {report['wall_time_s']}s", flush=True)
    return 0


def _counts(rate: dict[str, Any]) -> dict[str, int]:
    return {"successes": rate["successes"], "trials": rate["trials"]}


if __name__ == "__main__":
    raise SystemExit(main())
