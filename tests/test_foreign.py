"""The foreign scanner: determinism, labels, ground truth, and a look apart from the training scanner."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from producer.foreign import DEFAULT_SIZE, LABELS, ForeignFrame, ForeignScanner
from producer.foreign.threats import GUNS, KNIVES

ROOT = Path(__file__).resolve().parent.parent
SMALL = (256, 192)


def _digest(frame: ForeignFrame) -> str:
    return hashlib.sha256(frame.image.tobytes() + frame.mask.tobytes()).hexdigest()


def _slow_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The end-exclusive bounding box of a mask, the obvious way."""
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def test_same_seed_and_index_give_identical_frames() -> None:
    """A frame depends only on seed, index and label, not on what was drawn before it."""
    first = ForeignScanner(seed=5, size=SMALL)
    second = ForeignScanner(seed=5, size=SMALL)
    second.frame(9)
    later = second.frame(4)
    earlier = first.frame(4)
    assert np.array_equal(earlier.image, later.image)
    assert np.array_equal(earlier.mask, later.mask)
    assert (earlier.box, earlier.kind, earlier.label) == (later.box, later.kind, later.label)


def test_frames_are_identical_in_another_process() -> None:
    """A fresh interpreter draws the same pixels for the same call."""
    here = _digest(ForeignScanner(seed=3, size=SMALL).frame(7))
    script = (
        "import hashlib; from producer.foreign import ForeignScanner; "
        f"f = ForeignScanner(seed=3, size={SMALL}).frame(7); "
        "print(hashlib.sha256(f.image.tobytes() + f.mask.tobytes()).hexdigest())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == here


def test_seeds_indices_and_labels_change_the_pixels() -> None:
    """Another seed, another index or another label gives another frame."""
    scanner = ForeignScanner(seed=1, size=SMALL)
    base = scanner.frame(2).image
    assert not np.array_equal(base, ForeignScanner(seed=2, size=SMALL).frame(2).image)
    assert not np.array_equal(base, scanner.frame(5).image)
    assert not np.array_equal(base, scanner.frame(2, label=0).image)


def test_frames_have_the_documented_shape() -> None:
    """Images are (H, W, 3) uint8 RGB and masks (H, W) bool, at the requested size."""
    frame = ForeignScanner(seed=0, size=SMALL).frame(1)
    width, height = SMALL
    assert frame.image.shape == (height, width, 3) and frame.image.dtype == np.uint8
    assert frame.mask.shape == (height, width) and frame.mask.dtype == np.bool_
    assert frame.index == 1
    assert ForeignScanner(seed=0).frame(0).image.shape == (DEFAULT_SIZE[1], DEFAULT_SIZE[0], 3)


def test_labels_cycle_and_can_be_overridden() -> None:
    """Frame i has label i % 3 unless a label is given."""
    scanner = ForeignScanner(seed=4, size=SMALL)
    frames = list(scanner.frames(3, 6))
    assert [f.index for f in frames] == list(range(3, 9))
    assert [f.label for f in frames] == [i % 3 for i in range(3, 9)]
    assert [f.label_name for f in frames[:3]] == list(LABELS)
    assert scanner.frame(4, label=2).label == 2
    assert scanner.frame(5, label=0).kind is None


def test_benign_frames_have_no_threat() -> None:
    """Benign frames carry no box, no kind and an empty mask."""
    for frame in ForeignScanner(seed=6, size=SMALL).frames(0, 12):
        if frame.label == 0:
            assert frame.box is None and frame.kind is None
            assert not frame.mask.any()


def test_threat_masks_are_silhouettes_inside_their_boxes() -> None:
    """A threat's mask is non-empty, bounded exactly by its box, and not a filled rectangle."""
    scanner = ForeignScanner(seed=8, size=SMALL)
    width, height = SMALL
    kinds = set()
    for index in range(24):
        frame = scanner.frame(index, label=1 + index % 2)
        assert frame.box is not None and frame.mask.any()
        assert frame.box == _slow_box(frame.mask)
        x0, y0, x1, y1 = frame.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert frame.mask.sum() < (x1 - x0) * (y1 - y0)
        assert frame.kind in (GUNS if frame.label == 1 else KNIVES)
        kinds.add(frame.kind)
    assert {"pistol", "revolver"} <= kinds
    assert len(kinds & set(KNIVES)) >= 2


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ForeignScanner(seed=-1), "seed must be >= 0, not -1"),
        (lambda: ForeignScanner(size=(63, 100)), "at least 64x64, not 63x100"),
        (lambda: ForeignScanner(size=(100, 50)), "at least 64x64, not 100x50"),
        (lambda: ForeignScanner(size=SMALL).frame(-2), "index must be >= 0, not -2"),
        (lambda: ForeignScanner(size=SMALL).frame(0, label=3), "label must be 0, 1 or 2, not 3"),
        (lambda: ForeignScanner(size=SMALL).frame(0, label=-1), "label must be 0, 1 or 2, not -1"),
    ],
)
def test_bad_arguments_name_the_bad_value(make: Callable[[], object], message: str) -> None:
    """Bad seeds, sizes, indices and labels raise ValueError saying what was wrong."""
    with pytest.raises(ValueError, match=message):
        make()


def test_look_differs_from_the_training_scanner() -> None:
    """Colour statistics set the foreign scanner apart from the synthetic one.

    The training scanner shows a warm belt and orange organics, so red outweighs blue
    on average and few pixels are grey; the foreign one shows grey displays and a
    teal-to-magenta palette, so red does not outweigh blue and most pixels are grey.
    """
    from producer.synthetic import SyntheticScanner

    def colour(images: list[np.ndarray]) -> tuple[float, float]:
        stack = np.stack(images).astype(np.float32)  # (N, H, W, 3)
        red_over_blue = float((stack[..., 0] - stack[..., 2]).mean())
        grey_share = float((np.ptp(stack, axis=-1) < 12).mean())
        return red_over_blue, grey_share

    count = 18
    foreign = colour([f.image for f in ForeignScanner(seed=2, size=SMALL).frames(0, count)])
    synthetic = colour(
        [f.image for f in SyntheticScanner("source", seed=2, size=SMALL).frames(0, count)]
    )
    assert foreign[0] < synthetic[0] - 25.0
    assert foreign[1] > synthetic[1] + 0.25


def test_foreign_scanner_shares_no_code_with_the_training_scanner() -> None:
    """No module of producer.foreign imports producer.synthetic, anywhere in the file."""
    for path in sorted((ROOT / "producer" / "foreign").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                package = ["producer", "foreign"][: 3 - node.level] if node.level else []
                names = [".".join([*package, node.module or ""])]
            else:
                continue
            assert not any(name.startswith("producer.synthetic") for name in names), path.name
