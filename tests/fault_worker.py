"""A real worker process with one injected fault, for the fault tests.

    python tests/fault_worker.py POINT ACTION

POINT is where the fault strikes: decode (in the decode pool), step (an engine step
with frames in it), render (in the render pool), publish (before the atomic publish),
between (between two steps, with frames mid-iteration). ACTION is `kill` (SIGKILL,
as in a crash or an OOM kill) or `stop` (SIGSTOP, as in a hung process). The fault
fires once, the first time the point is reached with work in hand. Settings come
from SCANGUARD_* like any worker.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.logs import configure_logging
from shared.settings import load_settings
from worker import loop
from worker.cli import build_worker
from worker.engine import ErasingEngine
from worker.publish import Publisher

_fired = threading.Event()


def strike(action: str) -> None:
    if _fired.is_set():
        return
    _fired.set()
    print(f"fault_strikes pid={os.getpid()} action={action}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGSTOP)


def install(point: str, action: str) -> None:
    if point == "decode":
        real_decode = loop.decode_entry

        def decode(*args, **kwargs):
            strike(action)
            return real_decode(*args, **kwargs)

        loop.decode_entry = decode
    elif point == "step":
        real_step = ErasingEngine.step

        def step(self):
            if self.active:
                strike(action)
            return real_step(self)

        ErasingEngine.step = step
    elif point == "render":
        real_render = loop.render

        def render(*args, **kwargs):
            strike(action)
            return real_render(*args, **kwargs)

        loop.render = render
    elif point == "publish":
        real_publish = Publisher.decision

        def decision(self, *args, **kwargs):
            strike(action)
            return real_publish(self, *args, **kwargs)

        Publisher.decision = decision
    elif point == "between":
        real_maintain = loop.Worker._maintain

        def maintain(self):
            if self.engine.active and self.decided:
                strike(action)
            return real_maintain(self)

        loop.Worker._maintain = maintain
    else:
        raise SystemExit(f"unknown fault point {point!r}")


def main() -> int:
    point, action = sys.argv[1], sys.argv[2]
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    install(point, action)
    worker = build_worker(settings, settings.redis_url.get_secret_value())
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
