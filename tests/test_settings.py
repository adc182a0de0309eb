"""Settings: defaults, environment parsing, and start-up errors that name the setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_seed_values():
    """Without environment, the erasing policy uses the seed's thresholds."""
    settings = load_settings()
    assert (settings.erasing.detect_th, settings.erasing.reconsider_th) == (0.1, 0.001)
    assert settings.erasing.on_exhausted == "undetermined"
    assert settings.namespace == "scanguard"


def test_only_harness_variables_reach_a_test():
    """Inside a test the only SCANGUARD_* variables left are the harness's SCANGUARD_TEST_* ones."""
    seen = sorted(name for name in os.environ if name.startswith("SCANGUARD_"))
    assert all(name.startswith("SCANGUARD_TEST_") for name in seen), seen
    dump = os.environ.get("SCANGUARD_TEST_ENV_DUMP")
    if dump:
        Path(dump).write_text(json.dumps(seen))


def test_the_developers_shell_does_not_reach_the_tests(tmp_path):
    """With SCANGUARD_* settings in the shell, a test still sees the defaults, and SCANGUARD_TEST_* variables survive."""
    dump = tmp_path / "seen.json"
    env = {
        **os.environ,
        "SCANGUARD_NAMESPACE": "from-the-shell",
        "SCANGUARD_ERASING__DETECT_TH": "0.5",
        "SCANGUARD_TEST_MARKER": "kept",
        "SCANGUARD_TEST_ENV_DUMP": str(dump),
    }
    here = "tests/test_settings.py::"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            here + "test_defaults_are_the_seed_values",
            here + "test_only_harness_variables_reach_a_test",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = json.loads(dump.read_text())
    assert {"SCANGUARD_TEST_MARKER", "SCANGUARD_TEST_ENV_DUMP"} <= set(seen)


def test_nested_environment_variables(monkeypatch):
    """SCANGUARD_ERASING__DETECT_TH reaches settings.erasing.detect_th."""
    monkeypatch.setenv("SCANGUARD_ERASING__DETECT_TH", "0.25")
    monkeypatch.setenv("SCANGUARD_MODEL__MAX_BATCH", "7")
    settings = load_settings()
    assert settings.erasing.detect_th == 0.25 and settings.model.max_batch == 7


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("SCANGUARD_ERASING__DETECT_TH", "1.5", "SCANGUARD_ERASING__DETECT_TH"),
        ("SCANGUARD_ERASING__RECONSIDER_TH", "1.5", "SCANGUARD_ERASING__RECONSIDER_TH"),
        ("SCANGUARD_ERASING__ON_EXHAUSTED", "maybe", "SCANGUARD_ERASING__ON_EXHAUSTED"),
        ("SCANGUARD_MODEL__DEVICE", "tpu", "SCANGUARD_MODEL__DEVICE"),
        ("SCANGUARD_MODEL__PRECISION", "int4", "SCANGUARD_MODEL__PRECISION"),
        ("SCANGUARD_MODEL__MAX_BATCH", "0", "SCANGUARD_MODEL__MAX_BATCH"),
        ("SCANGUARD_WORKER__MAX_DELIVERIES", "x", "SCANGUARD_WORKER__MAX_DELIVERIES"),
        ("SCANGUARD_NAMESPACE", "a b", "SCANGUARD_NAMESPACE"),
        ("SCANGUARD_REDIS_URL", "http://x", "SCANGUARD_REDIS_URL"),
        ("SCANGUARD_PRODUCER__BACKPRESSURE", "ignore", "SCANGUARD_PRODUCER__BACKPRESSURE"),
    ],
)
def test_bad_setting_is_named(monkeypatch, name, value, needle):
    """Each invalid value raises SettingsError whose message names the setting."""
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=needle):
        load_settings()


def test_secret_url_is_hidden_in_repr(monkeypatch):
    """The Redis password never shows in repr(settings)."""
    monkeypatch.setenv("SCANGUARD_REDIS_URL", "redis://user:hunter2@db:6379/0")
    assert "hunter2" not in repr(load_settings())


def test_bad_setting_stops_worker_start_up():
    """`python -m worker run` with a bad setting exits 2 and names the setting."""
    env = {"SCANGUARD_ERASING__MAX_ITER": "-1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "SCANGUARD_ERASING__MAX_ITER" in proc.stderr
