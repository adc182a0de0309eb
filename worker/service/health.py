"""Worker identity and the local liveness file (torch-free, so probes start fast)."""

from __future__ import annotations

from pathlib import Path


def health_file(health_dir: Path, worker_id: str) -> Path:
    """The file the loop touches every pass; `worker check` reads its age, no Redis needed."""
    return Path(health_dir) / f"scanguard-worker-{worker_id}.alive"


class HealthFile:
    """The liveness file of one worker: touched every pass, its text the loop's condition.

    A condition (e.g. "redis refusing writes: out_of_memory") stays the file's text until
    the loop clears it ("" once a heartbeat gets through), so `worker check` can say why a
    live worker is not deciding without a restart being the answer.
    """

    def __init__(self, health_dir: Path, worker_id: str) -> None:
        self.path = health_file(health_dir, worker_id)
        self._condition: str | None = None  # not written yet

    def touch(self, condition: str | None = None) -> None:
        if condition is not None and condition != self._condition:
            self.path.write_text(condition)
            self._condition = condition
        else:
            self.path.touch()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
