"""The CycleGAN family: networks, the fake pool, the step, exact resume, translate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from starcli.config import TrainConfig
from starcli.errors import ConfigError
from starcli.families.cyclegan.networks import (
    CycleGANModel,
    PatchDiscriminator,
    ResnetGenerator,
    count_parameters,
    receptive_field,
)
from starcli.families.cyclegan.step import ImagePool

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(home, tmp_path, **kw):
    values = dict(datasets=("demo-celeba",), home=str(home), device="cpu", precision="fp32",
                  run_dir=str(tmp_path / "run"), log_every=1)
    values.update(kw)
    return TrainConfig.from_preset("tiny", family="cyclegan", **values)


def test_generator_keeps_the_shape_and_paper_sizes():
    G = ResnetGenerator(ngf=8, n_blocks=2)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = G(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    with torch.device("meta"):
        assert count_parameters(ResnetGenerator(64, 9)) == 11_378_179
        assert count_parameters(PatchDiscriminator(64, 3)) == 2_764_737
    # reflection padding: no zero border leaks in (the stem pads by reflection)
    assert isinstance(G.net[0], torch.nn.ReflectionPad2d)
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in G.modules())


def test_patchgan_sees_70_by_70_pixels():
    assert receptive_field(3) == 70
    D = PatchDiscriminator(ndf=2, n_layers=3).double()
    # Instance norm couples every pixel through its statistics: measure the convs alone.
    for i, m in enumerate(D.net):
        if isinstance(m, torch.nn.InstanceNorm2d):
            D.net[i] = torch.nn.Identity()
    x = torch.zeros(1, 3, 160, 160, dtype=torch.double, requires_grad=True)
    out = D(x)
    assert out.shape[:2] == (1, 1)
    h, w = out.shape[2] // 2, out.shape[3] // 2
    out[0, 0, h, w].backward()
    rows = torch.nonzero(x.grad.abs().sum((0, 1, 3)) > 0).flatten()
    cols = torch.nonzero(x.grad.abs().sum((0, 1, 2)) > 0).flatten()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_pool_fills_then_swaps_half_and_round_trips():
    gen = torch.Generator().manual_seed(0)
    pool = ImagePool(4)
    first = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    assert torch.equal(pool.query(first, gen), first) and len(pool) == 4
    new = torch.arange(100.0, 300.0).view(200, 1, 1, 1).expand(200, 3, 2, 2)
    out = pool.query(new, gen)
    swapped = (out[:, 0, 0, 0] != new[:, 0, 0, 0]).sum().item()
    assert len(pool) == 4 and 60 < swapped < 140  # about half come from the pool
    # what D sees instead is an older fake (the first ones or earlier new ones)
    older = out[:, 0, 0, 0] < new[:, 0, 0, 0]
    assert torch.equal(older, out[:, 0, 0, 0] != new[:, 0, 0, 0])
    again = ImagePool(4)
    again.load_state_dict(pool.state_dict())
    assert torch.equal(again.images, pool.images)
    assert torch.equal(ImagePool(0).query(new, gen), new)
    same = ImagePool(4)
    same.load_state_dict(again.state_dict())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(again.query(new, g1), same.query(new, g2))  # size 0: no pool


def test_domains_are_checked_before_work(home, tmp_path, make_dataset):
    from starcli.engine import describe_run

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    with pytest.raises(ConfigError, match="--domains"):
        describe_run(_cfg(home, tmp_path, domains="Male,Black_Hair"))
    with pytest.raises(ConfigError, match="--domains is needed"):
        describe_run(_cfg(home, tmp_path, domains=""))
    with pytest.raises(ConfigError, match="needs exactly 2"):
        describe_run(_cfg(home, tmp_path, domains="Black_Hair"))  # a group: its members
    plan = describe_run(_cfg(home, tmp_path, domains="Blond_Hair,Black_Hair"))
    assert plan.model.domains.names == ("Blond_Hair", "Black_Hair")
    assert plan.model.n_blocks == 1 and set(plan.summary()["parameters"]) == \
        {"G_AB", "G_BA", "D_A", "D_B"}
    assert CycleGANModel.from_dict(plan.model.to_dict()) == plan.model
    auto = describe_run(_cfg(home, tmp_path, n_blocks=0))
    assert auto.model.n_blocks == 6  # the paper's count at 128 px and below


def test_step_trains_each_direction_on_its_rows(home, tmp_path, make_dataset):
    from starcli.data.dataset import TrainStream
    from starcli.engine import attach_step, build_parts, describe_run

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    plan = describe_run(_cfg(home, tmp_path, lambda_identity=0.0))
    parts = build_parts(plan)
    step = attach_step(plan, parts)
    stream = TrainStream(plan.datasets, plan.layout, batch_size=8, seed=0)
    try:
        batch = next(stream)
        male = batch.labels[:, 2] > 0.5
        real_a, real_b = step._sides(batch, batch.model_input())
        assert real_a.shape[0] == int((~male).sum()) and real_b.shape[0] == int(male.sum())
        # a batch of one domain only: the other side reuses its latest real images
        only_a = type(batch)(batch.images[~male], batch.labels[~male], batch.c[~male],
                             batch.space_index, batch.indices[~male])
        a2, b2 = step._sides(only_a, only_a.model_input())
        assert torch.equal(b2, real_b)
        values = step(1, batch)
    finally:
        stream.close()
    assert set(values) == {"G/loss", "G/adv", "G/cycle", "G/idt", "D/loss", "D/A", "D/B"}
    # G's loss is adversarial + 10 x cycle (+ identity weighted 0 here)
    assert torch.allclose(values["G/loss"], values["G/adv"] + 10 * values["G/cycle"])
    assert len(step.pools[0]) == min(4, len(real_b)) and len(step.pools[1]) == \
        min(4, len(real_a))


def test_resume_is_exact_with_the_pools(home, tmp_path, make_dataset):
    from starcli.checkpoint import load_training_state
    from starcli.engine import resume_config, train

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    cfg = _cfg(home, tmp_path, iters=6, save_every=3, sample_every=3, keep_last=5)
    straight = train(cfg)
    run = Path(straight["run_dir"])
    older = run / "checkpoints" / "step-00000003"
    assert older.is_dir()
    resumed = train(resume_config(str(older)))
    assert resumed["resumed_from"] == 3 and resumed["step"] == 6
    a, b = Path(straight["checkpoint"]), Path(resumed["checkpoint"])
    from safetensors.torch import load_file

    for name in ("G_AB", "G_BA", "D_A", "D_B"):
        wa = load_file(str(a / f"{name}.safetensors"))
        wb = load_file(str(b / f"{name}.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{name} differs after resume"
    sa, sb = load_training_state(a)["cyclegan"], load_training_state(b)["cyclegan"]
    assert sa["pool_A"]["images"].shape[0] == 4  # the pool was full and swapping
    for key in ("reserve_A", "reserve_B"):
        assert torch.equal(sa[key], sb[key])
    for key in ("pool_A", "pool_B"):
        assert torch.equal(sa[key]["images"], sb[key]["images"])
    assert (run / "samples").is_dir() and any((run / "samples").iterdir())


def test_translate_cli_on_a_tiny_checkpoint(home, tmp_path, make_dataset, monkeypatch):
    from PIL import Image
    from typer.testing import CliRunner

    from starcli.cli import app
    from starcli.engine import train

    make_dataset(home, "demo-rafd", "rafd", seed=2)
    cfg = TrainConfig.from_preset("tiny", family="cyclegan", datasets=("demo-rafd",),
                                  home=str(home), device="cpu", precision="fp32",
                                  run_dir=str(tmp_path / "run"), iters=2, domains="happy,sad")
    result = train(cfg)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(src / "face.png")
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(app, ["translate", str(src), "--checkpoint", result["checkpoint"],
                              "--to", "sad", "--to", "happy", "--to", "angry", "--out", str(out),
                              "--device", "cpu", "--home", str(home)])
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in out.rglob("*.png"))
    assert len(files) == 3, files
    from starcli.checkpoint import load_checkpoint
    from starcli.families import get_family

    ckpt = load_checkpoint(result["checkpoint"])
    tr = get_family("cyclegan").translator(ckpt, torch.device("cpu"), "fp32")
    x = tr.to_input(np.full((2, 32, 32, 3), 120, np.uint8))
    c = np.zeros((2, 8), np.float32)
    c[0, 6], c[1, 0] = 1, 1  # sad (B: G_AB), angry (neither domain: unchanged)
    y = tr.generate(x, c)
    with torch.inference_mode():
        assert torch.allclose(y[0:1], ckpt.modules["G_AB"](x[0:1]))
    assert torch.equal(y[1], x[1])
    assert json.loads((Path(result["checkpoint"]) / "meta.json").read_text())["family"] == \
        "cyclegan"


def test_translate_on_a_multilabel_dataset_needs_no_labels(home, tmp_path, make_dataset):
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
                                   "--to", "Male", "--to", "Male=0", "--out",
                                   str(tmp_path / "out"), "--device", "cpu", "--home",
                                   str(home)])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "out").rglob("*.png"))) == 2


def test_eval_scores_only_the_two_directions_of_its_domains(home, tmp_path, make_dataset):
    import json

    from typer.testing import CliRunner

    from starcli.checkpoint import load_checkpoint
    from starcli.cli import app
    from starcli.data.dataset import open_prepared
    from starcli.engine import train
    from starcli.evaluate import reachable_targets

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    result = train(_cfg(home, tmp_path, iters=2, save_every=2, sample_every=0, domains="Male"))
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["eval", "--checkpoint", result["checkpoint"], "--home",
                                   str(home), "--device", "cpu", "--classifier-epochs", "1",
                                   "--metrics", "accuracy,reconstruction", "--out", str(out),
                                   "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    rows = report["datasets"][0]["targets"]
    assert [r["target"] for r in json.loads(res.stdout)["targets"]] == ["Male=1", "Male=0"]
    assert [r["target"] for r in rows] == ["Male=1", "Male=0"]
    for r in rows:
        assert 0 <= r["success"] <= 1 and 0 <= r["retention"] <= 1
        assert 0 < r["identity_l1"] <= 2 and 0 < r["cycle_l1"] <= 2
    assert (out / "report.md").is_file() and "Male=1" in (out / "report.md").read_text()

    # A hair pair reaches its two colours only, not the other colours or Male.
    hair = train(_cfg(home, tmp_path / "hair", iters=1, save_every=1, sample_every=0,
                      domains="Black_Hair,Blond_Hair"))
    ckpt = load_checkpoint(hair["run_dir"], with_discriminator=False)
    ds = open_prepared(home, "demo-celeba", 32)
    names = [t.name for t in reachable_targets(ckpt, ckpt.layout.spaces[0], ds.labels("test"))]
    assert names == ["Black_Hair", "Blond_Hair"]
