"""Look augmentation: a new scanner look for each training sample, drawn on the fly.

The "randomised" domain draws a look (palette, physics, detector, display) per frame when
the frame set is made, so a model meets each drawn look once per epoch. This draws
another, cheaper one on every pass, on the batch tensors: a zoom and shift (threat size
and position), a colour map mixed towards a random one or to grey, a tone curve
(gamma, contrast, brightness), detector blur and noise. The threat masks follow the
geometry, so the erasing augmentation and attention guidance still know where the
threat is.

All random numbers come from a CPU generator, so a run draws the same looks on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LookRanges:
    """How far each part of the look is drawn from the frame's own (each applied with
    probability `prob`, independently, per sample)."""

    prob: float = 0.5
    zoom: tuple[float, float] = (0.8, 1.25)  # scale of the content; >1 enlarges
    aspect: tuple[float, float] = (0.9, 1.1)  # extra horizontal stretch
    shift: float = 0.1  # fraction of the frame, each way
    colour_mix: tuple[float, float] = (0.2, 0.8)  # weight of a random colour map
    grey_share: float = 0.3  # of the colour draws, the share that go grey instead
    log_gamma: tuple[float, float] = (-0.5, 0.5)
    contrast: tuple[float, float] = (0.7, 1.3)
    brightness: tuple[float, float] = (-0.1, 0.1)
    blur_sigma: tuple[float, float] = (0.3, 1.2)  # pixels at the model's input size
    noise_sigma: tuple[float, float] = (0.01, 0.05)


def look_augment(
    images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator, ranges: LookRanges
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample with a freshly drawn look; returns the images and their threat masks.

    Args:
        images: (B, 3, H, W) pixels in [0, 1].
        masks: (B, H, W) bool threat masks.
        gen: CPU generator every draw comes from.
        ranges: how wide the draws are; `ranges.prob == 0` returns the inputs unchanged.
    """
    if ranges.prob <= 0 or len(images) == 0:
        return images, masks
    images, masks = _geometry(images, masks, gen, ranges)
    images = _colour(images, gen, ranges)
    images = _tone(images, gen, ranges)
    images = _blur(images, gen, ranges)
    images = _noise(images, gen, ranges)
    return images.clamp_(0.0, 1.0), masks


def _chosen(gen: torch.Generator, batch: int, prob: float) -> torch.Tensor:
    return torch.rand(batch, generator=gen) < prob  # (B,) on the CPU


def _between(gen: torch.Generator, span: tuple[float, float], *shape: int) -> torch.Tensor:
    low, high = span
    return low + (high - low) * torch.rand(shape, generator=gen)


def _where_chosen(
    images: torch.Tensor, on: torch.Tensor, change: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """`images` with `change` applied to the chosen samples only (the rest cost nothing)."""
    if not bool(on.any()):
        return images
    rows = on.nonzero()[:, 0].to(images.device)
    out = images.clone()
    out[rows] = change(images[rows])
    return out


def _geometry(
    images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator, ranges: LookRanges
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom, stretch and shift; pixels brought in from outside repeat the frame's border."""
    batch = len(images)
    on = _chosen(gen, batch, ranges.prob)
    zoom = _between(gen, ranges.zoom, batch)
    aspect = _between(gen, ranges.aspect, batch)
    shift = _between(gen, (-ranges.shift, ranges.shift), batch, 2) * 2  # normalised coords
    theta = torch.zeros(batch, 2, 3)  # output coordinates → input coordinates
    theta[:, 0, 0] = 1.0 / (zoom * aspect)
    theta[:, 1, 1] = 1.0 / zoom
    theta[:, :, 2] = shift
    theta = theta[on].to(images.device)
    if len(theta) == 0:
        return images, masks
    shape = [len(theta), *images.shape[1:]]
    grid = F.affine_grid(theta, shape, align_corners=False)

    def move_images(chosen: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(
            chosen, grid, mode="bilinear", padding_mode="border", align_corners=False
        )

    def move_masks(chosen: torch.Tensor) -> torch.Tensor:
        moved = F.grid_sample(
            chosen[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
        )
        return moved[:, 0] > 0.5

    return _where_chosen(images, on, move_images), _where_chosen(masks, on, move_masks)


def _colour(images: torch.Tensor, gen: torch.Generator, ranges: LookRanges) -> torch.Tensor:
    """Mix each pixel's colour towards a random colour map (rows of a random stochastic
    matrix), or towards its grey level."""
    batch = len(images)
    on = _chosen(gen, batch, ranges.prob)
    grey = _chosen(gen, batch, ranges.grey_share)
    weight = _between(gen, ranges.colour_mix, batch)
    random_map = torch.rand(batch, 3, 3, generator=gen)
    random_map = random_map / random_map.sum(dim=2, keepdim=True)  # each output a mix of inputs
    target = torch.where(grey.view(-1, 1, 1), torch.full((batch, 3, 3), 1.0 / 3.0), random_map)
    identity = torch.eye(3).expand(batch, 3, 3)
    matrix = (identity + weight.view(-1, 1, 1) * (target - identity))[on]  # (b, 3, 3)
    matrix = matrix.to(images.device)
    return _where_chosen(images, on, lambda x: torch.einsum("boc,bchw->bohw", matrix, x))


def _tone(images: torch.Tensor, gen: torch.Generator, ranges: LookRanges) -> torch.Tensor:
    """A gamma curve, then contrast about the frame's mean and a brightness offset."""
    batch = len(images)
    on = _chosen(gen, batch, ranges.prob)
    gamma = torch.exp(_between(gen, ranges.log_gamma, batch))[on]
    contrast = _between(gen, ranges.contrast, batch)[on]
    offset = _between(gen, ranges.brightness, batch)[on]

    def tone(chosen: torch.Tensor) -> torch.Tensor:
        device = chosen.device
        curved = chosen.clamp_min(1e-4).pow(gamma.to(device).view(-1, 1, 1, 1))
        mean = curved.mean(dim=(1, 2, 3), keepdim=True)
        scale = contrast.to(device).view(-1, 1, 1, 1)
        return (curved - mean) * scale + mean + offset.to(device).view(-1, 1, 1, 1)

    return _where_chosen(images, on, tone)


def _blur(images: torch.Tensor, gen: torch.Generator, ranges: LookRanges) -> torch.Tensor:
    """A Gaussian blur of a drawn width (the detector's spread), separable, per sample."""
    batch = len(images)
    on = _chosen(gen, batch, ranges.prob)
    sigma = _between(gen, ranges.blur_sigma, batch)[on]
    radius = round(3 * ranges.blur_sigma[1])
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (b, taps)

    def blur(chosen: torch.Tensor) -> torch.Tensor:
        count, channels, rows, cols = chosen.shape
        weights = kernel.to(chosen.device).repeat_interleave(channels, dim=0)  # (b·3, taps)
        flat = chosen.reshape(1, count * channels, rows, cols)
        flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
        flat = F.conv2d(flat, weights.view(-1, 1, 1, 2 * radius + 1), groups=count * channels)
        flat = F.conv2d(flat, weights.view(-1, 1, 2 * radius + 1, 1), groups=count * channels)
        return flat.view(count, channels, rows, cols)

    return _where_chosen(images, on, blur)


def _noise(images: torch.Tensor, gen: torch.Generator, ranges: LookRanges) -> torch.Tensor:
    """Grey detector noise whose spread grows with the signal, as photon noise does."""
    batch, _, rows, cols = images.shape
    on = _chosen(gen, batch, ranges.prob)
    sigma = _between(gen, ranges.noise_sigma, batch)[on]
    normal = torch.randn(int(on.sum()), 1, rows, cols, generator=gen)

    def add_noise(chosen: torch.Tensor) -> torch.Tensor:
        spread = sigma.to(chosen.device).view(-1, 1, 1, 1) * normal.to(chosen.device)
        return chosen + spread * chosen.mean(dim=1, keepdim=True).clamp_min(0.05).sqrt()

    return _where_chosen(images, on, add_noise)
