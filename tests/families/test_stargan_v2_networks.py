"""StarGAN v2 networks: official sizes and key layout, an independent functional forward,
and loading of official-layout checkpoints."""

from __future__ import annotations

import pytest
import torch

from starcli.errors import ConfigError
from starcli.families.stargan_v2.networks import (
    Discriminator,
    Generator,
    MappingNetwork,
    StyleEncoder,
    V2ModelConfig,
    build_v2,
    count_parameters,
)


def _meta(cls, **kw):
    with torch.device("meta"):
        return cls(V2ModelConfig(**kw))


# --- config -------------------------------------------------------------------------------

def test_config_defaults_round_trip():
    cfg = V2ModelConfig(image_size=256, num_domains=2, w_hpf=1)
    assert cfg.dim_in == 64 and cfg.w_hpf == 1.0
    assert cfg.encoder_downsamples == 5 and cfg.trunk_downsamples == 6
    assert V2ModelConfig(image_size=128, num_domains=3).dim_in == 128
    assert V2ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("kw, words", [
    (dict(image_size=96, num_domains=2), "power of 2"),
    (dict(image_size=8, num_domains=2), "at least 16"),
    (dict(image_size=64, num_domains=0), "--num-domains"),
    (dict(image_size=64, num_domains=2, w_hpf=-1), "--w-hpf"),
    (dict(image_size=64, num_domains=2, dim_in=0), "--dim-in"),
])
def test_config_rejects(kw, words):
    with pytest.raises(ConfigError, match=words) as info:
        V2ModelConfig(**kw)
    assert "\n" not in str(info.value)


def test_from_dict_names_unknown_key():
    data = V2ModelConfig(image_size=64, num_domains=2).to_dict() | {"hidden_dim": 512}
    with pytest.raises(ConfigError, match="'hidden_dim'"):
        V2ModelConfig.from_dict(data)


# --- official sizes (reference §5, §1.7) ----------------------------------------------------

@pytest.mark.parametrize("w_hpf, params, entries", [(1, 43_467_395, 124), (0, 33_892_995, 108)])
def test_generator_size_and_keys(w_hpf, params, entries):
    G = _meta(Generator, image_size=256, num_domains=2, w_hpf=w_hpf)
    assert count_parameters(G) == params
    sd = G.state_dict()
    assert len(sd) == entries and "hpf.filter" not in sd
    assert hasattr(G, "hpf") == (w_hpf > 0)
    # decode.4 is 512->256 with the extra level, 256->128 without it
    assert sd["decode.4.norm1.fc.weight"].shape == ((1024, 64) if w_hpf else (512, 64))
    assert sd["decode.4.norm2.fc.weight"].shape == ((512, 64) if w_hpf else (256, 64))
    shortcut = {k.split(".")[1] for k in sd if k.startswith("decode.") and "conv1x1" in k}
    assert shortcut == ({"4", "5", "6"} if w_hpf else {"3", "4", "5"})
    assert {k.split(".")[1] for k in sd if k.startswith("encode.") and "conv1x1" in k} == {
        "0", "1", "2"}


@pytest.mark.parametrize("K", [1, 2, 3])
def test_mapping_encoder_discriminator_sizes(K):
    Fm = _meta(MappingNetwork, image_size=256, num_domains=K)
    E = _meta(StyleEncoder, image_size=256, num_domains=K)
    D = _meta(Discriminator, image_size=256, num_domains=K)
    assert count_parameters(Fm) == 796_672 + 820_800 * K
    assert count_parameters(E) == 20_851_264 + 32_832 * K
    assert count_parameters(D) == 20_851_264 + 513 * K
    f_sd, e_sd, d_sd = Fm.state_dict(), E.state_dict(), D.state_dict()
    assert (len(f_sd), len(e_sd), len(d_sd)) == (8 + 8 * K, 31 + 2 * K, 33)
    assert f_sd["shared.0.weight"].shape == (512, 16)
    assert f_sd[f"unshared.{K - 1}.6.weight"].shape == (64, 512)
    assert e_sd["shared.8.weight"].shape == (512, 512, 4, 4)
    assert e_sd[f"unshared.{K - 1}.weight"].shape == (64, 512)
    assert d_sd["main.10.weight"].shape == (K, 512, 1, 1)


def test_build_v2_order_and_he_init():
    torch.manual_seed(0)
    nets = build_v2(V2ModelConfig(image_size=32, num_domains=2, dim_in=8, max_conv_dim=32,
                                  mapping_hidden=32))
    assert list(nets) == ["G", "F", "E", "D"]
    w = nets["F"].shared[2].weight  # 32 -> 32 Linear: He std sqrt(2 / 32) = 0.25
    assert abs(w.std().item() - 0.25) < 0.05
    assert torch.count_nonzero(nets["D"].main[-1].bias) == 0
    assert torch.equal(nets["G"].to_rgb[0].weight, torch.ones(8))
