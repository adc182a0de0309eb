"""A plain transcription of the seed, for tests and benchmarks only.

One image at a time, two forwards per iteration (one for the attention of the current
image, one to classify the erased image), the full recursive rollout product in
numpy, and cv2 for the resize: slow on purpose, and independent of the engine's
attention hooks, so the engine can be checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from worker.engine.decision import DecisionPolicy, Verdict
from worker.engine.model import LoadedModel


@dataclass(frozen=True)
class ReferenceResult:
    verdict: Verdict
    classes: tuple[int, ...]
    iterations: int
    forwards: int
    trace: tuple[tuple[float, ...], ...]  # probabilities of every image it classified


def vit_attention_forward(model: LoadedModel, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the ViT block by block on one (rows, cols, 3) float image in [0, 1].

    Returns:
        probabilities (C,) and attention (L, heads, N, N), as the seed's encoder returns them.
    """
    vit: Any = model.module  # timm's VisionTransformer; its submodules are used by name
    mean = np.asarray(model.mean, dtype=np.float32)
    std = np.asarray(model.std, dtype=np.float32)
    chw = ((image - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
    device = model.device
    attentions = []
    with torch.inference_mode():
        x = vit.patch_embed(torch.from_numpy(chw).to(device))
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
        for blk in vit.blocks:
            attn_mod = blk.attn
            h = blk.norm1(x)
            batch, tokens, _ = h.shape
            qkv = attn_mod.qkv(h).reshape(batch, tokens, 3, attn_mod.num_heads, attn_mod.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            q, k = attn_mod.q_norm(q), attn_mod.k_norm(k)
            attn = ((q * attn_mod.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            attentions.append(attn[0].float().cpu().numpy())
            out = (attn @ v).transpose(1, 2).reshape(batch, tokens, -1)
            x = x + blk.ls1(attn_mod.proj(attn_mod.norm(out)))
            x = x + blk.ls2(blk.mlp(blk.norm2(x)))
        logits = vit.forward_head(vit.norm(x))
    probs = torch.softmax(logits.float(), dim=-1)[0].cpu().numpy()
    return probs, np.stack(attentions)


def numpy_rollout_mask(
    attention: np.ndarray,
    num_prefix_tokens: int,
    grid_hw: tuple[int, int],
    head_fusion: str = "mean",
) -> np.ndarray:
    """The seed's rollout: fuse heads, add I, renormalise, multiply all layers, take [class]."""
    fuse: Any = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion]
    att = fuse(attention.astype(np.float64), axis=1)  # (L, N, N)
    aug = att + np.eye(att.shape[-1])
    aug = aug / aug.sum(axis=-1, keepdims=True)
    joint = aug[0]
    for layer in aug[1:]:
        joint = layer @ joint
    mask = joint[0, num_prefix_tokens:].reshape(grid_hw)
    return mask / mask.max()


def numpy_shape_mask(mask: np.ndarray, shape: str, param: float) -> np.ndarray:
    """The mask shapes of `attention.shape_mask`, written again per image in numpy."""
    if shape == "rollout":
        return mask
    if shape == "power":
        return mask**param
    if shape == "top_k":
        keep = max(1, round(param * mask.size))
        cut = np.sort(mask, axis=None)[::-1][keep - 1]
        return np.where(mask >= cut, 1.0, mask * mask)
    if shape == "peak":
        out = mask.copy()
        row, col = np.unravel_index(int(np.argmax(mask)), mask.shape)
        radius = int(param)
        out[max(row - radius, 0) : row + radius + 1, max(col - radius, 0) : col + radius + 1] = 1.0
        return out
    raise ValueError(f"unknown mask shape {shape!r}")


def erase(image: np.ndarray, mask: np.ndarray, fill: float) -> np.ndarray:
    """Resize the grid mask to the image with cv2 and darken (or fill) what it leaves out."""
    rows, cols = image.shape[:2]
    full = cv2.resize(mask.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
    full = full[..., None]
    return (image * full + (1.0 - full) * fill).astype(np.float32)


def reference_predict(
    model: LoadedModel, pixels: np.ndarray, policy: DecisionPolicy
) -> ReferenceResult:
    """The seed's iterative erasing on one RGB uint8 image at the model's input size."""
    threats = list(model.threat_indices)
    x = pixels.astype(np.float32) / 255.0
    trace: list[tuple[float, ...]] = []
    forwards = 0
    probs = None

    def classify(image: np.ndarray) -> np.ndarray:
        nonlocal forwards
        forwards += 1
        result, _ = vit_attention_forward(model, image)
        trace.append(tuple(float(p) for p in result))
        return result

    def rules(p: np.ndarray) -> tuple[Verdict, tuple[int, ...]] | None:
        if all(p[i] < policy.reconsider_th for i in threats):
            return Verdict.CLEAR, ()
        found = tuple(i for i in threats if p[i] > policy.detect_th)
        return (Verdict.THREAT, found) if found else None

    if policy.judge_original:
        probs = classify(x)
        decided = rules(probs)
        if decided:
            return ReferenceResult(decided[0], decided[1], 0, forwards, tuple(trace))

    for iteration in range(1, policy.max_iter + 1):
        forwards += 1
        _, attention = vit_attention_forward(model, x)
        mask = numpy_rollout_mask(
            attention, model.num_prefix_tokens, model.grid_hw, policy.head_fusion
        )
        mask = numpy_shape_mask(mask, policy.mask_shape, policy.mask_param)
        x = erase(x, mask, policy.fill)
        probs = classify(x)
        decided = rules(probs)
        if decided:
            return ReferenceResult(decided[0], decided[1], iteration, forwards, tuple(trace))

    if probs is None:
        probs = classify(x)
    classes: tuple[int, ...] = ()
    if policy.on_exhausted == "clear":
        verdict = Verdict.CLEAR
    elif policy.on_exhausted == "argmax":
        top = int(np.argmax(probs))
        if top == model.benign_index:
            verdict = Verdict.CLEAR
        else:
            verdict, classes = Verdict.THREAT, (top,)
    else:
        verdict = Verdict.UNDETERMINED
    return ReferenceResult(verdict, classes, policy.max_iter, forwards, tuple(trace))
