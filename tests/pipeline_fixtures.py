"""Helpers for worker tests: a tiny real model card on disk, frames written to a stream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import redis
import timm
import torch
import uvicorn
from safetensors.torch import save_file

from shared.keys import Keys
from shared.schemas import FrameFields
from tests.redis_procs import free_port

TINY_KWARGS = {"img_size": 64, "patch_size": 8, "depth": 4, "embed_dim": 64, "num_heads": 2}
LABELS = ["benign", "gun", "knife"]
# Thresholds that make the sharpened random model call roughly half the frames threats:
# as a settings section (in-process workers) and as environment (worker processes).
ERASING = {"detect_th": 0.6, "reconsider_th": 0.05}
ERASING_ENV = {f"SCANGUARD_ERASING__{name.upper()}": str(value) for name, value in ERASING.items()}


def write_tiny_card(folder: Path, seed: int = 0) -> Path:
    """Write a random-init tiny ViT checkpoint and its card; return the card path."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    module = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, **TINY_KWARGS
    )
    with torch.no_grad():
        module.head.weight.mul_(30.0)  # spread the probabilities so decisions vary
    save_file(module.state_dict(), str(folder / "model.safetensors"))
    card = {
        "name": "tiny-random",
        "timm_name": "vit_tiny_patch16_224",
        "timm_kwargs": TINY_KWARGS,
        "checkpoint": "model.safetensors",
        "labels": LABELS,
    }
    path = folder / "card.json"
    path.write_text(json.dumps(card))
    return path


def frame_image(index: int, size_hw: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A deterministic RGB test frame with a few shapes."""
    rng = np.random.default_rng(index)
    rows, cols = size_hw
    image = np.full((rows, cols, 3), 230, np.uint8)
    for _ in range(4):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, cols)), int(rng.integers(0, rows)))
        cv2.circle(image, centre, int(rng.integers(5, rows // 2)), colour, -1)
    return image


def encode(image: np.ndarray, content_type: str = "image/jpeg") -> bytes:
    ext = ".jpg" if content_type == "image/jpeg" else ".png"
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def push_frames(
    client: redis.Redis,
    keys: Keys,
    count: int,
    start: int = 0,
    size_hw: tuple[int, int] = (96, 128),
) -> list[str]:
    """XADD `count` valid frames; return their frame ids."""
    ids = []
    for index in range(start, start + count):
        content_type = "image/png" if index % 5 == 0 else "image/jpeg"
        fields = FrameFields(
            frame_id=f"frame-{index}",
            scanner_id=f"lane-{index % 2}",
            captured_at=datetime.now(timezone.utc),
            content_type=content_type,
            meta={"index": index},
        )
        client.xadd(
            keys.frames, fields.to_fields(encode(frame_image(index, size_hw), content_type))
        )
        ids.append(fields.frame_id)
    return ids


def events(client: redis.Redis, stream: str) -> list[dict]:
    """Every event JSON on a stream, parsed."""
    return [json.loads(fields[b"event"]) for _, fields in client.xrange(stream)]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def heartbeat(client: redis.Redis, keys: Keys, worker_id: str) -> Callable[[], bool]:
    """A condition: the worker's heartbeat key exists."""
    return lambda: client.exists(keys.worker(worker_id)) == 1


@contextmanager
def serve_app(app: Any, **config: Any) -> Iterator[str]:
    """Run an ASGI `app` with uvicorn on a free loopback port; yield its base URL.

    `config` adds uvicorn options (e.g. `timeout_graceful_shutdown`).
    """
    port = free_port()
    web = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", **config
        )
    )
    thread = threading.Thread(target=web.run, name="web", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not web.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the web app did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        thread.join(timeout=10)
