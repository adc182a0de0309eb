"""The composition root: from validated settings to a ready `Worker`.

Everything that turns configuration into objects lives here (torch threads, device,
model, decision policy, Redis client, metrics server), so the CLI only parses and calls,
and the demo, the benchmarks and the tests build their workers the way production does.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import redis
import torch

from shared.metrics_http import serve
from shared.redis_conn import connect
from shared.settings import ErasingSettings, Settings
from worker.engine.decision import DecisionPolicy
from worker.engine.model import LoadedModel, load_model, resolve_device
from worker.service.loop import Worker
from worker.service.metrics import WorkerMetrics

SEED_POLICY = DecisionPolicy()  # the seed's thresholds: the "seed" preset


def policy_from_settings(erasing: ErasingSettings, model: LoadedModel) -> DecisionPolicy:
    """The decision policy the worker runs: the preset, then every explicitly set field.

    The "card" preset starts from the model card's calibrated operating point (the seed's
    values when the card has none), "seed" from the seed's values; `fill` falls back to
    the card's. A combination that is not a valid policy stops start-up, naming the fields.
    """
    base: dict[str, object] = {
        "detect_th": SEED_POLICY.detect_th,
        "reconsider_th": SEED_POLICY.reconsider_th,
        "max_iter": SEED_POLICY.max_iter,
        "on_exhausted": SEED_POLICY.on_exhausted,
        "judge_original": SEED_POLICY.judge_original,
        "head_fusion": SEED_POLICY.head_fusion,
        "fill": model.fill,
        "mask_shape": SEED_POLICY.mask_shape,
        "mask_param": SEED_POLICY.mask_param,
    }
    if erasing.preset == "card" and model.operating_point is not None:
        base.update(model.operating_point.policy.model_dump())
    explicit = erasing.model_fields_set - {"preset"}
    base.update({name: getattr(erasing, name) for name in explicit})
    if base["fill"] is None:
        base["fill"] = model.fill
    try:
        return DecisionPolicy(**base)  # type: ignore[arg-type]
    except ValueError as exc:
        source = "the model card's operating point" if erasing.preset == "card" else "the seed"
        raise ValueError(
            f"SCANGUARD_ERASING__*: {exc} (settings {sorted(explicit) or 'none'} over {source})"
        ) from None


def create_worker(
    settings: Settings,
    client: redis.Redis,
    model: LoadedModel,
    *,
    metrics: WorkerMetrics | None = None,
) -> Worker:
    """A worker over an already loaded model and client.

    It creates its consumer group on its first pass (backing off while Redis is down).
    OpenCV's own thread pool is turned off for the process: the worker decodes and
    renders frames in parallel in its pool (`decode_threads`), and OpenCV splitting each
    call over more threads only adds contention with those and with the model's threads
    (on the 2-core bench it cost 10 % of the pipeline's throughput at a high alarm share).
    """
    cv2.setNumThreads(1)
    policy = policy_from_settings(settings.erasing, model)
    return Worker(settings, client, model, policy, metrics=metrics)


def check_health_dir(folder: Path) -> None:
    """Refuse a liveness folder the worker could not write its file into."""
    if not folder.is_dir():
        raise ValueError(f"SCANGUARD_WORKER__HEALTH_DIR: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"SCANGUARD_WORKER__HEALTH_DIR: {folder} is not writable")


def build_worker(settings: Settings, url: str) -> Worker:
    """Load the model, connect and serve metrics: everything a worker needs, or a clear error.

    Redis itself is not contacted here: a worker that starts before Redis backs off
    in its loop like one that loses it.

    Raises:
        ValueError: an unusable setting, model (`ModelLoadError`) or Redis URL; the
            message names it.
    """
    check_health_dir(settings.worker.health_dir)
    if settings.model.cpu_threads:
        # Several CPU workers on one host must share the cores: torch's default of one
        # thread per core makes them wait on each other's descheduled threads.
        torch.set_num_threads(settings.model.cpu_threads)
    model = load_model(settings.model.card, resolve_device(settings.model.device))
    # Reads block up to max_wait_ms; the socket must outlast them.
    client = connect(url, socket_timeout=30.0)
    worker = create_worker(settings, client, model)
    serve(worker.metrics.registry, settings.worker.metrics_port, "SCANGUARD_WORKER__METRICS_PORT")
    return worker
