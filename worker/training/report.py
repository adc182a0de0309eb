"""The evaluation's REPORT.md, written from the results dictionary the evaluate command builds."""

from __future__ import annotations

import json
from pathlib import Path

from worker.training.bag_report import BAGS_FILE, render_section


def _pct(value: object) -> str:
    number = float(value)  # type: ignore[arg-type]
    return "n/a" if number != number else f"{100 * number:.1f}"


def _policy_text(policy: dict) -> str:
    return (
        f"detect_th {policy['detect_th']:g}, reconsider_th {policy['reconsider_th']:g}, max_iter "
        f"{policy['max_iter']}, fill {policy['fill']:g}, on_exhausted {policy['on_exhausted']}"
    )


def _metrics_table(result: dict, labels: list[str]) -> list[str]:
    threat_names = [name for name in labels if name in result["vanilla"]["recall"]]
    head = [
        "method",
        *[f"{n} recall %" for n in threat_names],
        "mean recall %",
        "false alarms %",
        "undetermined % (benign / threat)",
        "mean iterations",
        "mean forwards",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    tuned = result["vanilla_tuned"]
    seed = result["seed_defaults"]
    rows = [
        ("vanilla (one forward, argmax)", result["vanilla"]),
        (f"vanilla, threat if P > {tuned['threshold']:g} (threshold chosen on validation)", tuned),
        ("**iterative erasing (chosen on validation)**", result["erasing"]),
        (f"iterative erasing, seed thresholds ({_policy_text(seed['policy'])})", seed),
    ]
    for name, m in rows:
        cells = [
            name,
            *[_pct(m["recall"][n]) for n in threat_names],
            _pct(m["mean_recall"]),
            _pct(m["false_alarm_rate"]),
            f"{_pct(m['undetermined_benign'])} / {_pct(m['undetermined_threat'])}",
            f"{m['mean_iterations']:.2f}",
            f"{m['mean_forwards']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _calibration_table(rows: list[dict], labels: list[str]) -> list[str]:
    head = [
        "erasing step",
        *[f"benign called {n} %" for n in labels],
        "benign mean P(threat)",
        "threat frames argmax correct %",
        "threat frames mean P(true class)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            str(row["step"]),
            *[_pct(row[f"benign_called_{n}"]) for n in labels],
            f"{row['benign_mean_threat_p']:.3f}",
            _pct(row["threat_argmax_correct"]),
            f"{row['threat_mean_true_p']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(path: Path, report: dict) -> None:
    """Render the results as Markdown tables with a short reading guide."""
    held = report["held_out"]
    val = report["validation"]
    labels = ["benign", "gun", "knife"]
    chosen = report["chosen_policy"]
    out = [
        "# Evaluation: vanilla classification vs iterative erasing",
        "",
        f"Model `{report['model']['name']}` (sha256 `{report['model']['sha256'][:16]}…`, input "
        f"{report['model']['input_hw'][0]}×{report['model']['input_hw'][1]}, card fill {report['model']['card_fill']:g}).",
        "",
        f"Command: `{report['command']}` ({report['wall_time_s']:.0f} s, "
        f"{report['environment']['threads']} torch thread(s), torch {report['environment']['torch']}).",
        "",
        "## How the numbers were made",
        "",
        f"- Thresholds and fill were chosen on a **validation** set: {val['frames']} frames of the "
        f"{val['domain']} domain, scanner seed {val['seed']}. Rule: highest mean threat recall whose false-alarm "
        f"rate is at most vanilla argmax's + margin on that set (budget {_pct(val['far_budget'])} %); ties go to "
        "fewer forward passes. Fills tried: " + ", ".join(f"{f:g}" for f in val["fills"]) + ".",
        f"- Chosen policy: {_policy_text(chosen)} (the original image is not judged, as in the seed).",
        "- The **held-out** sets below use a scanner seed never used for training, validation or development.",
        "- A threat frame of class c is detected when the verdict is *threat* and c is among the detected "
        "classes; a benign frame is a false alarm when the verdict is *threat*. Rates are in percent.",
        "- Every number comes from the erasing engine (`worker.engine.erasing.ErasingEngine`). Sweep points are "
        "replayed from full probability traces with the engine's own decision function; the chosen policy "
        "was also run directly (agreement with its replay is listed per domain).",
        "",
    ]
    for domain, result in held.items():
        vanilla, erasing = result["vanilla"], result["erasing"]
        d_recall = 100 * (erasing["mean_recall"] - vanilla["mean_recall"])
        d_far = 100 * (erasing["false_alarm_rate"] - vanilla["false_alarm_rate"])
        out += [
            f"## Held-out {domain} domain ({result['frames']} frames, seed {result['seed']})",
            "",
            *_metrics_table(result, labels),
            "",
            f"Erasing vs vanilla argmax: mean threat recall {d_recall:+.1f} points, false-alarm rate "
            f"{d_far:+.1f} points. Vanilla argmax accuracy (3 classes): {_pct(result['vanilla_argmax_accuracy'])} %. "
            f"Replay agreement: {_pct(result['replay_agreement'])} %. Engine time: vanilla "
            f"{result['seconds']['vanilla']:.1f} s, erasing {result['seconds']['erasing']:.1f} s.",
            "",
        ]
    out += [
        "## Calibration on erased images (validation set, attention-driven erasing)",
        "",
        "How the model calls frames after each erasing step when nothing stops the iteration, for every fill "
        "tried. A model that treats darkness as metal calls benign frames *gun* after a few dark-fill steps.",
        "",
    ]
    for fill, info in val["per_fill"].items():
        out += [f"Fill {fill}:", "", *_calibration_table(info["calibration_by_step"], labels), ""]
    out += [
        "## Figures",
        "",
        "- `sweep.png`: mean threat recall vs false-alarm rate on the held-out sets for every swept "
        "(detect_th, reconsider_th, max_iter) with the chosen fill (dots, coloured by max_iter), vanilla with its "
        "detection threshold swept (grey line), vanilla argmax (square) and the validation-chosen policy (star).",
        "- `montage.png`: held-out target frames, original then each erasing step, with P(class) under each image.",
        "",
        "## Synthetic scanner speed",
        "",
        "Frames per second on one core, 512×384 frames: "
        + (
            ", ".join(f"{d} {v:.0f}" for d, v in report["generator_frames_per_s_one_core"].items())
            or "not measured"
        )
        + ".",
        "",
    ]
    # The bag evaluation is a separate command; its section outlives reruns of this one.
    bags = path.parent / BAGS_FILE
    if bags.exists():
        out += render_section(json.loads(bags.read_text()))
    path.write_text("\n".join(out))
