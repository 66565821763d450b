"""meta.json sizes are checked against the safetensors headers before any network is built."""

from __future__ import annotations

import json

import pytest
import torch

import starcli.checkpoint as checkpoint
from starcli.checkpoint import load_checkpoint, save_checkpoint
from starcli.data.labels import LabelLayout, LabelSpace
from starcli.errors import CheckpointError
from starcli.families.stargan_v1.networks import Discriminator, Generator, ModelConfig

SPACE = LabelSpace("demo-celeba", "celeba", "multilabel", ("Black_Hair", "Blond_Hair", "Male"),
                   (("Black_Hair", "Blond_Hair"),))
MODEL = ModelConfig(image_size=16, c_dim=3, g_conv_dim=4, d_conv_dim=4, g_repeat_num=1,
                    d_repeat_num=2)


@pytest.fixture
def ckpt(tmp_path):
    meta = {"model": MODEL.to_dict(), "labels": LabelLayout((SPACE,)).to_dict(), "train": {},
            "datasets": []}
    return save_checkpoint(tmp_path / "run", 1, {"G": Generator(MODEL), "D": Discriminator(MODEL)},
                           meta, None, 1)


@pytest.fixture
def no_real_build(monkeypatch):
    """Building a network anywhere but on the meta device fails the test (a damaged meta.json
    could ask for terabytes: the check must come first)."""
    import starcli.families.stargan_v1.family as family

    for name in ("Generator", "Discriminator"):
        real = getattr(family, name)

        def guarded(model, _real=real, _name=name):
            if torch.empty(0).device.type != "meta":
                raise AssertionError(f"{_name} built from meta.json before checking the weights")
            return _real(model)

        monkeypatch.setattr(family, name, guarded)


def _edit_model(ckpt, **changes):
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["model"].update(changes)
    (ckpt / "meta.json").write_text(json.dumps(meta))


def test_huge_sizes_in_meta_are_refused_before_building(ckpt, no_real_build):
    _edit_model(ckpt, g_conv_dim=65536)  # about 10^12 parameters in G
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt)
    message = str(info.value)
    assert "\n" not in message and "meta.json" in message and "g_conv_dim" in message
    assert "parameters" in message


def test_sizes_that_disagree_with_the_weights_are_refused_before_building(ckpt, no_real_build):
    _edit_model(ckpt, g_conv_dim=8)
    with pytest.raises(CheckpointError, match=r"G.safetensors does not match the model in "
                                              r"meta.json \(stem.conv.weight: .*8.*4"):
        load_checkpoint(ckpt)
    _edit_model(ckpt, g_conv_dim=4, d_repeat_num=3)  # D has one conv more than its file
    with pytest.raises(CheckpointError, match=r"D.safetensors does not match"):
        load_checkpoint(ckpt)


def test_the_parameter_bound_applies_when_shapes_agree(ckpt, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_PARAMETERS", 100)
    with pytest.raises(CheckpointError, match=r"meta.json.*parameters in G"):
        load_checkpoint(ckpt)
    monkeypatch.undo()
    assert load_checkpoint(ckpt).G is not None


def test_a_damaged_header_is_one_line(ckpt):
    (ckpt / "G.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(CheckpointError, match="G.safetensors is not a readable safetensors"):
        load_checkpoint(ckpt)
