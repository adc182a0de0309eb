"""Training and serving feed the model the same pixels for the same scanner frame.

Training path: `worker.training.data.generate_set` renders scanner frames and resizes
them to the model input. Serving path: the same frame, encoded losslessly as PNG into a
stream entry (as Redis returns it, bytes keys and values), through the worker's intake
(`decode_entry`). Both must give byte-identical arrays, whether the input is smaller than
the frame (area interpolation), larger (bilinear), mixed, or the same size.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from producer.synthetic import DEFAULT_SIZE, SyntheticScanner
from shared.images import PNG, encode_image
from shared.schemas import FrameFields
from shared.settings import WorkerSettings
from worker.service.intake import IntakeLimits, Rejected, decode_entry
from worker.training.data import generate_set

SEED = 7
START = 4
PER_CLASS = 2  # six frames: two of each class

# name: (domain, frame_size as (width, height), input_hw as (rows, cols))
CASES = {
    "shrinking default-size frames": ("source", DEFAULT_SIZE, (96, 128)),
    "shrinking dense target frames": ("target", DEFAULT_SIZE, (128, 160)),
    "enlarging small frames": ("target", (80, 64), (96, 128)),
    "shrinking one side, enlarging the other": ("source", (160, 64), (96, 128)),
    "frames already at the input size": ("source", (128, 96), (96, 128)),
}


def stream_entry(image: np.ndarray, frame_id: str) -> dict[bytes, bytes]:
    """A frames-stream entry holding `image` as PNG, keyed and valued in bytes as redis-py reads it."""
    fields = FrameFields(
        frame_id=frame_id,
        scanner_id="lane-1",
        captured_at=datetime.now(timezone.utc),
        content_type=PNG,
    ).to_fields(encode_image(image, PNG))
    return {
        name.encode(): value if isinstance(value, bytes) else value.encode()
        for name, value in fields.items()
    }


@pytest.mark.parametrize(("domain", "frame_size", "input_hw"), CASES.values(), ids=CASES.keys())
def test_training_and_serving_inputs_are_byte_identical(
    domain: str, frame_size: tuple[int, int], input_hw: tuple[int, int]
) -> None:
    """A generated training frame and the same scanner frame decoded by the worker's intake are the same uint8 array."""
    frames = generate_set(domain, SEED, PER_CLASS, input_hw, frame_size=frame_size, start=START)
    scanner = SyntheticScanner(domain, seed=SEED, size=frame_size)
    worker = WorkerSettings()
    limits = IntakeLimits(worker.max_frame_bytes, worker.max_pixels, input_hw)

    for k, index in enumerate(frames.indices):
        frame = scanner.frame(int(index))
        assert frame.image.shape == (frame_size[1], frame_size[0], 3)
        outcome = decode_entry(f"1-{k}", stream_entry(frame.image, f"frame-{index}"), 1, limits)
        assert not isinstance(outcome, Rejected), outcome.reason
        decoded, engine_input = outcome
        assert np.array_equal(decoded.full_image(), frame.image), "PNG must be lossless"

        served = engine_input.pixels
        trained = frames.images[k]
        assert served.dtype == trained.dtype == np.uint8
        assert served.shape == trained.shape == (*input_hw, 3)
        assert np.array_equal(served, trained), f"frame {index}: serving and training differ"
    assert len({image.tobytes() for image in frames.images}) == len(frames), "frames repeat"
