"""The bag evaluation: its interval, bag rule and ROI scores on known inputs, and the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.schemas import Roi
from shared.vocab import Verdict
from tests.pipeline_fixtures import write_tiny_card
from worker.service.rois import rois_from_mask
from worker.training import bag_eval, bag_report, evaluate, report

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def roi(x: int, y: int, w: int, h: int) -> Roi:
    return Roi(x=x, y=y, w=w, h=h, peak=1.0, mean=1.0)


def test_bag_verdict_follows_the_worker_rule() -> None:
    """The evaluation uses the worker's own bag rule: any threat wins, then any undetermined, else clear."""
    clear, threat, undetermined = Verdict.CLEAR, Verdict.THREAT, Verdict.UNDETERMINED
    assert bag_eval.bag_decision([clear, undetermined, threat], 3) is threat
    assert bag_eval.bag_decision([clear, undetermined], 2) is undetermined
    assert bag_eval.bag_decision([clear, clear], 2) is clear


def test_iou_and_pointing_on_constructed_boxes() -> None:
    """A ROI half over the box has IoU 1/3; only ROIs holding the box centre point."""
    assert bag_eval.box_iou(roi(0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert bag_eval.box_iou(roi(0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert bag_eval.box_iou(roi(0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    box = (20, 20, 30, 30)  # centre (25, 25)
    top, anywhere, best = bag_eval.roi_scores([roi(0, 0, 10, 10), roi(22, 22, 4, 4)], box)
    assert (top, anywhere) == (False, True) and best == pytest.approx(16 / 100)
    assert bag_eval.roi_scores([], box) == (False, False, 0.0)


def test_rois_of_a_constructed_mask_find_the_box() -> None:
    """A 2×2 attention block on a 4×4 grid gives one ROI on the matching frame box."""
    grid = np.zeros((4, 4), np.float32)
    grid[1:3, 1:3] = 1.0  # frame pixels 10..29 on a 40×40 frame
    rois = rois_from_mask(grid, (40, 40))
    top, anywhere, best = bag_eval.roi_scores(rois, (10, 10, 30, 30))
    assert top and anywhere and best > 0.8
    assert bag_eval.roi_scores(rois, (0, 32, 8, 40))[:2] == (False, False)


def test_splice_replaces_the_section_in_place() -> None:
    """Splicing twice leaves one section, and the text around it stays."""
    text = "# Report\n\n## Before\n\nx\n\n## After\n\ny\n"
    once = bag_report.splice_section(text, [bag_report.SECTION_TITLE, "", "first", ""])
    twice = bag_report.splice_section(once, [bag_report.SECTION_TITLE, "", "second", ""])
    assert twice.count(bag_report.SECTION_TITLE) == 1
    assert "second" in twice and "first" not in twice
    assert twice.startswith(text.rstrip("\n")) and twice.index("## After") < twice.index("second")
    inside = "# R\n\n" + bag_report.SECTION_TITLE + "\n\nold\n\n## Next\n\nz\n"
    spliced = bag_report.splice_section(inside, [bag_report.SECTION_TITLE, "", "new", ""])
    assert "old" not in spliced and spliced.index("new") < spliced.index("## Next")


def test_command_runs_on_six_bags_and_survives_a_report_rerun(tmp_path: Path) -> None:
    """Six bags per domain on a tiny model write bags.json and a section the regenerated report keeps once."""
    card = write_tiny_card(tmp_path / "model")
    out = tmp_path / "eval"
    assert bag_eval.main(["--card", str(card), "--out", str(out), "--bags", "6"]) == 0
    bags = json.loads((out / "bags.json").read_text())
    assert bags["seed"] == 515151 and set(bags["domains"]) == {"source", "target"}
    for result in bags["domains"].values():
        assert result["bags"] == 6 and result["views"] == 12 and result["threat_views"] == 8
        for policy in result["policies"].values():
            assert policy["bag"]["threat_recall"]["n"] == 4
            assert policy["bag"]["false_alarm"]["n"] == 2
            assert policy["rois"]["all"]["views"] == 8
            # The any-view rule never flags fewer bags than one view alone.
            for metric in ("threat_recall", "false_alarm", "benign_review"):
                assert policy["bag"][metric]["k"] >= policy["view0"][metric]["k"]
    assert set(bags["policies"]) == {"worker", "vanilla"}
    assert (out / "REPORT.md").read_text().count(bag_report.SECTION_TITLE) == 1
    # The report is composed again from a run's results.json and bags.json, twice over.
    shipped = ["--card", str(card), "--out", str(out / "shipped"), "--data", "source:1"]
    assert evaluate.main([*shipped, "--bootstrap", "5", "--threads", "1", "--no-shapes"]) == 0
    for _ in range(2):
        assert report.main(["--eval-dir", str(out)]) == 0
        rerun = (out / "REPORT.md").read_text()
        assert rerun.startswith("# Evaluation") and rerun.count(bag_report.SECTION_TITLE) == 1
        assert rerun.count("| source | 3 |") == 1  # the run's held-out set, from results.json
        assert rerun.index("## Where the first mask falls") < rerun.index(bag_report.SECTION_TITLE)
