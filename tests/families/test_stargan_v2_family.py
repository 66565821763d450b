"""The StarGAN v2 family: options, the four phases of one iteration, R1, the diversity decay,
exact resume through the engine, and the translator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from starcli.config import TrainConfig
from starcli.errors import ConfigError
from starcli.families.stargan_v2.config import PRESETS, StarGANv2Options
from starcli.families.stargan_v2.step import lambda_ds_at, r1_penalty

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(home, tmp_path, **kw):
    values = dict(datasets=("demo-celeba",), home=str(home), device="cpu", precision="fp32",
                  run_dir=str(tmp_path / "run"), log_every=1)
    values.update(kw)
    return TrainConfig.from_preset("tiny", family="stargan-v2", **values)


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


@pytest.fixture
def parts(home, tmp_path, make_dataset):
    from starcli.engine import attach_step, build_parts, describe_run

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    plan = describe_run(_cfg(home, tmp_path))
    built = build_parts(plan)
    attach_step(plan, built)
    return plan, built


def _batch(plan):
    from starcli.data.dataset import TrainStream

    stream = TrainStream(plan.datasets, plan.layout, batch_size=plan.runtime.batch, seed=0)
    try:
        return next(stream)
    finally:
        stream.close()


def test_options_are_checked_naming_the_flag():
    with pytest.raises(ConfigError, match="--lambda-ds"):
        StarGANv2Options(lambda_ds=-1)
    with pytest.raises(ConfigError, match="--f-lr"):
        StarGANv2Options(f_lr=0)
    with pytest.raises(ConfigError, match="--ds-iter"):
        StarGANv2Options(ds_iter=0)
    with pytest.raises(ConfigError, match="--ema"):
        StarGANv2Options(ema=1.5)
    with pytest.raises(ConfigError, match="--image-size"):
        TrainConfig.from_preset("tiny", family="stargan-v2", datasets=("x",), image_size=48)
    assert PRESETS["v2-afhq"]["lambda_ds"] == 2 and PRESETS["v2-afhq"]["w_hpf"] == 0
    assert PRESETS["v2-celeba-hq"]["w_hpf"] == 1
    for name in PRESETS:  # every preset builds a config
        TrainConfig.from_preset(name, family="stargan-v2", datasets=("x",))


def test_w_hpf_is_refused_for_training_and_the_model_round_trips(home, tmp_path,
                                                                 make_dataset):
    from starcli.engine import describe_run
    from starcli.families.stargan_v2.family import V2Model

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    with pytest.raises(ConfigError, match="--w-hpf 1.*FAN.*--wing wing.ckpt") as err:
        describe_run(_cfg(home, tmp_path, w_hpf=1.0))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="at least 2"):
        describe_run(_cfg(home, tmp_path, domains="Blond_Hair"))
    plan = describe_run(_cfg(home, tmp_path, domains="hair"))
    assert plan.model.num_domains == len(plan.model.domains) >= 2
    assert V2Model.from_dict(plan.model.to_dict()) == plan.model
    assert plan.model.dim_in == 8 and plan.model.mapping_hidden == 16
    assert set(plan.summary()["parameters"]) == {"G", "F", "E", "D"}


def test_optimisers_and_averages_start_from_the_he_weights(parts):
    plan, built = parts
    specs = plan.family.optimizers(plan.cfg.options)
    assert {n: s.modules for n, s in specs.items()} == \
        {"G": ("G",), "F": ("F",), "E": ("E",), "D": ("D",)}
    assert specs["F"].lr == 1e-6 and specs["G"].lr == specs["D"].lr == 1e-4
    assert all(s.betas == (0.0, 0.99) and s.weight_decay == 1e-4 for s in specs.values())
    assert set(built.averages) == {"G", "F", "E"}
    for name, avg in built.averages.items():
        for a, b in zip(avg.parameters(), built.modules[name].parameters(), strict=True):
            assert torch.equal(a, b)
    # He-normal (fan_in, relu): F's first layer has std sqrt(2 / latent_dim)
    w = built.modules["F"].shared[0].weight
    assert abs(w.std().item() - (2 / w.shape[1]) ** 0.5) < 0.1


def test_one_step_trains_all_and_the_reference_g_step_only_g(parts):
    plan, built = parts
    step = built.step
    batch = _batch(plan)
    x, y = step.sources(batch)
    assert len(x) == len(y) and set(y.tolist()) <= {0, 1}
    mods = built.modules
    y_trg = torch.tensor([1, 0] * (len(y) // 2) + [1] * (len(y) % 2))
    refs = (x.flip(0), x.roll(1, 0))

    before = {n: _params(m) for n, m in mods.items()}
    step.g_phase(x, y, y_trg, 1.0, x_ref=refs)
    assert _changed(before["G"], mods["G"])
    for n in ("F", "E", "D"):
        assert not _changed(before[n], mods[n]), f"the reference G step changed {n}"
    assert all(p.grad is None for n in ("F", "E", "D") for p in mods[n].parameters())

    before = {n: _params(m) for n, m in mods.items()}
    step.g_phase(x, y, y_trg, 1.0, z=(torch.randn(len(y), 16), torch.randn(len(y), 16)))
    for n in ("G", "F", "E"):
        assert _changed(before[n], mods[n]), f"the latent G step left {n}"
    assert not _changed(before["D"], mods["D"])

    before = {n: _params(m) for n, m in mods.items()}
    d = step.d_phase(x, y, y_trg, x_ref=refs[0])
    assert _changed(before["D"], mods["D"])
    for n in ("G", "F", "E"):
        assert not _changed(before[n], mods[n])
    assert torch.allclose(d["loss"], d["real"] + d["fake"] + d["r1"])

    before = {n: _params(m) for n, m in {**mods, **{f"{k}_ema": v for k, v in
                                                    built.averages.items()}}.items()}
    values = step(1, batch)
    for n, m in {**mods, **{f"{k}_ema": v for k, v in built.averages.items()}}.items():
        assert _changed(before[n], m), f"{n} did not move in a full step"
    # G/id and G/mask are only there with --lambda-id and --g-blend's penalties
    assert set(values) == set(plan.family.loss_keys) - {"G/id", "G/mask"}
    assert all(torch.isfinite(v) for v in values.values())
    assert values["D/r1"] > 0 and values["lambda_ds"] == 1.0  # step 1: the full weight


def test_r1_is_positive_and_differentiable(parts):
    plan, built = parts
    D = built.modules["D"]
    x = (torch.rand(3, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = torch.tensor([0, 1, 1])
    r1 = r1_penalty(D(x, y), x)
    assert r1.item() > 0 and r1.requires_grad
    r1.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())
    # against a hand-made D: sum(w * x) has gradient w, so R1 = 0.5 * ||w||^2
    w = torch.randn(1, 3, 4, 4)
    xs = torch.randn(2, 3, 4, 4, requires_grad=True)
    got = r1_penalty((xs * w).flatten(1).sum(1), xs)
    assert torch.allclose(got, 0.5 * w.pow(2).sum())


def test_lambda_ds_decays_from_the_step_index():
    assert lambda_ds_at(2.0, 100, 0) == 2.0
    for k in (1, 10, 57, 99):
        assert lambda_ds_at(2.0, 100, k) == pytest.approx(2.0 * (1 - k / 100))
    assert lambda_ds_at(2.0, 100, 100) == 0 and lambda_ds_at(2.0, 100, 250) == 0


def test_four_steps_equal_two_then_resume_two(home, tmp_path, make_dataset):
    from safetensors.torch import load_file

    from starcli.checkpoint import load_training_state
    from starcli.engine import resume_config, train

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    cfg = _cfg(home, tmp_path, iters=4, save_every=2, sample_every=2, keep_last=5)
    records = []
    straight = train(cfg, on_log=records.append)
    # tiny: ds_iter 10, so step k (1-based) trains with 1 - (k - 1) / 10
    assert [r["lambda_ds"] for r in records] == pytest.approx([1.0, 0.9, 0.8, 0.7])
    run = Path(straight["run_dir"])
    middle = run / "checkpoints" / "step-00000002"
    resumed = train(resume_config(str(middle)))
    assert resumed["resumed_from"] == 2 and resumed["step"] == 4
    a, b = Path(straight["checkpoint"]), Path(resumed["checkpoint"])
    for name in ("G", "F", "E", "D", "G_ema", "F_ema", "E_ema"):
        wa = load_file(str(a / f"{name}.safetensors"))
        wb = load_file(str(b / f"{name}.safetensors"))
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{name} differs after resume"
    pa = load_training_state(a)["stargan_v2"]["pools"]
    pb = load_training_state(b)["stargan_v2"]["pools"]
    assert pa["cursor"] == pb["cursor"]
    assert all(torch.equal(u, v) for u, v in zip(pa["images"], pb["images"], strict=True))
    assert (run / "samples").is_dir() and any((run / "samples").iterdir())


def test_translator_latent_reference_and_label_targets(home, tmp_path, make_dataset):
    from starcli.checkpoint import load_checkpoint
    from starcli.engine import train
    from starcli.families import get_family

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    result = train(_cfg(home, tmp_path, iters=1, save_every=1, sample_every=0))
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt.ema and set(ckpt.modules) == {"G", "F", "E", "D"}
    assert ckpt.model.domains.names == ("female", "male")
    tr = get_family("stargan-v2").translator(ckpt, torch.device("cpu"), "fp32")
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    x = tr.to_input(images)
    y = torch.tensor([1, 0, 1])
    z = torch.randn(3, ckpt.model.latent_dim)
    with torch.inference_mode():
        # psi = 0: every z gives the domain's mean style
        mean = tr.mean_style()
        assert mean.shape == (2, ckpt.model.style_dim)
        assert torch.allclose(tr.generate_latent(x, y, z, psi=0.0),
                              ckpt.G(x, mean[y]), atol=1e-5)
        assert torch.allclose(tr.generate_latent(x, y, z), ckpt.G(x, ckpt.modules["F"](z, y)))
        ref = tr.generate_reference(x, x.flip(0), y)
        assert torch.allclose(ref, ckpt.G(x, ckpt.modules["E"](x.flip(0), y)))
        assert set(tr.domain_of(x).tolist()) <= {0, 1}
    # label rows: Male=1 → male, Male=0 → female; the style is seeded by the input alone
    block = ckpt.layout.blocks[0]
    male = block.offset + ckpt.layout.spaces[0].names.index("Male")
    c = np.zeros((3, ckpt.layout.c_dim), np.float32)
    c[[0, 2], male] = 1
    out = tr.generate(x, c)
    again = torch.cat([tr.generate(x[i:i + 1], c[i:i + 1]) for i in (0, 1, 2)])
    assert torch.allclose(out, again, atol=1e-4)  # batch size changes the rounding only
    assert not torch.allclose(out, x)


def test_translate_cli_to_male(home, tmp_path, make_dataset):
    from PIL import Image
    from typer.testing import CliRunner

    from starcli.cli import app
    from starcli.engine import train

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    result = train(_cfg(home, tmp_path, iters=1, save_every=1, sample_every=0))
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(src / "face.png")
    res = CliRunner().invoke(app, ["translate", str(src), "--checkpoint", result["checkpoint"],
                                   "--to", "male", "--to", "Male=0", "--out",
                                   str(tmp_path / "out"), "--device", "cpu", "--home",
                                   str(home)])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "out").rglob("*.png"))) == 2


def test_sources_drop_rows_in_no_domain_and_the_grid_shows_every_domain(home, tmp_path,
                                                                        make_dataset):
    from starcli.data.dataset import TrainStream
    from starcli.engine import attach_step, build_parts, describe_run
    from starcli.families.stargan_v2.samples import FACES, STYLES

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    plan = describe_run(_cfg(home, tmp_path, domains="Blond_Hair,Black_Hair"))
    built = build_parts(plan)
    step = attach_step(plan, built)
    names = plan.layout.spaces[0].names
    blond, black = names.index("Blond_Hair"), names.index("Black_Hair")
    stream = TrainStream(plan.datasets, plan.layout, batch_size=8, seed=0)
    try:
        batch = next(stream)
    finally:
        stream.close()
    labels = batch.labels.numpy()
    inside = (labels[:, blond] > 0.5) ^ (labels[:, black] > 0.5)
    x, y = step.sources(batch)
    assert len(x) == int(inside.sum())
    assert torch.equal(y, torch.from_numpy(labels[inside][:, black] > 0.5).long())
    # rows in no domain are dropped; a batch with none in either trains on pool images
    bare = batch.labels.clone()
    bare[:3, blond] = 0
    bare[:3, black] = 0
    part = type(batch)(batch.images, bare, batch.c, batch.space_index, batch.indices)
    x1, _ = step.sources(part)
    assert len(x1) == int(inside[3:].sum())
    bare[:, [blond, black]] = 0
    x2, y2 = step.sources(type(batch)(batch.images, bare, batch.c, batch.space_index,
                                      batch.indices))
    assert len(x2) == len(bare) and set(y2.tolist()) <= {0, 1}
    assert x2.min() >= -1 and x2.max() <= 1
    grid = plan.family.sampler(plan.datasets, plan.layout, torch.device("cpu")).grid(
        {**built.modules, **built.averages}, plan.runtime)
    s, pad = 32, 2
    latent_w = (1 + STYLES) * (s + pad) + pad  # input + styles, a row per face and domain
    matrix_w = (1 + FACES) * (s + pad) + pad  # beside it: references down, faces across
    assert grid.shape == (FACES * 2 * (s + pad) + pad, latent_w + 8 + matrix_w, 3)
    # The matrix's top-left tile is blank (white) and its top row shows the faces.
    corner = grid[pad:pad + s, latent_w + 8 + pad:latent_w + 8 + pad + s]
    assert (corner == 255).all()


def test_w_hpf_trains_with_a_wing_file_and_its_checkpoint_translates(home, tmp_path,
                                                                   make_dataset):
    from starcli.checkpoint import load_checkpoint, read_meta
    from starcli.engine import resume_config, train
    from starcli.families import get_family
    from starcli.families.stargan_v2.fan import FAN, face_masks

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    torch.manual_seed(3)
    fan_sd = FAN().state_dict()  # random landmark weights stand in for wing.ckpt
    wing = tmp_path / "wing.ckpt"
    torch.save({"state_dict": fan_sd}, wing)
    cfg = _cfg(home, tmp_path, w_hpf=1.0, wing=str(wing), iters=2, batch_size=2,
               save_every=2, sample_every=0)  # a grid costs 30+ FAN passes
    result = train(cfg)
    ckpt_dir = result["checkpoint"]
    meta = read_meta(ckpt_dir)
    assert meta["model"]["masks"] is True and "FAN" in meta["modules"]
    resumed = train(resume_config(str(ckpt_dir), iters=3))
    assert resumed["resumed_from"] == 2 and resumed["step"] == 3
    moved = wing.rename(tmp_path / "moved-wing.ckpt")  # a resume may say where it went
    again = train(resume_config(str(tmp_path / "run"), iters=4, wing=str(moved)))
    assert again["resumed_from"] == 3 and again["step"] == 4
    moved.unlink()  # translate needs nothing but the checkpoint
    ckpt = load_checkpoint(ckpt_dir)
    fan = ckpt.modules["FAN"]
    assert all(torch.equal(v, fan.state_dict()[k]) for k, v in fan_sd.items())
    tr = get_family("stargan-v2").translator(ckpt, torch.device("cpu"), "fp32")
    x = tr.to_input(np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8))
    s = torch.randn(2, ckpt.model.style_dim)
    got = tr.generate_styled(x, s)
    with torch.no_grad():
        assert torch.allclose(got, ckpt.G(x, s, masks=face_masks(fan, x)), atol=1e-5)
        assert not torch.allclose(got, ckpt.G(x, s), atol=1e-4)


def test_masks_come_from_x_real_then_from_the_fake_for_the_cycle(home, tmp_path, make_dataset,
                                                                 monkeypatch):
    from starcli.engine import attach_step, build_parts, describe_run
    from starcli.families.stargan_v2 import step as step_module
    from starcli.families.stargan_v2.fan import FAN

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    wing = tmp_path / "wing.ckpt"
    torch.save({"state_dict": FAN().state_dict()}, wing)
    plan = describe_run(_cfg(home, tmp_path, w_hpf=1.0, wing=str(wing), batch_size=2))
    built = build_parts(plan)
    step = attach_step(plan, built)
    seen = []

    def fake_masks(fan, x):
        seen.append(x.detach().clone())
        ones = torch.ones(x.shape[0], 1, 256, 256)
        return ones, ones * 0.5

    monkeypatch.setattr(step_module, "face_masks", fake_masks)
    x_real, _ = step.sources(_batch(plan))
    real_rows = {tuple(r.flatten()[:16].tolist()) for r in x_real}
    with torch.random.fork_rng(devices=[]):
        step(1, _batch(plan))
    # once from the sources (both D steps, G's first passes), then once per G step's cycle
    assert len(seen) == 3
    assert {tuple(r.flatten()[:16].tolist()) for r in seen[0]} <= real_rows
    assert all(not torch.allclose(s, seen[0]) for s in seen[1:])
