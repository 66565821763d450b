"""Official StarGAN v1 checkpoint import, checked against an independent functional forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from starcli.errors import CheckpointError
from starcli.families.stargan_v1.networks import Discriminator, Generator, ModelConfig
from starcli.families.stargan_v1.official import (
    convert_official_discriminator,
    convert_official_generator,
    official_model_config,
    to_official_discriminator,
    to_official_generator,
)

CFG = ModelConfig(image_size=32, c_dim=3, g_conv_dim=8, d_conv_dim=8, g_repeat_num=2,
                  d_repeat_num=2)


# --- the official networks written directly against the official keys ----------------------

def official_g_forward(sd, x, c):
    def inorm(t, name):  # the official test loop runs in train mode: batch statistics
        return F.instance_norm(t, weight=sd[f"{name}.weight"], bias=sd[f"{name}.bias"])

    n, _, h, w = x.shape
    z = torch.cat([x, c.view(n, -1, 1, 1).expand(-1, -1, h, w)], dim=1)
    z = F.relu(inorm(F.conv2d(z, sd["main.0.weight"], padding=3), "main.1"))
    z = F.relu(inorm(F.conv2d(z, sd["main.3.weight"], stride=2, padding=1), "main.4"))
    z = F.relu(inorm(F.conv2d(z, sd["main.6.weight"], stride=2, padding=1), "main.7"))
    k = 9
    while f"main.{k}.main.0.weight" in sd:
        r = F.relu(inorm(F.conv2d(z, sd[f"main.{k}.main.0.weight"], padding=1), f"main.{k}.main.1"))
        z = z + inorm(F.conv2d(r, sd[f"main.{k}.main.3.weight"], padding=1), f"main.{k}.main.4")
        k += 1
    z = F.relu(inorm(F.conv_transpose2d(z, sd[f"main.{k}.weight"], stride=2, padding=1),
                     f"main.{k + 1}"))
    z = F.relu(inorm(F.conv_transpose2d(z, sd[f"main.{k + 3}.weight"], stride=2, padding=1),
                     f"main.{k + 4}"))
    return torch.tanh(F.conv2d(z, sd[f"main.{k + 6}.weight"], padding=3))


def official_d_forward(sd, x):
    z, i = x, 0
    while f"main.{i}.weight" in sd:
        z = F.leaky_relu(F.conv2d(z, sd[f"main.{i}.weight"], sd[f"main.{i}.bias"], stride=2,
                                  padding=1), 0.01)
        i += 2
    src = F.conv2d(z, sd["conv1.weight"], padding=1)
    return src, F.conv2d(z, sd["conv2.weight"]).view(x.shape[0], -1)


# --- fixtures ------------------------------------------------------------------------------

def _randomize(module: torch.nn.Module) -> None:
    # Default init leaves IN at weight 1 / bias 0, which would hide swapped norm layers.
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)


@pytest.fixture
def official_g(tmp_path):
    torch.manual_seed(0)
    g = Generator(CFG)
    _randomize(g)
    sd = to_official_generator(g.state_dict())
    for key in sd:  # nonsense running stats: they must be dropped, not used
        if key.endswith("running_mean"):
            sd[key] = torch.randn_like(sd[key]) * 5
        elif key.endswith("running_var"):
            sd[key] = torch.rand_like(sd[key]) * 9 + 0.1
        elif key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(200000)
    path = tmp_path / "200000-G.ckpt"
    torch.save(sd, path)
    return torch.load(path, weights_only=True)


@pytest.fixture
def official_d(tmp_path):
    torch.manual_seed(1)
    d = Discriminator(CFG)
    _randomize(d)
    path = tmp_path / "200000-D.ckpt"
    torch.save(to_official_discriminator(d.state_dict()), path)
    return torch.load(path, weights_only=True)


# --- equivalence ---------------------------------------------------------------------------

def test_generator_matches_official_forward(official_g):
    assert any(k.endswith("running_var") for k in official_g)
    ours = Generator(CFG)
    ours.load_state_dict(convert_official_generator(official_g, c_dim=3, image_size=32))
    torch.manual_seed(2)
    x, c = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    with torch.no_grad():
        expected = official_g_forward(official_g, x, c)
        got = ours(x, c)
    assert (expected.abs() < 0.999).float().mean() > 0.5  # not a saturated, trivial output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_discriminator_matches_official_forward(official_d):
    ours = Discriminator(CFG)
    ours.load_state_dict(convert_official_discriminator(official_d, c_dim=3, image_size=32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        src_ref, cls_ref = official_d_forward(official_d, x)
        src, cls = ours(x)
    assert src.shape == (2, 1, 8, 8) and cls.shape == (2, 3)
    torch.testing.assert_close(src, src_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(cls, cls_ref, atol=1e-5, rtol=0)


def test_official_model_config_reads_the_architecture(official_g, official_d):
    assert official_model_config(official_g, official_d, c_dim=3, image_size=32) == CFG
    g_only = official_model_config(official_g, c_dim=3, image_size=32)
    assert (g_only.g_conv_dim, g_only.g_repeat_num) == (8, 2)


def test_dataparallel_prefix_is_accepted(official_g):
    wrapped = {f"module.{k}": v for k, v in official_g.items()}
    converted = convert_official_generator(wrapped, c_dim=3, image_size=32)
    Generator(CFG).load_state_dict(converted)


def test_paper_size_layout():
    with torch.device("meta"):
        g, d = Generator(ModelConfig()), Discriminator(ModelConfig())
    og, od = to_official_generator(g.state_dict()), to_official_discriminator(d.state_dict())
    assert len(og) == 103 and len(od) == 14
    shapes = {k: tuple(v.shape) for k, v in og.items()}
    assert shapes["main.0.weight"] == (64, 8, 7, 7)
    assert shapes["main.6.weight"] == (256, 128, 4, 4)
    assert shapes["main.14.main.3.weight"] == (256, 256, 3, 3)
    assert shapes["main.15.weight"] == (256, 128, 4, 4)  # ConvTranspose: (in, out, k, k)
    assert shapes["main.19.running_var"] == (64,)
    assert shapes["main.21.weight"] == (3, 64, 7, 7)
    d_shapes = {k: tuple(v.shape) for k, v in od.items()}
    assert d_shapes["main.0.weight"] == (64, 3, 4, 4)
    assert d_shapes["main.10.bias"] == (2048,)
    assert d_shapes["conv1.weight"] == (1, 2048, 3, 3)
    assert d_shapes["conv2.weight"] == (5, 2048, 2, 2)
    assert sum(k.endswith("num_batches_tracked") for k in og) == 17
    # and back again, at both released resolutions for G
    assert len(convert_official_generator(og, c_dim=5, image_size=256)) == 103 - 3 * 17
    assert len(convert_official_discriminator(od, c_dim=5, image_size=128)) == 14


# --- errors --------------------------------------------------------------------------------

def test_wrong_c_dim_for_generator(official_g):
    with pytest.raises(CheckpointError,
                       match=r"G.ckpt: the first conv takes 3\+3 channels \(c_dim 3\) but "
                             r"--attrs lists 5 attributes; pass the 3 attribute names"):
        convert_official_generator(official_g, c_dim=5, image_size=32, source="G.ckpt")


def test_wrong_c_dim_for_discriminator(official_d):
    with pytest.raises(CheckpointError, match=r"classifier has 3 outputs.*--attrs lists 4"):
        convert_official_discriminator(official_d, c_dim=4, image_size=32)


def test_wrong_image_size(official_d):
    with pytest.raises(CheckpointError,
                       match=r"kernel is 8x8.*trained on 32px.*--image-size is 64; "
                             r"pass --image-size 32"):
        convert_official_discriminator(official_d, c_dim=3, image_size=64)
    with pytest.raises(CheckpointError, match="--image-size 32"):
        official_model_config({**_g_stub()}, official_d, c_dim=3, image_size=64)


def _g_stub():
    return to_official_generator(Generator(CFG).state_dict())


def test_missing_key(official_g, official_d):
    del official_g["main.4.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: main\.4\.bias"):
        convert_official_generator(official_g, c_dim=3, image_size=32)
    del official_d["conv1.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys: conv1\.weight"):
        convert_official_discriminator(official_d, c_dim=3, image_size=32)


def test_unexpected_key(official_g):
    official_g["main.2.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected keys.*main\.2\.weight"):
        convert_official_generator(official_g, c_dim=3, image_size=32)


def test_shape_difference_is_listed(official_g):
    official_g["main.3.weight"] = torch.zeros(16, 9, 4, 4)
    with pytest.raises(CheckpointError,
                       match=r"shape differences: main\.3\.weight \(16, 9, 4, 4\) "
                             r"\(expected \(16, 8, 4, 4\)\)"):
        convert_official_generator(official_g, c_dim=3, image_size=32)


def test_repeat_num_mismatch(official_g):
    with pytest.raises(CheckpointError, match="2 residual blocks.*--g-repeat-num 2"):
        convert_official_generator(official_g, c_dim=3, image_size=32, repeat_num=6)


def test_swapped_files_are_recognised(official_g, official_d):
    with pytest.raises(CheckpointError, match="looks like a discriminator"):
        convert_official_generator(official_d, c_dim=3, image_size=32)
    with pytest.raises(CheckpointError, match="looks like a generator"):
        convert_official_discriminator(official_g, c_dim=3, image_size=32)


def test_not_a_state_dict():
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        convert_official_generator([1, 2], c_dim=3, image_size=32)
    with pytest.raises(CheckpointError, match=r"not tensors: main\.0\.weight"):
        convert_official_generator({"main.0.weight": "x"}, c_dim=3, image_size=32)
