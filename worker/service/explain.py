"""`python -m worker explain`: iterative erasing on image files, every step drawn and recorded.

    python -m worker explain scans/ bag-17.png --card models/scanguard-demo/card.json --out why
    python -m worker explain scans/ --preset seed --max-iter 8 --out why-seed

No Redis: files are read and decoded as the worker reads frames (same size limits, same
scaled JPEG decode), decided by the same engine under the policy the worker would run
(the card's operating point unless `--preset seed`, SCANGUARD_ERASING__* or the flags
say otherwise), and drawn with the worker's own artefact functions. For each image,
into `--out`:

- `<stem>-montage.png`: the original and the image after each erasing step, side by
  side, with P(label) for every label under each tile (a threat probability over
  `detect_th` in the verdict's colour, the deciding tile framed);
- `<stem>-heatmap.jpg`: the last forward's attention over the full-size original;
- `<stem>-rois.jpg`: the original with the final ROIs boxed and labelled (a threat's
  detected classes, else the verdict and the likeliest threat class);

and one row per input in `explain.csv` and `explain.jsonl` (same fields; structured
ones as JSON in the CSV): file, size, verdict, classes, iterations, forwards, the final
probabilities, the trace (probabilities per forward, the original's first), the ROIs,
model id and checksum, the policy (preset, what overrode it, every value), the artefact
file names, and for a file that could not be read, verdict "error" and the reason.
Exit status: 0 when every image was explained, 1 when one or more failed, 2 for bad
arguments, settings or models.

Drawing the montage costs extra forwards: the engine keeps only a frame's last erased
state, so step k is replayed by a run that stops after k steps; a frame decided after n
steps costs (n - 1)(n + 2) / 2 forwards more (9 for the seed's five).
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from shared.images import JPEG, PNG, encode_image, sniff_content_type
from shared.settings import ErasingSettings, Settings
from shared.vocab import DeadKind, Verdict
from worker.engine.decision import DecisionPolicy
from worker.engine.erasing import EngineInput, ErasingEngine, FrameResult
from worker.engine.model import LoadedModel, load_model, resolve_device
from worker.engine.preprocess import to_model_input
from worker.service.bootstrap import policy_from_settings
from worker.service.explain_draw import COLOURS, draw_rois, montage, tile_hw, verdict_text
from worker.service.imageio import DecodeError, decode_image
from worker.service.intake import IntakeLimits, decode_for_model
from worker.service.render import erased_image, heatmap_overlay
from worker.service.rois import rois_from_mask

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_SUFFIX_TYPES = {".jpg": JPEG, ".jpeg": JPEG, ".png": PNG}
FIELDS = (
    "file", "width", "height", "verdict", "classes", "iterations", "forwards",
    "probabilities", "trace", "rois", "model", "checksum", "policy",
    "montage", "heatmap", "rois_image", "error",
)  # fmt: skip
# Replayed steps must not stop before their budget: thresholds no probability crosses.
_NEVER_DETECT, _NEVER_CLEAR = 1.0 - 1e-7, 1e-12


def find_images(
    inputs: Sequence[str | Path], recursive: bool = False, skip: Path | None = None
) -> list[Path]:
    """The files to explain: each file as named, each folder's JPEG/PNG files sorted.

    Files under `skip` (the output folder) are left out of folders, so that a run into a
    folder it reads does not explain its own pictures the next time.

    Raises:
        ValueError: a path that does not exist, or a folder without JPEG/PNG files.
    """
    found: dict[Path, None] = {}  # ordered, and a file named twice is explained once
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            listing = path.rglob("*") if recursive else path.iterdir()
            images = sorted(
                p
                for p in listing
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not (skip is not None and p.resolve().is_relative_to(skip.resolve()))
            )
            if not images:
                where = "under" if recursive else "in"
                raise ValueError(f"{path}: no JPEG or PNG files {where} this folder")
            found.update(dict.fromkeys(images))
        elif path.exists():
            found[path] = None
        else:
            raise ValueError(f"{path}: no such file or folder")
    return list(found)


@dataclass(frozen=True, eq=False)
class ImageFile:
    """A file read and decoded for the model, as intake decodes a frame."""

    path: Path
    data: bytes
    content_type: str
    size_hw: tuple[int, int]
    pixels: np.ndarray  # (rows, cols, 3) uint8 RGB at the model's input size
    decoded: np.ndarray | None  # full size, or None when the JPEG was decoded scaled

    def full_image(self) -> np.ndarray:
        if self.decoded is not None:
            return self.decoded
        rows, cols = self.size_hw
        return decode_image(self.data, self.content_type, rows * cols, max(rows, cols))


def read_image(path: Path, limits: IntakeLimits) -> ImageFile:
    """Read and decode one file within the worker's limits.

    Raises:
        DecodeError: not a complete JPEG/PNG, or over a limit.
        OSError: the file cannot be read.
    """
    size = path.stat().st_size
    if size > limits.max_frame_bytes:
        raise DecodeError(
            f"file is {size} bytes, over the {limits.max_frame_bytes}-byte limit "
            "(SCANGUARD_WORKER__MAX_FRAME_BYTES)",
            DeadKind.TOO_LARGE,
        )
    data = path.read_bytes()
    # The bytes decide the type; the suffix only names what a broken file claimed to be.
    content_type = sniff_content_type(data) or _SUFFIX_TYPES.get(path.suffix.lower())
    if content_type is None:
        raise DecodeError("bytes are neither JPEG nor PNG")
    pixels, size_hw, decoded = decode_for_model(data, content_type, limits)
    return ImageFile(path, data, content_type, size_hw, pixels, decoded)


def step_erasures(
    engine: ErasingEngine, inputs: Sequence[EngineInput], results: Sequence[FrameResult]
) -> dict[Hashable, list[np.ndarray]]:
    """Each frame's cumulative erase multiplier after step 1, 2, ..., its last.

    The last comes with the result; step k is replayed by a run of the same policy whose
    thresholds cannot fire and whose budget is k. Replays batch fewer frames than the
    run they repeat, so their masks may differ from it in the last float bits: they are
    drawn, never decided on.
    """
    steps: dict[Hashable, list[np.ndarray]] = {r.key: [] for r in results}
    by_key = {frame.key: frame for frame in inputs}
    for k in range(1, max((r.iterations for r in results), default=0)):
        replay = replace(
            engine.policy,
            detect_th=_NEVER_DETECT,
            reconsider_th=_NEVER_CLEAR,
            max_iter=k,
            judge_original=False,
        )
        again = ErasingEngine(
            engine.model, replay, max_batch=engine.max_batch, precision=engine.precision
        )
        try:
            for done in again.run([by_key[r.key] for r in results if r.iterations > k]):
                if done.iterations == k and len(steps[done.key]) == k - 1:
                    steps[done.key].append(done.erase_mask)
        finally:
            again.close()
    for result in results:
        if result.iterations and len(steps[result.key]) == result.iterations - 1:
            steps[result.key].append(result.erase_mask)
    return steps


def policy_record(
    erasing: ErasingSettings, model: LoadedModel, policy: DecisionPolicy
) -> dict[str, Any]:
    """The policy as run, with where it came from: the preset, its base and what overrode it."""
    base = "card" if erasing.preset == "card" and model.operating_point is not None else "seed"
    overrides = sorted(erasing.model_fields_set - {"preset"})
    return {"preset": erasing.preset, "base": base, "overrides": overrides, **asdict(policy)}


class Report:
    """explain.csv and explain.jsonl, one row per input, written as rows arrive."""

    def __init__(self, out_dir: Path) -> None:
        self._jsonl = open(out_dir / "explain.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        self._csv_file = open(out_dir / "explain.csv", "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._csv = csv.DictWriter(self._csv_file, FIELDS)
        self._csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(row) + "\n")
        flat = {}
        for name in FIELDS:
            value = row[name]
            if name == "classes":
                value = "+".join(value)
            elif isinstance(value, dict | list):
                value = json.dumps(value, separators=(",", ":"))
            flat[name] = "" if value is None else value
        self._csv.writerow(flat)

    def __enter__(self) -> Report:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._jsonl.close()
        self._csv_file.close()


class Explainer:
    """Decides, draws and records images in batches; owns the engine."""

    def __init__(
        self, settings: Settings, model: LoadedModel, policy: DecisionPolicy, out_dir: Path
    ) -> None:
        self.model, self.policy, self.out_dir = model, policy, out_dir
        self.options = settings.worker  # limits, JPEG quality and ROIs: the worker's own
        self.limits = IntakeLimits(
            self.options.max_frame_bytes,
            self.options.max_pixels,
            model.input_hw,
            max_side=self.options.max_side_px,
        )
        self.record = policy_record(settings.erasing, model, policy)
        self.engine = ErasingEngine(
            model, policy, max_batch=settings.model.max_batch, precision=settings.model.precision
        )
        self._stems: set[str] = set()

    def close(self) -> None:
        self.engine.close()

    def explain(self, paths: Sequence[Path]) -> list[dict[str, Any]]:
        """One row per path, in order; files that cannot be read get an error row."""
        rows: dict[int, dict[str, Any]] = {}
        images: dict[int, ImageFile] = {}
        for index, path in enumerate(paths):
            try:
                images[index] = read_image(path, self.limits)
            except DecodeError as exc:
                rows[index] = self._error_row(path, str(exc))
            except OSError as exc:
                rows[index] = self._error_row(path, f"cannot read: {exc.strerror or exc}")
        inputs = [EngineInput(index, image.pixels) for index, image in images.items()]
        results = self.engine.run(inputs)
        steps = step_erasures(self.engine, inputs, results)
        for result in results:
            index = int(result.key)  # type: ignore[call-overload]  # keys are the indices above
            rows[index] = self._draw(images[index], result, steps[result.key])
        return [rows[index] for index in range(len(paths))]

    def _stem(self, path: Path) -> str:
        """The file's stem, numbered when another input already took it."""
        stem, number = path.stem, 1
        while stem in self._stems:
            number += 1
            stem = f"{path.stem}-{number}"
        self._stems.add(stem)
        return stem

    def _roi_class(self, result: FrameResult) -> tuple[str, float]:
        """What the ROIs are labelled with: the detected classes of a threat and their top
        probability, else the likeliest threat class and its probability."""
        probs = result.probabilities
        if result.verdict is Verdict.THREAT:
            return "+".join(self.model.labels[c] for c in result.classes), max(
                probs[c] for c in result.classes
            )
        top = max(self.model.threat_indices, key=lambda c: probs[c])
        return self.model.labels[top], probs[top]

    def _montage(
        self, image: ImageFile, full: np.ndarray, result: FrameResult, steps: list[np.ndarray]
    ) -> np.ndarray:
        labels, threats = self.model.labels, self.model.threat_indices
        # Tiles are erased at tile size: erasing commutes with the resize up to
        # interpolation, and a 4K frame is not erased n times at full size.
        original = to_model_input(full, tile_hw(image.size_hw))
        tiles = [original, *(erased_image(original, mask, self.policy.fill) for mask in steps)]
        probs = result.trace[: len(tiles)]
        hot = [
            [k in threats and p[k] > self.policy.detect_th for k in range(len(labels))]
            for p in probs
        ]
        header = [
            str(image.path),
            verdict_text(result, labels),
            f"{result.iterations} step{'s' * (result.iterations != 1)}, {result.forwards} forwards",
        ]
        return montage(tiles, probs, labels, header, hot=hot, colour=COLOURS[result.verdict])

    def _draw(
        self, image: ImageFile, result: FrameResult, steps: list[np.ndarray]
    ) -> dict[str, Any]:
        """Write the three images of a decided file; return its row."""
        labels, full = self.model.labels, image.full_image()
        tag, score = self._roi_class(result)
        banner = verdict_text(result, labels)
        rois = rois_from_mask(
            result.mask_grid, image.size_hw, self.options.roi_threshold, self.options.max_rois
        )
        quality, colour = self.options.jpeg_quality, COLOURS[result.verdict]
        stem = self._stem(image.path)
        names = {
            "montage": f"{stem}-montage.png",
            "heatmap": f"{stem}-heatmap.jpg",
            "rois_image": f"{stem}-rois.jpg",
        }
        pictures = {
            "montage": encode_image(self._montage(image, full, result, steps), PNG),
            "heatmap": encode_image(heatmap_overlay(full, result.mask_grid), JPEG, quality),
            "rois_image": encode_image(
                draw_rois(full, rois, banner, f"{tag} {score:.2f}", colour), JPEG, quality
            ),
        }
        for kind, data in pictures.items():
            (self.out_dir / names[kind]).write_bytes(data)
        return {
            "file": str(image.path),
            "width": image.size_hw[1],
            "height": image.size_hw[0],
            "verdict": result.verdict.value,
            "classes": [labels[c] for c in result.classes],
            "iterations": result.iterations,
            "forwards": result.forwards,
            "probabilities": dict(zip(labels, result.probabilities, strict=True)),
            "trace": [dict(zip(labels, p, strict=True)) for p in result.trace],
            "rois": [{**roi.model_dump(), "class": tag, "score": score} for roi in rois],
            "model": self.model.model_id,
            "checksum": self.model.checksum,
            "policy": self.record,
            **names,
            "error": None,
        }

    def _error_row(self, path: Path, reason: str) -> dict[str, Any]:
        row: dict[str, Any] = dict.fromkeys(FIELDS)
        row.update(file=str(path), verdict="error", classes=[], error=reason)
        row.update(model=self.model.model_id, checksum=self.model.checksum, policy=self.record)
        return row


def _describe(row: dict[str, Any]) -> str:
    if row["verdict"] == "error":
        return f"{row['file']}: error: {row['error']}"
    classes = " " + "+".join(row["classes"]) if row["classes"] else ""
    probs = " ".join(f"{name} {p:.3f}" for name, p in row["probabilities"].items())
    return (
        f"{row['file']}: {row['verdict']}{classes} after {row['iterations']} "
        f"step(s), {row['forwards']} forwards; P: {probs}"
    )


def run_explain(
    settings: Settings, inputs: Sequence[str | Path], *, out_dir: Path, recursive: bool = False
) -> int:
    """Explain every image under `inputs` into `out_dir`; the exit status (see the module)."""
    try:
        paths = find_images(inputs, recursive, skip=out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if settings.model.cpu_threads:
            torch.set_num_threads(settings.model.cpu_threads)
        model = load_model(settings.model.card, resolve_device(settings.model.device))
        policy = policy_from_settings(settings.erasing, model)
    except (ValueError, OSError) as exc:  # ModelLoadError and bad policies are ValueErrors
        print(f"cannot explain: {exc}", file=sys.stderr)
        return 2
    counts: Counter[str] = Counter()
    explainer = Explainer(settings, model, policy, out_dir)
    try:
        with Report(out_dir) as report:
            size = settings.model.max_batch  # a batch's full-size frames are held at once
            for start in range(0, len(paths), size):
                for row in explainer.explain(paths[start : start + size]):
                    report.write(row)
                    counts[row["verdict"]] += 1
                    print(_describe(row), file=sys.stderr if row["error"] else sys.stdout)
    finally:
        explainer.close()
    tally = ", ".join(f"{counts[v.value]} {v.value}" for v in Verdict)
    print(f"{len(paths)} image(s): {tally}, {counts['error']} failed; written to {out_dir}")
    return 1 if counts["error"] else 0
