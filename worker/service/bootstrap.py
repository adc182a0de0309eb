"""The composition root: from validated settings to a ready `Worker`.

Everything that turns configuration into objects lives here (torch threads, device,
model, decision policy, Redis client, consumer group), so the CLI only parses and calls,
and the demo, the benchmarks and the tests build their workers the way production does.
"""

from __future__ import annotations

import redis
import torch

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
    """A worker over an already loaded model and client, with its consumer group in place."""
    policy = policy_from_settings(settings.erasing, model.fill)
    worker = Worker(settings, client, model, policy, metrics=metrics)
    worker.ensure_group()
    return worker


def build_worker(settings: Settings, url: str) -> Worker:
    """Load the model and connect: everything a worker needs, or a clear error.

    Raises:
        ValueError: an unusable model (`ModelLoadError`) or Redis URL.
    """
    if settings.model.cpu_threads:
        # Several CPU workers on one host must share the cores: torch's default of one
        # thread per core makes them wait on each other's descheduled threads.
        torch.set_num_threads(settings.model.cpu_threads)
    model = load_model(settings.model.card, resolve_device(settings.model.device))
    # Reads block up to max_wait_ms; the socket must outlast them.
    client = connect(url, socket_timeout=max(30.0, settings.worker.max_wait_ms / 1000 + 5))
    return create_worker(settings, client, model)
