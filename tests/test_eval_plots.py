"""The evaluation's figures: each drawing function writes a PNG that decodes, at a modest size."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from worker.training.metrics import Rate, operating_curve
from worker.training.plots import montage, plot_operating_curves, plot_rates

# A figure for a Markdown report; anything much bigger means a figure size or dpi went wrong.
MAX_PNG_BYTES = 300_000


def decoded(path: Path) -> np.ndarray:
    """The PNG at `path` as a BGR image, after checking it is not oversized."""
    assert 0 < path.stat().st_size < MAX_PNG_BYTES, path.stat().st_size
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None and image.size > 0
    return image


def smooth_image(seed: int, height: int = 128, width: int = 160) -> np.ndarray:
    """A scan-like RGB image: a gradient with a few dark boxes."""
    rng = np.random.default_rng(seed)
    image = np.tile(np.linspace(120, 240, width, dtype=np.uint8), (height, 1))
    image = np.repeat(image[..., None], 3, axis=2)
    for _ in range(4):
        y, x = rng.integers(0, height - 30), rng.integers(0, width - 30)
        image[y : y + 30, x : x + 30] = rng.integers(20, 120, 3, dtype=np.uint8)
    return image


def test_montage_puts_probabilities_under_each_tile(tmp_path: Path) -> None:
    """Rows of different lengths draw as one grid; tiles keep about `scale` times the image size."""
    labels = ["benign", "gun", "knife"]
    rows = [
        {
            "title": f"row {r}",
            "images": [smooth_image(10 * r + c) for c in range(steps)],
            "probs": [np.full(3, 1 / 3) for _ in range(steps)],
        }
        for r, steps in enumerate((5, 2, 4))
    ]
    montage(tmp_path / "montage.png", rows, labels)
    image = decoded(tmp_path / "montage.png")
    assert image.shape[1] >= 5 * 160 * 2 * 0.9 and image.shape[0] >= 3 * 128 * 2


def test_montage_of_nothing_writes_nothing(tmp_path: Path) -> None:
    """No rows, no file; a row whose images and probabilities disagree is refused."""
    montage(tmp_path / "montage.png", [], ["benign"])
    assert not (tmp_path / "montage.png").exists()
    bad = {"title": "t", "images": [smooth_image(0)], "probs": []}
    with pytest.raises(ValueError, match="1 images but 0"):
        montage(tmp_path / "montage.png", [bad], ["benign"])


def test_operating_curves_with_points(tmp_path: Path) -> None:
    """Swept curves and operating points with 2-D intervals draw, with or without an explicit range."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    curve = operating_curve(rng.random(300) + 0.5 * (labels > 0), labels)
    fa, recall = Rate.of(3, 100), Rate.of(180, 200)
    points = {"erasing, target": (fa.value, recall.value, fa.interval, recall.interval)}
    curves = {"vanilla, target": curve, "vanilla, source": curve[::2]}
    plot_operating_curves(tmp_path / "zoomed.png", curves, points, "recall at matched false alarms")
    plot_operating_curves(tmp_path / "full.png", curves, {}, "curves only", fa_max=1.0)
    plot_operating_curves(tmp_path / "empty.png", {}, {}, "nothing yet")
    for name in ("zoomed", "full", "empty"):
        decoded(tmp_path / f"{name}.png")


def test_rates_as_grouped_bars(tmp_path: Path) -> None:
    """Groups with missing series and rates without trials still draw."""
    groups = {
        "target": {"vanilla": Rate.of(150, 200), "erasing": Rate.of(181, 200)},
        "source": {"vanilla": Rate.of(190, 200), "erasing": Rate.of(0, 0)},
        "bags": {"erasing": Rate.of(40, 44)},
    }
    plot_rates(tmp_path / "rates.png", groups, "threat recall per domain", "recall")
    plot_rates(tmp_path / "none.png", {}, "no groups", "recall")
    assert decoded(tmp_path / "rates.png").shape[0] > 0
    decoded(tmp_path / "none.png")


def test_plots_say_how_to_get_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without matplotlib a plot names the extra to install."""
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"install scanguard\[eval\]"):
        plot_rates(tmp_path / "rates.png", {}, "t", "y")
