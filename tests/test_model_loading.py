"""Loading a model card and its checkpoint, and the errors that say what is wrong."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from worker.engine.model import ModelLoadError, from_module, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY_KWARGS = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}
LABELS = ["benign", "gun", "knife"]


def tiny_state_dict(num_classes: int = 3, seed: int = 0, **overrides) -> dict[str, torch.Tensor]:
    """Weights of a one-block ViT built from `TINY_KWARGS` (with `overrides`)."""
    torch.manual_seed(seed)
    module = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=num_classes,
        **{**TINY_KWARGS, **overrides},
    )
    return {
        name: tensor.detach().clone().contiguous() for name, tensor in module.state_dict().items()
    }


@pytest.fixture
def write_model(tmp_path: Path):
    """Factory fixture: write a checkpoint and a card into tmp_path; return the card path.

    `fmt` picks safetensors or pth, `card` overrides card fields (None removes one),
    `state` replaces the saved weights.
    """

    def write(
        fmt: str = "safetensors",
        *,
        state: dict[str, torch.Tensor] | None = None,
        card: dict | None = None,
        checksum: bool = True,
    ) -> Path:
        weights = state if state is not None else tiny_state_dict()
        checkpoint = tmp_path / f"tiny.{fmt}"
        if fmt == "safetensors":
            save_file(weights, str(checkpoint))
        else:
            torch.save(weights, checkpoint)
        fields = {
            "name": "tiny-vit-test",
            "timm_name": "vit_tiny_patch16_224",
            "timm_kwargs": dict(TINY_KWARGS),
            "checkpoint": checkpoint.name,
            "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest() if checksum else None,
            "labels": LABELS,
        }
        for key, value in (card or {}).items():
            if value is None:
                fields.pop(key, None)
            else:
                fields[key] = value
        card_path = tmp_path / "card.json"
        card_path.write_text(json.dumps(fields))
        return card_path

    return write


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_checkpoint_loads_with_card_metadata_and_its_exact_weights(write_model, fmt):
    """A .safetensors or .pth checkpoint loads strictly, with the card's labels, id and checksum."""
    state = tiny_state_dict(seed=4)
    card_path = write_model(fmt, state=state)
    model = load_model(card_path)
    checkpoint = card_path.parent / f"tiny.{fmt}"
    assert model.labels == tuple(LABELS)
    assert model.model_id == "tiny-vit-test"
    assert model.checksum == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert model.input_hw == (32, 32)
    assert model.grid_hw == (4, 4)
    assert model.num_prefix_tokens == 1
    assert model.threat_indices == (1, 2)
    assert model.device == torch.device("cpu")
    assert not model.module.training
    loaded = model.module.state_dict()
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def test_pth_checkpoint_nested_under_state_dict_loads(tmp_path, write_model):
    """A .pth file holding {"state_dict": ...} loads like a bare state dict."""
    card_path = write_model("pth", checksum=False)
    state = tiny_state_dict(seed=2)
    torch.save({"state_dict": state}, tmp_path / "tiny.pth")
    model = load_model(card_path)
    assert torch.equal(model.module.state_dict()["head.weight"], state["head.weight"])


def test_missing_card_is_named(tmp_path):
    """A card path that does not exist raises ModelLoadError saying so."""
    with pytest.raises(ModelLoadError, match=r"model card .*nowhere\.json does not exist"):
        load_model(tmp_path / "nowhere.json")


def test_invalid_json_card_is_named(tmp_path):
    """A card that is not JSON raises ModelLoadError saying it is not valid JSON."""
    card_path = tmp_path / "card.json"
    card_path.write_text("{'name': 'single quotes are not JSON',")
    with pytest.raises(ModelLoadError, match="is not valid JSON"):
        load_model(card_path)


@pytest.mark.parametrize("field", ["labels", "timm_name", "checkpoint", "name"])
def test_card_missing_a_field_names_the_field(write_model, field):
    """A card without a required field raises ModelLoadError naming that field."""
    card_path = write_model(card={field: None})
    with pytest.raises(ModelLoadError, match=rf"(?s)is invalid.*{field}"):
        load_model(card_path)


def test_card_with_benign_index_outside_labels_is_refused(write_model):
    """A benign_index that is not a label position raises ModelLoadError naming it."""
    card_path = write_model(card={"benign_index": 3})
    with pytest.raises(ModelLoadError, match="benign_index 3 is outside labels"):
        load_model(card_path)


def test_missing_checkpoint_is_named(write_model):
    """A card whose checkpoint file is absent raises ModelLoadError naming the file."""
    card_path = write_model(card={"checkpoint": "gone.safetensors"})
    with pytest.raises(ModelLoadError, match=r"checkpoint .*gone\.safetensors .*does not exist"):
        load_model(card_path)


def test_wrong_sha256_is_refused(write_model):
    """A checkpoint whose sha256 differs from the card's raises ModelLoadError quoting both."""
    card_path = write_model(card={"sha256": "0" * 64})
    with pytest.raises(ModelLoadError, match=r"has sha256 [0-9a-f]{64}, the card says 0{64}"):
        load_model(card_path)


def test_checkpoint_with_other_class_count_fails_instead_of_random_head(write_model):
    """A 4-class checkpoint under a 3-label card fails the strict load, naming the head."""
    card_path = write_model(state=tiny_state_dict(num_classes=4))
    with pytest.raises(ModelLoadError, match=r"(?s)does not fit vit_tiny_patch16_224.*head"):
        load_model(card_path)


def test_checkpoint_with_missing_weights_fails(write_model):
    """A checkpoint lacking a block's weights fails the strict load instead of keeping random ones."""
    state = tiny_state_dict()
    del state["blocks.0.attn.qkv.weight"]
    card_path = write_model(state=state)
    with pytest.raises(ModelLoadError, match=r"(?s)does not fit.*blocks\.0\.attn\.qkv\.weight"):
        load_model(card_path)


def test_model_without_class_token_is_refused(write_model):
    """A ViT built with class_token=False and average pooling is refused: no [class] token to roll out."""
    overrides = {"class_token": False, "global_pool": "avg"}
    card_path = write_model(
        state=tiny_state_dict(**overrides), card={"timm_kwargs": {**TINY_KWARGS, **overrides}}
    )
    with pytest.raises(ModelLoadError, match=r"no \[class\] token"):
        load_model(card_path)


def test_model_pooling_by_average_despite_class_token_is_refused(write_model):
    """A ViT with a class token but global_pool='avg' is refused: the class token does not predict."""
    overrides = {"global_pool": "avg"}
    card_path = write_model(
        state=tiny_state_dict(**overrides), card={"timm_kwargs": {**TINY_KWARGS, **overrides}}
    )
    with pytest.raises(ModelLoadError, match="global_pool='avg'"):
        load_model(card_path)


def test_unknown_timm_name_is_named(write_model):
    """A timm name timm does not know raises ModelLoadError quoting the name."""
    card_path = write_model(card={"timm_name": "vit_does_not_exist_999"})
    with pytest.raises(ModelLoadError, match="timm cannot build 'vit_does_not_exist_999'"):
        load_model(card_path)


def test_unsupported_checkpoint_suffix_is_named(tmp_path, write_model):
    """A checkpoint that is neither .safetensors nor .pth raises ModelLoadError saying which are accepted."""
    card_path = write_model("pth", checksum=False)
    (tmp_path / "tiny.pth").rename(tmp_path / "tiny.bin")
    fields = json.loads(card_path.read_text())
    fields["checkpoint"] = "tiny.bin"
    card_path.write_text(json.dumps(fields))
    with pytest.raises(ModelLoadError, match=r"must be \.safetensors or \.pth"):
        load_model(card_path)


def test_from_module_refuses_label_count_that_differs_from_head():
    """Wrapping a 3-output model with 2 labels raises ModelLoadError with both counts."""
    module = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, **TINY_KWARGS
    )
    with pytest.raises(ModelLoadError, match="model has 3 outputs but 2 labels were given"):
        from_module(module, ["benign", "gun"])


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_corrupt_checkpoint_is_a_model_load_error(write_model, fmt):
    """A truncated checkpoint file raises ModelLoadError saying it is corrupt, whatever its format."""
    card_path = write_model(fmt, checksum=False)
    checkpoint = card_path.parent / f"tiny.{fmt}"
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    with pytest.raises(ModelLoadError, match="corrupt or unreadable"):
        load_model(card_path)


def test_card_path_that_is_a_folder_is_named(tmp_path):
    """A card path pointing at a folder raises ModelLoadError, not IsADirectoryError."""
    with pytest.raises(ModelLoadError, match="cannot be read"):
        load_model(tmp_path)
