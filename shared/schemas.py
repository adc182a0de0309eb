"""Wire messages: versioned pydantic models serialised as JSON (DESIGN §4).

Frames travel as flat stream fields (so any Redis client can write one); events
travel as one JSON string in the `event` field of their stream entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.keys import check_id
from shared.vocab import BagReason, DeadKind, ExhaustedOutcome, HeadFusion, MaskShape, Verdict

DECISION_SCHEMA: Final = "scanguard.decision/1"
DEAD_SCHEMA: Final = "scanguard.dead/1"
BAG_SCHEMA: Final = "scanguard.bag/1"
FRAME_SCHEMA: Final = "scanguard.frame/1"
# application/dicom: a DICOS DX object as the scanner wrote it (docs/DICOS.md).
CONTENT_TYPES = ("image/jpeg", "image/png", "application/dicom")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class FrameError(ValueError):
    """A frame entry that cannot be processed; the message is the dead-letter reason."""

    def __init__(self, reason: str, kind: DeadKind = DeadKind.BAD_FIELDS) -> None:
        super().__init__(reason)
        self.kind = kind


class FrameFields(BaseModel):
    """The fields of one `{ns}:frames` entry, validated (the image bytes ride alongside)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_: Literal["scanguard.frame/1"] = Field(FRAME_SCHEMA, alias="schema")
    frame_id: str
    scanner_id: str
    captured_at: datetime
    content_type: Literal["image/jpeg", "image/png", "application/dicom"]
    meta: dict[str, Any] = Field(default_factory=dict)
    # A bag (object of inspection) seen in `views` views; this frame is view `view`
    # (0-based). All three or none: a frame without them is a one-view bag of its own.
    bag_id: str | None = None
    view: int | None = Field(None, ge=0)
    views: int | None = Field(None, ge=1)

    @field_validator("frame_id", "scanner_id", "bag_id")
    @classmethod
    def _safe(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value)

    @model_validator(mode="after")
    def _bag_complete(self) -> FrameFields:
        given = [name for name in ("bag_id", "view", "views") if getattr(self, name) is not None]
        if given and len(given) != 3:
            missing = sorted({"bag_id", "view", "views"} - set(given))
            raise ValueError(f"bag fields come together: {', '.join(missing)} missing")
        if self.view is not None and self.views is not None and self.view >= self.views:
            raise ValueError(f"view {self.view} does not exist in a bag of {self.views} views")
        return self

    @property
    def bag(self) -> tuple[str, int, int]:
        """(bag id, view, views); a frame without bag fields is view 0 of 1 of its own bag."""
        if self.bag_id is None or self.view is None or self.views is None:
            return self.frame_id, 0, 1
        return self.bag_id, self.view, self.views

    @field_validator("captured_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    def to_fields(
        self, image: bytes, enqueued_at: datetime | None = None
    ) -> dict[str, bytes | str]:
        """Stream entry fields for XADD."""
        return {
            "schema": FRAME_SCHEMA,
            "frame_id": self.frame_id,
            "scanner_id": self.scanner_id,
            "captured_at": self.captured_at.isoformat(),
            "enqueued_at": (enqueued_at or utc_now()).isoformat(),
            "content_type": self.content_type,
            "meta": json.dumps(self.meta, separators=(",", ":")),
            **(
                {"bag_id": self.bag_id, "view": str(self.view), "views": str(self.views)}
                if self.bag_id is not None
                else {}
            ),
            "image": image,
        }


@dataclass(frozen=True)
class MetaLimits:
    """Bounds on a frame's `meta` JSON (the settings' defaults).

    The depth bound is the one JSON limit of the project: it keeps every event far below
    both the writer's (pydantic serialiser, 255 levels) and the readers' (pydantic's JSON
    parser, 200 levels) own limits, so what a worker publishes every reader can read.
    """

    max_bytes: int = 16_384
    max_depth: int = 16


_META: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
        else:
            deepest = max(deepest, level)
            continue
        deepest = max(deepest, level + 1)
    return deepest


def parse_meta(text: str, limits: MetaLimits) -> dict[str, Any]:
    """The frame's `meta` as a dict, or `FrameError` if it is too big, too deep or unreadable.

    Anything the project's own writer and readers could not carry (a 5,000-digit integer,
    a lone surrogate) is refused here, before the frame costs a forward pass.
    """
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > limits.max_bytes:
        raise FrameError(
            f"field 'meta' is {size} bytes, over the {limits.max_bytes}-byte limit",
            DeadKind.TOO_LARGE,
        )
    try:
        meta = json.loads(text)
    except RecursionError:
        raise FrameError(f"field 'meta' nests deeper than {limits.max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, and integers past the digit limit
        raise FrameError(f"field 'meta' is not usable JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise FrameError("field 'meta' must be a JSON object")
    depth = _depth(meta)
    if depth > limits.max_depth:
        raise FrameError(f"field 'meta' nests {depth} levels, over the limit of {limits.max_depth}")
    try:
        # The same serialiser and parser that publish and read decision events.
        _META.validate_json(_META.dump_json(meta))
    except ValueError as exc:
        raise FrameError(f"field 'meta' cannot travel in a decision event: {exc}") from None
    return meta


def parse_frame_fields(
    raw: dict[bytes, bytes], max_bytes: int, meta_limits: MetaLimits = MetaLimits()
) -> tuple[FrameFields, bytes, datetime | None]:
    """Validate a raw stream entry; raise `FrameError` with the reason it is unusable."""
    image = raw.get(b"image")
    if image is None:
        raise FrameError("missing field 'image'")
    if len(image) == 0:
        raise FrameError("field 'image' is empty")
    if len(image) > max_bytes:
        raise FrameError(
            f"image is {len(image)} bytes, over the {max_bytes}-byte limit", DeadKind.TOO_LARGE
        )
    try:
        text = {k.decode(): v.decode() for k, v in raw.items() if k != b"image"}
    except UnicodeDecodeError:
        raise FrameError("a field other than 'image' is not UTF-8") from None
    schema = text.get("schema", FRAME_SCHEMA)
    if schema != FRAME_SCHEMA:
        raise FrameError(f"unknown frame schema {schema!r}; this worker reads {FRAME_SCHEMA!r}")
    meta = parse_meta(text["meta"], meta_limits) if text.get("meta") else {}
    text_fields: dict[str, Any] = {**text, "meta": meta}
    try:
        fields = FrameFields.model_validate(text_fields)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise FrameError(f"invalid frame fields: {reasons}") from None
    enqueued = None
    if "enqueued_at" in text:
        try:
            enqueued = datetime.fromisoformat(text["enqueued_at"])
        except ValueError:
            raise FrameError("field 'enqueued_at' is not an ISO-8601 time") from None
    return fields, image, enqueued


class Detection(BaseModel):
    class_id: int
    label: str
    probability: float


class Roi(BaseModel):
    """A region the model attended to: a box in frame pixels with its attention."""

    x: int
    y: int
    w: int
    h: int
    peak: float  # highest attention inside the box (the mask is max-normalised: ≤ 1)
    mean: float  # mean attention over the box's connected region


class ArtefactRef(BaseModel):
    kind: Literal["original", "masked", "heatmap"]
    key: str
    content_type: str
    bytes: int
    width: int
    height: int
    expires_at: datetime


class Thresholds(BaseModel):
    detect_th: float
    reconsider_th: float
    max_iter: int
    on_exhausted: ExhaustedOutcome
    judge_original: bool
    head_fusion: HeadFusion
    fill: float
    mask_shape: MaskShape = "rollout"  # absent in events of older workers: the seed's mask
    mask_param: float = 1.0


class ModelRef(BaseModel):
    id: str
    checksum: str
    labels: list[str]


class DecisionEvent(BaseModel):
    """One per frame, on `{ns}:results`; threats also on `{ns}:alerts`."""

    model_config = ConfigDict(populate_by_name=True)

    schema_: Literal["scanguard.decision/1"] = Field(DECISION_SCHEMA, alias="schema")
    event_id: str
    frame_id: str
    entry_id: str  # the frames-stream entry this decides
    scanner_id: str
    captured_at: datetime
    enqueued_at: datetime | None
    decided_at: datetime
    latency_ms: float  # decided_at - captured_at
    decision: Verdict
    detections: list[Detection]
    probabilities: dict[str, float]
    trace: list[dict[str, float]]  # per forward; [0] is the original image
    iterations: int
    forward_passes: int
    thresholds: Thresholds
    model: ModelRef
    worker_id: str
    artefacts: list[ArtefactRef]
    meta: dict[str, Any] = Field(default_factory=dict)
    rois: list[Roi] = Field(default_factory=list)  # largest first
    bag_id: str | None = None  # the frame's own id for a one-view bag
    view: int = 0
    views: int = 1

    # Readers put these ids into key names and file paths (artefacts, archives, reports):
    # an event that carries an unsafe one is not a decision event.
    @field_validator("event_id", "frame_id", "scanner_id", "worker_id", "bag_id")
    @classmethod
    def _safe(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


class BagView(BaseModel):
    """One decided view as its bag remembers it (the view's full event is on results)."""

    view: int
    frame_id: str
    entry_id: str
    event_id: str
    captured_at: datetime
    decision: Verdict
    detections: list[Detection]
    trace: list[dict[str, float]]  # probabilities per forward; [0] is the original view
    iterations: int
    rois: list[Roi]
    artefacts: list[ArtefactRef]
    model: ModelRef


class BagEvent(BaseModel):
    """One per bag, exactly once, on `{ns}:bags`; threat and undetermined bags also on
    `{ns}:review`. Threat if any view is a threat; else undetermined if any view is
    undetermined or missing at the deadline; else clear."""

    model_config = ConfigDict(populate_by_name=True)

    schema_: Literal["scanguard.bag/1"] = Field(BAG_SCHEMA, alias="schema")
    event_id: str
    bag_id: str
    scanner_id: str
    decision: Verdict
    reason: BagReason
    classes: list[Detection]  # union over views, highest probability per class
    views: list[BagView]  # decided views, by view index
    views_expected: int
    missing_views: list[int]
    first_captured_at: datetime
    decided_at: datetime
    latency_ms: float  # decided_at - first_captured_at
    model: ModelRef | None  # the model of the decided views (None if no view was decided)
    closed_by: str  # worker id

    @field_validator("event_id", "bag_id", "scanner_id", "closed_by")
    @classmethod
    def _safe(cls, value: str) -> str:
        return check_id(value)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


class DeadLetter(BaseModel):
    """A frame that could not be decided, on `{ns}:dead`, with the reason."""

    model_config = ConfigDict(populate_by_name=True)

    schema_: Literal["scanguard.dead/1"] = Field(DEAD_SCHEMA, alias="schema")
    event_id: str
    entry_id: str
    frame_id: str | None
    scanner_id: str | None
    reason: str
    kind: DeadKind  # closed set (metric label); `reason` has the details
    deliveries: int
    worker_id: str
    failed_at: datetime

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)
