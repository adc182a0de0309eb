"""The "Bags and views" section of eval/REPORT.md, written from eval/bags.json.

`python -m worker.training.bag_eval` measures; this module only turns its numbers into
tables and a reading, so a rerun can never leave stale words behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from producer.synthetic import DEFAULT_SIZE

BAGS_FILE = "bags.json"
SECTION_TITLE = "## Bags and views"
LEVELS = {"bag": "bag (both views)", "view0": "view 0 (top) alone", "view1": "view 1 (side) alone"}
POLICY_NAMES = {"worker": "worker (settings as loaded)", "vanilla": "vanilla argmax"}


def _cell(entry: dict[str, Any]) -> str:
    if entry["rate"] is None:
        return "n/a"
    rate, lo, hi = (100 * entry[k] for k in ("rate", "lo", "hi"))
    return f"{rate:.1f} [{lo:.1f}, {hi:.1f}] ({entry['k']}/{entry['n']})"


def _ci(entry: dict[str, Any]) -> str:
    if entry["rate"] is None:
        return "n/a"
    rate, lo, hi = (100 * entry[k] for k in ("rate", "lo", "hi"))
    return f"{rate:.1f} % ({lo:.1f}–{hi:.1f})"


def _decision_table(result: dict[str, Any]) -> list[str]:
    metrics = ("threat_recall", "threat_review", "false_alarm", "benign_review")
    head = ["policy", "decided on", "threat recall %", "threat sent to review %"]
    head += ["false alarms %", "benign sent to review %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, name in POLICY_NAMES.items():
        for level, where in LEVELS.items():
            m = result["policies"][key][level]
            lines.append("| " + " | ".join([name, where, *(_cell(m[k]) for k in metrics)]) + " |")
    return lines


def _roi_table(result: dict[str, Any]) -> list[str]:
    head = ["policy", "threat views", "top ROI on centre %", "any ROI on centre %", "mean best IoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, name in POLICY_NAMES.items():
        for split in ("all", "occluded", "plain"):
            q = result["policies"][key]["rois"][split]
            iou = "n/a" if q["mean_best_iou"] is None else f"{q['mean_best_iou']:.3f}"
            extra = f", {q['without_roi']} without ROI" if q["without_roi"] else ""
            cells = [name, f"{split} ({q['views']}{extra})"]
            cells += [_cell(q["pointing_top"]), _cell(q["pointing_any"]), iou]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _domain_reading(domain: str, result: dict[str, Any]) -> list[str]:
    worker, vanilla = result["policies"]["worker"], result["policies"]["vanilla"]
    out = [
        f"- {domain.capitalize()}: from view 0 alone to the bag, false alarms go "
        f"{_ci(worker['view0']['false_alarm'])} → {_ci(worker['bag']['false_alarm'])} at the worker "
        f"policy and {_ci(vanilla['view0']['false_alarm'])} → {_ci(vanilla['bag']['false_alarm'])} "
        f"at vanilla argmax; threat recall goes {_ci(worker['view0']['threat_recall'])} → "
        f"{_ci(worker['bag']['threat_recall'])} and {_ci(vanilla['view0']['threat_recall'])} → "
        f"{_ci(vanilla['bag']['threat_recall'])}."
    ]
    benign, threat = worker["bag"]["benign_review"]["rate"], worker["bag"]["threat_review"]["rate"]
    if benign is not None and threat is not None and benign >= 0.9:
        out.append(
            f"  At the worker policy {100 * benign:.1f} % of benign bags and {100 * threat:.1f} % of "
            "threat bags go to review: at these thresholds, being sent to review says little "
            "about whether a bag holds a threat."
        )
    rois, plain = worker["rois"], vanilla["rois"]
    out.append(
        f"  The worker's top ROI holds the threat's centre in {_ci(rois['all']['pointing_top'])} of "
        f"threat views (occluded {_ci(rois['occluded']['pointing_top'])}, plain "
        f"{_ci(rois['plain']['pointing_top'])}), mean best IoU {rois['all']['mean_best_iou']:.2f}; "
        f"the attention of one forward on the original (vanilla) scores "
        f"{_ci(plain['all']['pointing_top'])}, IoU {plain['all']['mean_best_iou']:.2f}."
    )
    return out


def _reading(report: dict[str, Any]) -> list[str]:
    """Sentences computed from the numbers, so a rerun cannot leave stale words behind."""
    out = [
        "Reading (written from the numbers above by the command):",
        "",
        "- The any-view rule can only add alarms: a bag's recall and false alarms are never "
        "below view 0's. The question is how many false alarms the second view adds.",
    ]
    for domain, result in report["domains"].items():
        out += _domain_reading(domain, result)
    out += [
        "- The model was trained on single frames of the source domain only "
        "(`SyntheticScanner`). Bag views are 3-D arrangements projected from the top and the "
        "side, so even source bags are not the frames it learned from; compare the false alarms "
        "above with the single-frame held-out tables earlier in this report. On target bags the "
        "false-alarm rates above say how far the model is from usable there; no threshold was "
        "tuned on these bags to hide it.",
        "- ROI boxes come from an attention mask on the model's patch grid, upsampled to the frame, "
        "so they are coarse, and a best IoU well below 0.5 is to be read as such. Why occluded "
        "views score as they do was not examined.",
    ]
    return out


def render_section(report: dict[str, Any]) -> list[str]:
    """The "Bags and views" section of REPORT.md, as lines."""
    worker = report["policies"]["worker"]
    out = [
        SECTION_TITLE,
        "",
        f"Command: `{report['command']}` ({report['wall_time_s']:.0f} s, "
        f"{report['environment']['threads']} torch thread(s)). Model `{report['model']['name']}` "
        f"(sha256 `{report['model']['sha256'][:16]}…`).",
        "",
        f"- Dual-view synthetic bags (`SyntheticBagScanner`, top and side views, {DEFAULT_SIZE[0]}×"
        f"{DEFAULT_SIZE[1]}), scanner seed **{report['seed']}**, held out: no training, "
        "validation or tuning used it, and nothing was chosen on it.",
        "- Worker policy: the worker's settings as loaded (by default the card's operating "
        "point; `SCANGUARD_ERASING__PRESET=seed` gives the seed's thresholds): detect_th "
        "{detect_th:g}, reconsider_th {reconsider_th:g}, max_iter {max_iter}, fill {fill:g}, mask {mask_shape}:{mask_param:g}, on_exhausted "
        "{on_exhausted}.".format(**{"mask_shape": "rollout", "mask_param": 1.0, **worker}),
        "- Every view is decided by the erasing engine. A bag is a threat if any view is, else "
        "undetermined if any view is, else clear; *sent to review* means not clear (threat or "
        "undetermined). Recall counts a threat bag decided threat, whatever class was named; "
        "bags.json also has the share that named the true class.",
        "- ROIs are the worker's (`rois_from_mask` on the final attention mask, threshold "
        f"{report['rois']['threshold']:g}, at most {report['rois']['max_rois']}, largest first), "
        "scored on every view with a threat box. Pointing game: the top ROI holds the box centre; "
        "IoU: the best-matching ROI against the box (0 when there is no ROI). *Occluded*: over "
        "60 % of the threat's footprint lies under dense other items.",
        "- Shares in percent with 95 % Wilson score intervals in brackets, then counts.",
        "",
    ]
    for domain, result in report["domains"].items():
        seconds = ", ".join(f"{k} {v:.1f} s" for k, v in result["seconds"].items())
        classes = ", ".join(f"{n} {c}" for n, c in result["per_class"].items())
        out += [
            f"### {domain.capitalize()} domain ({result['bags']} bags: {classes}; "
            f"{result['views']} views, {result['threat_views']} with a threat, "
            f"{result['occluded_views']} occluded)",
            "",
            *_decision_table(result),
            "",
            *_roi_table(result),
            "",
            f"Time: {seconds}. Mean forwards per view: worker "
            f"{result['policies']['worker']['mean_forwards']:.2f}, vanilla "
            f"{result['policies']['vanilla']['mean_forwards']:.2f}.",
            "",
        ]
    return [*out, *_reading(report), ""]


def splice_section(text: str, section: Sequence[str]) -> str:
    """Replace the section in a report (up to the next `## ` heading), or append it."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION_TITLE), None)
    if start is None:
        lines = [*lines, ""] if lines and lines[-1] else lines
        return "\n".join([*lines, *section]) + "\n"
    after = (j for j in range(start + 1, len(lines)) if lines[j].startswith("## "))
    end = next(after, len(lines))
    return "\n".join([*lines[:start], *section, *lines[end:]]) + "\n"
