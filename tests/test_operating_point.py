"""The card's operating point: how settings presets and explicit fields make the worker's policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.schemas import DecisionEvent
from shared.settings import ErasingSettings, SettingsError, load_settings
from tests.pipeline_fixtures import events, push_frames, write_tiny_card
from worker import cli
from worker.engine.decision import DecisionPolicy, Verdict
from worker.engine.model import ModelLoadError, OperatingPolicy, load_model
from worker.service.bootstrap import SEED_POLICY, policy_from_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CARD_FILL = 0.75  # the card's own fill, which the seed preset runs with
# A calibrated policy that differs from the seed's in every field the calibration sets.
POINT_POLICY = {
    "detect_th": 0.45,
    "reconsider_th": 0.02,
    "max_iter": 2,
    "fill": 0.5,
    "mask_shape": "top_k",
    "mask_param": 0.25,
    "on_exhausted": "clear",
    "judge_original": False,
    "head_fusion": "mean",
}


def write_card(folder: Path, policy: dict[str, Any] | None, **point: Any) -> Path:
    """A tiny random card with fill CARD_FILL and, unless `policy` is None, an operating point."""
    path = write_tiny_card(folder)
    card = json.loads(path.read_text())
    card["fill"] = CARD_FILL
    if policy is not None:
        card["operating_point"] = {
            "policy": policy,
            "target_false_alarm": 0.05,
            "chosen_on": {"data": ["source:10"], "frames": 30},
            "expected": {"mean_recall": 0.5},
            **point,
        }
    path.write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
def point_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A card with POINT_POLICY as its operating point and a per-shape record."""
    per_shape = {"peak:1": {"policy": {**POINT_POLICY, "mask_shape": "peak", "mask_param": 1.0}}}
    return write_card(tmp_path_factory.mktemp("point"), POINT_POLICY, per_shape=per_shape)


@pytest.fixture(scope="module")
def point_model(point_card: Path):
    """The point card, loaded."""
    return load_model(point_card)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory):
    """A card without an operating point."""
    return load_model(write_card(tmp_path_factory.mktemp("plain"), None))


def seed_with(**changes: Any) -> DecisionPolicy:
    """The seed's policy with `changes`."""
    return DecisionPolicy(**{**_fields(SEED_POLICY), **changes})


def _fields(policy: DecisionPolicy) -> dict[str, Any]:
    """The fields an operating point sets, as a mapping."""
    return {name: getattr(policy, name) for name in POINT_POLICY}


def test_the_card_operating_point_loads_with_its_extras(point_model, plain_model):
    """load_model exposes the card's operating point, extra records included; a card without one gives None."""
    point = point_model.operating_point
    assert point is not None
    assert point.policy == OperatingPolicy(**POINT_POLICY)
    assert point.target_false_alarm == 0.05
    assert point.chosen_on == {"data": ["source:10"], "frames": 30}
    assert point.model_extra["per_shape"]["peak:1"]["policy"]["mask_shape"] == "peak"
    assert plain_model.operating_point is None
    assert point_model.fill == plain_model.fill == CARD_FILL


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"detect_th": 1.5}, "detect_th"),
        ({"mask_shape": "blur"}, "mask_shape"),
        ({"threshold": 0.3}, "threshold"),
        ({"reconsider_th": 0.9, "detect_th": 0.2}, "reconsider_th"),
        ({"mask_shape": "top_k", "mask_param": 3.0}, "mask_param"),
    ],
)
def test_a_card_with_a_malformed_operating_point_is_refused(tmp_path, change, field):
    """An out-of-range, unknown or misspelt policy field makes the card unusable, naming the field."""
    card = write_card(tmp_path, {**POINT_POLICY, **change})
    with pytest.raises(ModelLoadError, match=rf"(?s)operating_point.*{field}"):
        load_model(card)


def test_settings_default_to_the_card_preset_and_the_seed_mask():
    """Without environment the preset is "card" and the mask is the seed's rollout, parameter 1."""
    erasing = load_settings().erasing
    assert (erasing.preset, erasing.mask_shape, erasing.mask_param) == ("card", "rollout", 1.0)
    assert erasing.model_fields_set == set()


def test_the_card_preset_runs_the_operating_point(point_model):
    """With nothing set, the policy is the card's operating point, its own fill included."""
    policy = policy_from_settings(load_settings().erasing, point_model)
    assert policy == DecisionPolicy(**POINT_POLICY)


def test_the_card_preset_without_a_point_runs_the_seed_values_with_the_card_fill(plain_model):
    """A card without an operating point gives the seed's thresholds and mask, with the card's fill."""
    policy = policy_from_settings(load_settings().erasing, plain_model)
    assert policy == seed_with(fill=CARD_FILL)


def test_the_seed_preset_ignores_the_operating_point(point_model):
    """preset "seed" runs the seed's thresholds and rollout mask with the card's fill, not the point's."""
    policy = policy_from_settings(load_settings(erasing={"preset": "seed"}).erasing, point_model)
    assert policy == seed_with(fill=CARD_FILL)
    assert policy.mask_shape == "rollout" and policy.detect_th == 0.1


@pytest.mark.parametrize(
    ("overrides", "changed"),
    [
        ({"detect_th": 0.7}, {"detect_th": 0.7}),
        ({"max_iter": 4, "fill": 0.0}, {"max_iter": 4, "fill": 0.0}),
        ({"mask_param": 0.5}, {"mask_param": 0.5}),
        ({"mask_shape": "rollout"}, {"mask_shape": "rollout"}),
        ({"on_exhausted": "undetermined"}, {"on_exhausted": "undetermined"}),
    ],
)
def test_explicit_fields_override_the_card_preset_one_by_one(point_model, overrides, changed):
    """Each field set explicitly wins; every field not set keeps the operating point's value."""
    policy = policy_from_settings(load_settings(erasing=overrides).erasing, point_model)
    assert policy == DecisionPolicy(**{**POINT_POLICY, **changed})


def test_explicit_fields_override_the_seed_preset(point_model):
    """Over the seed preset an explicit field wins too, and the rest stay the seed's."""
    erasing = load_settings(
        erasing={"preset": "seed", "mask_shape": "power", "mask_param": 3}
    ).erasing
    assert policy_from_settings(erasing, point_model) == seed_with(
        fill=CARD_FILL, mask_shape="power", mask_param=3.0
    )


def test_a_field_set_to_its_default_still_counts_as_set(point_model):
    """Setting detect_th to the seed's 0.1 explicitly overrides the card's 0.45: set, not merely equal."""
    policy = policy_from_settings(load_settings(erasing={"detect_th": 0.1}).erasing, point_model)
    assert policy.detect_th == 0.1 and policy.reconsider_th == POINT_POLICY["reconsider_th"]


def test_environment_variables_count_as_explicit(monkeypatch, point_model):
    """SCANGUARD_ERASING__* variables override the card field by field, like keywords."""
    monkeypatch.setenv("SCANGUARD_ERASING__MAX_ITER", "3")
    monkeypatch.setenv("SCANGUARD_ERASING__MASK_SHAPE", "power")
    monkeypatch.setenv("SCANGUARD_ERASING__MASK_PARAM", "2")
    erasing = load_settings().erasing
    assert erasing.model_fields_set == {"max_iter", "mask_shape", "mask_param"}
    policy = policy_from_settings(erasing, point_model)
    assert policy == DecisionPolicy(
        **{**POINT_POLICY, "max_iter": 3, "mask_shape": "power", "mask_param": 2.0}
    )


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        # Fine on its own, but the card's top_k share 0.25 is no radius for peak.
        ({"mask_shape": "peak"}, ["mask_param of the peak shape", "['mask_shape']"]),
        # The card's reconsider_th 0.02 lies above this detect_th.
        ({"detect_th": 0.01}, ["reconsider_th (0.02)", "detect_th (0.01)", "['detect_th']"]),
    ],
)
def test_an_override_that_breaks_the_operating_point_names_the_settings(
    point_model, overrides, words
):
    """A combination that is no valid policy is a ValueError naming SCANGUARD_ERASING__ and the fields set."""
    erasing = load_settings(erasing=overrides).erasing  # each field is valid on its own
    with pytest.raises(ValueError) as caught:
        policy_from_settings(erasing, point_model)
    message = str(caught.value)
    assert message.startswith("SCANGUARD_ERASING__")
    assert "the model card's operating point" in message
    for word in words:
        assert word in message


def test_an_override_that_breaks_the_seed_names_the_seed(plain_model):
    """Only reconsider_th set, above the seed's detect_th: refused when the policy is made, naming the seed."""
    erasing = load_settings(erasing={"reconsider_th": 0.3}).erasing
    with pytest.raises(ValueError, match=r"^SCANGUARD_ERASING__.*over the seed") as caught:
        policy_from_settings(erasing.model_copy(update={"preset": "seed"}), plain_model)
    assert "reconsider_th (0.3)" in str(caught.value)


@pytest.mark.parametrize(
    ("erasing", "words"),
    [
        ({"mask_shape": "top_k", "mask_param": 1.5}, ["mask_param of the top_k shape"]),
        ({"mask_shape": "power", "mask_param": 0}, ["mask_param of the power shape"]),
        ({"mask_shape": "blur"}, ["SCANGUARD_ERASING__MASK_SHAPE"]),
        ({"preset": "best"}, ["SCANGUARD_ERASING__PRESET"]),
        ({"detect_th": 0.2, "reconsider_th": 0.3}, ["reconsider_th (0.3)"]),
    ],
)
def test_bad_erasing_settings_are_refused_naming_them(erasing, words):
    """Settings that no card could repair fail at load_settings with the variable's name."""
    with pytest.raises(SettingsError) as caught:
        load_settings(erasing=erasing)
    message = str(caught.value)
    assert "SCANGUARD_ERASING" in message
    for word in words:
        assert word in message


def test_erasing_settings_remember_only_what_was_given():
    """model_fields_set holds exactly the fields given, so defaults never override a card."""
    assert ErasingSettings(detect_th=0.3).model_fields_set == {"detect_th"}
    assert ErasingSettings().model_fields_set == set()


@pytest.mark.redis
def test_a_worker_built_from_settings_decides_at_the_card_operating_point(
    redis_server, keys, make_worker, point_card, point_model
):
    """create_worker runs the card's policy: its engine erases with top_k and every event reports the point's thresholds."""
    client = redis_server.client()
    settings = {
        "redis_url": redis_server.url,
        "namespace": keys.namespace,
        "model": {"max_batch": 4},
        "worker": {"max_wait_ms": 50},
    }
    worker = make_worker(settings, client, card=point_card)
    expected = DecisionPolicy(**POINT_POLICY)
    assert worker.policy == expected and worker.engine.policy == expected

    sent = push_frames(client, keys, 6)
    assert worker.run(burst=True) == 0
    results = [DecisionEvent.model_validate(raw) for raw in events(client, keys.results)]
    assert sorted(event.frame_id for event in results) == sorted(sent)
    for event in results:
        thresholds = event.thresholds
        assert (thresholds.detect_th, thresholds.reconsider_th, thresholds.max_iter) == (
            0.45,
            0.02,
            2,
        )
        assert (thresholds.fill, thresholds.on_exhausted) == (0.5, "clear")
        assert 1 <= event.iterations <= 2
        # on_exhausted "clear": nothing is left undetermined.
        assert event.decision in (Verdict.CLEAR, Verdict.THREAT)
    client.close()


@pytest.mark.redis
def test_a_worker_with_the_seed_preset_ignores_the_card_point(
    redis_server, keys, make_worker, point_card
):
    """SCANGUARD_ERASING__PRESET=seed through settings: the worker runs the seed's thresholds with the card's fill."""
    client = redis_server.client()
    worker = make_worker({"erasing": {"preset": "seed"}}, client, card=point_card)
    assert worker.policy == seed_with(fill=CARD_FILL)
    client.close()


def test_worker_start_up_stops_on_a_mask_setting_the_card_cannot_take(
    monkeypatch, capsys, tmp_path, point_card
):
    """`python -m worker run` with a peak mask over the card's top_k share exits 2 naming the settings.

    Start-up fails before Redis is contacted, so the URL names no running server.
    """
    monkeypatch.setenv("SCANGUARD_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("SCANGUARD_MODEL__CARD", str(point_card))
    monkeypatch.setenv("SCANGUARD_WORKER__METRICS_PORT", "0")
    monkeypatch.setenv("SCANGUARD_WORKER__HEALTH_DIR", str(tmp_path))
    monkeypatch.setenv("SCANGUARD_ERASING__MASK_SHAPE", "peak")
    assert cli.main(["run", "--burst"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cannot start: SCANGUARD_ERASING__")
    assert "mask_param of the peak shape" in err and "mask_shape" in err


@pytest.mark.redis
def test_a_worker_process_refuses_a_bad_mask_parameter(redis_server, keys, spawn_worker, tmp_path):
    """A worker process given a top_k share of 1.5 exits 2 and its log names the setting."""
    proc = spawn_worker(
        redis_server.url,
        keys,
        "badmask",
        SCANGUARD_ERASING__MASK_SHAPE="top_k",
        SCANGUARD_ERASING__MASK_PARAM="1.5",
    )
    assert proc.wait(timeout=60) == 2
    log = (tmp_path / "badmask.log").read_text()
    assert "SCANGUARD_ERASING" in log and "mask_param of the top_k shape" in log


def test_a_mask_shape_alone_takes_its_parameter_from_the_preset(point_model):
    """MASK_SHAPE=top_k with no MASK_PARAM is not refused for the default parameter (1.0):
    the merged policy decides, and an unusable pair is refused there, naming the settings."""
    erasing = load_settings(erasing={"mask_shape": "power"}).erasing
    assert policy_from_settings(erasing, point_model).mask_shape == "power"
    lone = load_settings(erasing={"mask_shape": "top_k"}).erasing
    with pytest.raises(ValueError, match=r"^SCANGUARD_ERASING__.*mask_param"):
        policy_from_settings(lone.model_copy(update={"preset": "seed"}), point_model)
