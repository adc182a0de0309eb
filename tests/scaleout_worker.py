"""Launch one real worker whose engine steps also cost a fixed wall time (scale-out test only).

    python tests/scaleout_worker.py --step-sleep-ms 80

Settings come from SCANGUARD_* as for `python -m worker run`. After every engine step
the process sleeps for the given time: it stands in for device time, which costs the
host no CPU, so several of these workers on a small machine scale as GPU workers
would instead of fighting over the cores. Production code has no such knob; the
delay is wrapped around the engine here.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# Run as a script: the repository root goes on the path, as for `python -m worker`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.logs import configure_logging
from shared.settings import load_settings
from worker.service.bootstrap import build_worker


def with_device_time(step: Callable[[], Any], seconds: float) -> Callable[[], Any]:
    """`step`, followed by a sleep of `seconds`."""

    def slow_step() -> Any:
        finished = step()
        time.sleep(seconds)
        return finished

    return slow_step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step-sleep-ms", type=float, required=True)
    args = parser.parse_args(argv)
    # One thread each: several of these share two cores, and the tiny model needs no more.
    torch.set_num_threads(1)
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    if settings.redis_url is None:
        print("SCANGUARD_REDIS_URL must be set", file=sys.stderr)
        return 2
    worker = build_worker(settings, settings.redis_url.get_secret_value())
    worker.engine.step = with_device_time(worker.engine.step, args.step_sleep_ms / 1000)  # type: ignore[method-assign]
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
