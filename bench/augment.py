"""What the look augmentation adds to a training step, in one process.

    python -m bench.augment [--look 0.4] [--steps 10] [--rounds 3] [--threads 2]

Loads the demo model, and builds two trainers on the same
source frames: one with `--look-augment 0` and one with `--look-augment LOOK`. It times
whole training steps (augmentation, forward, backward, AdamW), alternating the two
round by round, and prints ms per step for each (best round) and, on the last line,
`look_step_overhead=<x>`: the step time with looks drawn over the step time without.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time
from pathlib import Path

import torch

from worker.engine.model import load_model
from worker.training import train
from worker.training.data import FrameSet, generate_set

CARD = Path("models/scanguard-demo/card.json")


def trainer_for(
    look: float, module: torch.nn.Module, frames: FrameSet, threads: int
) -> train.Trainer:
    """A trainer over `frames` (one step per epoch) with its own copy of `module`."""
    args = train.parse_args(
        ["--look-augment", str(look), "--threads", str(threads), "--batch", str(len(frames))]
    )
    return train.Trainer(args, copy.deepcopy(module), frames)


def round_ms(trainer: train.Trainer, steps: int) -> float:
    """Mean ms per training step over `steps` steps (the epoch's progress line is dropped)."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        for _ in range(steps):
            trainer.epoch(1, started)
    return (time.perf_counter() - started) * 1000 / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.augment", description=__doc__)
    parser.add_argument("--look", type=float, default=0.4, help="--look-augment of the second")
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="rounded down to a multiple of 3")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(CARD)
    # One step per epoch: the whole set is one batch (a multiple of three classes).
    frames = generate_set("source", 11, max(1, args.batch // 3), model.input_hw)
    plain = trainer_for(0.0, model.module, frames, args.threads)
    looks = trainer_for(args.look, model.module, frames, args.threads)
    round_ms(plain, 2), round_ms(looks, 2)  # warm-up
    times: dict[str, list[float]] = {"plain": [], "looks": []}
    for _ in range(args.rounds):
        times["plain"].append(round_ms(plain, args.steps))
        times["looks"].append(round_ms(looks, args.steps))
    best = {name: min(values) for name, values in times.items()}
    for name, values in times.items():
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name}: {best[name]:.0f} ms per step of {len(frames)} (rounds: {rounds})")
    print(f"look_step_overhead={best['looks'] / best['plain']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
