"""The producer against a real redis-server: sources, fields, pacing, backpressure, outages."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from producer.producer import Producer
from producer.sources import (
    DirectorySource,
    SourceFrame,
    SyntheticSource,
    VideoSource,
    parse_source,
)
from shared.backoff import Backoff
from shared.keys import Keys, check_id
from shared.schemas import parse_frame_fields

MAX_BYTES = 1 << 24
ROOT = Path(__file__).resolve().parent.parent


def tiny_png(value: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((8, 8, 3), value % 256, np.uint8))
    assert ok
    return buf.tobytes()


def numbered_frames(n: int | None = None) -> Iterator[SourceFrame]:
    """A small real source: tiny PNGs that carry their number in meta."""
    i = 0
    while n is None or i < n:
        yield SourceFrame(tiny_png(i), "image/png", {"n": i})
        i += 1


def stream_frames(client: redis.Redis, keys: Keys) -> list:
    return [parse_frame_fields(fields, MAX_BYTES) for _id, fields in client.xrange(keys.frames)]


def wait_until(predicate, timeout_s: float = 10.0) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two JPEGs, a PNG in a subfolder, a BMP and a text file."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "scans"
    (folder / "b").mkdir(parents=True)
    images = {"a1.jpg": ".jpg", "a2.jpeg": ".jpg", "b/c.png": ".png", "d.bmp": ".bmp"}
    for name, ext in images.items():
        ok, buf = cv2.imencode(ext, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
        assert ok
        (folder / name).write_bytes(buf.tobytes())
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.redis
def test_folder_frames_arrive_with_valid_fields(redis_client, keys, image_folder):
    """Every readable image becomes one entry; JPEG/PNG pass through and a BMP turns into JPEG."""
    summary = Producer(redis_client, keys, "lane-7").run(DirectorySource(image_folder))
    assert (summary.offered, summary.sent, summary.dropped) == (4, 4, 0)
    frames = stream_frames(redis_client, keys)
    by_path = {fields.meta["path"]: (fields, image) for fields, image, _ in frames}
    assert sorted(by_path) == ["a1.jpg", "a2.jpeg", "b/c.png", "d.bmp"]
    for path in ("a1.jpg", "a2.jpeg", "b/c.png"):
        assert by_path[path][1] == (image_folder / path).read_bytes()
    assert by_path["b/c.png"][0].content_type == "image/png"
    bmp_fields, bmp_image = by_path["d.bmp"]
    assert bmp_fields.content_type == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(bmp_image, np.uint8), cv2.IMREAD_COLOR).shape == (24, 32, 3)
    ids = [fields.frame_id for fields, _, _ in frames]
    assert len(set(ids)) == 4 and all(check_id(i) for i in ids)
    assert all(fields.scanner_id == "lane-7" and enq is not None for fields, _, enq in frames)
    assert redis_client.hgetall(keys.stats) == {b"sent": b"4", b"sent:lane-7": b"4"}


@pytest.mark.redis
def test_count_stops_a_looping_source(redis_client, keys, image_folder):
    """With --loop the folder repeats, and count caps the frames offered exactly."""
    source = DirectorySource(image_folder, loop=True)
    summary = Producer(redis_client, keys, fps=2_000, count=9).run(source)
    assert (summary.offered, summary.sent) == (9, 9)
    rounds = [fields.meta["round"] for fields, _, _ in stream_frames(redis_client, keys)]
    assert rounds == [0] * 4 + [1] * 4 + [2]


@pytest.mark.redis
def test_fps_paces_without_losing_frames(redis_client, keys):
    """A paced run still delivers every frame of a finite source, in order."""
    summary = Producer(redis_client, keys, fps=500).run(numbered_frames(20))
    assert summary.sent == 20
    assert [f.meta["n"] for f, _, _ in stream_frames(redis_client, keys)] == list(range(20))


@pytest.mark.redis
def test_block_backpressure_waits_for_workers(redis_client, redis_server, keys):
    """In block mode the producer waits at max_backlog and sends everything once drained."""
    producer = Producer(redis_client, keys, count=30, max_backlog=3, backpressure="block")
    result = {}
    thread = threading.Thread(target=lambda: result.update(s=producer.run(numbered_frames())))
    thread.start()
    wait_until(lambda: redis_client.xlen(keys.frames) == 3 and producer.summary.offered == 4)
    seen, last = [], "0-0"
    with redis_server.client() as drain:
        while len(seen) < 30:
            for _key, entries in drain.xread({keys.frames: last}, count=2, block=5_000):
                for entry_id, fields in entries:
                    seen.append(fields[b"frame_id"])
                    drain.xdel(keys.frames, entry_id)
                    last = entry_id
    thread.join(timeout=10)
    summary = result["s"]
    assert (summary.sent, summary.dropped) == (30, 0)
    assert len(set(seen)) == 30
    assert summary.blocked_s > 0
    assert float(redis_client.hget(keys.stats, "blocked_s")) > 0


@pytest.mark.redis
def test_drop_backpressure_counts_every_drop(redis_client, keys):
    """In drop mode nothing waits: the backlog stays at max_backlog and drops are counted."""
    summary = Producer(
        redis_client, keys, "lane-2", count=20, max_backlog=5, backpressure="drop"
    ).run(numbered_frames())
    assert redis_client.xlen(keys.frames) == 5
    assert (summary.offered, summary.sent, summary.dropped) == (20, 5, 15)
    stats = redis_client.hgetall(keys.stats)
    assert stats[b"dropped"] == b"15" and stats[b"dropped:lane-2"] == b"15"
    assert stats[b"sent"] == b"5"
    # The oldest frames stay; the newest are the ones dropped.
    assert [f.meta["n"] for f, _, _ in stream_frames(redis_client, keys)] == list(range(5))


@pytest.mark.redis
def test_producers_sharing_a_stream_overshoot_by_at_most_one_frame_each(redis_server, keys):
    """Four producers race for the last places of one stream. Each checks the backlog, then
    adds, so each can pass its check once when one place is left: the stream ends within
    max_backlog + 3, and every frame is counted as sent or dropped, in Redis too."""
    start = threading.Barrier(4)
    summaries = {}

    def produce(lane: str) -> None:
        producer = Producer(
            redis_server.client(), keys, lane, count=30, max_backlog=5, backpressure="drop"
        )
        start.wait()
        summaries[lane] = producer.run(numbered_frames())

    threads = [threading.Thread(target=produce, args=(f"lane-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    client = redis_server.client()
    length = client.xlen(keys.frames)
    assert 5 <= length <= 5 + 3
    assert sum(s.sent for s in summaries.values()) == length
    assert sum(s.dropped for s in summaries.values()) == 120 - length
    stats = client.hgetall(keys.stats)
    assert (int(stats[b"sent"]), int(stats[b"dropped"])) == (length, 120 - length)
    for lane, summary in summaries.items():
        assert int(stats.get(f"dropped:{lane}".encode(), 0)) == summary.dropped


@pytest.mark.redis
def test_producer_rides_out_a_redis_restart(redis_factory, keys):
    """Killing and restarting Redis mid-run costs no frame the producer reported as sent."""
    server = redis_factory(appendonly=True)
    halfway = threading.Event()
    client = server.client(socket_timeout=2.0)
    producer = Producer(
        client,
        keys,
        count=200,
        fps=400,
        backoff=Backoff(0.01, 0.2),
        on_progress=lambda s: s.sent >= 60 and halfway.set(),
    )
    result = {}
    thread = threading.Thread(target=lambda: result.update(s=producer.run(numbered_frames())))
    thread.start()
    assert halfway.wait(timeout=10)
    server.kill()
    server.restart()
    thread.join(timeout=30)
    summary = result["s"]
    assert summary.reconnects >= 1
    assert summary.sent + summary.dropped + summary.abandoned == summary.offered == 200
    assert summary.abandoned == 0
    with server.client() as check:
        stored = {f.frame_id for f, _, _ in stream_frames(check, keys)}
    assert len(stored) == summary.sent
    assert summary.last_frame_id in stored
    client.close()


@pytest.mark.redis
def test_synthetic_source_carries_ground_truth(redis_client, keys):
    """Synthetic frames are JPEG-encoded with label, domain and index in meta."""
    from producer.synthetic import SyntheticScanner

    source = SyntheticSource("target", seed=3, size=(64, 64))
    Producer(redis_client, keys, count=4, jpeg_quality=80).run(source)
    scanner = SyntheticScanner(domain="target", seed=3, size=(64, 64))
    for fields, image, _ in stream_frames(redis_client, keys):
        meta = fields.meta
        assert (meta["domain"], meta["source"]) == ("target", "synthetic")
        assert meta["label"] == scanner.frame(meta["index"]).label
        assert cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)
    assert [f.meta["index"] for f, _, _ in stream_frames(redis_client, keys)] == [0, 1, 2, 3]


def test_video_source_yields_jpeg_frames(tmp_path):
    """A video file is read frame by frame into JPEGs; loop starts it again."""
    path = tmp_path / "belt.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), i * 40, np.uint8))
    writer.release()
    frames = list(VideoSource(str(path), jpeg_quality=70))
    assert [f.meta["position"] for f in frames] == [0, 1, 2, 3, 4]
    assert all(f.content_type == "image/jpeg" and f.image[:3] == b"\xff\xd8\xff" for f in frames)
    looped = VideoSource(str(path), loop=True)
    assert [f.meta["position"] for f in islice(looped, 7)] == [0, 1, 2, 3, 4, 0, 1]


def test_bad_sources_are_refused(tmp_path):
    """Malformed source specs and missing folders or videos raise ValueError with the reason."""
    for spec in ("folder:/x", "dir:", "synthetic:elsewhere", f"dir:{tmp_path / 'missing'}"):
        with pytest.raises(ValueError):
            parse_source(spec)
    with pytest.raises(ValueError, match="cannot open"):
        list(VideoSource(str(tmp_path / "missing.avi")))
    with pytest.raises(ValueError, match="holds no files"):
        list(DirectorySource(tmp_path))


def test_producer_never_imports_torch():
    """Importing the producer CLI and its sources leaves torch unloaded."""
    code = (
        "import sys, producer.cli, producer.sources, producer.producer, producer.synthetic\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SCANGUARD_")} | env
    return subprocess.run(
        [sys.executable, "-m", "producer", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.redis
def test_cli_pushes_frames_and_prints_a_summary(redis_server, redis_client, keys, image_folder):
    """`python -m producer --source dir:PATH --count N` sends N frames and prints its summary."""
    env = {"SCANGUARD_REDIS_URL": redis_server.url, "SCANGUARD_NAMESPACE": keys.namespace}
    done = run_cli(
        ["--source", f"dir:{image_folder}", "--count", "3", "--scanner-id", "gate-b"], env
    )
    assert done.returncode == 0, done.stderr
    assert '"sent": 3' in done.stdout
    assert [f.scanner_id for f, _, _ in stream_frames(redis_client, keys)] == ["gate-b"] * 3


def test_cli_reports_bad_settings_and_exits_2():
    """An invalid SCANGUARD_* value is printed with its name and the exit status is 2."""
    done = run_cli(["--count", "1"], {"SCANGUARD_PRODUCER__BACKPRESSURE": "sometimes"})
    assert done.returncode == 2
    assert "SCANGUARD_PRODUCER__BACKPRESSURE" in done.stderr
