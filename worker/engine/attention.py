"""Capture per-block attention from a timm ViT during its forward, and roll it out.

timm's `Attention` computes attention explicitly when its `fused_attn` flag is off;
the probabilities then pass through `attn_drop`, where a forward hook can read them.
The flag is set per module, on the model we own, never through timm's process-wide
switch, so other models in the process keep their fused kernels.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from shared.vocab import HeadFusion, MaskShape, check_choice
from worker.engine.model import LoadedModel


class AttentionRecorder:
    """Records every block's head-fused attention, (B, N, N) in fp32, per forward.

    Only one fused (B, N, N) map per block is kept: the (B, heads, N, N) tensor is
    reduced inside the hook, while the block still holds it. The hooks record only
    inside `recording()` on the thread that entered it, so several recorders (engines)
    may share one model, and other forwards of the model leave them untouched. The
    model's attention stays explicit after `close()`; it gives the same numbers.
    """

    def __init__(self, module: nn.Module, head_fusion: HeadFusion = "mean") -> None:
        self.head_fusion = check_choice("head_fusion", head_fusion, HeadFusion)
        self.maps: list[torch.Tensor] = []
        self._recording_thread: int | None = None
        self._handles = []
        self._blocks = list(module.blocks)  # type: ignore[arg-type]
        for block in self._blocks:
            block.attn.fused_attn = False
            self._handles.append(block.attn.attn_drop.register_forward_hook(self._hook))

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record the attention of forwards run inside this block (on this thread)."""
        self.maps = []
        self._recording_thread = threading.get_ident()
        try:
            yield
        finally:
            self._recording_thread = None

    def _hook(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if self._recording_thread != threading.get_ident():
            return
        attn = output.float()  # (B, heads, N, N); rollout stays in fp32 under autocast
        if self.head_fusion == "mean":
            fused = attn.mean(dim=1)
        elif self.head_fusion == "max":
            fused = attn.amax(dim=1)
        else:
            fused = attn.amin(dim=1)
        self.maps.append(fused)  # (B, N, N)

    def take(self) -> list[torch.Tensor]:
        """Return the maps of the last forward (block order) and forget them."""
        maps, self.maps = self.maps, []
        if len(maps) != len(self._blocks):
            raise RuntimeError(
                f"captured {len(maps)} attention maps for {len(self._blocks)} blocks; "
                "the model's attention did not run through attn_drop"
            )
        return maps

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def rollout_class_row(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Row 0 of the attention rollout J_L = Â_L ··· Â_1, for every image.

    Â_l = (Ā_l + I) with rows renormalised to sum 1. Only the [class] row is needed,
    so the product is taken from the top as vector-matrix products: e_0ᵀ Â_L ··· Â_1.

    Args:
        maps: per-block head-fused attention, each (B, N, N), lowest block first.

    Returns:
        (B, N) fp32: how much the [class] token's output draws on each input token.
    """
    top = maps[-1]
    batch, tokens, _ = top.shape
    vec = torch.zeros(batch, 1, tokens, device=top.device, dtype=torch.float32)
    vec[:, 0, 0] = 1.0  # e_0: the [class] token
    eye = torch.eye(tokens, device=top.device, dtype=torch.float32)
    for attn in reversed(maps):
        residual = attn.float() + eye  # (B, N, N)
        residual = residual / residual.sum(dim=-1, keepdim=True)
        vec = torch.bmm(vec, residual)  # (B, 1, N)
    return vec[:, 0, :]


def attention_mask(
    maps: Sequence[torch.Tensor],
    num_prefix_tokens: int,
    grid_hw: tuple[int, int],
    shape: MaskShape = "rollout",
    param: float = 1.0,
) -> torch.Tensor:
    """The erasing mask: the [class] rollout over patches, on the grid, max-normalised,
    then shaped by `shape_mask` (the default, "rollout", leaves it as the seed has it).

    Returns:
        (B, rows, cols) fp32 in (0, 1]; the largest weight of each image is exactly 1.
    """
    row = rollout_class_row(maps)[:, num_prefix_tokens:]  # (B, patches)
    rows, cols = grid_hw
    if row.shape[1] != rows * cols:
        raise ValueError(f"{row.shape[1]} patch tokens do not fill a {rows}x{cols} grid")
    grid = row.reshape(-1, rows, cols)
    grid = shape_mask(grid / grid.amax(dim=(1, 2), keepdim=True), shape, param)
    # Attention weights are softmax outputs and so positive, but a min-fused map can
    # underflow; keep the mask strictly positive so no pixel is zeroed by rounding alone.
    return grid.clamp_min(torch.finfo(torch.float32).tiny)


def shape_mask(grid: torch.Tensor, shape: MaskShape, param: float) -> torch.Tensor:
    """Reshape max-normalised (B, rows, cols) masks to keep more of the peak, erase more of the rest.

    - "rollout": unchanged, the seed's mask (`param` unused).
    - "power": m ** param; param > 1 darkens everything but the peak more per step.
    - "top_k": the top `param` share of patches (0 < param < 1, at least one patch) kept
      whole (1), the rest kept at m², so a step erases the periphery harder.
    - "peak": a square of radius `param` patches around each image's peak kept whole,
      the rest as the seed has it; keeps the threat when the peak sits on its edge.

    Every shape keeps each image's peak at exactly 1 and all values in (0, 1].
    """
    check_choice("mask shape", shape, MaskShape)
    if shape == "rollout":
        return grid
    if shape == "power":
        return grid.pow(param)
    batch, rows, cols = grid.shape
    flat = grid.reshape(batch, -1)
    if shape == "top_k":
        keep = max(1, round(param * flat.shape[1]))
        cut = flat.topk(keep, dim=1).values[:, -1:]  # (B, 1): the smallest kept value
        return torch.where(flat >= cut, torch.ones_like(flat), flat * flat).reshape(grid.shape)
    radius = int(param)
    peak = flat.argmax(dim=1)
    peak_r, peak_c = (peak // cols).view(-1, 1, 1), (peak % cols).view(-1, 1, 1)
    r = torch.arange(rows, device=grid.device).view(1, -1, 1)
    c = torch.arange(cols, device=grid.device).view(1, 1, -1)
    near = ((r - peak_r).abs() <= radius) & ((c - peak_c).abs() <= radius)
    return torch.where(near, torch.ones_like(grid), grid)


def resize_mask(grid: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, rows, cols) masks to (B, 1, H, W) (half-pixel centres, like cv2)."""
    return F.interpolate(grid[:, None], size=size_hw, mode="bilinear", align_corners=False)


def forward_with_attention(
    model: LoadedModel, recorder: AttentionRecorder, pixels: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward of un-normalised pixels: (logits (B, C), per-block attention maps)."""
    mean = torch.tensor(model.mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=pixels.device).view(1, 3, 1, 1)
    with recorder.recording():
        logits = model.module((pixels - mean) / std)
    return logits, recorder.take()
