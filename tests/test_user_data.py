"""A user's labelled folder end to end: train, calibrate, run the worker, evaluate, report; and the data specs.

The folder holds a few dozen real PNG and JPEG files in benign/, gun/ and knife/. A tiny
ViT is trained on it for one step, calibrated on it, and the operating point calibrate
writes is the one load_model, the worker and the evaluation then use.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from safetensors.torch import load_file

from producer.synthetic import SyntheticScanner
from shared.schemas import DecisionEvent
from tests.engine_fixtures import as_inputs, run_engine
from tests.pipeline_fixtures import events, push_frames
from worker.engine.decision import DecisionPolicy, Verdict
from worker.engine.model import load_model
from worker.engine.preprocess import to_model_input
from worker.training import calibrate, evaluate, report, train
from worker.training.data import (
    DataSpec,
    concat_sets,
    load_data,
    load_imagefolder,
    parse_data_spec,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = ("benign", "gun", "knife")
PER_CLASS = 12
FRAME_SIZE = (160, 128)  # (width, height) of the generated scans
INPUT_HW = (64, 80)
# Thresholds near the tiny model's probabilities (about a third each), so that the chosen
# point flags some frames and not others; 0.4 flags none, so a point always exists.
DETECT_TH = ("0.32", "0.34", "0.36", "0.4")
TARGET_FA = 0.5
SHAPES = ("rollout:1", "power:2", "top_k:0.25", "peak:1")


def write_scans(folder: Path, labels: tuple[str, ...], per_class: int, seed: int) -> Path:
    """`per_class` generated scans of each label under folder/<label>/, PNG and JPEG in turn."""
    scanner = SyntheticScanner("source", seed=seed, size=FRAME_SIZE)
    for cls, name in enumerate(labels):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            frame = scanner.frame(3 * i + cls)
            assert frame.label == cls
            suffix = ".png" if i % 2 else ".jpg"
            bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
            assert cv2.imwrite(str(folder / name / f"scan-{i:02d}{suffix}"), bgr)
    return folder


def small_model_args(out: Path, cache: Path) -> list[str]:
    """A one-block ViT at 64x80 with 16-pixel patches, on one thread, in fp32."""
    return [
        *("--out", str(out), "--epochs", "1", "--threads", "1", "--data-workers", "1"),
        *("--depth", "1", "--embed-dim", "48", "--heads", "2", "--patch", "16"),
        *("--input-size", *map(str, INPUT_HW), "--warmup-steps", "1", "--precision", "fp32"),
        *("--cache-dir", str(cache)),
    ]


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder: 12 scans of each of benign, gun and knife."""
    return write_scans(tmp_path_factory.mktemp("user") / "scans", LABELS, PER_CLASS, seed=7)


@pytest.fixture(scope="module")
def trained_card(scans: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One training step (36 frames, batch 32) on the folder; returns the card."""
    work = tmp_path_factory.mktemp("trained")
    args = small_model_args(work / "model", work / "cache")
    args += ["--train-data", f"imagefolder:{scans}", "--val-data", f"imagefolder:{scans}"]
    assert train.main([*args, "--batch", "32"]) == 0
    return work / "model" / "card.json"


@pytest.fixture(scope="module")
def calibrated_card(
    trained_card: Path, scans: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of the trained model, calibrated on the folder (the trained card stays as it was)."""
    folder = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(trained_card.parent, folder)
    card = folder / "card.json"
    assert calibrate.main(calibrate_args(card, scans)) == 0
    return card


def calibrate_args(card: Path, scans: Path, *extra: str) -> list[str]:
    """calibrate on the folder over a small grid near the tiny model's probabilities."""
    return [
        *("--card", str(card), "--data", f"imagefolder:{scans}", "--threads", "1"),
        *("--max-iters", "1", "2", "--target-fa", str(TARGET_FA)),
        *("--detect-th", *DETECT_TH, "--reconsider-th", "0.001", "0.01"),
        *extra,
    ]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file, parsed."""
    return json.loads(path.read_text())


def test_training_on_a_folder_records_it_and_loads(trained_card, scans):
    """train with imagefolder data writes a loadable card that names the folder, counts its frames, and has no operating point."""
    card = read_json(trained_card)
    data = card["training"]["data"]
    assert data["train"] == [f"imagefolder:{scans}"] and data["val"] == [f"imagefolder:{scans}"]
    assert data["train_frames"] == data["val_frames"] == 3 * PER_CLASS
    assert [entry["epoch"] for entry in card["training"]["validation"]] == [1]
    assert card["labels"] == list(LABELS) and card["input_size"] == [3, *INPUT_HW]
    assert "operating_point" not in card
    model = load_model(trained_card)
    assert model.input_hw == INPUT_HW and model.grid_hw == (4, 5)
    assert model.operating_point is None


def test_calibrate_writes_an_operating_point_and_keeps_the_rest_of_the_card(
    trained_card, calibrated_card, scans
):
    """The card gains an operating point from the grid it was given, with its record and promised rates; nothing else changes."""
    before, after = read_json(trained_card), read_json(calibrated_card)
    point = after.pop("operating_point")
    assert after == before

    policy = point["policy"]
    assert f"{policy['detect_th']:g}" in DETECT_TH
    assert policy["reconsider_th"] in (0.001, 0.01) and policy["max_iter"] in (1, 2)
    assert f"{policy['mask_shape']}:{policy['mask_param']:g}" in SHAPES
    assert policy["fill"] == before["fill"]
    assert policy["on_exhausted"] in ("undetermined", "argmax")
    assert point["target_false_alarm"] == TARGET_FA

    chosen = point["chosen_on"]
    assert chosen["data"] == [f"imagefolder:{scans}"] and chosen["frames"] == 3 * PER_CLASS
    # 4 detect x 2 reconsider x 2 max_iter x 2 exhausted outcomes, for each mask shape.
    assert chosen["policies_tried"] == 4 * 2 * 2 * 2 * len(SHAPES)
    assert chosen["shapes"] == list(SHAPES)
    assert set(point["per_shape"]) <= set(SHAPES) and point["per_shape"]
    chosen_name = f"{policy['mask_shape']}:{policy['mask_param']:g}"
    assert point["per_shape"][chosen_name]["policy"] == policy
    assert point["command"].startswith("python -m worker.training.calibrate --card ")

    expected = point["expected"]
    half = PER_CLASS // 2  # the held-back half: every other frame of each class
    assert expected["false_alarm"]["trials"] == half
    assert expected["threat_recall"]["trials"] == 2 * half
    for rate in (expected["false_alarm"], expected["threat_recall"]):
        assert rate["low"] <= rate["value"] <= rate["high"]
        assert rate["value"] == rate["successes"] / rate["trials"]


def test_the_rates_the_card_promises_are_what_the_engine_gives_on_the_held_back_half(
    calibrated_card, scans
):
    """The real engine at the card's point gives the card's counts on the odd frames of each class, and stays within the target on the even ones it was chosen on."""
    model = load_model(calibrated_card)
    point = model.operating_point
    assert point is not None
    policy = DecisionPolicy(**point.policy.model_dump())
    frames = load_imagefolder(scans, model.labels, model.input_hw)
    results = run_engine(model, policy, as_inputs(frames.images))
    counts = {half: {"false_alarms": 0, "detected": 0, "benign": 0} for half in (0, 1)}
    for row, label in enumerate(frames.labels.tolist()):
        half, result = counts[row % 2], results[row]  # frames come sorted by label, 12 each
        half["benign"] += label == 0
        if result.verdict is not Verdict.CLEAR:  # flagged: a person looks at it
            half["false_alarms"] += label == 0
            half["detected"] += label != 0
    held_back, chosen_on = counts[1], counts[0]
    assert held_back["false_alarms"] == point.expected["false_alarm"]["successes"]
    assert held_back["detected"] == point.expected["threat_recall"]["successes"]
    assert chosen_on["false_alarms"] / chosen_on["benign"] <= TARGET_FA


def test_a_dry_run_prints_the_point_and_leaves_the_card_alone(calibrated_card, scans, capsys):
    """--dry-run chooses the same point again and prints it without touching the card."""
    before = calibrated_card.read_bytes()
    assert calibrate.main(calibrate_args(calibrated_card, scans, "--dry-run")) == 0
    assert calibrated_card.read_bytes() == before
    printed = capsys.readouterr().out
    policy = read_json(calibrated_card)["operating_point"]["policy"]
    assert f"operating point: {json.dumps(policy)}" in printed
    assert "wrote the operating point" not in printed


def test_calibrate_stops_when_no_policy_meets_the_target(trained_card, scans, tmp_path):
    """With only thresholds that flag every frame, no policy is within a 1 % target: SystemExit, card untouched."""
    card = tmp_path / "model" / "card.json"
    shutil.copytree(trained_card.parent, card.parent)
    before = card.read_bytes()
    args = [
        *("--card", str(card), "--data", f"imagefolder:{scans}", "--threads", "1"),
        *("--max-iters", "1", "--target-fa", "0.01", "--shapes", "rollout:1"),
        *("--detect-th", "0.05", "--reconsider-th", "0.001", "--on-exhausted", "argmax"),
    ]
    with pytest.raises(SystemExit, match="no policy of the 1 tried keeps the false-alarm rate"):
        calibrate.main(args)
    assert card.read_bytes() == before


@pytest.mark.redis
def test_load_model_and_the_worker_run_the_calibrated_point(
    calibrated_card, redis_server, keys, make_worker
):
    """load_model returns the card's operating point as written; a worker built from settings decides with it."""
    written = read_json(calibrated_card)["operating_point"]
    model = load_model(calibrated_card)
    assert model.operating_point is not None
    assert model.operating_point.model_dump(mode="json") == written

    client = redis_server.client()
    settings = {"redis_url": redis_server.url, "namespace": keys.namespace}
    worker = make_worker({**settings, "worker": {"max_wait_ms": 50}}, client, card=calibrated_card)
    assert worker.policy == DecisionPolicy(**written["policy"])
    sent = push_frames(client, keys, 4)
    assert worker.run(burst=True) == 0
    decided = [DecisionEvent.model_validate(raw) for raw in events(client, keys.results)]
    assert sorted(event.frame_id for event in decided) == sorted(sent)
    for event in decided:
        thresholds = event.thresholds.model_dump()
        for name in ("detect_th", "reconsider_th", "max_iter", "fill", "on_exhausted"):
            assert thresholds[name] == written["policy"][name], name
        assert event.iterations <= written["policy"]["max_iter"]
        assert event.decision is not Verdict.UNDETERMINED  # the point falls back to argmax
    client.close()


def test_evaluate_and_report_on_the_folder(calibrated_card, scans, tmp_path):
    """evaluate scores the folder at the card's point (replay agrees with the engine) and draws its curves; report tabulates it."""
    eval_dir = tmp_path / "eval"
    out = eval_dir / "shipped"
    args = ["--card", str(calibrated_card), "--out", str(out), "--data", f"imagefolder:{scans}"]
    assert evaluate.main([*args, "--threads", "1", "--bootstrap", "20"]) == 0

    results = read_json(out / "results.json")
    point = read_json(calibrated_card)["operating_point"]
    assert results["policy_source"] == "the card's operating point"
    assert results["policy"] == point["policy"] and results["operating_point"] == point
    name = f"imagefolder:{scans}"
    assert list(results["sets"]) == [name]
    result = results["sets"][name]
    assert result["frames"] == 3 * PER_CLASS
    assert result["per_class"] == dict.fromkeys(LABELS, PER_CLASS)
    for scored in (result["erasing"], result["vanilla_argmax"]):
        assert_rate(scored["recall"], trials=2 * PER_CLASS)
        assert_rate(scored["false_alarm"], trials=PER_CLASS)
    assert result["replay_agreement"] == 1.0
    matched = result["matched"]
    assert matched["erasing_recall"] == result["erasing"]["recall"]["value"]
    assert matched["recall_gain"] == pytest.approx(
        matched["erasing_recall"] - matched["vanilla_recall_at_that_fa"], abs=1e-12
    )
    low, high = matched["recall_gain_interval"]
    assert -1.0 <= low <= high <= 1.0 and matched["bootstrap_resamples"] == 20
    assert len(matched["area_interval"]) == 2
    assert result["mask"] == {"frames": 0}  # a folder's frames carry no threat masks
    assert set(result["shapes"]) == set(point["per_shape"])
    for entry in result["shapes"].values():
        assert_rate(entry["recall"], trials=2 * PER_CLASS)

    curves = f"curves-{name.replace(':', '_').replace('/', '_')}.png"
    assert sorted(p.name for p in out.glob("*.png")) == sorted([curves, "montage.png"])
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert report.main(["--eval-dir", str(eval_dir)]) == 0
    text = (eval_dir / "REPORT.md").read_text()
    assert text.startswith("# Evaluation: vanilla classification vs iterative erasing")
    row = [line for line in text.splitlines() if line.startswith(f"| {name} | {3 * PER_CLASS} |")]
    assert len(row) == 1, text
    policy = point["policy"]
    assert f"- policy: detect_th {policy['detect_th']:g}, reconsider_th" in text
    assert f"![{curves}](shipped/{curves})" in text
    assert (eval_dir / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def assert_rate(rate: dict[str, Any], *, trials: int) -> None:
    """A Rate dict over `trials` trials whose value lies inside its interval."""
    assert set(rate) == {"successes", "trials", "value", "low", "high"}
    assert rate["trials"] == trials and 0 <= rate["successes"] <= trials
    assert rate["value"] == rate["successes"] / trials
    assert 0.0 <= rate["low"] <= rate["value"] <= rate["high"] <= 1.0


def test_init_fine_tunes_onto_two_labels_with_a_new_head(calibrated_card, tmp_path):
    """--init from the calibrated card with two labels (and drawn looks): a 2-wide head, the body carried over, the start recorded."""
    folder = write_scans(tmp_path / "two", ("benign", "gun"), 8, seed=17)
    out = tmp_path / "tuned"
    args = small_model_args(out, tmp_path / "cache")
    args += ["--train-data", f"imagefolder:{folder}", "--val-data", f"imagefolder:{folder}"]
    args += ["--init", str(calibrated_card.parent), "--labels", "benign", "gun", "--batch", "16"]
    assert train.main([*args, "--look-augment", "0.5"]) == 0

    first, tuned = read_json(calibrated_card), read_json(out / "card.json")
    assert tuned["labels"] == ["benign", "gun"]
    assert tuned["timm_kwargs"] == first["timm_kwargs"]
    assert tuned["input_size"] == first["input_size"]
    # A new head is a new model: the first card's operating point does not carry over.
    assert "operating_point" not in tuned
    start = tuned["training"]["init_from"]
    assert start["new_head"] is True and start["labels"] == list(LABELS)
    assert start["sha256"] == first["sha256"]
    assert Path(start["checkpoint"]) == calibrated_card.parent / first["checkpoint"]
    assert tuned["training"]["data"]["train_frames"] == 16
    assert tuned["training"]["augmentation"]["look"]["prob"] == 0.5

    weights = load_file(str(out / "model.safetensors"))
    before = load_file(str(calibrated_card.parent / first["checkpoint"]))
    assert weights["head.weight"].shape == (2, 48) and weights["head.bias"].shape == (2,)
    # One AdamW step moves each weight by about the learning rate (5e-4): the body is the
    # first model's, nudged, not a fresh initialisation.
    body = [k for k in before if not k.startswith("head.")]
    assert set(body) == {k for k in weights if not k.startswith("head.")}
    moved = max(float((weights[k] - before[k]).abs().max()) for k in body)
    assert 0.0 < moved < 1e-3
    model = load_model(out / "card.json")
    assert model.num_classes == 2 and model.threat_indices == (1,)


# --- data specs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "default", "spec"),
    [
        ("source:3", None, DataSpec("source", 3)),
        ("randomised:12000", None, DataSpec("randomised", 12000)),
        ("foreign:5", None, DataSpec("foreign", 5)),
        ("target", 7, DataSpec("target", 7)),
    ],
)
def test_synthetic_specs_parse_and_print_back(text, default, spec):
    """DOMAIN:PER_CLASS parses to its spec (a bare domain takes the default count) and prints as written."""
    parsed = parse_data_spec(text, default)
    assert parsed == spec
    assert str(parsed) == f"{spec.kind}:{spec.per_class}"


def test_an_imagefolder_spec_names_its_folder(tmp_path):
    """imagefolder:DIR keeps the folder and prints back as written."""
    spec = parse_data_spec(f"imagefolder:{tmp_path}")
    assert spec == DataSpec("imagefolder", folder=tmp_path)
    assert str(spec) == f"imagefolder:{tmp_path}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("imagefolder:", "imagefolder needs a folder"),
        ("imagefolder:/no/such/folder", "/no/such/folder is not a folder"),
        ("mars:10", "data must be DOMAIN:PER_CLASS"),
        ("source:ten", "frames per class must be a whole number"),
        ("source:0", "frames per class must be at least 1"),
        ("source:-3", "frames per class must be at least 1"),
        ("source", "frames per class must be a whole number"),
        ("", "data must be DOMAIN:PER_CLASS"),
    ],
)
def test_bad_specs_are_refused_saying_what_to_write(text, message):
    """A spec that is neither form is a ValueError that says what is wrong."""
    with pytest.raises(ValueError, match=message):
        parse_data_spec(text)


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (train, ["--train-data", "source:2"]),
        (train, ["--val-data"]),
        (calibrate, ["--card", "absent.json", "--data"]),
        (evaluate, ["--card", "absent.json", "--data", "source:2"]),
    ],
)
def test_commands_refuse_a_bad_spec_before_loading_anything(command, flags, tmp_path):
    """train, calibrate and evaluate stop with the spec's error under their own name, before any model or data."""
    missing = tmp_path / "nowhere"
    name = command.__name__
    expected = f"python -m {name}: imagefolder: {missing} is not a folder"
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}$"):
        command.main([*flags, f"imagefolder:{missing}"])


def write_png(path: Path, value: int, hw: tuple[int, int] = (40, 50)) -> None:
    """A striped grey PNG (JPEG for a .jpg name) at `path`, folders made as needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((*hw, 3), value, np.uint8)
    image[::3, ::2] = 255 - value  # some structure, so resizing is not trivial
    assert cv2.imwrite(str(path), image)


def test_a_folder_loads_in_label_then_name_order_whatever_the_writing_order(tmp_path):
    """Frames follow the card's label order, then sorted file names (nested folders included); reloading gives the same arrays."""
    labels = ("benign", "knife", "gun")  # not alphabetical: the card's order decides
    written = [
        ("gun/b.png", 10),
        ("benign/z.png", 20),
        ("knife/k.PNG", 30),
        ("benign/a.png", 40),
        ("gun/a/deeper.png", 50),
        ("benign/m.jpg", 60),
    ]
    for relative, value in written:
        write_png(tmp_path / relative, value)
    (tmp_path / "gun" / "notes.txt").write_text("not an image: skipped")
    frames = load_imagefolder(tmp_path, labels, (32, 48))
    order = [
        "benign/a.png",
        "benign/m.jpg",
        "benign/z.png",
        "knife/k.PNG",
        "gun/a/deeper.png",
        "gun/b.png",
    ]
    assert frames.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert frames.images.shape == (6, 32, 48, 3) and frames.images.dtype == np.uint8
    for k, relative in enumerate(order):
        rgb = cv2.cvtColor(cv2.imread(str(tmp_path / relative)), cv2.COLOR_BGR2RGB)
        assert np.array_equal(frames.images[k], to_model_input(rgb, (32, 48))), relative
    assert not frames.masks.any() and frames.masks.shape == (6, 32, 48)
    assert frames.domain == f"imagefolder:{tmp_path}" and frames.indices.tolist() == list(range(6))
    again = load_imagefolder(tmp_path, labels, (32, 48))
    assert np.array_equal(again.images, frames.images)
    assert np.array_equal(again.labels, frames.labels)


def test_a_label_without_a_folder_is_simply_absent(tmp_path):
    """A folder with benign/ and knife/ only loads those, keeping knife's index in the card."""
    write_png(tmp_path / "benign" / "a.png", 30)
    write_png(tmp_path / "knife" / "a.png", 90)
    frames = load_imagefolder(tmp_path, LABELS, (32, 32))
    assert frames.labels.tolist() == [0, 2]


def test_a_sub_folder_that_is_no_label_is_an_error(tmp_path):
    """A sub-folder outside the card's labels is refused by name, not skipped."""
    write_png(tmp_path / "benign" / "a.png", 30)
    write_png(tmp_path / "pistol" / "a.png", 90)
    write_png(tmp_path / "Gun" / "a.png", 90)
    with pytest.raises(ValueError, match=r"sub-folders \['Gun', 'pistol'\] are not labels"):
        load_imagefolder(tmp_path, LABELS, (32, 32))


def test_a_folder_without_images_is_an_error(tmp_path):
    """Label folders holding no JPEG, PNG or DICOS file are refused."""
    (tmp_path / "benign").mkdir()
    (tmp_path / "gun").mkdir()
    (tmp_path / "gun" / "readme.txt").write_text("nothing here")
    with pytest.raises(ValueError, match="no JPEG, PNG or DICOS files"):
        load_imagefolder(tmp_path, LABELS, (32, 32))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("junk.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64),
        ("half.png", None),
        ("text.jpg", b"this is not a JPEG"),
        ("scan.dcm", b"DICM" * 16),
    ],
    ids=["junk-png", "half-png", "text-jpg", "junk-dcm"],
)
def test_an_undecodable_file_is_an_error_naming_it(tmp_path, name, content):
    """A file that does not decode stops the load with a message naming that file."""
    write_png(tmp_path / "benign" / "fine.png", 30)
    bad = tmp_path / "gun" / name
    if content is None:  # a real PNG cut in half
        write_png(bad, 80, hw=(120, 160))
        whole = bad.read_bytes()
        content = whole[: len(whole) // 2]
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_imagefolder(tmp_path, LABELS, (32, 32))


def test_load_data_reads_folders_and_guards_synthetic_labels(tmp_path):
    """load_data gives a folder's frames for imagefolder specs; synthetic data refuses labels it does not have."""
    write_png(tmp_path / "benign" / "a.png", 30)
    write_png(tmp_path / "gun" / "a.png", 90)
    spec = parse_data_spec(f"imagefolder:{tmp_path}")
    via_spec = load_data(spec, seed=0, input_hw=(32, 32), labels=("benign", "gun"))
    direct = load_imagefolder(tmp_path, ("benign", "gun"), (32, 32))
    assert np.array_equal(via_spec.images, direct.images)
    assert via_spec.labels.tolist() == [0, 1]
    with pytest.raises(
        ValueError, match=r"synthetic data is labelled .* the card's labels are \['benign', 'gun'\]"
    ):
        load_data(DataSpec("source", 1), seed=0, input_hw=(32, 32), labels=("benign", "gun"))


def test_concat_sets_keeps_order_and_joins_names(tmp_path):
    """Concatenated sets keep each set's frames in order; the domain names are joined with '+'."""
    write_png(tmp_path / "benign" / "a.png", 30)
    write_png(tmp_path / "gun" / "a.png", 90)
    folder = load_imagefolder(tmp_path, LABELS, (32, 32))
    synthetic = load_data(DataSpec("source", 1), seed=3, input_hw=(32, 32))
    both = concat_sets([folder, synthetic])
    assert len(both) == len(folder) + len(synthetic) == 5
    assert np.array_equal(both.images[:2], folder.images)
    assert np.array_equal(both.images[2:], synthetic.images)
    assert both.labels.tolist() == [*folder.labels.tolist(), *synthetic.labels.tolist()]
    assert np.array_equal(both.masks[2:], synthetic.masks)
    assert both.domain == f"imagefolder:{tmp_path}+source"
    assert concat_sets([folder]) is folder
