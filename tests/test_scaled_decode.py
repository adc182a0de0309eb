"""Scaled JPEG decoding (the fast path) against a full decode (the slow, obvious one)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import simplejpeg

from producer.synthetic import SyntheticScanner
from shared.images import encode_image
from shared.schemas import FrameFields, utc_now
from shared.settings import load_settings
from tests.engine_fixtures import run_engine
from worker.engine.erasing import EngineInput
from worker.engine.model import load_model
from worker.engine.preprocess import to_model_input
from worker.service.bootstrap import policy_from_settings
from worker.service.imageio import DecodeError, decode_image
from worker.service.intake import IntakeLimits, Rejected, decode_entry

DEMO_CARD = "models/scanguard-demo/card.json"


def entry(data: bytes, frame_id: str) -> dict[bytes, bytes]:
    fields = FrameFields(
        frame_id=frame_id, scanner_id="lane-1", captured_at=utc_now(), content_type="image/jpeg"
    ).to_fields(data)
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


@pytest.fixture(scope="module")
def demo_frames():
    """The demo model and 60 held-out synthetic 1024x768 JPEG frames (source and target),
    with the model inputs of the serving path (scaled decode) and of a full decode."""
    model = load_model(DEMO_CARD)
    limits = IntakeLimits(32 * 2**20, 10**8, model.input_hw)
    served, full = [], []
    for domain in ("source", "target"):
        for index in range(30):
            image = SyntheticScanner(domain, 77, size=(1024, 768)).frame(index).image
            data = encode_image(image, quality=90)
            outcome = decode_entry(f"1-{index}", entry(data, f"f{index}"), 1, limits)
            assert not isinstance(outcome, Rejected)
            frame, engine_input = outcome
            assert frame.decoded is None, "a JPEG is decoded scaled, not at full size"
            served.append(engine_input.pixels)
            full.append(to_model_input(decode_image(data, "image/jpeg", 10**8), model.input_hw))
    return model, np.stack(served), np.stack(full)


def test_scaled_decode_gives_model_inputs_within_a_grey_level(demo_frames):
    """Model inputs from the scaled decode stay within 1.5 grey levels on average (8 at the 99th percentile) of a full decode's."""
    _, served, full = demo_frames
    diff = np.abs(served.astype(int) - full.astype(int))
    assert diff.mean() <= 1.5
    assert np.percentile(diff, 99) <= 8


def test_scaled_decode_leaves_the_demo_models_decisions_unchanged(demo_frames):
    """The shipped model at the worker's default policy reads the 60 frames alike from either
    input: first-forward probabilities within 0.05, and at most one decision in 60 differs
    (a frame whose probability sits on a threshold may cross it on a grey level)."""
    model, served, full = demo_frames
    policy = policy_from_settings(load_settings().erasing, model)
    ours = run_engine(model, policy, [EngineInput(i, x) for i, x in enumerate(served)])
    theirs = run_engine(model, policy, [EngineInput(i, x) for i, x in enumerate(full)])
    first = np.array([[ours[k].trace[0], theirs[k].trace[0]] for k in ours])
    assert np.abs(first[:, 0] - first[:, 1]).max() <= 0.05
    differ = [
        k
        for k, result in ours.items()
        if (result.verdict, result.classes) != (theirs[k].verdict, theirs[k].classes)
    ]
    assert len(differ) <= 1, differ


def test_a_frame_near_the_model_input_is_decoded_once_at_full_size():
    """A JPEG less than twice the oversampled input on an axis is decoded at full size and kept, never twice."""
    data = encode_image(SyntheticScanner("source", 1).frame(0).image, quality=90)  # 512x384
    outcome = decode_entry("1-0", entry(data, "f0"), 1, IntakeLimits(32 * 2**20, 10**8, (128, 160)))
    assert not isinstance(outcome, Rejected)
    frame, _ = outcome
    assert frame.decoded is not None and frame.decoded.shape == (384, 512, 3)


def test_truncated_and_corrupt_jpegs_are_still_refused():
    """A JPEG cut short, or with its entropy data damaged, is a dead letter on the scaled path too."""
    image = SyntheticScanner("source", 1, size=(1024, 768)).frame(0).image
    data = encode_image(image, quality=90)
    limits = IntakeLimits(32 * 2**20, 10**8, (128, 160))
    cut = decode_entry("1-0", entry(data[: len(data) // 2], "cut"), 1, limits)
    assert isinstance(cut, Rejected) and "truncated" in cut.reason
    damaged = data[: len(data) // 2] + data[-2:]  # ends with the end-of-image marker
    refused = decode_entry("1-1", entry(damaged, "damaged"), 1, limits)
    assert isinstance(refused, Rejected) and refused.reason.startswith("JPEG cannot be decoded")


def _opencv_rgb(data: bytes) -> np.ndarray | None:
    """The full-size decode as it was done before libjpeg-turbo was called directly."""
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        return None
    code = cv2.COLOR_GRAY2RGB if decoded.ndim == 2 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(decoded, code)


@pytest.mark.parametrize(
    ("shape", "params"),
    [
        ((384, 512, 3), [cv2.IMWRITE_JPEG_QUALITY, 90]),
        ((101, 77, 3), [cv2.IMWRITE_JPEG_QUALITY, 50]),
        ((96, 128), [cv2.IMWRITE_JPEG_QUALITY, 95]),
        ((200, 300, 3), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    ],
    ids=["colour", "odd-size", "grey", "progressive"],
)
def test_full_size_jpeg_decode_is_opencvs_pixel_for_pixel(shape, params):
    """The full-size JPEG decode gives exactly OpenCV's pixels, in RGB, for colour, odd sizes, grey and progressive files."""
    image = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = cv2.imencode(".jpg", image, params)[1].tobytes()
    decoded = decode_image(data, "image/jpeg", 10**8)
    assert decoded.shape == (*shape[:2], 3)
    np.testing.assert_array_equal(decoded, _opencv_rgb(data))


def test_damaged_jpegs_are_refused_at_full_size_too():
    """A 512x384 JPEG (decoded at full size) with damaged entropy data and its end marker
    intact is refused like a large one on the scaled path, not filled with grey."""
    data = encode_image(SyntheticScanner("source", 1).frame(0).image, quality=90)
    damaged = data[: len(data) // 2] + data[-2:]
    assert _opencv_rgb(damaged) is not None, "OpenCV alone would have filled the lost blocks"
    with pytest.raises(DecodeError, match=r"^JPEG cannot be decoded"):
        decode_image(damaged, "image/jpeg", 10**8)
    outcome = decode_entry(
        "1-0", entry(damaged, "f0"), 1, IntakeLimits(32 * 2**20, 10**8, (128, 160))
    )
    assert isinstance(outcome, Rejected) and outcome.reason.startswith("JPEG cannot be decoded")


def test_a_cmyk_jpeg_decodes_to_opencvs_rgb():
    """A CMYK JPEG decodes to the same RGB pixels as OpenCV gives."""
    ink = np.random.default_rng(5).integers(0, 256, (48, 64, 4), dtype=np.uint8)
    data = simplejpeg.encode_jpeg(ink, quality=95, colorspace="CMYK")
    decoded = decode_image(data, "image/jpeg", 10**8)
    assert decoded.shape == (48, 64, 3)
    np.testing.assert_array_equal(decoded, _opencv_rgb(data))
