"""The producer's multi-view bags against a real redis-server: synthetic, folder layouts, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import redis

from producer.producer import Producer
from producer.sources import DirectorySource, SourceFrame, SyntheticSource
from producer.synthetic import SyntheticBagScanner
from shared.keys import Keys, check_id
from shared.schemas import FrameFields, parse_frame_fields
from tests.pipeline_fixtures import encode, frame_image

MAX_BYTES = 1 << 24
ROOT = Path(__file__).resolve().parent.parent
SIZE = (96, 64)


def stream_fields(client: redis.Redis, keys: Keys) -> list[FrameFields]:
    return [parse_frame_fields(raw, MAX_BYTES)[0] for _id, raw in client.xrange(keys.frames)]


@pytest.fixture
def bag_folder(tmp_path: Path) -> Path:
    """Both bag layouts, a one-view file and a class folder with too many files to be a bag."""
    folder = tmp_path / "lane"
    files = ["a.png", "gate3_v1.png", "gate3_v0.png", "tray/2-side.png", "tray/1-top.png"]
    files += [f"train/{i:02d}.png" for i in range(9)]
    for n, name in enumerate(files):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(encode(frame_image(n, (16, 24)), "image/png"))
    return folder


@pytest.mark.redis
def test_synthetic_bags_send_every_view_with_matching_bag_fields(redis_client, keys):
    """views=2: count 2 x bags entries, views 0 and 1 of each bag, its ground truth in meta."""
    source = SyntheticSource("target", seed=3, size=SIZE, views=2)
    summary = Producer(redis_client, keys, "lane-4", count=2 * 3).run(source)
    assert (summary.offered, summary.sent) == (6, 6)
    frames = stream_fields(redis_client, keys)
    assert [f.bag[1:] for f in frames] == [(0, 2), (1, 2)] * 3
    scanner = SyntheticBagScanner("target", seed=3, size=SIZE)
    assert len({f.bag_id for f in frames}) == 3
    for n, fields in enumerate(frames):
        index, view = divmod(n, 2)
        assert fields.bag_id is not None and check_id(fields.bag_id)
        assert fields.bag_id.startswith("lane-4:")
        assert fields.bag_id == frames[2 * index].bag_id, "both views name one bag"
        assert f"-{index}" not in fields.bag_id, "the id must not give the index (the label) away"
        assert fields.frame_id == f"{fields.bag_id}-v{view}"
        truth = scanner.bag(index).views[view]
        meta = fields.meta
        assert (meta["index"], meta["view_name"], meta["occluded"]) == (
            index,
            truth.name,
            truth.occluded,
        )
        assert meta["box"] == (list(truth.box) if truth.box is not None else None)
        assert meta["label"] == index % 3 and meta["label_name"] in ("benign", "gun", "knife")
    assert len({f.bag_id for f in frames}) == 3


@pytest.mark.redis
def test_one_view_synthetic_frames_carry_no_bag_fields(redis_client, keys):
    """views=1 keeps the frame scanner's frames and meta, without bag fields."""
    Producer(redis_client, keys, count=2).run(SyntheticSource("source", seed=1, size=SIZE))
    for fields in stream_fields(redis_client, keys):
        assert fields.bag_id is None and fields.bag == (fields.frame_id, 0, 1)
        assert "view_name" not in fields.meta and "box" in fields.meta


@pytest.mark.redis
def test_folder_layouts_become_bags(redis_client, keys, bag_folder):
    """A bag folder and BAG_vK files make bags; other files go out as one-view frames."""
    summary = Producer(redis_client, keys, "lane-5").run(DirectorySource(bag_folder))
    assert summary.sent == 14
    by_path = {f.meta["path"]: f for f in stream_fields(redis_client, keys)}
    assert by_path["a.png"].bag_id is None
    assert all(by_path[f"train/{i:02d}.png"].bag_id is None for i in range(9))
    gate = [by_path["gate3_v0.png"], by_path["gate3_v1.png"]]
    tray = [by_path["tray/1-top.png"], by_path["tray/2-side.png"]]
    for bag, name in ((gate, "gate3"), (tray, "tray")):
        assert [f.bag[1:] for f in bag] == [(0, 2), (1, 2)]
        assert bag[0].bag_id == bag[1].bag_id and str(bag[0].bag_id).endswith(f":{name}")


def test_a_looping_folder_sends_new_bags_each_round(bag_folder):
    """Round n > 0 suffixes the folder's bag ids with .r<n>, so bags never repeat."""
    frames = list(islice(DirectorySource(bag_folder, loop=True), 28))
    ids = [f.bag_id for f in frames if f.bag_id is not None]
    assert ids == ["gate3", "gate3", "tray", "tray", "gate3.r1", "gate3.r1", "tray.r1", "tray.r1"]


@pytest.mark.redis
def test_long_scanner_ids_keep_bag_and_frame_ids_valid(redis_client, keys):
    """A bag id too long to scope is hashed, the same for each of its views."""
    frames = [SourceFrame(encode(frame_image(k)), bag_id="b" * 60, view=k, views=2) for k in (0, 1)]
    Producer(redis_client, keys, "s" * 100).run(frames)
    first, second = stream_fields(redis_client, keys)
    assert first.bag_id == second.bag_id and len(first.frame_id) <= 128
    assert second.frame_id == f"{second.bag_id}-v1"


def test_source_frames_refuse_incomplete_bag_fields():
    """bag_id, view and views come together, with view inside the bag."""
    for fields in ({"bag_id": "b"}, {"bag_id": "b", "view": 2, "views": 2}, {"view": 0}):
        with pytest.raises(ValueError):
            SourceFrame(b"x", **fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SourceFrame(b"x", bag_id="no spaces", view=0, views=1)


def run_cli(args: list[str], redis_url: str, keys: Keys) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANGUARD_")}
    env |= {"SCANGUARD_REDIS_URL": redis_url, "SCANGUARD_NAMESPACE": keys.namespace}
    return subprocess.run(
        [sys.executable, "-m", "producer", "--no-progress", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.redis
def test_cli_views_counts_bags(redis_server, redis_client, keys):
    """`--views 2 --count 3` sends 3 bags, 6 frames, and the summary adds up in frames."""
    args = ["--source", "synthetic:target", "--size", "96x64", "--views", "2", "--count", "3"]
    done = run_cli(args, redis_server.url, keys)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["sent"] == 6 == summary["offered"]
    assert summary["offered"] == summary["sent"] + summary["dropped"] + summary["abandoned"]
    frames = stream_fields(redis_client, keys)
    assert [f.bag[1:] for f in frames] == [(0, 2), (1, 2)] * 3


@pytest.mark.redis
@pytest.mark.parametrize(
    "args",
    [["--views", "0"], ["--views", "9"], ["--views", "two"], ["--views", "2", "--source", "dir:"]],
    ids=["zero", "nine", "word", "dir-source"],
)
def test_cli_refuses_bad_views_in_one_line(redis_server, redis_client, keys, tmp_path, args):
    """A bad --views, or --views with a folder, is one stderr line naming it, exit 2, no frame."""
    argv = [f"dir:{tmp_path}" if a == "dir:" else a for a in args]
    done = run_cli(["--count", "1", *argv], redis_server.url, keys)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--views" in lines[0], done.stderr
    assert done.stdout == "" and redis_client.xlen(keys.frames) == 0
