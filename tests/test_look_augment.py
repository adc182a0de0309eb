"""The look augmentation: drawn looks stay images, masks follow the geometry, off is off."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from worker.training.augment import LookRanges, look_augment  # noqa: E402 - needs torch

# Every part of the look left neutral: each test turns on the part it is about.
NEUTRAL = LookRanges(
    prob=1.0,
    zoom=(1.0, 1.0),
    aspect=(1.0, 1.0),
    shift=0.0,
    colour_mix=(0.0, 0.0),
    grey_share=0.0,
    log_gamma=(0.0, 0.0),
    contrast=(1.0, 1.0),
    brightness=(0.0, 0.0),
    blur_sigma=(1e-3, 1e-3),
    noise_sigma=(0.0, 0.0),
)


def squares(batch: int = 8, rows: int = 48, cols: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark frames, each with one bright coloured square that is also its threat mask."""
    gen = torch.Generator().manual_seed(3)
    images = torch.full((batch, 3, rows, cols), 0.1)
    masks = torch.zeros(batch, rows, cols, dtype=torch.bool)
    for i in range(batch):
        top = int(torch.randint(8, rows - 20, (1,), generator=gen))
        left = int(torch.randint(8, cols - 20, (1,), generator=gen))
        images[i, :, top : top + 12, left : left + 12] = torch.tensor([0.9, 0.6, 0.3]).view(3, 1, 1)
        masks[i, top : top + 12, left : left + 12] = True
    return images, masks


def test_off_returns_the_inputs_and_draws_nothing() -> None:
    """prob 0 leaves the batch alone and the generator untouched, so runs without it
    are the runs they were before it existed."""
    images, masks = squares()
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    out, out_masks = look_augment(images, masks, gen, LookRanges(prob=0.0))
    assert out is images and out_masks is masks
    assert torch.equal(gen.get_state(), state)


def test_the_same_seed_draws_the_same_looks_and_pixels_stay_in_range() -> None:
    images, masks = squares()
    first = look_augment(images, masks, torch.Generator().manual_seed(1), LookRanges(prob=0.7))
    second = look_augment(images, masks, torch.Generator().manual_seed(1), LookRanges(prob=0.7))
    other = look_augment(images, masks, torch.Generator().manual_seed(2), LookRanges(prob=0.7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])
    assert first[0].shape == images.shape and first[1].shape == masks.shape
    assert float(first[0].min()) >= 0.0 and float(first[0].max()) <= 1.0
    # The inputs are not written to.
    assert torch.equal(images, squares()[0])


def test_the_threat_mask_moves_with_the_threat() -> None:
    """After a zoom and shift, the mask covers the moved bright square and little else."""
    images, masks = squares()
    ranges = dataclasses.replace(NEUTRAL, zoom=(0.7, 1.3), aspect=(0.9, 1.1), shift=0.15)
    moved, moved_masks = look_augment(images, masks, torch.Generator().manual_seed(4), ranges)
    bright = moved[:, 0] > 0.5  # (B, H, W): where the square landed
    assert not torch.equal(moved_masks, masks)
    for i in range(len(images)):
        overlap = (bright[i] & moved_masks[i]).sum()
        union = (bright[i] | moved_masks[i]).sum()
        assert union > 0 and float(overlap) / float(union) > 0.8


def test_grey_draws_make_the_channels_equal_and_keep_the_grey_level() -> None:
    images, masks = squares()
    ranges = dataclasses.replace(NEUTRAL, colour_mix=(1.0, 1.0), grey_share=1.0)
    grey, _ = look_augment(images, masks, torch.Generator().manual_seed(6), ranges)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    assert torch.allclose(grey[:, 0], images.mean(dim=1), atol=1e-6)


def test_blur_keeps_the_mean_and_spreads_an_edge() -> None:
    images, masks = squares()
    ranges = dataclasses.replace(NEUTRAL, blur_sigma=(1.0, 1.0))
    blurred, same_masks = look_augment(images, masks, torch.Generator().manual_seed(7), ranges)
    assert torch.equal(same_masks, masks)
    assert torch.allclose(blurred.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=1e-4)

    # The square's edge spreads: fewer pixels keep the background level exactly.
    def background(x: torch.Tensor) -> int:
        return int((x[:, 0] - 0.1).abs().lt(1e-4).sum())

    assert background(blurred) < background(images)
