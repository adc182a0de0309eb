"""The synthetic scanner: determinism, ground truth and domains."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from producer.synthetic import LABELS, SyntheticFrame, SyntheticScanner

SMALL = (192, 144)


def test_same_seed_and_index_give_identical_frames() -> None:
    """A frame depends only on domain, seed and index, not on call order."""
    first = SyntheticScanner("target", seed=5, size=SMALL)
    second = SyntheticScanner("target", seed=5, size=SMALL)
    later = second.frame(4)
    earlier = first.frame(4)
    assert np.array_equal(earlier.image, later.image)
    assert np.array_equal(earlier.mask, later.mask)
    assert earlier.box == later.box and earlier.kind == later.kind


def test_different_seeds_and_domains_differ() -> None:
    """Changing the seed or the domain changes the pixels."""
    base = SyntheticScanner("source", seed=1, size=SMALL).frame(2).image
    assert not np.array_equal(base, SyntheticScanner("source", seed=2, size=SMALL).frame(2).image)
    assert not np.array_equal(base, SyntheticScanner("target", seed=1, size=SMALL).frame(2).image)


def test_frame_shape_dtype_and_default_labels_cycle() -> None:
    """Frames are (H, W, 3) uint8 RGB at the asked size, labelled index % 3."""
    scanner = SyntheticScanner("source", seed=0, size=SMALL)
    frames = list(scanner.frames(0, 6))
    assert [f.label for f in frames] == [0, 1, 2, 0, 1, 2]
    for frame in frames:
        assert isinstance(frame, SyntheticFrame)
        assert frame.image.shape == (144, 192, 3) and frame.image.dtype == np.uint8
        assert frame.mask.shape == (144, 192) and frame.mask.dtype == bool
        assert frame.domain == "source" and frame.label_name == LABELS[frame.label]


@pytest.mark.parametrize("domain", ["source", "target", "randomised"])
def test_ground_truth_box_bounds_the_threat_mask(domain: str) -> None:
    """Threat frames carry a box that is exactly the mask's bounding box; benign frames none."""
    scanner = SyntheticScanner(domain, seed=3, size=SMALL)
    for index in range(9):
        frame = scanner.frame(index)
        if frame.label == 0:
            assert frame.box is None and frame.kind is None and not frame.mask.any()
            continue
        rows, cols = np.nonzero(frame.mask)
        assert frame.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert frame.kind is not None


def test_threat_pixels_are_darker_than_the_empty_belt() -> None:
    """The threat attenuates: its pixels are darker on average than the frame's light background."""
    frame = SyntheticScanner("source", seed=9, size=SMALL).frame(1)
    grey = frame.image.astype(np.float32).mean(axis=-1)
    assert grey[frame.mask].mean() < np.percentile(grey, 95) - 40


def test_target_threats_are_smaller_and_bags_denser_than_source() -> None:
    """The target domain shows smaller threats inside more cluttered (darker) bags."""

    def stats(domain: str) -> tuple[float, float]:
        frames = [SyntheticScanner(domain, seed=4, size=SMALL).frame(i) for i in range(1, 13)]
        area = np.mean([f.mask.mean() for f in frames if f.label != 0])
        darkness = np.mean([255 - f.image.mean() for f in frames])
        return float(area), float(darkness)

    source_area, source_dark = stats("source")
    target_area, target_dark = stats("target")
    assert target_area < source_area
    assert target_dark > source_dark


def test_label_override_and_bad_arguments() -> None:
    """A label can be forced per frame; unknown domains, labels and indices are refused."""
    scanner = SyntheticScanner("source", seed=0, size=SMALL)
    assert scanner.frame(0, label=2).label == 2
    with pytest.raises(ValueError, match="domain"):
        SyntheticScanner("web")
    with pytest.raises(ValueError, match="label"):
        scanner.frame(0, label=3)
    with pytest.raises(ValueError, match="index"):
        scanner.frame(-1)


def test_iterator_starts_at_frame_zero() -> None:
    """Iterating a scanner yields frame 0, 1, 2, ... in order."""
    scanner = SyntheticScanner("target", seed=2, size=SMALL)
    stream = iter(scanner)
    for index in range(3):
        assert np.array_equal(next(stream).image, scanner.frame(index).image)


def test_producer_generator_does_not_import_torch() -> None:
    """The generator modules stay free of torch, like the rest of the producer."""
    for path in (Path(__file__).resolve().parent.parent / "producer").glob("synthetic*.py"):
        tree = ast.parse(path.read_text())
        names = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not any(name.split(".")[0] == "torch" for name in names), path


def test_randomised_domain_draws_a_new_look_per_frame() -> None:
    """The randomised domain is reproducible per index, yet varies size, aspect and palette."""
    scanner = SyntheticScanner("randomised", seed=4, size=SMALL)
    frames = [scanner.frame(i) for i in range(24)]
    again = SyntheticScanner("randomised", seed=4, size=SMALL).frame(7)
    assert np.array_equal(again.image, frames[7].image)
    sizes = {f.image.shape[:2] for f in frames}
    assert len(sizes) > 12  # size and aspect are drawn per frame
    for frame in frames:
        assert frame.image.dtype == np.uint8 and frame.mask.shape == frame.image.shape[:2]
    # The empty belt's colour differs between frames (palette, white point, inversion).
    corners = np.array([f.image[:3, :3].reshape(-1, 3).mean(axis=0) for f in frames])
    assert np.ptp(corners, axis=0).max() > 60
    grey = [bool(np.all(f.image[..., 0] == f.image[..., 1])) for f in frames]
    assert 0 < sum(grey) < len(grey)  # a fifth of the looks are grey displays


def test_a_tinted_grey_display_shades_one_hue_from_the_belt_white() -> None:
    """A tinted single-energy look keeps the belt at its white point and darkens every
    pixel along one line from white towards the tint, so hue is constant and only depth varies."""
    from dataclasses import replace

    from producer.synthetic.looks import random_look, render_look
    from producer.synthetic.render import Canvas

    canvas = Canvas(48, 64)
    canvas.high[10:30, 10:50] = np.linspace(0.2, 3.0, 40, dtype=np.float32)
    canvas.low[10:30, 10:50] = canvas.high[10:30, 10:50] * 1.2
    look = replace(
        random_look(np.random.default_rng(3)),
        grey=True,
        tint=np.array([20.0, 110.0, 150.0]),
        white=np.array([250.0, 250.0, 250.0]),
        inverted=False,
        channels=(0, 1, 2),
        blur=0.0,
        noise=0.0,
        banding=0.0,
        pitch=1.0,
        gamma=1.0,
        contrast=1.0,
        jpeg_quality=None,
    )
    image = render_look(canvas, np.random.default_rng(0), look).astype(float)
    assert np.abs(image[40, 60] - 250.0).max() <= 8  # empty belt: near the white point
    bag = image[15, 10:50]
    depth = (250.0 - bag) / (250.0 - look.tint)  # the same share on every channel
    assert np.ptp(depth, axis=1).max() < 0.05
    assert depth[:, 0].max() - depth[:, 0].min() > 0.3  # thicker matter, deeper shade
    assert not np.all(image[..., 0] == image[..., 1])  # not a plain grey display
