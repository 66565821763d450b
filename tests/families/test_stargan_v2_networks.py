"""StarGAN v2 networks: official sizes and key layout, an independent functional forward,
and loading of official-layout checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as tf

from starcli.errors import ConfigError, StarcliError
from starcli.families.stargan_v2.networks import (
    Discriminator,
    Generator,
    MappingNetwork,
    StyleEncoder,
    V2ModelConfig,
    build_v2,
    count_parameters,
)
from starcli.families.stargan_v2.official import (
    infer_official_v2,
    load_official_v2,
    to_official_v2,
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


# --- an independent functional forward, from the description only --------------------------

def _lrelu(x):
    return tf.leaky_relu(x, 0.2)


def _res(sd, p, x, normalize, down):
    h = tf.instance_norm(x, weight=sd[p + "norm1.weight"], bias=sd[p + "norm1.bias"]) \
        if normalize else x
    h = tf.conv2d(_lrelu(h), sd[p + "conv1.weight"], sd[p + "conv1.bias"], padding=1)
    if down:
        h = tf.avg_pool2d(h, 2)
    if normalize:
        h = tf.instance_norm(h, weight=sd[p + "norm2.weight"], bias=sd[p + "norm2.bias"])
    h = tf.conv2d(_lrelu(h), sd[p + "conv2.weight"], sd[p + "conv2.bias"], padding=1)
    sc = tf.conv2d(x, sd[p + "conv1x1.weight"]) if p + "conv1x1.weight" in sd else x
    if down:
        sc = tf.avg_pool2d(sc, 2)
    return (sc + h) / math.sqrt(2)


def _adain(sd, p, x, s):
    gamma, beta = tf.linear(s, sd[p + "fc.weight"], sd[p + "fc.bias"]).chunk(2, dim=1)
    return (1 + gamma[:, :, None, None]) * tf.instance_norm(x) + beta[:, :, None, None]


def _adain_res(sd, p, x, s, up, w_hpf):
    h = _lrelu(_adain(sd, p + "norm1.", x, s))
    if up:
        h = tf.interpolate(h, scale_factor=2, mode="nearest")
    h = tf.conv2d(h, sd[p + "conv1.weight"], sd[p + "conv1.bias"], padding=1)
    h = _lrelu(_adain(sd, p + "norm2.", h, s))
    h = tf.conv2d(h, sd[p + "conv2.weight"], sd[p + "conv2.bias"], padding=1)
    if w_hpf > 0:
        return h
    sc = tf.interpolate(x, scale_factor=2, mode="nearest") if up else x
    if p + "conv1x1.weight" in sd:
        sc = tf.conv2d(sc, sd[p + "conv1x1.weight"])
    return (sc + h) / math.sqrt(2)


def _ref_generator(sd, x, s, n_down, w_hpf, masks=None):
    n_enc = len({k.split(".")[1] for k in sd if k.startswith("encode.")})
    assert n_enc == n_down + 2
    kernel = torch.tensor([[-1.0, -1, -1], [-1, 8, -1], [-1, -1, -1]]) / max(w_hpf, 1e-9)
    x = tf.conv2d(x, sd["from_rgb.weight"], sd["from_rgb.bias"], padding=1)
    feats = {}
    for i in range(n_enc):
        feats[x.shape[-1]] = x  # the last map seen at each size before a block
        x = _res(sd, f"encode.{i}.", x, True, i < n_down)
    for j in range(n_enc):
        x = _adain_res(sd, f"decode.{j}.", x, s, j >= 2, w_hpf)
        size = x.shape[-1]
        if masks is not None and size in (32, 64, 128):
            m = tf.interpolate(masks[0] if size == 32 else masks[1], size=(size, size),
                               mode="bilinear", align_corners=False)
            c = x.shape[1]
            x = x + tf.conv2d(m * feats[size], kernel.expand(c, 1, 3, 3), padding=1, groups=c)
    x = tf.instance_norm(x, weight=sd["to_rgb.0.weight"], bias=sd["to_rgb.0.bias"])
    return tf.conv2d(_lrelu(x), sd["to_rgb.2.weight"], sd["to_rgb.2.bias"])


def _ref_trunk(sd, p, x, n_down):
    x = tf.conv2d(x, sd[p + "0.weight"], sd[p + "0.bias"], padding=1)
    for i in range(1, n_down + 1):
        x = _res(sd, f"{p}{i}.", x, False, True)
    k = n_down + 2
    x = _lrelu(tf.conv2d(_lrelu(x), sd[f"{p}{k}.weight"], sd[f"{p}{k}.bias"]))
    return x, k + 2


def _ref_mapping(sd, z, y):
    h = z
    for i in (0, 2, 4, 6):
        h = torch.relu(tf.linear(h, sd[f"shared.{i}.weight"], sd[f"shared.{i}.bias"]))
    out = []
    for n, domain in enumerate(y.tolist()):
        g = h[n:n + 1]
        for i in (0, 2, 4, 6):
            g = tf.linear(g, sd[f"unshared.{domain}.{i}.weight"], sd[f"unshared.{domain}.{i}.bias"])
            g = torch.relu(g) if i < 6 else g
        out.append(g)
    return torch.cat(out)


def _ref_encoder(sd, x, y, n_down):
    h, _ = _ref_trunk(sd, "shared.", x, n_down)
    h = h.flatten(1)
    return torch.cat([tf.linear(h[n:n + 1], sd[f"unshared.{d}.weight"], sd[f"unshared.{d}.bias"])
                      for n, d in enumerate(y.tolist())])


def _ref_discriminator(sd, x, y, n_down):
    h, head = _ref_trunk(sd, "main.", x, n_down)
    logits = tf.conv2d(h, sd[f"main.{head}.weight"], sd[f"main.{head}.bias"]).flatten(1)
    return logits[torch.arange(len(y)), y]


def _small(w_hpf):
    return V2ModelConfig(image_size=64, num_domains=3, latent_dim=8, style_dim=16, w_hpf=w_hpf,
                         dim_in=8, max_conv_dim=32, mapping_hidden=32)


def _randomise(nets):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for net in nets.values():
            for p in net.parameters():  # He weights stay; biases and IN affines (1/0) move
                if p.dim() == 1:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.mark.parametrize("w_hpf", [0.0, 2.0])
def test_forward_matches_functional_reference(tmp_path, w_hpf):
    cfg = _small(w_hpf)
    torch.manual_seed(0)
    written = build_v2(cfg)
    _randomise(written)
    path = tmp_path / "100000_nets.ckpt"
    torch.save(to_official_v2(written), path)
    nets = build_v2(cfg)  # fresh weights, replaced by the file's
    assert load_official_v2(path, cfg, nets) == [
        "generator", "mapping_network", "style_encoder", "discriminator"]
    sds = {k: v.state_dict() for k, v in written.items()}
    for k, net in nets.items():
        assert all(torch.equal(v, sds[k][n]) for n, v in net.state_dict().items())
        net.eval()

    x = torch.randn(2, 3, 64, 64)
    y = torch.tensor([2, 0])
    z = torch.randn(2, 8)
    masks = (torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64))
    with torch.no_grad():
        s = nets["F"](z, y)
        assert s.shape == (2, 16)
        assert torch.allclose(s, _ref_mapping(sds["F"], z, y), atol=1e-5)
        s_ref = nets["E"](x, y)
        assert torch.allclose(s_ref, _ref_encoder(sds["E"], x, y, 4), atol=1e-5)
        d = nets["D"](x, y)
        assert d.shape == (2,) and nets["D"].logits(x).shape == (2, 3)
        assert torch.allclose(d, _ref_discriminator(sds["D"], x, y, 4), atol=1e-5)
        n_down = cfg.encoder_downsamples
        assert n_down == (3 if w_hpf else 2)
        out = nets["G"](x, s)
        assert out.shape == x.shape
        assert torch.allclose(out, _ref_generator(sds["G"], x, s, n_down, w_hpf), atol=1e-5)
        if w_hpf:
            with_masks = nets["G"](x, s, masks)
            expect = _ref_generator(sds["G"], x, s, n_down, w_hpf, masks)
            assert torch.allclose(with_masks, expect, atol=1e-5)
            assert not torch.allclose(with_masks, out, atol=1e-3)  # the skips did something
            # the 32 px skip uses masks[0], the 64 px one masks[1]
            only_eyes = nets["G"](x, s, (torch.zeros_like(masks[0]), masks[1]))
            assert not torch.allclose(only_eyes, with_masks, atol=1e-3)
        else:
            with pytest.raises(ValueError, match="w_hpf"):
                nets["G"](x, s, masks)


# --- loading official files -----------------------------------------------------------------

def _official(cfg, **kw):
    torch.manual_seed(0)
    return to_official_v2(build_v2(cfg), **kw)


def test_load_with_and_without_filter_and_extra_keys(tmp_path):
    cfg = _small(1.0)
    released = _official(cfg)
    del released["discriminator"]  # only nets_ema were released
    assert "hpf.filter" not in released["generator"]
    released["fan"] = {"conv1.conv.weight": torch.zeros(64, 6, 7, 7)}
    path = tmp_path / "100000_nets_ema.ckpt"
    torch.save(released, path)
    nets = build_v2(cfg)
    d_before = nets["D"].main[0].weight.clone()
    assert load_official_v2(path, cfg, nets) == ["generator", "mapping_network", "style_encoder"]
    assert torch.equal(nets["G"].from_rgb.weight, released["generator"]["from_rgb.weight"])
    assert torch.equal(nets["D"].main[0].weight, d_before)

    later = _official(cfg, hpf_filter=True)  # post-2021 official code stores the buffer
    assert "hpf.filter" in later["generator"]
    assert load_official_v2(later, cfg, build_v2(cfg))[0] == "generator"
    assert infer_official_v2(later) == (64, 3, 1.0, 8)
    stale = _official(cfg, hpf_filter=True)
    stale["generator"]["hpf.filter"] = stale["generator"]["hpf.filter"] / 2  # a w_hpf=2 file
    with pytest.raises(StarcliError, match=r"hpf\.filter.*w_hpf 2"):
        load_official_v2(stale, cfg, build_v2(cfg))


@pytest.mark.parametrize("file_kw, model_kw, words", [
    (dict(num_domains=2), dict(num_domains=3), r"mapping_network.*unshared\.2.*--domains with 2"),
    (dict(w_hpf=0.0), dict(w_hpf=1.0), r"generator.*w_hpf 0\b"),
    (dict(w_hpf=1.0), dict(w_hpf=0.0), r"generator.*w_hpf 1\b"),
])
def test_load_mismatch_names_network_key_and_hint(file_kw, model_kw, words):
    base = _small(1.0).to_dict()
    file_cfg = V2ModelConfig(**(base | file_kw))
    model_cfg = V2ModelConfig(**(base | model_kw))
    nets = build_v2(model_cfg)
    before = {k: v.clone() for k, v in nets["G"].state_dict().items()}
    with pytest.raises(StarcliError, match=words) as info:
        load_official_v2(_official(file_cfg), model_cfg, nets)
    assert "\n" not in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in nets["G"].state_dict().items())


class Payload:  # any custom class: weights_only must refuse to unpickle it
    pass


def test_load_missing_network_and_bad_files(tmp_path):
    cfg = _small(0.0)
    partial = _official(cfg)
    del partial["style_encoder"]
    with pytest.raises(StarcliError, match="no 'style_encoder'"):
        load_official_v2(partial, cfg, build_v2(cfg))

    evil = tmp_path / "evil.ckpt"
    torch.save({"generator": Payload()}, evil)
    with pytest.raises(StarcliError, match=r"evil.ckpt.*weights_only.*Payload object") as info:
        load_official_v2(evil, cfg, build_v2(cfg))
    assert "\n" not in str(info.value)
    with pytest.raises(StarcliError, match="no such checkpoint"):
        load_official_v2(tmp_path / "absent.ckpt", cfg, build_v2(cfg))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(StarcliError, match="junk.ckpt"):
        load_official_v2(junk, cfg, build_v2(cfg))
