"""Loading a timm ViT classifier and its model card, strictly."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from timm.data import resolve_data_config
from torch import nn

from shared.vocab import ExhaustedOutcome, HeadFusion, MaskShape, check_mask_shape


class ModelLoadError(ValueError):
    """The model card or checkpoint cannot give a usable model; the message says why."""


class OperatingPolicy(BaseModel):
    """The erasing policy a calibration chose (fields as in `decision.DecisionPolicy`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detect_th: float = Field(gt=0.0, lt=1.0)
    reconsider_th: float = Field(gt=0.0, lt=1.0)
    max_iter: int = Field(ge=0, le=64)
    fill: float = Field(ge=0.0, le=1.0)
    mask_shape: MaskShape = "rollout"
    mask_param: float = 1.0
    on_exhausted: ExhaustedOutcome = "undetermined"
    judge_original: bool = False
    head_fusion: HeadFusion = "mean"

    @model_validator(mode="after")
    def _valid_policy(self) -> OperatingPolicy:
        if self.reconsider_th >= self.detect_th:
            raise ValueError(
                f"reconsider_th ({self.reconsider_th}) must be below detect_th ({self.detect_th})"
            )
        check_mask_shape(self.mask_shape, self.mask_param)
        return self


class OperatingPoint(BaseModel):
    """Where the model should run, and what that was measured to give (written by calibrate)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    policy: OperatingPolicy
    target_false_alarm: float = Field(gt=0.0, lt=1.0)
    chosen_on: dict[str, Any] = Field(default_factory=dict, description="the validation data")
    expected: dict[str, Any] = Field(
        default_factory=dict, description="recall and false-alarm rate with 95 % intervals"
    )


class ModelCard(BaseModel):
    """What a checkpoint is and how to feed it (the JSON file next to the weights)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(description="model id reported in every decision event")
    timm_name: str
    timm_kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str = Field(description="file name relative to the card (.safetensors or .pth)")
    sha256: str | None = Field(None, description="checksum of the checkpoint; checked when set")
    labels: list[str] = Field(min_length=2)
    benign_index: int = 0
    input_size: tuple[int, int, int] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    fill: float = Field(0.0, ge=0.0, le=1.0, description="value erased pixels tend to")
    operating_point: OperatingPoint | None = Field(
        None, description="the calibrated erasing policy the worker runs unless settings override"
    )

    @model_validator(mode="after")
    def _benign_in_range(self) -> ModelCard:
        if not 0 <= self.benign_index < len(self.labels):
            raise ValueError(f"benign_index {self.benign_index} is outside labels {self.labels}")
        return self


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A ViT ready for iterative erasing, with everything needed to feed and read it."""

    module: nn.Module
    labels: tuple[str, ...]
    benign_index: int
    input_hw: tuple[int, int]  # (rows, cols) in pixels
    grid_hw: tuple[int, int]  # patch grid (rows, cols)
    num_prefix_tokens: int  # class + register tokens
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fill: float
    model_id: str
    checksum: str  # sha256 of the checkpoint, or of the state dict for in-memory models
    operating_point: OperatingPoint | None = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def threat_indices(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_classes) if i != self.benign_index)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device


def check_vit(module: nn.Module) -> None:
    """Refuse a model iterative erasing cannot use, saying why."""
    needed = ("blocks", "patch_embed", "num_prefix_tokens", "forward_head")
    if not all(hasattr(module, attr) for attr in needed):
        raise ModelLoadError(
            f"{type(module).__name__} is not a timm VisionTransformer (needs {', '.join(needed)})"
        )
    if getattr(module, "cls_token", None) is None:
        raise ModelLoadError(
            "model has no [class] token: iterative erasing reads the [class] token's attention "
            "rollout, so build it with class_token=True"
        )
    if getattr(module, "global_pool", "token") != "token":
        raise ModelLoadError(
            f"model pools with global_pool={module.global_pool!r}: the [class] token does not "
            "carry the prediction, so its attention is not the model's evidence; use 'token'"
        )
    for index, block in enumerate(module.blocks):  # type: ignore[arg-type]
        attn = getattr(block, "attn", None)
        if attn is None or not hasattr(attn, "attn_drop") or not hasattr(attn, "fused_attn"):
            raise ModelLoadError(f"block {index} has no timm Attention module to read weights from")


def from_module(
    module: nn.Module,
    labels: tuple[str, ...] | list[str],
    *,
    benign_index: int = 0,
    fill: float = 0.0,
    model_id: str | None = None,
    checksum: str | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    operating_point: OperatingPoint | None = None,
) -> LoadedModel:
    """Wrap an in-memory timm ViT (tests, training) as a `LoadedModel`.

    Mean, std and input size come from the model's `pretrained_cfg` unless given.
    """
    check_vit(module)
    head_out = getattr(module, "num_classes", None)
    if head_out != len(labels):
        raise ModelLoadError(f"model has {head_out} outputs but {len(labels)} labels were given")
    module.eval()
    data_cfg = resolve_data_config({}, model=module)
    # The patch embedding knows the size the model was built for; pretrained_cfg may not
    # (it keeps the default size when img_size is overridden).
    rows, cols = module.patch_embed.img_size  # type: ignore[union-attr, misc]
    grid = tuple(int(g) for g in module.patch_embed.grid_size)  # type: ignore[union-attr]
    if checksum is None:
        digest = hashlib.sha256()
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        checksum = digest.hexdigest()
    return LoadedModel(
        module=module,
        labels=tuple(labels),
        benign_index=benign_index,
        input_hw=(int(rows), int(cols)),
        grid_hw=(grid[0], grid[1]),
        num_prefix_tokens=int(module.num_prefix_tokens),  # type: ignore[arg-type]
        mean=tuple(mean or data_cfg["mean"]),
        std=tuple(std or data_cfg["std"]),
        fill=fill,
        model_id=model_id or getattr(module, "default_cfg", {}).get("architecture", "vit"),
        checksum=checksum,
        operating_point=operating_point,
    )


def read_card(card_path: Path) -> ModelCard:
    """Parse and validate a model card file."""
    try:
        raw = json.loads(Path(card_path).read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"model card {card_path} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"model card {card_path} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"model card {card_path} is not valid JSON: {exc}") from None
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as exc:
        raise ModelLoadError(f"model card {card_path} is invalid:\n{exc}") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        return _read_state_dict_unchecked(path)
    except ModelLoadError:
        raise
    except Exception as exc:  # safetensors and torch.load raise many types for a bad file
        raise ModelLoadError(f"checkpoint {path} is corrupt or unreadable: {exc}") from None


def _read_state_dict_unchecked(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in (".pth", ".pt"):
        # weights_only: a checkpoint is data, never code to unpickle.
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ModelLoadError(f"{path} does not hold a state dict")
        return state
    raise ModelLoadError(f"checkpoint {path} must be .safetensors or .pth")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(card_path: Path | str, device: torch.device | str = "cpu") -> LoadedModel:
    """Build the card's timm model, load its checkpoint strictly, move it to `device`."""
    card_path = Path(card_path)
    card = read_card(card_path)
    ckpt = card_path.parent / card.checkpoint
    if not ckpt.is_file():
        raise ModelLoadError(f"checkpoint {ckpt} named by {card_path} does not exist")
    checksum = sha256_file(ckpt)
    if card.sha256 is not None and card.sha256 != checksum:
        raise ModelLoadError(
            f"checkpoint {ckpt} has sha256 {checksum}, the card says {card.sha256}"
        )
    kwargs = dict(card.timm_kwargs)
    kwargs["num_classes"] = len(card.labels)
    if card.input_size is not None:
        kwargs.setdefault("img_size", card.input_size[1:])
    try:
        module = timm.create_model(card.timm_name, pretrained=False, **kwargs)
    except Exception as exc:  # timm raises several types for unknown names and bad kwargs
        raise ModelLoadError(f"timm cannot build {card.timm_name!r} with {kwargs}: {exc}") from exc
    try:
        module.load_state_dict(_read_state_dict(ckpt), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"checkpoint {ckpt} does not fit {card.timm_name}: {exc}") from None
    module.to(device)
    return from_module(
        module,
        card.labels,
        benign_index=card.benign_index,
        fill=card.fill,
        model_id=card.name,
        checksum=checksum,
        mean=card.mean,
        std=card.std,
        operating_point=card.operating_point,
    )


def resolve_device(name: str) -> torch.device:
    """Map the `device` setting to a torch device ("auto" picks CUDA when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} was asked for but CUDA is not available")
    return device
