"""The full pipeline (producer → Redis → worker → publish) vs the engine alone.

    python -m bench.pipeline [--frames 256] [--rounds 5] [--preset card|seed]

Both runs decide the same synthetic scanner frames with the same model in this
process. On a shared machine the speed of the cores drifts from minute to minute, so
the two are measured in alternating rounds (engine, pipeline, engine, …) and each
side's best round is compared. Prints every round, frames/s of each and their ratio,
the process's CPU time per frame on each side (their difference is the host's work:
decode, render, publish and the producer thread), the mean number of frames per engine
step on each side (how full the worker keeps its batches), the share of frames rendered
with artefacts, then end-to-end latency p50/p99 with the producer at a steady rate
below capacity. Last line: `pipeline_vs_engine=<x>`.

`--preset seed` runs the seed's thresholds instead of the card's operating point:
with the demo model that sends most of these frames to review, the host's worst case.
Redis is the embedded server unless --redis-url is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from producer.producer import Producer
from producer.sources import SourceFrame
from producer.synthetic import SyntheticScanner
from shared.images import encode_image
from shared.keys import Keys
from shared.logs import configure_logging
from shared.redis_conn import connect, embedded_redis
from shared.settings import Settings, load_settings
from worker.engine.erasing import EngineInput, ErasingEngine
from worker.engine.model import load_model, resolve_device
from worker.engine.preprocess import to_model_input
from worker.service.bootstrap import create_worker, policy_from_settings
from worker.service.imageio import decode_image


def encoded_frames(count: int, seed: int) -> list[bytes]:
    """JPEG bytes of target-domain scanner frames, as a scanner would send them."""
    scanner = SyntheticScanner(domain="target", seed=seed)
    return [encode_image(scanner.frame(i).image, quality=90) for i in range(count)]


def as_source(jpegs: list[bytes]) -> Iterator[SourceFrame]:
    for data in jpegs:
        yield SourceFrame(data, "image/jpeg", {})


def process_cpu_s() -> float:
    """CPU seconds this process has used so far, all its threads together."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def mean_batch(engine: ErasingEngine) -> float:
    """Frames per engine step so far: how full the engine's batches were."""
    return engine.frame_forwards / max(engine.steps, 1)


def engine_alone(settings: Settings, jpegs: list[bytes]) -> tuple[float, float, float]:
    """Frames/s of the engine on already-decoded, already-resized frames, the process's
    CPU milliseconds per frame while it ran, and the mean batch of its steps."""
    model = load_model(settings.model.card, resolve_device(settings.model.device))
    policy = policy_from_settings(settings.erasing, model)
    engine = ErasingEngine(
        model, policy, max_batch=settings.model.max_batch, precision=settings.model.precision
    )
    pixels = [to_model_input(decode_image(d, "image/jpeg", 10**8), model.input_hw) for d in jpegs]
    frames = [EngineInput(i, p) for i, p in enumerate(pixels)]
    engine.run(frames[: settings.model.max_batch])  # warm-up
    engine.steps = engine.frame_forwards = 0
    start, cpu = time.perf_counter(), process_cpu_s()
    engine.run(frames)
    elapsed, cpu = time.perf_counter() - start, process_cpu_s() - cpu
    engine.close()
    return len(frames) / elapsed, cpu * 1e3 / len(frames), mean_batch(engine)


def pipeline_run(
    settings: Settings, url: str, jpegs: list[bytes], fps: float | None
) -> tuple[float, float, float, list[dict]]:
    """Producer thread + worker (burst) on a fresh namespace: frames/s, the process's CPU
    milliseconds per frame (Redis is another process, not counted), the mean batch of
    the engine's steps and the events."""
    keys = Keys(settings.namespace)
    client = connect(url)
    worker = create_worker(
        settings, client, load_model(settings.model.card, resolve_device(settings.model.device))
    )
    producer = Producer(connect(url), keys, fps=fps, max_backlog=len(jpegs) + 1)
    thread = threading.Thread(target=producer.run, args=(as_source(jpegs),), daemon=True)
    start, cpu = time.perf_counter(), process_cpu_s()
    thread.start()
    worker.run(burst=True, until=lambda: not thread.is_alive())
    elapsed, cpu = time.perf_counter() - start, process_cpu_s() - cpu
    thread.join()
    events = [json.loads(f[b"event"]) for _, f in client.xrange(keys.results)]
    if len(events) != len(jpegs):
        raise RuntimeError(f"{len(jpegs)} frames sent, {len(events)} decisions published")
    return len(jpegs) / elapsed, cpu * 1e3 / len(jpegs), mean_batch(worker.engine), events


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--latency-frames", type=int, default=200)
    parser.add_argument(
        "--load", type=float, default=0.5, help="steady rate as a share of capacity"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per side")
    parser.add_argument(
        "--preset",
        choices=["card", "seed"],
        default="card",
        help="erasing policy: the card's operating point, or the seed's thresholds",
    )
    parser.add_argument("--card", default=None, help="model card (default: the settings' model)")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help="torch threads for both runs (on a CPU host, leave cores for decode and render)",
    )
    args = parser.parse_args(argv)
    configure_logging("json", "warning")
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)

    overrides: dict[str, object] = {
        "worker": {"metrics_port": 0},
        "erasing": {"preset": args.preset},
    }
    if args.card:
        overrides["model"] = {"card": args.card}
    base = load_settings(**overrides)
    jpegs = encoded_frames(args.frames, args.seed)

    engine_rounds: list[float] = []
    pipe_rounds: list[float] = []
    engine_cpu: list[float] = []
    pipe_cpu: list[float] = []
    engine_batch: list[float] = []
    pipe_batch: list[float] = []
    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(embedded_redis())
        for round_no in range(args.rounds):
            fps, cpu_ms, batch = engine_alone(base, jpegs)
            engine_rounds.append(fps)
            engine_cpu.append(cpu_ms)
            engine_batch.append(batch)
            run_settings = base.model_copy(
                update={"namespace": f"bench{int(time.time())}r{round_no}"}
            )
            fps, cpu_ms, batch, decided = pipeline_run(run_settings, url, jpegs, fps=None)
            pipe_rounds.append(fps)
            pipe_cpu.append(cpu_ms)
            pipe_batch.append(batch)

        engine_fps, pipe_fps = max(engine_rounds), max(pipe_rounds)
        rate = max(1.0, pipe_fps * args.load)
        steady = encoded_frames(args.latency_frames, args.seed + 1)
        lat_settings = base.model_copy(update={"namespace": f"benchlat{int(time.time())}"})
        _, _, _, events = pipeline_run(lat_settings, url, steady, fps=rate)

    latency = np.array([e["latency_ms"] for e in events])
    forwards = np.mean([e["forward_passes"] for e in events])
    print(
        f"model={Path(base.model.card).parent.name} preset={args.preset} "
        f"device={base.model.device} max_batch={base.model.max_batch} frames={len(jpegs)} "
        f"torch_threads={torch.get_num_threads()}"
    )
    print(f"{'frames/s':<28}{'best':>8}   rounds")
    for name, rounds in (
        ("engine alone", engine_rounds),
        ("pipeline (producer→worker)", pipe_rounds),
    ):
        listed = " ".join(f"{r:.1f}" for r in rounds)
        print(f"{name:<28}{max(rounds):>8.2f}   {listed}")
    engine_ms, pipe_ms = float(np.median(engine_cpu)), float(np.median(pipe_cpu))
    print(
        f"process CPU per frame (median of rounds, all threads, Redis not counted): "
        f"engine alone {engine_ms:.1f} ms, pipeline {pipe_ms:.1f} ms, "
        f"host work +{pipe_ms - engine_ms:.1f} ms"
    )
    print(
        f"frames per engine step (mean of rounds, max_batch={base.model.max_batch}): "
        f"engine alone {np.mean(engine_batch):.1f}, pipeline {np.mean(pipe_batch):.1f}"
    )
    print(f"forward passes per frame (steady run): {forwards:.2f}")
    alarms = sum(e["decision"] != "clear" for e in decided) / len(decided)
    print(
        f"frames rendered with artefacts (not clear) in the throughput runs: {alarms:.0%} "
        "(each costs a full-size decode, the erased image, the heat-map and two JPEG encodes)"
    )
    print(
        f"steady rate {rate:.1f} fps ({args.load:.0%} of capacity), {len(events)} frames: "
        f"latency p50={np.percentile(latency, 50):.0f} ms p99={np.percentile(latency, 99):.0f} ms"
    )
    print(f"pipeline_vs_engine={pipe_fps / engine_fps:.3f}")


if __name__ == "__main__":
    main()
