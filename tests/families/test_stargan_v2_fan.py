"""The StarGAN v2 landmark network (FAN): structure, strict loading and face masks."""

from __future__ import annotations

import pytest
import torch

from starcli.errors import CheckpointError
from starcli.families.stargan_v2.fan import FAN, face_masks, load_fan


@pytest.fixture(scope="module")
def fan() -> FAN:
    torch.manual_seed(0)
    return FAN().requires_grad_(False)


def test_structure_matches_the_reference_counts(fan):
    sd = fan.state_dict()
    assert len(sd) == 336
    assert sum(p.numel() for p in fan.parameters()) == 6_333_603
    # running_mean + running_var + one num_batches_tracked per BatchNorm layer
    params = {n for n, _ in fan.named_parameters()}
    buffers = {k: v for k, v in sd.items() if k not in params}
    assert all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")
               for k in buffers)
    assert sum(v.numel() for v in buffers.values()) == 15_031
    bns = [m for m in fan.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 55
    for key in ("conv1.conv.weight", "bn1.running_mean", "conv2.bn1.weight",
                "m0.coordconv.conv.weight", "m0.b1_4.conv1.weight", "m0.b2_plus_1.conv1.weight",
                "top_m_0.conv3.weight", "conv_last0.bias", "bn_end0.running_var", "l0.weight"):
        assert key in sd
    assert tuple(sd["m0.coordconv.conv.weight"].shape) == (256, 259, 1, 1)
    assert tuple(sd["l0.weight"].shape) == (99, 256, 1, 1)


def test_stays_in_eval_mode_and_grids_follow_the_module(fan):
    fan.train()
    assert not fan.training and not fan.bn1.training
    half = FAN().to(torch.float64)
    assert half.conv1.addcoords.grid.dtype == torch.float64  # a (non-persistent) buffer
    assert "conv1.addcoords.grid" not in half.state_dict()


def test_wing_file_loads_strictly(tmp_path, fan):
    wing = tmp_path / "wing.ckpt"
    torch.save({"state_dict": fan.state_dict()}, wing)
    loaded = load_fan(wing)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for k, v in fan.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    bare = tmp_path / "bare.ckpt"
    torch.save(fan.state_dict(), bare)
    load_fan(bare)
    load_fan({"generator": {}, "fan": fan.state_dict()})  # an official nets_ema dict

    renamed = dict(fan.state_dict())
    renamed["l0.weight_renamed"] = renamed.pop("l0.weight")
    bad = tmp_path / "renamed.ckpt"
    torch.save({"state_dict": renamed}, bad)
    with pytest.raises(CheckpointError, match=r"renamed\.ckpt.*missing l0\.weight.*"
                                              r"unexpected l0\.weight_renamed"):
        load_fan(bad)


def test_non_weights_pickle_is_refused_in_one_line(tmp_path):
    path = tmp_path / "wing.ckpt"
    torch.save({"state_dict": {}, "args": __import__("argparse").Namespace(lr=1)}, path)
    with pytest.raises(CheckpointError, match="wing.ckpt: cannot be read") as info:
        load_fan(path)
    assert "\n" not in str(info.value)


def test_masks_shape_range_and_input_dependence(fan):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    whole, inner = face_masks(fan, x)
    assert whole.shape == inner.shape == (2, 1, 256, 256)
    for m in (whole, inner):
        assert m.dtype == torch.float32 and m.min() >= 0 and m.max() <= 1
    assert whole.sum() > 0
    assert not torch.equal(whole[0], whole[1])
    assert (inner <= whole + 1e-6).float().mean() > 0.99  # eyes/nose is part of the face
