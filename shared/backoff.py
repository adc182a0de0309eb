"""Capped exponential back-off with full jitter, for loops that wait out a Redis outage."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from `base_s` up to `max_s`, each drawn at random below its cap.

    Full jitter (a uniform draw between zero and the cap) keeps a fleet of workers
    that lost the same Redis from reconnecting in lock-step.
    """

    def __init__(self, base_s: float = 0.05, max_s: float = 10.0, rng: random.Random | None = None):
        if base_s <= 0 or max_s < base_s:
            raise ValueError(f"need 0 < base_s <= max_s, got base_s={base_s}, max_s={max_s}")
        self.base_s = base_s
        self.max_s = max_s
        self.attempts = 0
        self._rng = rng or random.Random()

    def cap(self) -> float:
        """The largest delay the next call may return."""
        # The exponent is bounded so the float never overflows on a long outage.
        return min(self.max_s, self.base_s * 2 ** min(self.attempts, 62))

    def next_delay(self) -> float:
        """Return the next delay in seconds and count one more failed attempt."""
        cap = self.cap()
        self.attempts += 1
        # Never zero: a busy loop against a refusing server helps nobody.
        return max(self.base_s / 2, self._rng.uniform(0.0, cap))

    def reset(self) -> None:
        """Start again from `base_s` (call after a success)."""
        self.attempts = 0
