"""The producer CLI under hostile conditions: a Redis that refuses writes, bad flags, no Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from shared.keys import Keys
from tests.redis_procs import RedisProcess, find_binary, free_port

ROOT = Path(__file__).resolve().parent.parent
FILLER_BYTES = 8 << 20  # one big value that pushes the server past its maxmemory
HEADROOM_BYTES = 4 << 20  # room left once the filler is gone: plenty for a few small frames
WAIT_S = 30.0
FILLER = "filler"  # the big key's name; each full_redis server is the test's own


@dataclass
class ProducerRun:
    """A `python -m producer` child process with its stdout and stderr in files."""

    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def events(self, name: str) -> list[dict]:
        """The JSON log lines on stderr whose event is `name`."""
        lines = (json.loads(line) for line in self.stderr().splitlines() if line.startswith("{"))
        return [line for line in lines if line.get("event") == name]

    def wait_for_event(self, name: str) -> None:
        """Wait until the producer logs `name`; fail if it exits or takes too long first."""
        deadline = time.monotonic() + WAIT_S
        while not self.events(name):
            if self.process.poll() is not None:
                raise AssertionError(f"producer exited before {name}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name} in {WAIT_S} s:\n{self.stderr()}")
            time.sleep(0.02)  # polling a log file; nothing to block on

    def finish(self) -> tuple[int, dict]:
        """Wait for the exit; return its status and the summary (the last stdout line)."""
        status = self.process.wait(timeout=WAIT_S)
        lines = self.out.read_text().splitlines()
        assert lines, f"no summary printed (exit {status}):\n{self.stderr()}"
        return status, json.loads(lines[-1])


@pytest.fixture
def start_producer(tmp_path: Path) -> Iterator:
    """Start the real producer CLI against a URL and namespace; leftovers are killed."""
    runs: list[ProducerRun] = []

    def start(url: str, keys: Keys, *args: str) -> ProducerRun:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCANGUARD_")}
        env |= {
            "SCANGUARD_REDIS_URL": url,
            "SCANGUARD_NAMESPACE": keys.namespace,
            "SCANGUARD_LOG_FORMAT": "json",
        }
        out, err = tmp_path / f"producer{len(runs)}.out", tmp_path / f"producer{len(runs)}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "producer", "--no-progress", *args],
                cwd=ROOT,
                env=env,
                stdout=stdout,
                stderr=stderr,
            )
        runs.append(ProducerRun(process, out, err))
        return runs[-1]

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


@pytest.fixture
def full_redis(redis_factory) -> Iterator[tuple[RedisProcess, redis.Redis]]:
    """A server of its own filled past `maxmemory` under `noeviction`: every write is refused.

    The limit is set with CONFIG SET, below what the filler key uses; deleting the
    filler (`FILLER`) leaves HEADROOM_BYTES free, and writes are accepted again.
    """
    server = redis_factory()
    if not server.controllable:
        pytest.skip("needs a server of its own to fill (SCANGUARD_TEST_REDIS_URL is set)")
    client = server.client()
    # SETRANGE grows the value inside the server: a SET of 8 MiB would also leave an
    # 8 MiB query buffer that the server shrinks a moment later, freeing room again.
    client.setrange(FILLER, FILLER_BYTES - 1, b"x")
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used - FILLER_BYTES + HEADROOM_BYTES)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", b"x")
    yield server, client
    client.close()
    server.kill()


def assert_adds_up(summary: dict) -> None:
    parts = summary["sent"] + summary["dropped"] + summary["abandoned"]
    assert summary["offered"] == parts, summary


SYNTHETIC = ["--source", "synthetic:target", "--size", "64x64"]


@pytest.mark.redis
def test_out_of_memory_is_waited_out_and_every_frame_sent(full_redis, keys, start_producer):
    """A Redis out of memory holds the frame in hand until memory is freed; then all are sent."""
    server, client = full_redis
    run = start_producer(server.url, keys, *SYNTHETIC, "--count", "5")
    run.wait_for_event("redis_refusing")
    time.sleep(0.5)  # a few more refused attempts, which must not be logged again
    assert client.xlen(keys.frames) == 0
    client.delete(FILLER)
    status, summary = run.finish()
    assert status == 0, run.stderr()
    assert (summary["offered"], summary["sent"]) == (5, 5)
    assert_adds_up(summary)
    assert client.xlen(keys.frames) == 5
    assert [e["kind"] for e in run.events("redis_refusing")] == ["out_of_memory"]
    assert run.events("redis_accepting")
    assert "Traceback" not in run.stderr()


@pytest.mark.redis
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_stop_while_refused_abandons_the_frame_and_prints_the_summary(
    full_redis, keys, start_producer, sig
):
    """Stopped while Redis refuses writes, the producer exits 0 and counts the frame abandoned."""
    server, client = full_redis
    run = start_producer(server.url, keys, *SYNTHETIC, "--count", "5")
    run.wait_for_event("redis_refusing")
    run.process.send_signal(sig)
    status, summary = run.finish()
    assert status == 0, run.stderr()
    assert summary["abandoned"] >= 1 and summary["sent"] == 0
    assert_adds_up(summary)
    assert client.xlen(keys.frames) == 0
    assert "Traceback" not in run.stderr()


@pytest.mark.redis
def test_unexpected_redis_reply_prints_the_summary_and_exits_1(
    redis_server, redis_client, keys, start_producer
):
    """A reply no rung handles (the frames key is not a stream) ends the run: summary, exit 1."""
    redis_client.set(keys.frames, "not a stream")
    run = start_producer(redis_server.url, keys, *SYNTHETIC, "--count", "3")
    status, summary = run.finish()
    assert status == 1
    assert (summary["offered"], summary["abandoned"]) == (1, 1)
    assert_adds_up(summary)
    assert run.events("producer_failed")


@pytest.mark.redis
def test_redis_refusing_connections_at_start_is_an_outage(keys, start_producer, tmp_path):
    """With nothing listening at start the producer backs off, then sends once Redis is up."""
    server = RedisProcess(find_binary(), tmp_path, free_port())
    run = start_producer(server.url, keys, *SYNTHETIC, "--count", "3")
    try:
        run.wait_for_event("redis_unavailable")
        server.start()
        status, summary = run.finish()
    finally:
        server.kill()
    assert status == 0, run.stderr()
    assert (summary["sent"], summary["reconnects"]) == (3, 1)
    assert_adds_up(summary)
    assert "Traceback" not in run.stderr()


@pytest.mark.redis
@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--count", "-1"], "--count"),
        (["--count", "0"], "--count"),
        (["--count", "many"], "--count"),
        (["--fps", "nan"], "--fps"),
        (["--fps", "inf"], "--fps"),
        (["--fps", "-1"], "--fps"),
        (["--max-backlog", "0"], "--max-backlog"),
        (["--jpeg-quality", "101"], "--jpeg-quality"),
        (["--source", "video:{tmp}/missing.avi"], "--source"),
        (["--source", "dir:{tmp}/missing"], "--source"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_bad_flag_is_one_line_naming_it_and_exit_2(redis_server, keys, tmp_path, args, option):
    """A bad flag value ends with one stderr line that names the flag, exit status 2, no frame."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANGUARD_")}
    env |= {"SCANGUARD_REDIS_URL": redis_server.url, "SCANGUARD_NAMESPACE": keys.namespace}
    argv = [a.format(tmp=tmp_path) for a in args]
    # --count 1 where the count is not under test: old code that accepted the flag ends fast.
    count = [] if option == "--count" else ["--count", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "producer", *SYNTHETIC, *count, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], done.stderr
    assert done.stdout == ""
