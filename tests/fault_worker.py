"""A real worker process with one injected fault, for the fault tests.

    python tests/fault_worker.py POINT ACTION

POINT is where the fault strikes: decode (in the decode pool), step (an engine step
with frames in it), render (in the render pool), publish (before the atomic publish),
between (between two steps, with frames mid-iteration). ACTION is `kill` (SIGKILL,
as in a crash or an OOM kill), `stop` (SIGSTOP, as in a hung process) or `raise` (a
RuntimeError at that point, as a bug or a device error would). The fault fires once,
the first time the point is reached with work in hand. With `raise` at `render` or
`decode` it strikes only the frame whose id is in SCANGUARD_TEST_FAULT_FRAME (when
set), so its batch-mates show what happens to innocent frames. Settings come from
SCANGUARD_* like any worker.
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
from worker.engine.erasing import ErasingEngine
from worker.service import loop
from worker.service.bootstrap import build_worker
from worker.service.outbox import Outbox

_fired = threading.Event()


def strike(action: str, frame_id: str | None = None) -> None:
    target = os.environ.get("SCANGUARD_TEST_FAULT_FRAME")
    if _fired.is_set() or (target and frame_id is not None and frame_id != target):
        return
    _fired.set()
    print(f"fault_strikes pid={os.getpid()} action={action} frame={frame_id}", flush=True)
    if action == "raise":
        raise RuntimeError(f"injected fault (frame {frame_id})")
    os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGSTOP)


def _raw_frame_id(raw: dict[bytes, bytes]) -> str:
    return raw.get(b"frame_id", b"").decode(errors="replace")


def install(point: str, action: str) -> None:
    if point == "decode":
        real_decode = loop.decode_entry

        def decode(entry_id, raw, *args, **kwargs):
            strike(action, _raw_frame_id(raw))
            return real_decode(entry_id, raw, *args, **kwargs)

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

        def render(frame, *args, **kwargs):
            strike(action, frame.fields.frame_id)
            return real_render(frame, *args, **kwargs)

        loop.render = render
    elif point == "publish":
        real_flush = Outbox.flush

        def flush(self):
            if self.items:
                strike(action)
            return real_flush(self)

        Outbox.flush = flush
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
