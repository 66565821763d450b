"""StarGAN v1 networks: paper parameter counts, shapes, config checks, channels_last, bf16."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from starcli.errors import ConfigError
from starcli.families.stargan_v1.networks import (
    Discriminator,
    Generator,
    ModelConfig,
    count_parameters,
)

TINY = ModelConfig(image_size=32, c_dim=3, g_conv_dim=8, d_conv_dim=8, g_repeat_num=2,
                   d_repeat_num=3)


def _meta_pair(cfg: ModelConfig) -> tuple[Generator, Discriminator]:
    with torch.device("meta"):
        return Generator(cfg), Discriminator(cfg)


@pytest.mark.parametrize(("c_dim", "g_params", "d_params"),
                         [(5, 8_430_528, 44_762_048), (8, 8_439_936, 44_786_624)])
def test_paper_parameter_counts(c_dim, g_params, d_params):
    g, d = _meta_pair(ModelConfig(image_size=128, c_dim=c_dim))
    assert count_parameters(g) == g_params
    assert count_parameters(d) == d_params


def test_paper_head_shapes_follow_image_size():
    _, d128 = _meta_pair(ModelConfig(image_size=128))
    _, d256 = _meta_pair(ModelConfig(image_size=256))
    assert tuple(d128.cls_head.weight.shape) == (5, 2048, 2, 2)
    assert tuple(d256.cls_head.weight.shape) == (5, 2048, 4, 4)
    assert tuple(d128.src_head.weight.shape) == (1, 2048, 3, 3)


def test_generator_has_no_biases_or_running_stats():
    g = Generator(TINY)
    keys = g.state_dict().keys()
    assert not any("running" in k or "num_batches" in k for k in keys)
    convs = [m for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == 1 + 2 + 2 * TINY.g_repeat_num + 2 + 1
    assert all(m.bias is None for m in convs)


def test_forward_shapes_and_range():
    torch.manual_seed(0)
    g, d = Generator(TINY), Discriminator(TINY)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = g(x, torch.tensor([[1.0, 0, 1], [0, 1, 0]]))
    assert y.shape == x.shape and y.abs().max() <= 1
    src, cls = d(x)
    assert src.shape == (2, 1, 4, 4)  # 32 / 2**3
    assert cls.shape == (2, 3)


def test_labels_change_the_output():
    # Zero padding lets the tiled label planes through the first instance norm.
    torch.manual_seed(0)
    g = Generator(TINY)
    x = torch.randn(1, 3, 32, 32)
    a = g(x, torch.tensor([[1.0, 0, 0]]))
    b = g(x, torch.tensor([[0.0, 1, 0]]))
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("down", [1, 3])
def test_generator_down_sampling_depth(down):
    cfg = dataclasses.replace(TINY, g_down_num=down)
    g = Generator(cfg)
    assert len(g.down) == len(g.up) == down
    assert g.blocks[0].conv1.in_channels == 8 * 2**down  # width doubles at every halving
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert g(x, torch.tensor([[1.0, 0, 1], [0, 1, 0]])).shape == x.shape
    # the paper's depth is the default, and old configs without the field load as depth 2
    legacy = {k: v for k, v in TINY.to_dict().items() if k != "g_down_num"}
    assert ModelConfig.from_dict(legacy).g_down_num == 2


def test_joint_config_classifier_width():
    cfg = ModelConfig(image_size=32, c_dim=15, cls_dim=13, g_conv_dim=4, d_conv_dim=4,
                      g_repeat_num=1, d_repeat_num=2)
    src, cls = Discriminator(cfg)(torch.randn(2, 3, 32, 32))
    assert cls.shape == (2, 13)
    assert Generator(cfg)(torch.randn(2, 3, 32, 32), torch.zeros(2, 15)).shape == (2, 3, 32, 32)


def test_wrong_label_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"labels of shape \(1, 3\)"):
        Generator(TINY)(torch.randn(1, 3, 32, 32), torch.zeros(1, 5))


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    g, d = Generator(TINY), Discriminator(TINY)
    x, c = torch.randn(2, 3, 32, 32), torch.rand(2, 3)
    ref_y, (ref_src, ref_cls) = g(x, c), d(x)
    g_cl = g.to(memory_format=torch.channels_last)
    d_cl = d.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y = g_cl(x_cl, c)
    src, cls = d_cl(x_cl)
    torch.testing.assert_close(y, ref_y, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(src, ref_src, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cls, ref_cls, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_forward():
    torch.manual_seed(0)
    g, d = Generator(TINY), Discriminator(TINY)
    x, c = torch.randn(2, 3, 32, 32), torch.rand(2, 3)
    ref = g(x, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = g(x.contiguous(memory_format=torch.channels_last), c)
        src, cls = d(y)
    assert y.shape == x.shape and src.shape == (2, 1, 4, 4) and cls.shape == (2, 3)
    assert y.dtype in (torch.bfloat16, torch.float32)
    for t in (y, src, cls):
        assert torch.isfinite(t.float()).all()
    assert (y.float() - ref).abs().max() < 0.1  # bf16 keeps ~3 significant digits


def test_config_defaults_and_round_trip():
    cfg = ModelConfig()
    assert (cfg.image_size, cfg.c_dim, cfg.cls_dim, cfg.g_conv_dim, cfg.d_repeat_num) == (
        128, 5, 5, 64, 6)
    assert ModelConfig(c_dim=8).cls_dim == 8
    data = TINY.to_dict()
    assert data["cls_dim"] == 3
    assert ModelConfig.from_dict(data) == TINY
    with pytest.raises(dataclasses.FrozenInstanceError):
        TINY.c_dim = 4  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "flag"), [
    ({"image_size": 32, "d_repeat_num": 6}, "--d-repeat-num"),
    ({"image_size": 96}, "--image-size"),
    ({"image_size": 30, "d_repeat_num": 1}, "--image-size"),
    ({"g_conv_dim": 0}, "--g-conv-dim"),
    ({"d_conv_dim": -1}, "--d-conv-dim"),
    ({"c_dim": 0}, "--c-dim"),
    ({"g_repeat_num": -1}, "--g-repeat-num"),
    ({"g_down_num": 0}, "--g-down-num"),
    ({"image_size": 36, "g_down_num": 3, "d_repeat_num": 1}, "--image-size"),
    ({"image_size": 128.0}, "--image-size"),
    ({"c_dim": 3, "cls_dim": 4}, "cls_dim"),
])
def test_config_errors_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        ModelConfig(**kwargs)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="unknown fields.*'colour'"):
        ModelConfig.from_dict({"c_dim": 5, "colour": 1})
