"""Worker identity and the local liveness file (torch-free, so probes start fast)."""

from __future__ import annotations

from pathlib import Path


def health_file(health_dir: Path, worker_id: str) -> Path:
    """The file the loop touches every pass; `worker check` reads its age, no Redis needed."""
    return Path(health_dir) / f"scanguard-worker-{worker_id}.alive"
