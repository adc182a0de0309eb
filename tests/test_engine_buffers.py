"""The engine's active set lives in preallocated slot buffers."""

from __future__ import annotations

from tests.engine_fixtures import as_inputs, build_vit, structured_images
from worker.engine.decision import DecisionPolicy
from worker.engine.erasing import ErasingEngine


def test_admitting_and_stepping_reuse_the_same_buffers():
    """Admissions and steps write into the two preallocated buffers; no new active-set tensor is made."""
    model = build_vit()
    policy = DecisionPolicy(detect_th=0.9, reconsider_th=1e-4, max_iter=3)
    engine = ErasingEngine(model, policy, max_batch=6)
    buffers = {t.data_ptr() for t in (*engine._pixels_buf, *engine._cumulative_buf)}
    pending = as_inputs(structured_images(20))
    finished = 0
    try:
        while pending or engine.active:
            take = min(engine.free_slots, len(pending))
            engine.admit(pending[:take])
            del pending[:take]
            finished += len(engine.step())
            if engine.active:
                assert engine._pixels.data_ptr() in buffers
                assert engine._cumulative.data_ptr() in buffers
        assert {t.data_ptr() for t in (*engine._pixels_buf, *engine._cumulative_buf)} == buffers
    finally:
        engine.close()
    assert finished == 20
