"""Engine vs the seed's reference on the same frames and model, in one process.

    python -m bench.engine [--model vit_tiny_patch16_224] [--frames 256] [--batch 32]

Prints frames/s of each, forward passes per frame, the plain batched forward rate of
the same model, and on the last line `speedup_vs_reference=<x> efficiency=<y>`, where
efficiency = engine frames/s × forwards per frame ÷ plain forward images/s (1.0 means
the engine adds nothing on top of the model's own forward).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import get_args

import numpy as np
import timm
import torch

from bench.frames import bench_frames
from shared.vocab import Precision
from worker.engine.decision import DecisionPolicy
from worker.engine.erasing import EngineInput, ErasingEngine
from worker.engine.model import LoadedModel, from_module, resolve_device
from worker.engine.reference import reference_predict


def build_model(name: str, device: torch.device, seed: int) -> LoadedModel:
    """A random-init timm ViT whose head is sharpened so frames need different iteration counts."""
    torch.manual_seed(seed)
    module = timm.create_model(name, pretrained=False, num_classes=3)
    with torch.no_grad():
        module.head.weight.mul_(20.0)
    return from_module(module.to(device), ["benign", "gun", "knife"], model_id=f"{name}-random")


def calibrated_policy(model: LoadedModel, pixels: list[np.ndarray]) -> DecisionPolicy:
    """Thresholds from the frames' own threat probabilities, so that some frames clear at
    once, some are detected at once and the rest need several erasing steps."""
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div(255).to(model.device)
    mean = torch.tensor(model.mean, device=model.device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=model.device).view(1, 3, 1, 1)
    with torch.inference_mode():
        probs = torch.softmax(model.module((x - mean) / std).float(), dim=-1).cpu().numpy()
    top_threat = probs[:, list(model.threat_indices)].max(axis=1)
    reconsider, detect = np.quantile(top_threat, [0.25, 0.75])
    return DecisionPolicy(detect_th=float(detect), reconsider_th=float(reconsider), max_iter=5)


def plain_forward_rate(model: LoadedModel, batch: int, repeats: int) -> float:
    """Images/s of the model's ordinary batched forward (timm's fused attention)."""
    plain = copy.deepcopy(model.module)
    rows, cols = model.input_hw
    x = torch.rand(batch, 3, rows, cols, device=model.device)
    with torch.inference_mode():
        plain(x)
        _sync(model.device)
        start = time.perf_counter()
        for _ in range(repeats):
            plain(x)
        _sync(model.device)
    return batch * repeats / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_engine(engine: ErasingEngine, frames: list[EngineInput]) -> tuple[float, list]:
    _sync(engine.device)
    start = time.perf_counter()
    results = engine.run(frames)
    _sync(engine.device)
    return time.perf_counter() - start, results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--reference-frames", type=int, default=None, help="default: all frames")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=get_args(Precision))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    model = build_model(args.model, device, args.seed)
    pixels = bench_frames(args.frames, model.input_hw, seed=args.seed)
    policy = calibrated_policy(model, pixels)
    frames = [EngineInput(i, p) for i, p in enumerate(pixels)]

    plain_rate = plain_forward_rate(model, args.batch, repeats=max(2, 256 // args.batch))

    engine = ErasingEngine(model, policy, max_batch=args.batch, precision=args.precision)
    engine.run(frames[: args.batch])  # warm-up: allocator, kernels
    engine_s, results = timed_engine(engine, frames)
    by_key = {r.key: r for r in results}
    engine_fps = len(frames) / engine_s
    engine_fwd = sum(r.forwards for r in results) / len(results)

    n_ref = min(args.reference_frames or len(frames), len(frames))
    reference_predict(model, pixels[0], policy)  # warm-up; the reference always runs fp32
    start = time.perf_counter()
    refs = [reference_predict(model, pixels[i], policy) for i in range(n_ref)]
    ref_s = time.perf_counter() - start
    ref_fps = n_ref / ref_s
    ref_fwd = sum(r.forwards for r in refs) / n_ref
    same = sum(
        (by_key[i].verdict, by_key[i].classes, by_key[i].iterations)
        == (refs[i].verdict, refs[i].classes, refs[i].iterations)
        for i in range(n_ref)
    )
    verdicts = {
        v: sum(r.verdict.value == v for r in results) for v in ("clear", "threat", "undetermined")
    }
    iters = np.array([r.iterations for r in results])

    speedup = engine_fps / ref_fps
    efficiency = engine_fps * engine_fwd / plain_rate
    print(
        f"model={args.model} device={device} precision={args.precision} batch={args.batch} "
        f"frames={len(frames)} reference_frames={n_ref} threads={torch.get_num_threads()}"
    )
    if device.type == "cuda":
        print(f"card={torch.cuda.get_device_name(device)}")
    print(
        f"policy detect_th={policy.detect_th:.4g} reconsider_th={policy.reconsider_th:.4g} "
        f"max_iter={policy.max_iter}"
    )
    print(f"decisions={verdicts} iterations mean={iters.mean():.2f} max={iters.max()}")
    print(f"{'':<22}{'frames/s':>10}{'fwd/frame':>11}")
    print(f"{'reference (seed)':<22}{ref_fps:>10.2f}{ref_fwd:>11.2f}")
    print(f"{'engine':<22}{engine_fps:>10.2f}{engine_fwd:>11.2f}")
    print(f"{'plain forward img/s':<22}{plain_rate:>10.2f}")
    print(f"identical_decisions={same}/{n_ref}")
    print(f"speedup_vs_reference={speedup:.2f} efficiency={efficiency:.3f}")


if __name__ == "__main__":
    main()
