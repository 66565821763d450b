"""StarGAN v2's keep options (not in the official model): --g-blend's attention mask and its
penalties, and --lambda-id. Off by default, recorded in the checkpoint, honoured by translate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from starcli.config import TrainConfig
from starcli.errors import ConfigError
from starcli.families.stargan_v2.config import PRESETS, StarGANv2Options
from starcli.families.stargan_v2.networks import V2ModelConfig, build_v2

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(home, tmp_path, **kw):
    values = dict(datasets=("demo-celeba",), home=str(home), device="cpu", precision="fp32",
                  run_dir=str(tmp_path / "run"), log_every=1, sample_every=0)
    values.update(kw)
    return TrainConfig.from_preset("tiny", family="stargan-v2", **values)


def _parts(home, tmp_path, make_dataset, **kw):
    from starcli.data.dataset import TrainStream
    from starcli.engine import attach_step, build_parts, describe_run

    if make_dataset is not None:
        make_dataset(home, "demo-celeba", "celeba", seed=0)
    plan = describe_run(_cfg(home, tmp_path, **kw))
    built = build_parts(plan)
    attach_step(plan, built)
    stream = TrainStream(plan.datasets, plan.layout, batch_size=plan.runtime.batch, seed=0)
    try:
        batch = next(stream)
    finally:
        stream.close()
    return plan, built, batch


def test_blend_keeps_what_the_mask_leaves_closed():
    torch.manual_seed(0)
    cfg = V2ModelConfig(image_size=32, num_domains=2, dim_in=8, max_conv_dim=16,
                        mapping_hidden=16, style_dim=16, g_blend=True)
    G = build_v2(cfg)["G"]
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    s = torch.randn(3, 16)
    out, mask = G(x, s, with_mask=True)
    assert mask.shape == (3, 1, 32, 32)
    # it starts nearly closed and uniform: the output is 88% the input
    assert torch.allclose(mask, torch.full_like(mask, torch.sigmoid(torch.tensor(-2.0))))
    colour = G.to_rgb(G.decode[-1](G.decode[-2](G.decode[-3](G.encode[2](G.encode[1](
        G.encode[0](G.from_rgb(x))), ), s), s), s))
    assert torch.allclose(out, x + mask * (colour - x), atol=1e-5)
    with torch.no_grad():
        G.to_mask.bias.fill_(-40.0)
    assert torch.allclose(G(x, s), x, atol=1e-6)  # closed: the input, exactly
    with torch.no_grad():
        G.to_mask.bias.fill_(40.0)
    assert torch.allclose(G(x, s), colour, atol=1e-5)  # open: G's own image
    # the plain (official) generator has no mask head and returns None for it
    plain = build_v2(V2ModelConfig(image_size=32, num_domains=2, dim_in=8, max_conv_dim=16,
                                   mapping_hidden=16, style_dim=16))["G"]
    assert plain(x, s, with_mask=True)[1] is None
    assert not any(k.startswith("to_mask") for k in plain.state_dict())
    assert {k for k in G.state_dict() if k.startswith("to_mask")} == \
        {"to_mask.weight", "to_mask.bias"}


def test_options_are_checked_and_off_in_the_official_presets():
    with pytest.raises(ConfigError, match="--lambda-mask"):
        StarGANv2Options(lambda_mask=-1)
    with pytest.raises(ConfigError, match="--lambda-id"):
        StarGANv2Options(lambda_id=float("nan"))
    with pytest.raises(ConfigError, match="--g-blend"):
        StarGANv2Options(g_blend="yes")
    with pytest.raises(ConfigError, match="--g-blend"):
        V2ModelConfig(image_size=32, num_domains=2, g_blend=1)
    for name in ("v2-afhq", "v2-celeba-hq"):
        opts = TrainConfig.from_preset(name, family="stargan-v2", datasets=("x",)).options
        assert not opts.g_blend and opts.lambda_id == opts.lambda_mask == 0
    # a model config saved before the option existed loads as the plain generator
    old = V2ModelConfig(image_size=32, num_domains=2).to_dict()
    del old["g_blend"]
    assert V2ModelConfig.from_dict(old).g_blend is False
    assert set(PRESETS["demo"]) <= set(StarGANv2Options.__dataclass_fields__) | {
        "iters", "batch_size", "image_size", "sample_every", "save_every", "log_every",
        "keep_last", "lr_decay_iters", "lr_update_step"}


def test_identity_and_mask_terms_are_what_they_say(home, tmp_path, make_dataset):
    plan, built, batch = _parts(home, tmp_path, make_dataset, g_blend=True, lambda_id=2.0,
                                lambda_mask=0.5, lambda_mask_tv=0.0)
    step, mods = built.step, built.modules
    x, y = step.sources(batch)
    y_trg = 1 - y
    refs = (x.flip(0), x.roll(1, 0))
    with torch.no_grad():
        own = mods["G"](x, mods["E"](x, y))
        want_id = (own - x).abs().mean()
        _, mask = mods["G"](x, mods["E"](refs[0], y_trg), with_mask=True)
    out = step.g_phase(x, y, y_trg, 1.0, x_ref=refs)
    assert out["id"].item() == pytest.approx(want_id.item(), rel=1e-4)
    assert out["mask"].item() == pytest.approx(mask.mean().item(), rel=1e-4)
    want = out["adv"] + out["sty"] - out["ds"] + out["cyc"] + 2.0 * out["id"] + \
        0.5 * out["mask"]
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-4)
    values = step(1, batch)
    assert {"G/id", "G/mask"} <= set(values)


def test_mask_weight_closes_the_mask(home, tmp_path, make_dataset):
    """Same start, same batch: a large mask weight leaves the mask more closed after a few G
    steps (at a high learning rate) than no weight does."""
    means = {}
    make_dataset(home, "demo-celeba", "celeba", seed=0)
    for weight in (0.0, 50.0):
        torch.manual_seed(0)
        plan, built, batch = _parts(home, tmp_path / str(weight), None, g_blend=True,
                                    lambda_mask=weight, lr=0.02)
        step, G = built.step, built.modules["G"]
        x, y = step.sources(batch)
        z = (torch.randn(len(y), 16), torch.randn(len(y), 16))
        for _ in range(4):
            step.g_phase(x, y, 1 - y, 1.0, z=z)
        with torch.no_grad():
            means[weight] = G(x, built.modules["F"](z[0], 1 - y), with_mask=True)[1].mean()
    assert means[50.0] < means[0.0] - 0.005


def test_blend_trains_resumes_and_translates_from_the_cli(home, tmp_path, make_dataset,
                                                          monkeypatch):
    from PIL import Image
    from typer.testing import CliRunner

    from starcli.checkpoint import load_checkpoint
    from starcli.cli import app

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--family", "stargan-v2", "-d", "demo-celeba",
                              "--preset", "tiny", "--iters", "2", "--device", "cpu",
                              "--run-dir", str(tmp_path / "run"), "--g-blend",
                              "--lambda-mask", "0.01", "--lambda-mask-tv", "1e-5",
                              "--lambda-id", "1", "--sample-every", "0"])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.model.g_blend and ckpt.G.to_mask is not None
    assert ckpt.meta["train"]["options"]["lambda_id"] == 1.0
    res = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "--iters", "3"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(tmp_path / "run").step == 3
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)
                    ).save(src / "face.png")
    res = runner.invoke(app, ["translate", str(src), "--checkpoint", str(tmp_path / "run"),
                              "--to", "male", "--styles", "2", "--out", str(tmp_path / "out"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "out").rglob("*.png"))) >= 2
    bad = runner.invoke(app, ["train", "--family", "stargan-v2", "-d", "demo-celeba",
                              "--preset", "tiny", "--lambda-mask", "-1"])
    assert bad.exit_code == 2 and "--lambda-mask" in bad.output
