"""The one settings tree: environment variables `SCANGUARD_*`, nested with `__`."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.keys import check_id
from shared.vocab import (
    ErasingPreset,
    ExhaustedOutcome,
    HeadFusion,
    MaskShape,
    Precision,
    check_mask_shape,
)

DEFAULT_MODEL_CARD = (
    Path(__file__).resolve().parent.parent / "models" / "scanguard-demo" / "card.json"
)


class SettingsError(ValueError):
    """Raised when the configuration is invalid; the message names every bad setting."""


class ErasingSettings(BaseModel):
    """The decision policy of iterative erasing.

    `preset` says where the policy starts: "card" (the default) runs the model card's
    calibrated operating point, or the seed's values when the card has none; "seed" runs
    the seed's values (the defaults below). Every field set explicitly (an environment
    variable, a keyword) overrides the preset.
    """

    preset: ErasingPreset = Field(
        "card", description="card: the model card's operating point; seed: the seed's values"
    )
    detect_th: float = Field(0.1, gt=0.0, lt=1.0, description="threat probability that detects")
    reconsider_th: float = Field(
        0.001, gt=0.0, lt=1.0, description="all threat probabilities below this: clear"
    )
    max_iter: int = Field(5, ge=0, le=64, description="erasing iterations before giving up")
    on_exhausted: ExhaustedOutcome = Field(
        "undetermined", description="outcome when max_iter is spent without a decision"
    )
    judge_original: bool = Field(
        False, description="apply the decision rules to the un-erased image first"
    )
    head_fusion: HeadFusion = "mean"
    fill: float | None = Field(
        None, ge=0.0, le=1.0, description="value erased pixels tend to; unset = the model card's"
    )
    mask_shape: MaskShape = Field(
        "rollout", description="rollout (the seed's), power, top_k or peak; see mask_param"
    )
    mask_param: float = Field(
        1.0, description="power: exponent; top_k: share of patches kept; peak: radius in patches"
    )

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> ErasingSettings:
        # Fields left unset come from the preset, so pairs are checked here only when both
        # are given; the merged policy is checked when the worker builds it.
        if {"mask_shape", "mask_param"} <= self.model_fields_set:
            check_mask_shape(self.mask_shape, self.mask_param)
        both = {"detect_th", "reconsider_th"} <= self.model_fields_set
        if both and self.reconsider_th >= self.detect_th:
            raise ValueError(
                f"reconsider_th ({self.reconsider_th}) must be below detect_th ({self.detect_th})"
            )
        return self


class ModelSettings(BaseModel):
    """Which model runs, where, and how."""

    card: Path = Field(DEFAULT_MODEL_CARD, description="model card (JSON) next to its checkpoint")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    precision: Precision = "fp32"
    max_batch: int = Field(32, ge=1, le=4096)
    cpu_threads: int = Field(
        0, ge=0, le=256, description="torch threads for CPU inference; 0 = torch's default"
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {value!r}")


class WorkerSettings(BaseModel):
    """The batching loop, delivery and health."""

    id: str | None = Field(None, description="worker id; unset = host name and pid")
    group: str = "workers"
    max_wait_ms: int = Field(
        200,
        ge=1,
        le=60_000,
        description="longest a read blocks when idle (in slices of at most 1 s, so a stop is quick)",
    )
    claim_idle_ms: int = Field(
        30_000, ge=100, description="pending this long: another worker takes it"
    )
    max_deliveries: int = Field(3, ge=1, le=100)
    artefact_ttl_s: int = Field(86_400, ge=1)
    stream_maxlen: int = Field(
        1_000_000, ge=0, description="approximate cap of results/alerts/dead streams; 0 = none"
    )
    dedupe_ttl_s: int = Field(86_400, ge=1, description="how long a decided frame id is remembered")
    health_dir: Path = Field(
        Path("/tmp"), description="folder of the liveness file `worker check` reads"
    )
    heartbeat_ttl_s: int = Field(15, ge=2)
    metrics_port: int = Field(9400, ge=0, le=65_535, description="0 disables the metrics server")
    decode_threads: int = Field(2, ge=1, le=64)
    read_ahead: int | None = Field(
        None,
        ge=0,
        le=4096,
        description=(
            "frames a worker may hold beyond max_batch (every frame counts from its read to "
            "its acknowledgement), so a step that frees slots finds the next frames decoded; "
            "unset = max_batch, 0 = read only into free slots"
        ),
    )
    max_frame_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1024, description="decompression-bomb guard")
    max_side_px: int = Field(
        16_384,
        ge=64,
        le=65_500,
        description="longest image side accepted; JPEG (the artefacts' format) stops at 65,500",
    )
    max_meta_bytes: int = Field(
        16_384, ge=2, le=1_048_576, description="size of a frame's `meta` JSON"
    )
    max_meta_depth: int = Field(
        16, ge=1, le=64, description="nesting of a frame's `meta` JSON (readers stop near 200)"
    )
    dead_field_bytes: int = Field(
        65_536,
        ge=0,
        description="a dead letter keeps at most this prefix of each frame field (sizes noted)",
    )
    consumer_idle_s: int = Field(
        86_400,
        ge=1,
        description="group consumers idle this long with nothing pending are removed at start",
    )
    jpeg_quality: int = Field(85, ge=1, le=100)
    reconnect_max_s: float = Field(10.0, gt=0)
    bag_deadline_ms: int = Field(
        10_000,
        ge=100,
        description="a bag still missing views this long after its first capture closes undetermined",
    )
    max_views: int = Field(8, ge=1, le=64, description="most views a bag may declare")
    review_ttl_s: int = Field(
        86_400,
        ge=60,
        description="originals and artefacts of bags sent to review are kept this long",
    )
    roi_threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="attention (of its maximum) that a ROI pixel reaches"
    )
    max_rois: int = Field(5, ge=0, le=64, description="ROIs per view, largest first")

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value, "worker id")


class ProducerSettings(BaseModel):
    """Frame sources and backpressure."""

    scanner_id: str = "lane-1"
    jpeg_quality: int = Field(90, ge=1, le=100)
    max_backlog: int = Field(
        1_000, ge=1, description="XLEN of the frames stream that triggers backpressure"
    )
    backpressure: Literal["block", "drop"] = "block"
    metrics_port: int = Field(
        0,
        ge=0,
        le=65_535,
        description="port of the producer's /metrics while it runs; 0 = off (one port per "
        "producer on a host)",
    )


class ConsoleSettings(BaseModel):
    """The operator console (web): the operator station, the supervisor view, the alert monitor."""

    host: str = Field("127.0.0.1", description="bind address; anything off loopback needs a token")
    port: int = Field(8080, ge=1, le=65_535)
    token: SecretStr | None = Field(
        None,
        description="shared access token: supervisor view and alert monitor, no bags "
        "(a token or operator tokens are required off loopback)",
    )
    operators: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="operator id -> personal token; set, every request needs a token and "
        "verdicts carry the id the token belongs to",
    )
    supervisors: list[str] = Field(
        default_factory=list,
        description="operator ids that may also open the supervisor view",
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "::1"],
        description="Host headers served without a token (guards against DNS rebinding)",
    )
    page_size: int = Field(100, ge=1, le=1_000, description="alerts loaded when the page opens")
    status_interval_s: float = Field(
        2.0, gt=0, le=60, description="how often the status strip updates"
    )
    stream_ping_s: float = Field(
        15.0, gt=0, le=300, description="keep-alive comment on a quiet event stream this often"
    )
    stream_send_timeout_s: float = Field(
        10.0, gt=0, le=300, description="an event stream whose write is stuck this long ends"
    )
    stream_queue: int = Field(
        256,
        ge=1,
        le=100_000,
        description="events held for each open event stream; a page that falls this far "
        "behind is dropped (its browser reconnects and resumes from its last id)",
    )
    operator_default: str = Field("operator", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    verdicts_maxlen: int = Field(
        1_000_000, ge=1_000, description="approximate cap of the verdicts stream"
    )
    pools: list[str] = Field(
        default_factory=lambda: ["main"],
        min_length=1,
        description="operator pools, each a consumer group on the review stream; the first "
        "is the default",
    )
    operator_pools: dict[str, str] = Field(
        default_factory=dict, description="operator id -> pool (others work in the first pool)"
    )
    pool_scanners: dict[str, list[str]] = Field(
        default_factory=dict,
        description="pool -> the scanners whose bags it reviews (a pool not listed: all)",
    )
    lease_s: int = Field(
        120, ge=1, le=86_400, description="a taken bag returns to its pool after this long"
    )
    review_deadline_s: int = Field(
        300, ge=1, description="a bag still undecided this long after it entered review is overdue"
    )
    tip_rate: dict[str, float] = Field(
        default_factory=dict,
        description="pool -> chance that a 'next bag' hands out a TIP bag (threat image "
        "projection) while real bags wait; a pool not listed: 0",
    )
    tip_library: Path | None = Field(
        None,
        description="folder of threat images to project (CLASS/NAME.png with CLASS/NAME.mask.png); "
        "unset = the synthetic scanner's threats",
    )
    tip_ttl_s: int = Field(
        86_400, ge=60, description="an undecided TIP bag and its images are kept this long"
    )
    hidden_meta_keys: list[str] = Field(
        default_factory=lambda: [
            "label",
            "label_name",
            "kind",
            "box",
            "occluded",
            "covered",
            "view_name",
            "index",
            "seed",
            "domain",
        ],
        description="frame meta keys never shown to operators (the synthetic scanner's ground "
        "truth, and what regenerates it)",
    )
    truth_meta_key: str = Field(
        "label",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="view meta key holding the ground truth (0 = benign) that scores false alarms",
    )

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if ":" in check_id(name, "pool"):
                raise ValueError(f"pool {name!r} may not hold ':'")
        return value

    @field_validator("supervisors")
    @classmethod
    def _operator_ids(cls, value: list[str]) -> list[str]:
        return [check_id(name, "operator id") for name in value]

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ConsoleSettings:
        if (
            self.host not in ("127.0.0.1", "localhost", "::1")
            and self.token is None
            and not self.operators
        ):
            raise ValueError(
                f"binding {self.host} exposes the console beyond this machine: "
                "set SCANGUARD_CONSOLE__TOKEN or SCANGUARD_CONSOLE__OPERATORS"
            )
        return self

    @model_validator(mode="after")
    def _station_consistent(self) -> ConsoleSettings:
        for operator in self.operators:
            check_id(operator, "operator id")
        tokens = [t.get_secret_value() for t in self.operators.values()]
        if self.token is not None:
            tokens.append(self.token.get_secret_value())
        if len(set(tokens)) != len(tokens) or "" in tokens:
            raise ValueError("every token (console and operators) must be distinct and non-empty")
        if len(set(self.pools)) != len(self.pools):
            raise ValueError(f"pools are listed twice: {self.pools}")
        for what, named in (
            ("operator_pools", set(self.operator_pools.values())),
            ("pool_scanners", set(self.pool_scanners)),
            ("tip_rate", set(self.tip_rate)),
        ):
            unknown = sorted(named - set(self.pools))
            if unknown:
                raise ValueError(f"{what} names pools that are not in pools: {unknown}")
        for pool, rate in self.tip_rate.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"tip_rate of pool {pool!r} must lie in [0, 1], not {rate}")
        if self.operators and not set(self.supervisors) <= set(self.operators):
            raise ValueError("supervisors must be operator ids listed in operators")
        if self.tip_library is not None and not self.tip_library.is_dir():
            raise ValueError(f"tip_library {str(self.tip_library)!r} is not a folder")
        return self


class DeliverySettings(BaseModel):
    """Downstream delivery: the dispatcher and its RQ sinks."""

    group: str = Field("dispatch", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    consumer: str | None = Field(None, description="consumer name; unset = host name and pid")
    streams: list[Literal["results", "alerts", "bags"]] = Field(
        ["alerts"], description="results and alerts carry decision events, bags bag events"
    )
    from_start: bool = Field(False, description="a new group also delivers the stored history")
    sinks: list[str] = Field(
        default_factory=list, description="webhook, archive, dicos or dotted paths"
    )
    queue: str = Field("scanguard-delivery", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    batch: int = Field(100, ge=1, le=10_000, description="entries read per stream per pass")
    block_ms: int = Field(2_000, ge=1, le=60_000, description="longest a read blocks when idle")
    claim_idle_ms: int = Field(
        60_000, ge=100, description="pending this long: another dispatcher takes it"
    )
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = Field(
        None,
        description="Standard Webhooks signing secret: whsec_ and the base64 of 24-64 random "
        "bytes; any other value is a raw secret whose UTF-8 bytes are the HMAC key",
    )
    webhook_timeout_s: float = Field(5.0, gt=0, description="connect and per-read time-out")
    webhook_deadline_s: float = Field(
        30.0, gt=0, description="a whole delivery (connect, send, response) ends by then"
    )
    retries: int = Field(5, ge=0, le=100)
    retry_base_s: int = Field(10, ge=1, description="first retry delay; doubles each time")
    retry_max_s: int = Field(3_600, ge=1, description="cap of the retry delay")
    job_timeout_s: int = Field(60, ge=1)
    dedupe_ttl_s: int = Field(
        7 * 86_400, ge=60, description="a finished job (and its id) is kept this long"
    )
    failure_ttl_s: int = Field(
        7 * 86_400, ge=60, description="a failed job stays visible (rq info) this long"
    )
    archive_dir: Path = Path("archive")
    dicos_dir: Path = Field(Path("dicos"), description="the dicos sink's threat detection reports")
    metrics_port: int = Field(
        0, ge=0, le=65_535, description="port of the dispatcher's /metrics; 0 = off"
    )

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if not secret:
            raise ValueError("must not be empty")
        if secret.startswith("whsec_"):
            # Read as shared.delivery.signatures.secret_key reads it (the core may not
            # import delivery): base64, padding optional, of 24 to 64 bytes.
            encoded = secret[len("whsec_") :]
            try:
                key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
            except binascii.Error:
                raise ValueError("a whsec_ secret must be whsec_ and base64") from None
            if not 24 <= len(key) <= 64:
                raise ValueError(
                    f"a whsec_ secret must hold 24 to 64 bytes, not {len(key)}: "
                    "whsec_ + base64 of os.urandom(32)"
                )
        return value

    @model_validator(mode="after")
    def _webhook_complete(self) -> DeliverySettings:
        if "webhook" in self.sinks and (self.webhook_url is None or self.webhook_secret is None):
            raise ValueError("the webhook sink needs webhook_url and webhook_secret")
        if self.webhook_url is not None and not self.webhook_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError("webhook_url must start with http:// or https://")
        return self


class Settings(BaseSettings):
    """Everything scanguard reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="SCANGUARD_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    redis_url: SecretStr | None = Field(
        None, description="redis:// or rediss:// URL; unset = embedded Redis (demo only)"
    )
    namespace: str = Field("scanguard", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    model: ModelSettings = ModelSettings()
    erasing: ErasingSettings = ErasingSettings()
    worker: WorkerSettings = WorkerSettings()
    producer: ProducerSettings = ProducerSettings()
    console: ConsoleSettings = ConsoleSettings()
    delivery: DeliverySettings = DeliverySettings()

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")
        ):
            raise ValueError(
                "must start with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
            )
        return value


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; raise `SettingsError` naming each bad one.

    Args:
        **overrides: values that win over the environment (CLI flags).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "SCANGUARD_" + "__".join(str(part).upper() for part in err["loc"])
            problems.append(f"{name}: {err['msg']}")
        if len(problems) == 1:  # the common case stays one line
            raise SettingsError(f"invalid setting {problems[0]}") from None
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None
