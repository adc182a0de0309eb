"""The composition root: from validated settings to a ready `Worker`.

Everything that turns configuration into objects lives here (torch threads, device,
model, decision policy, Redis client, metrics server), so the CLI only parses and calls,
and the demo, the benchmarks and the tests build their workers the way production does.
"""

from __future__ import annotations

import os
from pathlib import Path

import redis
import torch

from shared.metrics_http import serve
from shared.redis_conn import connect
from shared.settings import ErasingSettings, Settings
from worker.engine.decision import DecisionPolicy
from worker.engine.model import LoadedModel, load_model, resolve_device
from worker.service.loop import Worker
from worker.service.metrics import WorkerMetrics


def policy_from_settings(erasing: ErasingSettings, card_fill: float) -> DecisionPolicy:
    """The decision policy the settings ask for; `fill` falls back to the model card's."""
    return DecisionPolicy(
        detect_th=erasing.detect_th,
        reconsider_th=erasing.reconsider_th,
        max_iter=erasing.max_iter,
        on_exhausted=erasing.on_exhausted,
        judge_original=erasing.judge_original,
        head_fusion=erasing.head_fusion,
        fill=card_fill if erasing.fill is None else erasing.fill,
    )


def create_worker(
    settings: Settings,
    client: redis.Redis,
    model: LoadedModel,
    *,
    metrics: WorkerMetrics | None = None,
) -> Worker:
    """A worker over an already loaded model and client.

    It creates its consumer group on its first pass (backing off while Redis is down).
    """
    policy = policy_from_settings(settings.erasing, model.fill)
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
