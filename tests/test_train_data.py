"""Frame sets for training and evaluation, and the erasing augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from producer.synthetic import SyntheticScanner
from worker.engine.preprocess import to_model_input
from worker.training.data import cached_set, generate_set

torch = pytest.importorskip("torch")

from worker.training.data import erase_augment, spare_points  # noqa: E402 - needs torch


def test_parallel_generation_gives_the_same_set_as_one_process() -> None:
    """Splitting the index range over processes changes nothing, byte for byte."""
    one = generate_set("target", seed=9, per_class=4, input_hw=(64, 80), start=5)
    two = generate_set("target", seed=9, per_class=4, input_hw=(64, 80), start=5, workers=2)
    assert np.array_equal(one.images, two.images)
    assert np.array_equal(one.masks, two.masks)
    assert np.array_equal(one.labels, two.labels)
    assert one.indices.tolist() == two.indices.tolist() == list(range(5, 17))


def test_set_matches_the_scanner_frame_by_frame() -> None:
    """Entry k is scanner frame start + k, resized; threat masks are empty exactly on benign frames."""
    frames = generate_set("source", seed=4, per_class=2, input_hw=(64, 80), start=3)
    scanner = SyntheticScanner("source", seed=4)
    for k, index in enumerate(frames.indices):
        frame = scanner.frame(int(index))
        assert frames.labels[k] == frame.label
        assert np.array_equal(frames.images[k], to_model_input(frame.image, (64, 80)))
        assert frames.masks[k].any() == (frame.label != 0)


def test_cached_set_reads_back_what_it_wrote(tmp_path) -> None:
    first = cached_set(tmp_path, "source", 6, 2, (64, 80))
    assert len(list(tmp_path.glob("*.npz"))) == 1
    second = cached_set(tmp_path, "source", 6, 2, (64, 80))
    assert np.array_equal(first.images, second.images)
    assert np.array_equal(first.labels, second.labels)


def test_a_changed_generator_is_not_served_from_the_cache(tmp_path, monkeypatch) -> None:
    """The cache key carries a digest of the generator's code: new code, new frames."""
    import worker.training.data as data

    assert data.generator_fingerprint("source") == data.generator_fingerprint("target")
    assert data.generator_fingerprint("source") != data.generator_fingerprint("foreign")
    cached_set(tmp_path, "source", 6, 1, (64, 80))
    monkeypatch.setattr(data, "generator_fingerprint", lambda domain: "edited-generator")
    cached_set(tmp_path, "source", 6, 1, (64, 80))
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_erasing_augmentation_spares_its_point_and_never_brightens_with_dark_fill() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 64, 80, generator=gen) * 0.8 + 0.1
    keep_at = torch.tensor([[10.0, 20.0], [40.0, 60.0]] * 3)
    steps = torch.tensor([0, 1, 2, 3, 3, 1])
    out = erase_augment(images, keep_at, steps, torch.zeros(6), (4, 5), gen)

    assert torch.equal(out[0], images[0])  # zero steps: untouched
    assert (out <= images + 1e-6).all()
    assert (out[1:] < images[1:] - 1e-3).any()
    kept = out / images  # the share of each pixel that survived
    for b in range(1, 6):
        row, col = keep_at[b].long().tolist()
        # the Gaussian bump sits on the kept point, so it keeps more than the image does on average
        assert kept[b, :, row, col].min() > 0.5
        assert kept[b, :, row, col].mean() > kept[b].mean()


def test_spare_points_fall_on_the_threat() -> None:
    gen = torch.Generator().manual_seed(1)
    images = torch.ones(3, 3, 16, 16)
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[1, 2:4, 5:7] = True
    masks[2, 10, 12] = True
    labels = torch.tensor([0, 1, 2])
    points = spare_points(images, masks, labels, gen).long()
    for b in (1, 2):
        assert masks[b, points[b, 0], points[b, 1]]


def test_train_command_writes_a_card_the_worker_loads(tmp_path) -> None:
    """A tiny bf16 run with a weight average writes a checkpoint that loads strictly and
    records the recipe; the saved weights are the average, not the last step's."""
    from safetensors.torch import load_file

    from worker.engine.model import load_model
    from worker.training import train

    out = tmp_path / "model"
    args = [
        "--out",
        str(out),
        "--epochs",
        "2",
        "--train-data",
        "source:22",
        "--val-data",
        "source:4",
    ]
    args += ["--batch", "32", "--warmup-steps", "1", "--ema", "0.5", "--precision", "bf16"]
    args += ["--threads", "1", "--data-workers", "1", "--cache-dir", str(tmp_path / "cache")]
    trained: list[train.Trainer] = []
    original = train.Trainer.epoch

    def keep(self: train.Trainer, number: int, started: float) -> None:
        if not trained:
            trained.append(self)
        original(self, number, started)

    train.Trainer.epoch = keep  # type: ignore[method-assign]
    try:
        assert train.main(args) == 0
    finally:
        train.Trainer.epoch = original  # type: ignore[method-assign]

    card = json.loads((out / "card.json").read_text())
    recipe = card["training"]
    assert recipe["precision"] == "bf16" and recipe["optimiser"]["ema_decay"] == 0.5
    assert recipe["data"]["train_frames"] == 66 and len(recipe["validation"]) == 2
    assert recipe["command"].startswith("python -m worker.training.train --out ")
    model = load_model(out / "card.json")
    probs = torch.softmax(model.module(torch.rand(2, 3, *model.input_hw)), dim=-1)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2))
    saved = load_file(str(out / "model.safetensors"))
    last_step = trained[0].model.state_dict()
    assert not torch.equal(saved["head.weight"], last_step["head.weight"].cpu())


def test_guidance_loss_rewards_rollout_mass_on_the_threat() -> None:
    """The loss is −log of the rollout's share on threat patches; benign frames add nothing."""
    from worker.training.train import guidance_loss

    grid_hw = (2, 2)  # four patches, one [class] token: five tokens
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, :16, :16] = True  # the threat lies in patch 0 (top left)
    labels = torch.tensor([1, 1])

    def one_block(attend_to: int) -> list[torch.Tensor]:
        attn = torch.full((1, 5, 5), 0.2)
        attn[0, 0] = 0.0
        attn[0, 0, 1 + attend_to] = 1.0  # the [class] token looks at one patch only
        return [attn.expand(2, 5, 5).clone()]

    on = guidance_loss(one_block(0), masks, labels, 1, grid_hw)
    off = guidance_loss(one_block(3), masks, labels, 1, grid_hw)
    assert float(on) < float(off)
    # One block: row 0 of (A + I), renormalised, is [0.5, 0.5, 0, 0, 0]; all the patches'
    # share is on patch 0, so −log(1) = 0. Looking at patch 3 leaves 1e-6 (the clamp).
    assert float(on) == pytest.approx(0.0, abs=1e-6)
    assert float(off) == pytest.approx(-np.log(1e-6), rel=1e-4)
    benign = guidance_loss(one_block(3), masks, torch.tensor([0, 0]), 1, grid_hw)
    assert float(benign) == 0.0


def test_train_refuses_the_foreign_generator(tmp_path) -> None:
    """The independent generator is for evaluation only; training on it stops with a reason."""
    from worker.training import train

    with pytest.raises(SystemExit, match="foreign generator is kept out of training"):
        train.main(["--out", str(tmp_path), "--train-data", "foreign:2", "--epochs", "1"])
