"""The iterative-erasing engine: an active set of frames, one forward per step.

Frames join between steps (`admit`) and leave when decided (`step` returns them), so
a batch never waits for its slowest frame: continuous batching, as LLM servers do
with tokens. Each forward classifies the current image of every active frame and
also yields the attention that erases it for the next step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shared.vocab import Precision, check_choice
from worker.engine.attention import (
    AttentionRecorder,
    attention_mask,
    forward_with_attention,
    resize_mask,
)
from worker.engine.decision import DecisionPolicy, Verdict, decide_after_forward
from worker.engine.model import LoadedModel

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class EngineInput:
    """A frame for the engine: RGB uint8 pixels already at the model's input size."""

    key: Hashable
    pixels: np.ndarray  # (rows, cols, 3) uint8, RGB


@dataclass(frozen=True, eq=False)
class FrameResult:
    """Everything the engine concluded about one frame."""

    key: Hashable
    verdict: Verdict
    classes: tuple[int, ...]  # detected threat classes
    probabilities: tuple[float, ...]  # of the last forward
    trace: tuple[tuple[float, ...], ...]  # probabilities per forward; [0] is the original
    iterations: int  # erasing steps taken
    forwards: int  # forward passes spent on this frame
    mask_grid: np.ndarray  # (grid rows, grid cols) fp32 in (0, 1]: last forward's attention
    erase_mask: np.ndarray  # (rows, cols) fp32: cumulative multiplier, 1 = pixel untouched


@dataclass
class _Slot:
    key: Hashable
    trace: list[tuple[float, ...]]


class ErasingEngine:
    """Continuous-batching iterative erasing over one model on one device."""

    def __init__(
        self,
        model: LoadedModel,
        policy: DecisionPolicy,
        *,
        max_batch: int = 32,
        precision: Precision = "fp32",
    ) -> None:
        check_choice("precision", precision, Precision)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        self.model = model
        self.policy = policy
        self.max_batch = max_batch
        self.precision = precision
        self.device = model.device
        self._recorder = AttentionRecorder(model.module, policy.head_fusion)
        self._threats = model.threat_indices
        rows, cols = model.input_hw
        self._pixels = torch.empty(0, 3, rows, cols, device=self.device)  # current x_k in [0, 1]
        self._cumulative = torch.empty(0, 1, rows, cols, device=self.device)
        self._slots: list[_Slot] = []

    @property
    def active(self) -> int:
        return len(self._slots)

    @property
    def free_slots(self) -> int:
        return self.max_batch - len(self._slots)

    def admit(self, frames: Sequence[EngineInput]) -> None:
        """Add frames to the active set; they take part from the next `step`."""
        if not frames:
            return
        if len(frames) > self.free_slots:
            raise ValueError(f"{len(frames)} frames offered, {self.free_slots} slots free")
        rows, cols = self.model.input_hw
        for frame in frames:
            if frame.pixels.shape != (rows, cols, 3) or frame.pixels.dtype != np.uint8:
                raise ValueError(
                    f"frame {frame.key!r}: expected ({rows}, {cols}, 3) uint8, got "
                    f"{frame.pixels.shape} {frame.pixels.dtype}"
                )
        host = torch.from_numpy(np.stack([f.pixels for f in frames]))  # (B, rows, cols, 3) uint8
        if self.device.type == "cuda":
            host = host.pin_memory()
        with torch.inference_mode():
            batch = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
            self._pixels = torch.cat([self._pixels, batch])
            self._cumulative = torch.cat(
                [self._cumulative, torch.ones(len(frames), 1, rows, cols, device=self.device)]
            )
        self._slots.extend(_Slot(f.key, []) for f in frames)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def step(self) -> list[FrameResult]:
        """One forward over every active frame; return the frames it decided."""
        if not self._slots:
            return []
        model = self.model
        with torch.inference_mode():
            with self._autocast():
                logits, maps = forward_with_attention(model, self._recorder, self._pixels)
            probs = torch.softmax(logits.float(), dim=-1)  # (A, C)
            grid = attention_mask(maps, model.num_prefix_tokens, model.grid_hw)  # (A, gh, gw)
            probs_host = probs.cpu().numpy()  # the one sync per step: decisions need it

            finished: list[tuple[int, Verdict, tuple[int, ...]]] = []
            keep: list[int] = []
            for index, slot in enumerate(self._slots):
                slot.trace.append(tuple(float(p) for p in probs_host[index]))
                outcome = decide_after_forward(
                    probs_host[index],
                    len(slot.trace) - 1,
                    self._threats,
                    model.benign_index,
                    self.policy,
                )
                if outcome is None:
                    keep.append(index)
                else:
                    finished.append((index, outcome.verdict, outcome.classes))

            results = self._collect(finished, grid, probs_host)
            self._advance(keep, grid)
        return results

    def _collect(
        self,
        finished: list[tuple[int, Verdict, tuple[int, ...]]],
        grid: torch.Tensor,
        probs_host: np.ndarray,
    ) -> list[FrameResult]:
        if not finished:
            return []
        rows = torch.tensor([index for index, _, _ in finished], device=self.device)
        grids = grid.index_select(0, rows).cpu().numpy()
        erase = self._cumulative.index_select(0, rows)[:, 0].cpu().numpy()
        results = []
        for out, (index, verdict, classes) in enumerate(finished):
            slot = self._slots[index]
            results.append(
                FrameResult(
                    key=slot.key,
                    verdict=verdict,
                    classes=classes,
                    probabilities=slot.trace[-1],
                    trace=tuple(slot.trace),
                    iterations=len(slot.trace) - 1,
                    forwards=len(slot.trace),
                    mask_grid=grids[out],
                    erase_mask=erase[out],
                )
            )
        return results

    def _advance(self, keep: list[int], grid: torch.Tensor) -> None:
        """Erase the frames that go on: x ← m·x + (1−m)·fill, and drop the rest."""
        if len(keep) == len(self._slots):
            rows = None
        else:
            rows = torch.tensor(keep, device=self.device, dtype=torch.long)
            self._slots = [self._slots[i] for i in keep]
        if not keep:
            self._pixels = self._pixels[:0]
            self._cumulative = self._cumulative[:0]
            return
        pixels, cumulative, grid_kept = self._pixels, self._cumulative, grid
        if rows is not None:
            pixels = pixels.index_select(0, rows)
            cumulative = cumulative.index_select(0, rows)
            grid_kept = grid.index_select(0, rows)
        mask = resize_mask(grid_kept, self.model.input_hw)  # (K, 1, rows, cols)
        fill = self.policy.fill
        if fill == 0.0:
            self._pixels = pixels * mask
        else:
            self._pixels = pixels * mask + (1.0 - mask) * fill
        self._cumulative = cumulative * mask

    def run(self, frames: Sequence[EngineInput]) -> list[FrameResult]:
        """Decide `frames` to the end, refilling the active set between steps.

        Results come back in the order the frames finished.
        """
        pending = list(frames)
        results: list[FrameResult] = []
        while pending or self._slots:
            take = min(self.free_slots, len(pending))
            self.admit(pending[:take])
            del pending[:take]
            results.extend(self.step())
        return results

    def close(self) -> None:
        self._recorder.close()
