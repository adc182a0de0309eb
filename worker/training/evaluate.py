"""Evaluate a model card on held-out synthetic scans: vanilla vs iterative erasing.

    python -m worker.training.evaluate --card models/scanguard-demo/card.json --out eval

Thresholds and the erasing fill are chosen on a validation set of target-domain frames
(its own seed); the held-out sets (another seed, target and source domains) are only
scored. Writes REPORT.md, results.json, sweep.png and montage.png into `--out`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import get_args

import cv2
import numpy as np
import torch

from producer.synthetic import DEFAULT_SIZE, SyntheticScanner
from shared.vocab import ExhaustedOutcome
from worker.engine.decision import DecisionPolicy, Verdict
from worker.engine.erasing import EngineInput, ErasingEngine, FrameResult
from worker.engine.model import LoadedModel, load_model
from worker.training.data import FrameSet, generate_set
from worker.training.metrics import (
    Decision,
    SweepGrid,
    argmax_accuracy,
    calibration_by_step,
    choose,
    policy_dict,
    replay,
    score,
    sweep,
    tracing_policy,
    vanilla_at,
    vanilla_curve,
)
from worker.training.plots import montage, sweep_plot
from worker.training.report import write_report

VANILLA_THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.training.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--card", type=Path, default=Path("models/scanguard-demo/card.json"))
    parser.add_argument("--out", type=Path, default=Path("eval"))
    parser.add_argument(
        "--test-seed", type=int, default=424242, help="scanner seed of the held-out sets"
    )
    parser.add_argument(
        "--per-class", type=int, default=500, help="held-out frames per class and domain"
    )
    parser.add_argument(
        "--val-seed", type=int, default=2, help="scanner seed of the target validation set"
    )
    parser.add_argument("--val-per-class", type=int, default=150)
    parser.add_argument(
        "--domains", nargs="+", default=["target", "source"], choices=["target", "source"]
    )
    parser.add_argument(
        "--fills",
        type=float,
        nargs="+",
        default=None,
        help="erasing fills to choose from on validation (default: 1.0 and 0.0, and the card's)",
    )
    parser.add_argument("--detect-th", type=float, nargs="+", default=list(SweepGrid.detect_th))
    parser.add_argument(
        "--reconsider-th", type=float, nargs="+", default=list(SweepGrid.reconsider_th)
    )
    parser.add_argument("--max-iters", type=int, nargs="+", default=list(SweepGrid.max_iter))
    parser.add_argument("--on-exhausted", default="argmax", choices=get_args(ExhaustedOutcome))
    parser.add_argument(
        "--far-margin",
        type=float,
        default=0.02,
        help="allowed rise of the false-alarm rate over vanilla argmax, on validation",
    )
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--speed-frames",
        type=int,
        default=60,
        help="frames per domain for the generator speed measurement (0 skips it)",
    )
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


def select_policy(
    model: LoadedModel, val: FrameSet, args: argparse.Namespace, fills: list[float]
) -> dict:
    """Sweep thresholds and fills on the validation set; pick the best recall within the false-alarm budget."""
    labels = list(model.labels)
    grid = SweepGrid(tuple(args.detect_th), tuple(args.reconsider_th), tuple(args.max_iters))
    per_fill: dict[str, dict] = {}
    all_rows: list[dict] = []
    traces = None
    for fill in fills:
        traces = traces_of(
            engine_run(model, val, tracing_policy(max(args.max_iters), fill), args.max_batch)
        )
        rows = sweep(
            val.labels, traces, grid.policies(fill, args.on_exhausted), labels, model.benign_index
        )
        all_rows += rows
        per_fill[f"{fill:g}"] = {
            "calibration_by_step": calibration_by_step(
                val.labels, traces, max(args.max_iters), labels, model.benign_index
            )
        }
    assert traces is not None
    argmax = score(
        val.labels, [_argmax_decision(t[0], model) for t in traces], labels, model.benign_index
    )
    budget = float(argmax["false_alarm_rate"]) + args.far_margin
    chosen = choose(all_rows, budget)
    if chosen is None:
        chosen = min(all_rows, key=lambda r: float(r["false_alarm_rate"]))
    vanilla_rows = vanilla_curve(val.labels, traces, labels, VANILLA_THRESHOLDS, model.benign_index)
    vanilla_tuned = choose(vanilla_rows, budget)
    return {
        "frames": len(val),
        "seed": val.seed,
        "domain": val.domain,
        "fills": fills,
        "vanilla_argmax": argmax,
        "far_budget": budget,
        "chosen": chosen,
        "vanilla_tuned": vanilla_tuned,
        "per_fill": per_fill,
        "sweep": all_rows,
        "vanilla_curve": vanilla_rows,
    }


def _argmax_decision(probs: tuple[float, ...], model: LoadedModel) -> Decision:
    top = int(np.argmax(probs))
    if top == model.benign_index:
        return Decision(Verdict.CLEAR, (), 0, 1)
    return Decision(Verdict.THREAT, (top,), 0, 1)


def evaluate_domain(
    model: LoadedModel,
    frames: FrameSet,
    chosen: DecisionPolicy,
    selection: dict,
    args: argparse.Namespace,
) -> tuple[dict, list[FrameResult], list[FrameResult]]:
    """Score vanilla, erasing (chosen policy, real engine run) and the sweep on one held-out set."""
    labels = list(model.labels)
    started = time.perf_counter()
    vanilla = engine_run(model, frames, DecisionPolicy.vanilla(), args.max_batch)
    vanilla_s = time.perf_counter() - started
    started = time.perf_counter()
    erasing = engine_run(model, frames, chosen, args.max_batch)
    erasing_s = time.perf_counter() - started
    traces = traces_of(
        engine_run(model, frames, tracing_policy(max(args.max_iters), chosen.fill), args.max_batch)
    )
    replayed = [replay(t, chosen, model.threat_indices, model.benign_index) for t in traces]
    agree = float(
        np.mean(
            [
                (d.verdict, d.classes) == (r.verdict, r.classes)
                for d, r in zip(replayed, erasing, strict=True)
            ]
        )
    )
    grid = SweepGrid(tuple(args.detect_th), tuple(args.reconsider_th), tuple(args.max_iters))
    # The seed's thresholds, capped at the traced length so it can be replayed.
    seed_policy = DecisionPolicy(
        max_iter=min(5, max(args.max_iters)), on_exhausted=args.on_exhausted, fill=chosen.fill
    )
    tuned = selection["vanilla_tuned"]
    tuned_th = tuned["threshold"] if tuned else 0.5
    result = {
        "frames": len(frames),
        "seed": frames.seed,
        "domain": frames.domain,
        "vanilla_argmax_accuracy": argmax_accuracy(frames.labels, traces),
        "vanilla": score(frames.labels, as_decisions(vanilla), labels, model.benign_index),
        "erasing": score(frames.labels, as_decisions(erasing), labels, model.benign_index),
        "vanilla_tuned": {
            "threshold": tuned_th,
            **score(
                frames.labels,
                [vanilla_at(t[0], tuned_th, model.threat_indices) for t in traces],
                labels,
                model.benign_index,
            ),
        },
        "seed_defaults": {
            "policy": policy_dict(seed_policy),
            **score(
                frames.labels,
                [replay(t, seed_policy, model.threat_indices, model.benign_index) for t in traces],
                labels,
                model.benign_index,
            ),
        },
        "replay_agreement": agree,
        "seconds": {"vanilla": round(vanilla_s, 2), "erasing": round(erasing_s, 2)},
        "calibration_by_step": calibration_by_step(
            frames.labels, traces, max(args.max_iters), labels, model.benign_index
        ),
        "sweep": sweep(
            frames.labels,
            traces,
            grid.policies(chosen.fill, args.on_exhausted),
            labels,
            model.benign_index,
        ),
        "vanilla_curve": vanilla_curve(
            frames.labels, traces, labels, VANILLA_THRESHOLDS, model.benign_index
        ),
    }
    return result, vanilla, erasing


def montage_rows(
    model: LoadedModel,
    frames: FrameSet,
    policy: DecisionPolicy,
    vanilla: list[FrameResult],
    erasing: list[FrameResult],
    args: argparse.Namespace,
) -> list[dict]:
    """One row per class: preferably a frame erasing got right and vanilla did not."""
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

        wins = [
            i
            for i in members
            if right(erasing[i]) and not right(vanilla[i]) and erasing[i].iterations > 1
        ]
        pick = (wins or [i for i in members if erasing[i].iterations > 1] or members)[0]
        steps = max(erasing[pick].iterations, 1)
        single = FrameSet(
            frames.images[pick : pick + 1],
            frames.labels[pick : pick + 1],
            frames.masks[pick : pick + 1],
            frames.domain,
            frames.seed,
            frames.indices[pick : pick + 1],
        )
        original = frames.images[pick].astype(np.float32) / 255.0
        images, probs = [frames.images[pick]], [erasing[pick].trace[0]]
        for k in range(1, steps + 1):
            result = engine_run(model, single, tracing_policy(k, policy.fill), 1)[0]
            if result.iterations < k:
                break
            cumulative = result.erase_mask[..., None]
            erased = policy.fill + (original - policy.fill) * cumulative  # x_k − f = (x_0 − f)·∏m
            images.append(np.clip(erased * 255.0 + 0.5, 0, 255).astype(np.uint8))
            probs.append(result.trace[-1])
        verdict = erasing[pick]
        title = (
            f"{frames.domain} frame {int(frames.indices[pick])} (true: {name}); vanilla: "
            f"{_verdict_text(vanilla[pick], model)}; erasing: {_verdict_text(verdict, model)} "
            f"after {verdict.iterations} step(s)"
        )
        rows.append({"title": title, "images": images, "probs": probs})
    return rows


def _verdict_text(result: FrameResult, model: LoadedModel) -> str:
    if result.verdict is Verdict.THREAT:
        return "threat " + "+".join(model.labels[c] for c in result.classes)
    return result.verdict.value


def generator_speed(frames_each: int) -> dict[str, float]:
    """Frames per second of the synthetic scanner on this process's one thread, per domain."""
    speeds: dict[str, float] = {}
    if frames_each <= 0:
        return speeds
    for domain in ("source", "target"):
        scanner = SyntheticScanner(domain, seed=99, size=DEFAULT_SIZE)
        started = time.perf_counter()
        for index in range(frames_each):
            scanner.frame(index)
        speeds[domain] = round(frames_each / (time.perf_counter() - started), 1)
    return speeds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    started = time.monotonic()
    model = load_model(args.card)
    fills = args.fills if args.fills is not None else sorted({1.0, 0.0, model.fill}, reverse=True)
    input_hw = model.input_hw
    val = generate_set("target", args.val_seed, args.val_per_class, input_hw)
    selection = select_policy(model, val, args, fills)
    chosen = DecisionPolicy(**{k: v for k, v in selection["chosen"]["policy"].items()})
    print(f"chosen on validation: {policy_dict(chosen)}", flush=True)
    domains: dict[str, dict] = {}
    figures = []
    rows: list[dict] = []
    for domain in args.domains:
        frames = generate_set(domain, args.test_seed, args.per_class, input_hw)
        result, vanilla, erasing = evaluate_domain(model, frames, chosen, selection, args)
        domains[domain] = result
        print(
            f"{domain}: vanilla {json.dumps(result['vanilla'])}\n{domain}: erasing {json.dumps(result['erasing'])}",
            flush=True,
        )
        figures.append(
            {
                "title": f"{domain} domain, held-out seed {args.test_seed}",
                "sweep": result["sweep"],
                "vanilla": result["vanilla_curve"],
                "argmax": result["vanilla"],
                "chosen": result["erasing"],
            }
        )
        if domain == args.domains[0]:
            rows = montage_rows(model, frames, chosen, vanilla, erasing, args)
    args.out.mkdir(parents=True, exist_ok=True)
    sweep_plot(args.out / "sweep.png", figures)
    montage(args.out / "montage.png", rows, model.labels)
    report = {
        "command": "python -m worker.training.evaluate "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "model": {
            "card": str(args.card),
            "name": model.model_id,
            "sha256": model.checksum,
            "card_fill": model.fill,
            "input_hw": list(input_hw),
        },
        "chosen_policy": policy_dict(chosen),
        "validation": selection,
        "held_out": domains,
        "generator_frames_per_s_one_core": generator_speed(args.speed_frames),
        "environment": {
            "torch": torch.__version__,
            "threads": args.threads,
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    write_report(args.out / "REPORT.md", report)
    print(f"wrote {args.out / 'REPORT.md'} after {report['wall_time_s']}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
