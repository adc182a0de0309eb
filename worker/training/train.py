"""Train the demo model: a small ViT with a [class] token, on synthetic or the user's scans.

    python -m worker.training.train --out models/scanguard-demo
    python -m worker.training.train --train-data source:10000      # the source-only model
    python -m worker.training.train --train-data imagefolder:scans/train \
        --val-data imagefolder:scans/val --init models/scanguard-demo --epochs 3

The default recipe mixes plain "source" frames with the "randomised" domain (a new
scanner look per frame: palette, physics, detector, display), so that the model holds on
scanners it was not trained on. Trains from scratch, or from `--init` (a card folder, a
card.json or a .safetensors of any timm ViT with a [class] token; the head is replaced
when the labels differ), on the CPU by default (`--device cuda` for a GPU), with the
forward and loss autocast to bf16 (`--precision fp32` on CPUs without native bf16).
Besides clean frames, the model sees frames after zero to three erasing steps that spare
the object (or, on benign frames, some dense clutter), so its probabilities stay
meaningful on the images iterative erasing makes.
Writes `model.safetensors` and `card.json` (worker.engine.model.ModelCard) into `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.data import resolve_data_config
from timm.utils import ModelEmaV3
from torch import nn

from producer.synthetic import DEFAULT_SIZE, LABELS
from worker.engine.attention import AttentionRecorder, rollout_class_row
from worker.engine.model import sha256_file
from worker.training.augment import LookRanges, look_augment
from worker.training.data import (
    FOREIGN,
    FrameSet,
    concat_sets,
    erase_augment,
    load_or_exit,
    parse_data_spec,
    spare_points,
)

TIMM_NAME = "vit_tiny_patch16_224"
MAX_CHECKPOINT_BYTES = 12 * 1024 * 1024


PROG = "worker.training.train"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.training.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("models/scanguard-demo"),
        help="folder for the checkpoint and card",
    )
    parser.add_argument("--name", default="scanguard-demo", help="model id written in the card")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation"
    )
    parser.add_argument(
        "--train-data",
        nargs="+",
        default=["source:6000", "randomised:9000"],
        metavar="SPEC",
        help="training frames: DOMAIN:PER_CLASS (source, target, randomised) or imagefolder:DIR",
    )
    parser.add_argument(
        "--train-seed", type=int, default=1, help="scanner seed of the training frames"
    )
    parser.add_argument(
        "--val-data",
        nargs="+",
        default=["source:200", "randomised:200"],
        metavar="SPEC",
        help="validation frames, scored each epoch per spec (same forms as --train-data)",
    )
    parser.add_argument(
        "--val-seed", type=int, default=2, help="scanner seed of the validation frames"
    )
    parser.add_argument(
        "--input-size", type=int, nargs=2, default=(128, 160), metavar=("ROWS", "COLS")
    )
    parser.add_argument(
        "--timm-name",
        default=TIMM_NAME,
        help="timm ViT to build (with a [class] token); the size flags below override its own",
    )
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--embed-dim", type=int, default=192)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-steps", type=int, default=500)
    parser.add_argument(
        "--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing"
    )
    parser.add_argument(
        "--drop-path", type=float, default=0.0, help="stochastic depth rate of the blocks"
    )
    parser.add_argument(
        "--ema",
        type=float,
        default=0.0,
        help="decay of an exponential moving average of the weights; >0 validates and saves the average",
    )
    parser.add_argument(
        "--erase-prob", type=float, default=0.6, help="share of samples given 1-3 erasing steps"
    )
    parser.add_argument(
        "--look-augment",
        type=float,
        default=0.0,
        metavar="PROB",
        help="draw a new look on the fly (zoom and shift, colour map, tone, blur, noise), "
        "each part with this probability per sample; 0 keeps the frames' own looks",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=0.0,
        help="weight of the attention-guidance loss that pulls the [class] rollout onto the "
        "threat's mask (synthetic frames carry masks); 0 trains without it",
    )
    parser.add_argument(
        "--fill",
        type=float,
        default=1.0,
        help="erasing fill used in training and written in the card",
    )
    parser.add_argument(
        "--alt-fill", type=float, default=0.0, help="a second fill some erased samples get"
    )
    parser.add_argument("--alt-fill-prob", type=float, default=0.25)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads"
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device to train on (cpu, cuda, cuda:1, ...)"
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="bf16",
        help="bf16 autocasts the training forward and loss (weights, optimiser and validation "
        "stay fp32); about 2x faster on CPUs with native bf16 (AVX512-BF16, AMX), slower on others",
    )
    parser.add_argument(
        "--data-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes that generate the frame sets (the sets do not depend on it)",
    )
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from this model: a card folder, a card.json or a .safetensors (with the "
        "size flags' architecture); a new head is made when its labels differ from --labels",
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        default=list(LABELS),
        help="class names, benign first (an imagefolder has one sub-folder per label)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "scanguard-cache",
        help="where generated frame sets are kept between runs",
    )
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """The timm ViT to train and the kwargs that rebuild it (the card's timm_kwargs).

    From scratch with the size flags, or from `--init`; sets `args.timm_name` and
    `args.input_size` to the initial card's when it has one.
    """
    if args.init is not None:
        return load_initial(args)
    kwargs = _scratch_kwargs(args)
    model = timm.create_model(
        args.timm_name,
        pretrained=False,
        num_classes=len(args.labels),
        drop_path_rate=args.drop_path,
        **kwargs,
    )
    return model, kwargs


class Trainer:
    """Holds the model, data and optimiser; `epoch()` makes one pass over the training set."""

    def __init__(self, args: argparse.Namespace, model: nn.Module, train: FrameSet) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.bf16 = args.precision == "bf16"
        self.model = model.to(self.device)
        # The average lives beside the model; validation and the checkpoint use it when on.
        self.ema = ModelEmaV3(self.model, decay=args.ema) if args.ema > 0 else None
        self.train = train
        mean, std = normalisation(args, model)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        grid: Any = model.patch_embed.grid_size  # type: ignore[union-attr]
        self.grid_hw = (int(grid[0]), int(grid[1]))
        self.gen = torch.Generator().manual_seed(args.seed)
        self.look = LookRanges(prob=args.look_augment)
        self.num_prefix_tokens = int(model.num_prefix_tokens)  # type: ignore[arg-type]
        # Attention guidance reads every block's attention, so only then is it made explicit.
        self.recorder = AttentionRecorder(model) if args.guidance > 0 else None
        self.order_rng = np.random.default_rng(args.seed)
        decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n)]
        self.opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": args.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=args.lr,
        )
        self.steps_per_epoch = len(train) // args.batch
        self.total_steps = self.steps_per_epoch * args.epochs
        self.step_count = 0

    @property
    def final(self) -> nn.Module:
        """The weights to validate and save: the moving average when on, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def _lr(self) -> float:
        warm = self.args.warmup_steps
        if self.step_count < warm:
            return self.args.lr * (self.step_count + 1) / warm
        progress = (self.step_count - warm) / max(1, self.total_steps - warm)
        return self.args.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def batch_tensors(self, rows: np.ndarray, frames: FrameSet) -> tuple[torch.Tensor, ...]:
        """Frames `rows` on the training device: pixels in [0, 1], threat masks, labels."""
        pixels = torch.from_numpy(frames.images[rows]).to(self.device, non_blocking=True)
        images = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        masks = torch.from_numpy(frames.masks[rows]).to(self.device, non_blocking=True)
        labels = torch.from_numpy(frames.labels[rows]).to(self.device, non_blocking=True)
        return images, masks, labels

    def augment(
        self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A drawn look (with `--look-augment`), random flips, then 0-3 erasing steps
        sparing the object (or dense benign matter).

        Returns the images and the threat masks, moved and flipped with them.
        """
        batch = len(labels)
        args = self.args
        images, masks = look_augment(images, masks, self.gen, self.look)
        flip_h = (torch.rand(batch, generator=self.gen) < 0.5).to(self.device)
        flip_v = (torch.rand(batch, generator=self.gen) < 0.5).to(self.device)
        images = torch.where(flip_h.view(-1, 1, 1, 1), images.flip(3), images)
        masks = torch.where(flip_h.view(-1, 1, 1), masks.flip(2), masks)
        images = torch.where(flip_v.view(-1, 1, 1, 1), images.flip(2), images)
        masks = torch.where(flip_v.view(-1, 1, 1), masks.flip(1), masks)
        erased = torch.rand(batch, generator=self.gen) < args.erase_prob
        steps = torch.randint(1, 4, (batch,), generator=self.gen) * erased
        alt = torch.rand(batch, generator=self.gen) < args.alt_fill_prob
        fills = torch.where(alt, torch.tensor(args.alt_fill), torch.tensor(args.fill))
        keep_at = spare_points(images, masks, labels, self.gen)
        return erase_augment(images, keep_at, steps, fills, self.grid_hw, self.gen), masks

    def epoch(self, number: int, started: float) -> None:
        self.model.train()
        order = self.order_rng.permutation(len(self.train))
        seen = correct = 0
        loss_sum = 0.0
        for step in range(self.steps_per_epoch):
            rows = np.sort(order[step * self.args.batch : (step + 1) * self.args.batch])
            images, masks, labels = self.batch_tensors(rows, self.train)
            images, masks = self.augment(images, masks, labels)
            for group in self.opt.param_groups:
                group["lr"] = self._lr()
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
                if self.recorder is None:
                    logits = self.model((images - self.mean) / self.std)
                else:
                    with self.recorder.recording():
                        logits = self.model((images - self.mean) / self.std)
                loss = F.cross_entropy(logits, labels, label_smoothing=self.args.label_smoothing)
            if self.recorder is not None:
                guide = guidance_loss(
                    self.recorder.take(), masks, labels, self.num_prefix_tokens, self.grid_hw
                )
                loss = loss + self.args.guidance * guide
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            if self.ema is not None:
                self.ema.update(self.model, step=self.step_count)
            self.step_count += 1
            seen += len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            loss_sum += loss.item() * len(labels)
            if (step + 1) % 50 == 0 or step + 1 == self.steps_per_epoch:
                print(
                    f"epoch {number} step {step + 1}/{self.steps_per_epoch} loss {loss_sum / seen:.4f} "
                    f"acc {correct / seen:.4f} lr {self._lr():.2e} elapsed {time.monotonic() - started:.0f}s",
                    flush=True,
                )
                seen = correct = 0
                loss_sum = 0.0

    @torch.inference_mode()
    def validate(self, frames: FrameSet, steps: int, fill: float) -> dict[str, float]:
        """Accuracy and mean probabilities on `frames` after `steps` object-sparing erasing steps."""
        model = self.final.eval()
        gen = torch.Generator().manual_seed(1234)
        correct = 0
        benign_threat_p = []
        for start in range(0, len(frames), 128):
            rows = np.arange(start, min(start + 128, len(frames)))
            images, masks, labels = self.batch_tensors(rows, frames)
            if steps:
                keep_at = spare_points(images, masks, labels, gen)
                images = erase_augment(
                    images,
                    keep_at,
                    torch.full((len(rows),), steps),
                    torch.full((len(rows),), fill),
                    self.grid_hw,
                    gen,
                )
            probs = torch.softmax(model((images - self.mean) / self.std), dim=-1)
            correct += int((probs.argmax(1) == labels).sum())
            benign_threat_p.append(probs[labels == 0, 1:].sum(1))
        return {
            "accuracy": correct / len(frames),
            "benign_mean_threat_p": float(torch.cat(benign_threat_p).mean()),
        }


def normalisation(args: argparse.Namespace, model: nn.Module) -> tuple[list[float], list[float]]:
    """Pixel mean and std: the `--init` card's when it names them, else the model's config."""
    init_card = getattr(args, "init_card", None) or {}
    cfg = resolve_data_config({}, model=model)
    return list(init_card.get("mean") or cfg["mean"]), list(init_card.get("std") or cfg["std"])


def guidance_loss(
    maps: list[torch.Tensor],
    masks: torch.Tensor,
    labels: torch.Tensor,
    num_prefix_tokens: int,
    grid_hw: tuple[int, int],
) -> torch.Tensor:
    """−log of the share of the [class] rollout that falls on patches the threat touches.

    The rollout is the one the engine erases with (`attention.rollout_class_row`), kept
    differentiable; benign frames and frames whose threat mask is empty (a user's folder
    has no masks) add nothing. Minimising it pulls the attention onto the threat.
    """
    row = rollout_class_row(maps)[:, num_prefix_tokens:]  # (B, patches)
    share = row / row.sum(dim=1, keepdim=True)
    on = F.adaptive_avg_pool2d(masks[:, None].float(), grid_hw).flatten(1) > 0  # (B, patches)
    guided = (labels > 0) & on.any(dim=1)
    if not bool(guided.any()):
        return share.sum() * 0.0  # keeps the graph (and the loss's device) without a term
    mass = (share * on).sum(dim=1).clamp_min(1e-6)
    return -mass[guided].log().mean()


def _scratch_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "img_size": list(args.input_size),
        "patch_size": args.patch,
        "embed_dim": args.embed_dim,
        "depth": args.depth,
        "num_heads": args.heads,
        "global_pool": "token",
        "class_token": True,
    }


def load_initial(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """The `--init` model, with a fresh head when its labels are not `--labels`."""
    from safetensors.torch import load_file

    path = Path(args.init)
    card_path = path / "card.json" if path.is_dir() else path
    if card_path.suffix == ".json":
        card = json.loads(card_path.read_text())
        checkpoint = card_path.parent / card["checkpoint"]
    else:
        checkpoint, card = path, None
        if (path.parent / "card.json").is_file():
            card = json.loads((path.parent / "card.json").read_text())
    if not checkpoint.is_file():
        raise SystemExit(f"--init: no checkpoint at {checkpoint}")
    state = load_file(str(checkpoint))
    if card is not None:
        args.timm_name = card["timm_name"]
        kwargs = dict(card["timm_kwargs"])
        args.input_size = tuple(card["input_size"][1:])
        old_labels = list(card["labels"])
    else:
        kwargs = _scratch_kwargs(args)
        # Without a card, a head of the right width is taken to mean the same labels.
        head = state.get("head.weight")
        old_labels = (
            list(args.labels) if head is not None and head.shape[0] == len(args.labels) else []
        )
    if not kwargs.get("class_token", True) or kwargs.get("global_pool", "token") != "token":
        raise SystemExit("--init: the model must classify from its [class] token")
    model = timm.create_model(
        args.timm_name,
        pretrained=False,
        num_classes=len(old_labels) or len(args.labels),
        drop_path_rate=args.drop_path,
        **kwargs,
    )
    if old_labels:
        model.load_state_dict(state, strict=True)
    else:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        body = [k for k in missing if not k.startswith("head.")]
        if body or unexpected:
            raise SystemExit(
                f"--init: {checkpoint} does not fit {args.timm_name} with the size flags: "
                f"missing {body[:5]}, unexpected {list(unexpected)[:5]}"
            )
    if old_labels != list(args.labels):
        model.reset_classifier(len(args.labels))  # type: ignore[operator]
    args.init_card = card
    args.init_record = {
        "checkpoint": str(checkpoint),
        "sha256": sha256_file(checkpoint),
        "labels": old_labels,
        "new_head": old_labels != list(args.labels),
        "training": (card or {}).get("training", {}),
    }
    return model, kwargs


def write_outputs(
    args: argparse.Namespace, model: nn.Module, kwargs: dict[str, Any], training: dict[str, Any]
) -> Path:
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "model.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(ckpt), metadata={"format": "pt"})
    if ckpt.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise SystemExit(
            f"checkpoint is {ckpt.stat().st_size} bytes, over the {MAX_CHECKPOINT_BYTES} limit; shrink the model"
        )
    mean, std = normalisation(args, model)
    card = {
        "name": args.name,
        "timm_name": args.timm_name,
        "timm_kwargs": kwargs,
        "checkpoint": ckpt.name,
        "sha256": sha256_file(ckpt),
        "labels": list(args.labels),
        "benign_index": 0,
        "input_size": [3, *args.input_size],
        "mean": list(mean),
        "std": list(std),
        "fill": args.fill,
        "training": training,
    }
    card_path = args.out / "card.json"
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.monotonic()
    labels = tuple(args.labels)
    try:
        train_specs = [parse_data_spec(text) for text in args.train_data]
        val_specs = [parse_data_spec(text) for text in args.val_data]
    except ValueError as exc:
        raise SystemExit(f"python -m worker.training.train: {exc}") from None
    if any(spec.kind == FOREIGN for spec in train_specs):
        raise SystemExit(
            "python -m worker.training.train: the foreign generator is kept out of training, "
            "so that it stays a scanner the model has not seen"
        )
    model, kwargs = build_model(args)
    weights_bytes = sum(p.numel() * 4 for p in model.state_dict().values())
    if weights_bytes > MAX_CHECKPOINT_BYTES:
        raise SystemExit(
            f"python -m worker.training.train: the model's weights take {weights_bytes} bytes, "
            f"over the {MAX_CHECKPOINT_BYTES} a shipped checkpoint may have; shrink the model"
        )
    input_hw = tuple(args.input_size)
    train = concat_sets(
        [
            load_or_exit(
                PROG, spec, args.train_seed, input_hw, labels, args.cache_dir, args.data_workers
            )
            for spec in train_specs
        ]
    )
    vals = {
        str(spec): load_or_exit(
            PROG, spec, args.val_seed, input_hw, labels, args.cache_dir, args.data_workers
        )
        for spec in val_specs
    }
    data_ready_s = time.monotonic() - started
    print(
        f"data ready: {len(train)} training, {sum(map(len, vals.values()))} validation frames, "
        f"{data_ready_s:.0f}s",
        flush=True,
    )
    trainer = Trainer(args, model, train)
    history = []
    for epoch in range(1, args.epochs + 1):
        trainer.epoch(epoch, started)
        scores = {
            f"{name} erased{k}_fill{f:g}": trainer.validate(val, k, f)
            for name, val in vals.items()
            for k, f in [(0, args.fill), (3, args.fill), (3, args.alt_fill)]
        }
        history.append({"epoch": epoch, **scores})
        print(f"validation epoch {epoch}: {json.dumps(scores)}", flush=True)
    wall = time.monotonic() - started
    training: dict[str, Any] = {
        "command": "python -m worker.training.train "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed,
        "data": {
            "generator": "producer.synthetic.SyntheticScanner"
            if any(spec.folder is None for spec in [*train_specs, *val_specs])
            else None,
            "train": [str(spec) for spec in train_specs],
            "train_seed": args.train_seed,
            "train_frames": len(train),
            "val": [str(spec) for spec in val_specs],
            "val_seed": args.val_seed,
            "val_frames": sum(map(len, vals.values())),
            "frame_size": list(DEFAULT_SIZE),
            "resize": "cv2 INTER_AREA",
        },
        "augmentation": {
            "flips": "horizontal, vertical",
            "erase_prob": args.erase_prob,
            "erase_steps": "1-3",
            "fill": args.fill,
            "alt_fill": args.alt_fill,
            "alt_fill_prob": args.alt_fill_prob,
            "look": dataclasses.asdict(trainer.look),
        },
        "optimiser": {
            "name": "AdamW",
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "batch": args.batch,
            "epochs": args.epochs,
            "warmup_steps": args.warmup_steps,
            "schedule": "cosine",
            "label_smoothing": args.label_smoothing,
            "attention_guidance": args.guidance,
            "drop_path": args.drop_path,
            "ema_decay": args.ema,
        },
        "device": str(trainer.device),
        "precision": args.precision,
        "threads": args.threads,
        "data_workers": args.data_workers,
        "data_ready_s": round(data_ready_s, 1),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "wall_time_s": round(wall, 1),
        "validation": history,
    }
    previous = getattr(args, "init_record", None)
    if previous is not None:
        training["init_from"] = previous
        training["total_wall_time_s"] = round(
            wall + float(previous.get("training", {}).get("wall_time_s", 0.0)), 1
        )
    card_path = write_outputs(args, trainer.final.cpu(), kwargs, training)
    print(f"wrote {card_path} after {wall:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
