"""Frame sets at the model's input size, and the erasing augmentation.

Both the training and the evaluation commands get their frames here, so they resize the
scanner's frames the same way, with the engine's `to_model_input` (the worker uses it too).
A data spec names where frames come from:

    source:3000           3000 frames per class of the synthetic "source" domain
    randomised:12000      ... of the "randomised" domain (any `producer.synthetic` domain)
    foreign:300           ... of the independent generator `producer.foreign` (never trained on)
    imagefolder:DIR       every JPEG/PNG/DICOS under DIR/<label>/, one sub-folder per card label

Generated frames carry the threat's mask; a folder's frames carry none (all False).
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from producer.synthetic import DEFAULT_SIZE, DOMAINS, LABELS, SyntheticScanner
from worker.engine.preprocess import to_model_input


@dataclass(frozen=True, eq=False)
class FrameSet:
    """Frames resized to the model input, with labels and threat masks at that size."""

    images: np.ndarray  # (N, rows, cols, 3) uint8 RGB
    labels: np.ndarray  # (N,) int64
    masks: np.ndarray  # (N, rows, cols) bool
    domain: str
    seed: int
    indices: np.ndarray  # (N,) scanner frame index of each entry

    def __len__(self) -> int:
        return len(self.labels)


def generate_set(
    domain: str,
    seed: int,
    per_class: int,
    input_hw: tuple[int, int],
    frame_size: tuple[int, int] = DEFAULT_SIZE,
    start: int = 0,
    workers: int = 1,
) -> FrameSet:
    """`per_class` frames of each class (scanner indices start .. start + 3·per_class − 1).

    With `workers` > 1 the index range is split over that many processes; a frame depends
    only on its index, so the set is the same for any number of workers.
    """
    count = 3 * per_class
    if workers > 1 and count >= 2 * workers:
        bounds = np.linspace(start, start + count, workers + 1).astype(int)
        jobs = [
            (domain, seed, input_hw, frame_size, int(lo), int(hi))
            for lo, hi in itertools.pairwise(bounds)
        ]
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            parts = list(pool.map(_render_range, *zip(*jobs, strict=True)))
    else:
        parts = [_render_range(domain, seed, input_hw, frame_size, start, start + count)]
    images, masks, labels = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    return FrameSet(images, labels, masks, domain, seed, np.arange(start, start + count))


def _render_range(
    domain: str,
    seed: int,
    input_hw: tuple[int, int],
    frame_size: tuple[int, int],
    first: int,
    end: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames first .. end − 1 at the model input: images, threat masks, labels."""
    cv2.setNumThreads(1)
    scanner = make_scanner(domain, seed, frame_size)
    rows, cols = input_hw
    images = np.empty((end - first, rows, cols, 3), np.uint8)
    masks = np.empty((end - first, rows, cols), bool)
    labels = np.empty(end - first, np.int64)
    for out, index in enumerate(range(first, end)):
        frame = scanner.frame(index)
        images[out] = to_model_input(frame.image, input_hw)
        small = cv2.resize(
            frame.mask.astype(np.uint8) * 255, (cols, rows), interpolation=cv2.INTER_AREA
        )
        masks[out] = small > 32
        labels[out] = frame.label
    return images, masks, labels


FOREIGN = "foreign"  # the independent generator (producer.foreign): evaluation only


def make_scanner(domain: str, seed: int, frame_size: tuple[int, int] = DEFAULT_SIZE) -> Any:
    """The frame source of `domain`: a `SyntheticScanner` domain, or "foreign".

    The foreign generator keeps its own frame size: it plays a scanner of another make.
    """
    if domain == FOREIGN:
        from producer.foreign import ForeignScanner

        return ForeignScanner(seed=seed)
    return SyntheticScanner(domain, seed=seed, size=frame_size)


def generator_fingerprint(domain: str) -> str:
    """A digest of the code that makes `domain`'s frames, so that a changed generator (or
    resize) never reuses frames cached from an older one."""
    spec = importlib.util.find_spec(
        "producer.foreign" if domain == FOREIGN else "producer.synthetic"
    )
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"no generator package for domain {domain!r}")
    producer_dir = Path(next(iter(spec.submodule_search_locations)))
    digest = hashlib.sha1(Path(__file__).read_bytes())
    for path in sorted(producer_dir.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cached_set(
    cache_dir: Path | None,
    domain: str,
    seed: int,
    per_class: int,
    input_hw: tuple[int, int],
    frame_size: tuple[int, int] = DEFAULT_SIZE,
    workers: int = 1,
) -> FrameSet:
    """`generate_set`, kept as an .npz under `cache_dir` (None: no cache) keyed by its
    arguments and by the generator's code."""
    if cache_dir is None:
        return generate_set(domain, seed, per_class, input_hw, frame_size, workers=workers)
    key = json.dumps(
        [domain, seed, per_class, list(input_hw), list(frame_size), generator_fingerprint(domain)]
    )
    path = Path(cache_dir) / f"{domain}-{seed}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if path.is_file():
        data = np.load(path)
        return FrameSet(
            data["images"], data["labels"], data["masks"], domain, seed, data["indices"]
        )
    frames = generate_set(domain, seed, per_class, input_hw, frame_size, workers=workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp, images=frames.images, labels=frames.labels, masks=frames.masks, indices=frames.indices
    )
    tmp.replace(path)
    return frames


@dataclass(frozen=True)
class DataSpec:
    """Where a frame set comes from: a synthetic domain (per_class frames each) or a folder."""

    kind: str  # a synthetic domain, or "imagefolder"
    per_class: int = 0
    folder: Path | None = None

    def __str__(self) -> str:
        return f"imagefolder:{self.folder}" if self.folder else f"{self.kind}:{self.per_class}"


def parse_data_spec(text: str, default_per_class: int | None = None) -> DataSpec:
    """`DOMAIN:PER_CLASS` or `imagefolder:DIR` (see the module docstring); ValueError if neither."""
    kind, _, rest = text.partition(":")
    if kind == "imagefolder":
        if not rest:
            raise ValueError("imagefolder needs a folder: imagefolder:DIR")
        folder = Path(rest)
        if not folder.is_dir():
            raise ValueError(f"imagefolder: {folder} is not a folder")
        return DataSpec("imagefolder", folder=folder)
    if kind not in (*DOMAINS, FOREIGN):
        raise ValueError(
            f"data must be DOMAIN:PER_CLASS (DOMAIN one of {(*DOMAINS, FOREIGN)}) or "
            f"imagefolder:DIR, not {text!r}"
        )
    if not rest and default_per_class is not None:
        return DataSpec(kind, default_per_class)
    try:
        per_class = int(rest)
    except ValueError:
        raise ValueError(f"{text!r}: frames per class must be a whole number") from None
    if per_class < 1:
        raise ValueError(f"{text!r}: frames per class must be at least 1")
    return DataSpec(kind, per_class)


CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".dcm": "application/dicom",
}


MAX_FOLDER_PIXELS = 64_000_000  # per image; a DICOS object over this is refused


def load_imagefolder(
    folder: Path, labels: tuple[str, ...] | list[str], input_hw: tuple[int, int]
) -> FrameSet:
    """Every JPEG, PNG or DICOS (.dcm) image under `folder`/<label>/ at the model input.

    Sub-folders must be card labels (a name outside `labels` is an error, not skipped:
    frames silently left out of a validation set would bias it); files that do not decode
    are an error naming the file. Files are read in sorted order, so a set is reproducible.
    """
    folder = Path(folder)
    unknown = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name not in labels)
    if unknown:
        raise ValueError(
            f"{folder}: sub-folders {unknown} are not labels of the card {list(labels)}"
        )
    paths: list[tuple[Path, int]] = []
    for index, label in enumerate(labels):
        sub = folder / label
        if sub.is_dir():
            paths += [
                (path, index)
                for path in sorted(sub.rglob("*"))
                if path.suffix.lower() in CONTENT_TYPES and path.is_file()
            ]
    if not paths:
        raise ValueError(f"{folder}: no JPEG, PNG or DICOS files under any of {list(labels)}")
    rows, cols = input_hw
    images = np.empty((len(paths), rows, cols, 3), np.uint8)
    for out, (path, _) in enumerate(paths):
        images[out] = read_for_model(path, input_hw)
    labels_arr = np.array([label for _, label in paths], np.int64)
    return FrameSet(
        images,
        labels_arr,
        np.zeros((len(paths), rows, cols), bool),
        f"imagefolder:{folder}",
        0,
        np.arange(len(paths)),
    )


def read_for_model(path: Path, input_hw: tuple[int, int]) -> np.ndarray:
    """A JPEG, PNG or DICOS DX file at the model input, decoded exactly as the worker decodes
    a frame of that type (the same decoder, scaled JPEG decode and resize)."""
    from worker.service.intake import IntakeLimits, decode_for_model

    limits = IntakeLimits(max_frame_bytes=1 << 40, max_pixels=MAX_FOLDER_PIXELS, input_hw=input_hw)
    try:
        model_input, _, _ = decode_for_model(
            path.read_bytes(), CONTENT_TYPES[path.suffix.lower()], limits
        )
    except ValueError as exc:  # DecodeError and DicosError say what is wrong with the bytes
        raise ValueError(f"{path}: {exc}") from None
    return model_input


def load_data(
    spec: DataSpec,
    seed: int,
    input_hw: tuple[int, int],
    labels: tuple[str, ...] | list[str] = LABELS,
    cache_dir: Path | None = None,
    workers: int = 1,
) -> FrameSet:
    """The frame set a spec names; `seed` selects the synthetic scanner's stream."""
    if spec.folder is not None:
        return load_imagefolder(spec.folder, labels, input_hw)
    if tuple(labels) != LABELS:
        raise ValueError(
            f"synthetic data is labelled {LABELS}; the card's labels are {list(labels)}"
        )
    return cached_set(cache_dir, spec.kind, seed, spec.per_class, input_hw, workers=workers)


def load_or_exit(command: str, spec: DataSpec, *args: Any, **kwargs: Any) -> FrameSet:
    """`load_data`, with its refusals (a bad folder, an unreadable file) ending `command`
    with the reason rather than a traceback."""
    try:
        return load_data(spec, *args, **kwargs)
    except ValueError as exc:
        raise SystemExit(f"python -m {command}: {exc}") from None


def concat_sets(sets: list[FrameSet]) -> FrameSet:
    """One set holding the frames of all `sets`, in order (domain names joined with '+')."""
    if len(sets) == 1:
        return sets[0]
    return FrameSet(
        np.concatenate([s.images for s in sets]),
        np.concatenate([s.labels for s in sets]),
        np.concatenate([s.masks for s in sets]),
        "+".join(s.domain for s in sets),
        sets[0].seed,
        np.concatenate([s.indices for s in sets]),
    )


def spare_points(
    images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """A point per image (row, col in pixels) that the erasing augmentation keeps.

    Threat images keep a random pixel of the threat; benign images keep a pixel drawn
    with weight on dense (dark) matter, which is what a model's attention tends to seize.
    The draw comes from `gen` (a CPU generator) whatever the tensors' device, so a run
    makes the same choices on a GPU as on the CPU.
    """
    cols = images.shape[-1]
    darkness = (1.0 - images.mean(dim=1)).clamp_min(0).flatten(1) ** 2 + 1e-6  # (B, H·W)
    weights = torch.where(labels[:, None] > 0, masks.flatten(1).float() + 1e-9, darkness)
    cdf = weights.cumsum(dim=1)
    target = _uniform(gen, images.device, len(labels), 1) * cdf[:, -1:]
    flat = torch.searchsorted(cdf, target)[:, 0].clamp_max(cdf.shape[1] - 1)  # (B,)
    return torch.stack([flat // cols, flat % cols], dim=-1).float()


def erase_augment(
    images: torch.Tensor,
    keep_at: torch.Tensor,
    steps: torch.Tensor,
    fills: torch.Tensor,
    grid_hw: tuple[int, int],
    gen: torch.Generator,
) -> torch.Tensor:
    """Apply up to three cumulative smooth erasing steps that spare a region, like the engine does.

    Each step draws a patch-grid mask in (0, 1] (random floor, smoothed, a Gaussian bump of
    ones around `keep_at`, max-normalised), resizes it bilinearly to the image and erases
    x ← m·x + (1 − m)·fill, the engine's update. Random numbers come from `gen` on the CPU;
    the pixel work runs on the images' device.

    Args:
        images: (B, 3, H, W) pixels in [0, 1].
        keep_at: (B, 2) (row, col) in pixels of the point every step spares.
        steps: (B,) number of steps per image, 0 to 3.
        fills: (B,) value erased pixels tend to.
    """
    device = images.device
    batch, _, rows, cols = images.shape
    grid_rows, grid_cols = grid_hw
    steps, fills, keep_at = steps.to(device), fills.to(device), keep_at.to(device)
    out = images.clone()
    scale = torch.tensor([rows / grid_rows, cols / grid_cols], device=device)
    centre = keep_at / scale - 0.5  # grid units
    gy = torch.arange(grid_rows, dtype=torch.float32, device=device).view(1, -1, 1)
    gx = torch.arange(grid_cols, dtype=torch.float32, device=device).view(1, 1, -1)
    dist2 = (gy - centre[:, 0].view(-1, 1, 1)) ** 2 + (gx - centre[:, 1].view(-1, 1, 1)) ** 2
    for step in range(int(steps.max().item()) if batch else 0):
        active = steps > step
        floor = _uniform(gen, device, batch, 1, 1, 1) * 0.75 + 0.05
        noise = _uniform(gen, device, batch, 1, grid_rows, grid_cols)
        noise = F.avg_pool2d(noise, 3, stride=1, padding=1, count_include_pad=False)
        base = floor + (1.0 - floor) * noise  # (B, 1, gh, gw)
        sigma = _uniform(gen, device, batch, 1, 1) * 1.5 + 0.8
        bump = torch.exp(-dist2 / (2 * sigma**2))[:, None]  # (B, 1, gh, gw)
        grid = torch.maximum(base, bump)
        grid = grid / grid.amax(dim=(2, 3), keepdim=True)
        mask = F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=False)
        erased = out * mask + (1.0 - mask) * fills.view(-1, 1, 1, 1)
        out = torch.where(active.view(-1, 1, 1, 1), erased, out)
    return out


def _uniform(gen: torch.Generator, device: torch.device, *shape: int) -> torch.Tensor:
    """U[0, 1) numbers drawn from the CPU generator `gen`, placed on `device`."""
    return torch.rand(shape, generator=gen).to(device)
