"""`python -m worker explain`: real images through the real engine on the tiny ViT."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from producer.synthetic import SyntheticScanner
from shared.images import sniff_content_type
from shared.settings import load_settings
from worker.cli import main
from worker.engine.erasing import EngineInput, ErasingEngine
from worker.engine.model import load_model
from worker.service.bootstrap import policy_from_settings
from worker.service.explain import find_images
from worker.service.explain_draw import montage
from worker.service.intake import IntakeLimits, decode_for_model

FRAME_HW = (384, 512)  # the synthetic scanner's default: JPEGs this size take the scaled decode


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder with a PNG and a JPEG scan and a PNG cut in half (sorted in that order)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    scanner = SyntheticScanner("source", seed=3)
    for index, name in ((1, "a-gun.png"), (2, "b-knife.jpg")):
        bgr = cv2.cvtColor(scanner.frame(index).image, cv2.COLOR_RGB2BGR)
        assert cv2.imwrite(str(folder / name), bgr)
    whole = (folder / "a-gun.png").read_bytes()
    (folder / "c-cut.png").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.txt").write_text("not an image, and not a JPEG/PNG name: skipped")
    return folder


def explain(*args: str | Path) -> int:
    return main(["explain", *(str(a) for a in args)])


def read_rows(out: Path) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    with open(out / "explain.csv", newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    lines = (out / "explain.jsonl").read_text(encoding="utf-8").splitlines()
    return table, [json.loads(line) for line in lines]


def decode(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, f"{path} does not decode"
    return image


def card_with_operating_point(tiny_card: Path, folder: Path) -> Path:
    """A copy of the tiny card that carries a calibrated operating point unlike the seed's."""
    folder.mkdir()
    card = json.loads(tiny_card.read_text())
    shutil.copy(tiny_card.parent / card["checkpoint"], folder / card["checkpoint"])
    card["operating_point"] = {
        "policy": {"detect_th": 0.6, "reconsider_th": 0.05, "max_iter": 2, "fill": 0.0},
        "target_false_alarm": 0.05,
    }
    path = folder / "card.json"
    path.write_text(json.dumps(card))
    return path


def test_explain_decides_draws_and_records_every_input(
    inputs: Path, tiny_card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each image gets its three pictures and a row with the engine's verdict; a broken one an error row and exit 1."""
    out = tmp_path / "out"
    assert explain(inputs, "--card", tiny_card, "--out", out) == 1
    printed = capsys.readouterr()
    assert "c-cut.png" in printed.err and "truncated" in printed.err

    table, rows = read_rows(out)
    assert [Path(r["file"]).name for r in rows] == ["a-gun.png", "b-knife.jpg", "c-cut.png"]
    assert [Path(r["file"]).name for r in table] == ["a-gun.png", "b-knife.jpg", "c-cut.png"]

    # The independent run: the same policy built the same way, the same decoding, one batch.
    settings = load_settings(model={"card": tiny_card})
    model = load_model(tiny_card)
    policy = policy_from_settings(settings.erasing, model)
    limits = IntakeLimits(
        settings.worker.max_frame_bytes, settings.worker.max_pixels, model.input_hw
    )
    frames = []
    for name in ("a-gun.png", "b-knife.jpg"):
        data = (inputs / name).read_bytes()
        content_type = sniff_content_type(data)
        assert content_type is not None
        frames.append(EngineInput(name, decode_for_model(data, content_type, limits)[0]))
    engine = ErasingEngine(model, policy)
    try:
        expected = {r.key: r for r in engine.run(frames)}
    finally:
        engine.close()

    for row, flat in zip(rows[:2], table[:2], strict=True):
        result = expected[Path(row["file"]).name]
        assert row["verdict"] == flat["verdict"] == result.verdict.value
        assert row["classes"] == [model.labels[c] for c in result.classes]
        assert flat["classes"] == "+".join(row["classes"])
        assert (row["iterations"], row["forwards"]) == (result.iterations, result.forwards)
        assert int(flat["forwards"]) == result.forwards
        # Same frames in the same batch on the same device: equal up to float noise.
        trace = [[probs[label] for label in model.labels] for probs in row["trace"]]
        assert np.allclose(trace, result.trace, rtol=0.0, atol=1e-6)
        assert json.loads(flat["trace"]) == row["trace"]
        assert (row["width"], row["height"]) == (FRAME_HW[1], FRAME_HW[0])
        assert row["model"] == model.model_id and row["checksum"] == model.checksum
        assert row["policy"]["detect_th"] == policy.detect_th
        assert row["rois"] and {"x", "y", "w", "h", "class", "score"} <= set(row["rois"][0])
        assert row["error"] is None and flat["error"] == ""

        stem = Path(row["file"]).stem
        assert (row["montage"], row["heatmap"], row["rois_image"]) == (
            f"{stem}-montage.png",
            f"{stem}-heatmap.jpg",
            f"{stem}-rois.jpg",
        )
        assert decode(out / row["heatmap"]).shape == (*FRAME_HW, 3)
        assert decode(out / row["rois_image"]).shape == (*FRAME_HW, 3)
        assert decode(out / row["montage"]).shape[1] > decode(out / row["montage"]).shape[0]

    broken = rows[2]
    assert broken["verdict"] == table[2]["verdict"] == "error"
    assert "PNG is truncated" in broken["error"] and broken["error"] == table[2]["error"]
    assert broken["trace"] is None and broken["montage"] is None
    assert not list(out.glob("c-cut-*"))


def test_montage_has_one_tile_per_forward(inputs: Path, tiny_card: Path, tmp_path: Path) -> None:
    """The montage is one cell per forward: a run without erasing draws exactly one of them."""
    png = inputs / "a-gun.png"
    assert explain(png, "--card", tiny_card, "--out", tmp_path / "one", "--max-iter", "0") == 0
    assert explain(png, "--card", tiny_card, "--out", tmp_path / "all", "--max-iter", "3") == 0
    (one,), (erased,) = read_rows(tmp_path / "one")[1], read_rows(tmp_path / "all")[1]
    assert one["forwards"] == 1 and one["verdict"] == "undetermined"
    assert erased["forwards"] > 1
    single = decode(tmp_path / "one" / one["montage"])
    steps = decode(tmp_path / "all" / erased["montage"])
    assert steps.shape[0] == single.shape[0]
    assert steps.shape[1] == erased["forwards"] * single.shape[1]


def test_montage_cells_are_as_wide_as_their_captions() -> None:
    """Tiles narrower than their captions widen the cell, never the other way round; width is cells × tiles."""
    labels = ["benign", "gun", "knife"]
    narrow = [np.zeros((40, 20, 3), np.uint8)] * 3
    probs = [(0.2, 0.7, 0.1)] * 3
    hot = [[False, True, False]] * 3
    picture = montage(narrow, probs, labels, ["x"], hot=hot, colour=(255, 0, 0))
    alone = montage(narrow[:1], probs[:1], labels, ["x"], hot=hot[:1], colour=(255, 0, 0))
    assert picture.shape[1] == 3 * alone.shape[1]
    assert alone.shape[1] > 20


def test_preset_and_flags_change_the_policy_recorded(
    inputs: Path, tiny_card: Path, tmp_path: Path
) -> None:
    """The card's operating point runs by default; --preset seed and --detect-th override it, and the row says so."""
    card = card_with_operating_point(tiny_card, tmp_path / "model")
    png = inputs / "a-gun.png"
    policies = {}
    for name, flags in (
        ("card", []),
        ("seed", ["--preset", "seed"]),
        ("flag", ["--detect-th", "0.3", "--max-iter", "4"]),
    ):
        assert explain(png, "--card", card, "--out", tmp_path / name, *flags) == 0
        (row,) = read_rows(tmp_path / name)[1]
        policies[name] = row["policy"]
        assert row["forwards"] <= row["policy"]["max_iter"] + 1

    card_policy, seed_policy, flag_policy = policies["card"], policies["seed"], policies["flag"]
    assert card_policy["preset"] == "card" and card_policy["base"] == "card"
    assert (card_policy["detect_th"], card_policy["reconsider_th"], card_policy["max_iter"]) == (
        0.6,
        0.05,
        2,
    )
    assert seed_policy["preset"] == "seed" and seed_policy["base"] == "seed"
    assert (seed_policy["detect_th"], seed_policy["reconsider_th"], seed_policy["max_iter"]) == (
        0.1,
        0.001,
        5,
    )
    assert flag_policy["base"] == "card" and flag_policy["overrides"] == ["detect_th", "max_iter"]
    assert (flag_policy["detect_th"], flag_policy["reconsider_th"], flag_policy["max_iter"]) == (
        0.3,
        0.05,
        4,
    )


def test_environment_overrides_the_card_like_in_the_worker(
    inputs: Path, tiny_card: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SCANGUARD_ERASING__* settings reach the policy as they do in the worker; a flag wins over them."""
    monkeypatch.setenv("SCANGUARD_ERASING__RECONSIDER_TH", "0.02")
    monkeypatch.setenv("SCANGUARD_ERASING__MAX_ITER", "1")
    png = inputs / "a-gun.png"
    assert explain(png, "--card", tiny_card, "--out", tmp_path, "--max-iter", "2") == 0
    (row,) = read_rows(tmp_path)[1]
    assert (row["policy"]["reconsider_th"], row["policy"]["max_iter"]) == (0.02, 2)


def test_bad_arguments_exit_2(
    inputs: Path, tiny_card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing path, an empty folder, a bad card or an out-of-range flag stop before any work."""
    assert explain(tmp_path / "nope.png", "--card", tiny_card, "--out", tmp_path / "o") == 2
    assert "nope.png: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert explain(tmp_path / "empty", "--card", tiny_card, "--out", tmp_path / "o") == 2
    assert "no JPEG or PNG files" in capsys.readouterr().err
    assert explain(inputs, "--card", tmp_path / "none.json", "--out", tmp_path / "o") == 2
    assert "none.json does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        explain(inputs, "--detect-th", "1.5")
    assert stopped.value.code == 2
    assert not (tmp_path / "o" / "explain.csv").exists()


def test_find_images_reads_folders_sorted_and_recurses_on_request(tmp_path: Path) -> None:
    """Folders give their JPEG/PNG files sorted; subfolders only with recursive; a file named twice counts once."""
    (tmp_path / "sub").mkdir()
    for name in ("b.JPG", "a.png", "c.txt", "sub/d.jpeg"):
        (tmp_path / name).write_bytes(b"")
    assert find_images([tmp_path]) == [tmp_path / "a.png", tmp_path / "b.JPG"]
    assert find_images([tmp_path], recursive=True) == [
        tmp_path / "a.png",
        tmp_path / "b.JPG",
        tmp_path / "sub" / "d.jpeg",
    ]
    assert find_images([tmp_path / "c.txt", tmp_path, tmp_path / "a.png"]) == [
        tmp_path / "c.txt",
        tmp_path / "a.png",
        tmp_path / "b.JPG",
    ]


def test_a_folder_that_holds_the_output_is_not_explained_twice(tmp_path) -> None:
    """Pictures written into a folder that is also an input are not read back as inputs."""
    from worker.service.explain import find_images

    scan = tmp_path / "bag.png"
    scan.write_bytes(b"\x89PNG placeholder")  # only the name matters to find_images
    out = tmp_path / "why"
    out.mkdir()
    (out / "bag-montage.png").write_bytes(b"\x89PNG placeholder")
    assert find_images([tmp_path], recursive=True, skip=out) == [scan]
    assert len(find_images([tmp_path], recursive=True)) == 2
