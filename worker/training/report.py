"""eval/REPORT.md, written from the evaluate command's results.json files.

    python -m worker.training.report --eval-dir eval

Reads `<eval-dir>/<run>/results.json` for the runs it knows (shipped: the default model;
source-only: the seed's experiment; guidance and control: the attention-guidance
experiment; look: the on-the-fly look augmentation), whichever exist, `<eval-dir>/bags.json` for the "Bags and views" section
and `<eval-dir>/reading.md` (the reading of the numbers, written by a person, quoted as
it is), and writes `<eval-dir>/REPORT.md`. Every figure in the report comes from those
files; the targets are checked against them, not written by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from worker.training.bag_report import BAGS_FILE, render_section
from worker.training.metrics import Rate
from worker.training.plots import plot_rates

READING_FILE = "reading.md"  # the written reading of the numbers, included as it is
RUNS = {
    "shipped": "the shipped model (domain-randomised training, 10 epochs)",
    "previous": "the model shipped before it (the same recipe, its first 5 epochs)",
    "source-only": "the source-only model (the seed's setting)",
    "control": "fine-tuned without attention guidance (control)",
    "guidance": "fine-tuned with attention guidance",
    "look": "trained with looks drawn on the fly (experiment, not shipped)",
}


def _rate(entry: dict[str, Any]) -> Rate:
    return Rate.of(entry["successes"], entry["trials"])


def _pts(value: float) -> str:
    return f"{100 * value:+.1f}"


def _interval(pair: list[float]) -> str:
    return f"[{_pts(pair[0])}, {_pts(pair[1])}]"


def set_table(results: dict[str, Any]) -> list[str]:
    """Per held-out set: vanilla argmax, erasing at the operating point, and the matched comparison."""
    out = [
        "| set | frames | vanilla argmax: recall | false alarms | erasing at the operating point: recall | false alarms | vanilla recall at erasing's false-alarm rate | recall gain (points) [95 % CI] | area between curves, FA ≤ 30 % [95 % CI] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results["sets"].items():
        vanilla, erasing, matched = result["vanilla_argmax"], result["erasing"], result["matched"]
        out.append(
            f"| {name} | {result['frames']} | {_rate(vanilla['recall'])} | {_rate(vanilla['false_alarm'])} "
            f"| {_rate(erasing['recall'])} | {_rate(erasing['false_alarm'])} "
            f"| {100 * matched['vanilla_recall_at_that_fa']:.1f} % | {_pts(matched['recall_gain'])} "
            f"{_interval(matched['recall_gain_interval'])} | {100 * matched['area_between_curves']:+.2f} "
            f"{_interval(matched['area_interval'])} |"
        )
    return out


def mask_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    out = [
        "| model | set | threat frames | pointing game (peak on the threat ± 1 patch) | mask mass on the threat | threat's share of the frame |",
        "|---|---|---|---|---|---|",
    ]
    for run, results in runs.items():
        for name, result in results["sets"].items():
            mask = result["mask"]
            if not mask.get("frames"):
                continue
            out.append(
                f"| {run} | {name} | {mask['frames']} | {_rate(mask['pointing'])} "
                f"| {100 * mask['mask_mass_on_threat']:.1f} % | {100 * mask['threat_area_share']:.1f} % |"
            )
    return out


def roi_table(eval_dir: Path) -> list[str]:
    """The worker's ROIs on dual-view bags (bag_eval), per run that has its own bags.json."""
    out = [
        "| model | domain | threat views | top ROI holds the threat's centre | any ROI holds it | mean best IoU |",
        "|---|---|---|---|---|---|",
    ]
    rows = 0
    for run in RUNS:
        path = eval_dir / (BAGS_FILE if run == "shipped" else f"{run}/{BAGS_FILE}")
        if not path.is_file():
            continue
        bags = json.loads(path.read_text())
        for domain, result in bags["domains"].items():
            rois = result["policies"]["worker"]["rois"]["all"]
            top, any_ = rois["pointing_top"], rois["pointing_any"]
            out.append(
                f"| {run} | {domain} | {rois['views']} | {Rate.of(top['k'], top['n'])} "
                f"| {Rate.of(any_['k'], any_['n'])} | {rois['mean_best_iou']:.2f} |"
            )
            rows += 1
    return out if rows else []


def shape_table(results: dict[str, Any]) -> list[str]:
    out = [
        "| set | mask shape | policy chosen on validation | recall | false alarms | gain over vanilla at that false-alarm rate [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results["sets"].items():
        for shape, entry in result.get("shapes", {}).items():
            policy = entry["policy"]
            text = (
                f"detect {policy['detect_th']:g}, reconsider {policy['reconsider_th']:g}, "
                f"max_iter {policy['max_iter']}, fill {policy['fill']:g}"
            )
            matched = entry["matched"]
            out.append(
                f"| {name} | {shape} | {text} | {_rate(entry['recall'])} | {_rate(entry['false_alarm'])} "
                f"| {_pts(matched['recall_gain'])} {_interval(matched['recall_gain_interval'])} |"
            )
    return out


def operating_point_lines(results: dict[str, Any]) -> list[str]:
    point = results.get("operating_point")
    if not point:
        return [f"The card has no operating point; the run used {results['policy_source']}.", ""]
    policy, expected, chosen = point["policy"], point["expected"], point["chosen_on"]
    return [
        f"Chosen by `{point.get('command', 'calibrate')}` on {chosen.get('frames')} validation "
        f"frames ({', '.join(chosen.get('data', []))}, seed {chosen.get('seed')}; "
        f"{chosen.get('split', '')}), for a false-alarm target of "
        f"{100 * point['target_false_alarm']:.0f} %, among {chosen.get('policies_tried')} policies "
        f"over the mask shapes {', '.join(chosen.get('shapes', []))}:",
        "",
        f"- policy: detect_th {policy['detect_th']:g}, reconsider_th {policy['reconsider_th']:g}, "
        f"max_iter {policy['max_iter']}, fill {policy['fill']:g}, mask {policy['mask_shape']}:"
        f"{policy['mask_param']:g}, on_exhausted {policy['on_exhausted']};",
        f"- expected (the held-back half): threat recall "
        f"{_rate(expected['threat_recall'])}, false alarms {_rate(expected['false_alarm'])}, "
        f"mean forwards {expected['mean_forwards']:.2f}.",
        "",
    ]


def targets(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's targets, each checked against the numbers above."""
    out: list[str] = []
    shipped = runs.get("shipped")
    if shipped is None:
        return out

    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    sets = shipped["sets"]
    if "source" in sets:
        accuracy = sets["source"]["vanilla_argmax_accuracy"]
        out.append(
            f"- Source vanilla accuracy ≥ 95 %: {100 * accuracy:.1f} % — {mark(accuracy >= 0.95)}."
        )
    if "foreign" in sets:
        erasing = sets["foreign"]["erasing"]
        recall, fa = (erasing[k]["value"] or 0.0 for k in ("recall", "false_alarm"))
        balanced = (recall + 1 - fa) / 2
        out.append(
            f"- Foreign generator at the operating point, balanced accuracy ≥ 70 % and false alarms "
            f"≤ 30 %: balanced accuracy {100 * balanced:.1f} % (recall {100 * recall:.1f} %, "
            f"false alarms {100 * fa:.1f} %) — {mark(balanced >= 0.7 and fa <= 0.3)}."
        )
    if "target" in sets:
        matched = sets["target"]["matched"]
        low = matched["recall_gain_interval"][0]
        out.append(
            f"- Target, erasing's recall gain at vanilla's false-alarm rate ≥ +5 points with an "
            f"interval above 0: {_pts(matched['recall_gain'])} {_interval(matched['recall_gain_interval'])}"
            f" — {mark(matched['recall_gain'] >= 0.05 and low > 0)}."
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.training.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--eval-dir", type=Path, default=Path("eval"))
    args = parser.parse_args(argv)
    runs = {
        run: json.loads((args.eval_dir / run / "results.json").read_text())
        for run in RUNS
        if (args.eval_dir / run / "results.json").is_file()
    }
    if not runs:
        raise SystemExit(f"no <run>/results.json under {args.eval_dir} (runs: {', '.join(RUNS)})")
    lines = [
        "# Evaluation: vanilla classification vs iterative erasing",
        "",
        "Generated by `python -m worker.training.report` from the results below; every number is "
        "measured on held-out frames (seed 424242 unless a run says otherwise) that no choice was made on. "
        "Rates are shown as value [95 % Wilson interval]; gains and areas carry 95 % paired-bootstrap "
        "intervals. Recall is the share of threat frames not cleared (called a threat or left "
        "undetermined: either way a person looks at the bag); false alarms are the same share of "
        "benign frames. Vanilla at a matched false-alarm rate gets its best threshold on the "
        "held-out frames themselves, which can only favour vanilla.",
        "",
        "## How the numbers were made",
        "",
    ]
    for run, results in runs.items():
        lines.append(
            f"- {RUNS[run]} (`{results['model']['card']}`, sha256 {results['model']['sha256'][:12]}…): `{results['command']}` ({results['wall_time_s']:.0f} s)"
        )
    lines.append("")
    if "shipped" in runs:
        lines += ["## Targets", "", *targets(runs), ""]
    reading = args.eval_dir / READING_FILE
    if reading.is_file():
        lines += [reading.read_text().rstrip("\n"), ""]
    for run, results in runs.items():
        lines += [f"## {RUNS[run][0].upper()}{RUNS[run][1:]}", "", "### Operating point", ""]
        lines += operating_point_lines(results)
        lines += ["### Held-out sets", "", *set_table(results), ""]
        if any(r.get("shapes") for r in results["sets"].values()):
            lines += [
                "### Mask shapes (each at its own calibrated policy)",
                "",
                *shape_table(results),
                "",
            ]
        figures = sorted(p.name for p in (args.eval_dir / run).glob("curves-*.png"))
        lines += [f"![{name}]({run}/{name})" for name in figures]
        if (args.eval_dir / run / "montage.png").is_file():
            lines.append(f"![erasing steps]({run}/montage.png)")
        lines.append("")
    lines += ["## Where the first mask falls", "", *mask_table(runs), ""]
    rois = roi_table(args.eval_dir)
    if rois:
        lines += [
            "## The worker's ROIs on dual-view bags",
            "",
            "From `python -m worker.training.bag_eval` at each card's operating point "
            "(300 bags per domain, seed 515151).",
            "",
            *rois,
            "",
        ]
    groups = {
        f"{run}: {name}": {
            "vanilla argmax": _rate(result["vanilla_argmax"]["recall"]),
            "erasing": _rate(result["erasing"]["recall"]),
        }
        for run, results in runs.items()
        for name, result in results["sets"].items()
    }
    plot_rates(
        args.eval_dir / "recall.png", groups, "Threat recall per model and set", "threat recall"
    )
    lines += ["![recall per model and set](recall.png)", ""]
    bags = args.eval_dir / BAGS_FILE
    if bags.is_file():
        lines += render_section(json.loads(bags.read_text()))
    (args.eval_dir / "REPORT.md").write_text("\n".join(lines).rstrip("\n") + "\n")
    print(f"wrote {args.eval_dir / 'REPORT.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
