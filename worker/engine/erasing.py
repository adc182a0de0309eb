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
        # The active set lives in the first `active` rows of preallocated slot buffers:
        # x_k in [0, 1] and the cumulative erase multiplier. Two of each, so dropping
        # finished frames is a gather into the other buffer, never an allocation.
        self._pixels_buf = [
            torch.empty(max_batch, 3, rows, cols, device=self.device) for _ in range(2)
        ]
        self._cumulative_buf = [
            torch.empty(max_batch, 1, rows, cols, device=self.device) for _ in range(2)
        ]
        self._current = 0
        # Frames arrive here from the host; pinned on CUDA so the copy is asynchronous.
        self._staging = torch.empty(
            max_batch, rows, cols, 3, dtype=torch.uint8, pin_memory=self.device.type == "cuda"
        )
        self._slots: list[_Slot] = []
        # Since construction: steps run and frames forwarded (their ratio is the batch fill).
        self.steps = 0
        self.frame_forwards = 0

    @property
    def _pixels(self) -> torch.Tensor:
        return self._pixels_buf[self._current][: len(self._slots)]

    @property
    def _cumulative(self) -> torch.Tensor:
        return self._cumulative_buf[self._current][: len(self._slots)]

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
        start, count = len(self._slots), len(frames)
        staging = self._staging.numpy()
        for offset, frame in enumerate(frames):
            staging[offset] = frame.pixels
        with torch.inference_mode():
            rows_in = slice(start, start + count)
            # The step's probability copy to the host syncs the device before the next
            # admission, so a staging row is never overwritten while a copy reads it.
            pixels = self._pixels_buf[self._current][rows_in]
            pixels.copy_(
                self._staging[:count].to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            )
            pixels.div_(255.0)
            self._cumulative_buf[self._current][rows_in].fill_(1.0)
        self._slots.extend(_Slot(f.key, []) for f in frames)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def step(self) -> list[FrameResult]:
        """One forward over every active frame; return the frames it decided."""
        if not self._slots:
            return []
        self.steps += 1
        self.frame_forwards += len(self._slots)
        model = self.model
        with torch.inference_mode():
            with self._autocast():
                logits, maps = forward_with_attention(model, self._recorder, self._pixels)
            probs = torch.softmax(logits.float(), dim=-1)  # (A, C)
            grid = attention_mask(
                maps,
                model.num_prefix_tokens,
                model.grid_hw,
                self.policy.mask_shape,
                self.policy.mask_param,
            )  # (A, gh, gw)
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
        if len(keep) < len(self._slots):
            # Gather the frames that go on into the other buffer's first rows.
            rows = torch.tensor(keep, device=self.device, dtype=torch.long)
            other = 1 - self._current
            count = len(keep)
            torch.index_select(self._pixels, 0, rows, out=self._pixels_buf[other][:count])
            torch.index_select(self._cumulative, 0, rows, out=self._cumulative_buf[other][:count])
            grid = grid.index_select(0, rows)
            self._slots = [self._slots[i] for i in keep]
            self._current = other
        if not keep:
            return
        mask = resize_mask(grid, self.model.input_hw)  # (K, 1, rows, cols)
        pixels = self._pixels
        pixels.mul_(mask)
        if self.policy.fill != 0.0:
            pixels.add_((1.0 - mask) * self.policy.fill)
        self._cumulative.mul_(mask)

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
