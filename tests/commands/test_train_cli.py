"""`starcli train`: options → TrainConfig, exit codes, dry run, a real tiny run and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starcli.cli import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def prepared(home, tmp_path, monkeypatch, make_dataset):

    make_dataset(home, "demo-celeba", "celeba", seed=1)
    make_dataset(home, "demo-rafd", "rafd", seed=2)
    monkeypatch.chdir(tmp_path)  # runs/ goes here
    return home


TINY = ["--preset", "tiny", "--device", "cpu", "--precision", "fp32"]


def test_help_has_an_example():
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    assert "starcli train --dataset demo-celeba" in result.stdout
    assert "--resume" in result.stdout and "--gpus" in result.stdout


def test_options_reach_the_engine(prepared, monkeypatch):
    import starcli.engine

    seen = {}

    def fake_train(cfg, progress=None, **kw):
        seen["cfg"] = cfg
        return {"interrupted": False, "step": cfg.iters, "iters": cfg.iters, "seconds": 1.0,
                "images_per_s": 2.0, "device": "cpu", "precision": "fp32", "run_dir": "r",
                "checkpoint": "c", "samples": None, "metrics": {}, "resume_command": "x"}

    monkeypatch.setattr(starcli.engine, "train", fake_train)
    result = runner.invoke(app, ["train", "--joint", "--dataset", "demo-celeba,demo-rafd",
                                 "--mix", "2,1", "--iters", "7", "--batch-size", "16",
                                 "--adv-loss", "lsgan", "--lambda-rec", "5", "--no-channels-last",
                                 "--keep", "4", "--json", *TINY])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert cfg.datasets == ("demo-celeba", "demo-rafd") and cfg.joint and cfg.mix == (2.0, 1.0)
    assert (cfg.iters, cfg.batch_size, cfg.adv_loss, cfg.lambda_rec, cfg.channels_last,
            cfg.keep_last, cfg.preset) == (7, 16, "lsgan", 5.0, False, 4, "tiny")
    assert cfg.n_critic == 2  # untouched: the preset's value
    assert json.loads(result.stdout)["step"] == 7


def test_dry_run_prints_resolved_config(prepared):
    result = runner.invoke(app, ["train", "-d", "demo-celeba", "--dry-run", "--json", *TINY])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["config"]["image_size"] == 32 and summary["model"]["c_dim"] == 3
    assert summary["parameters"]["G"] > 0
    human = runner.invoke(app, ["train", "-d", "demo-celeba", "--dry-run", *TINY])
    assert human.exit_code == 0 and '"batch_size": 8' in human.stderr
    assert "dry run" in human.stderr


@pytest.mark.parametrize("args, code, text", [
    (["-d", "no-such-set"], 2, "Unknown dataset"),
    (["-d", "demo-celeba", "--image-size", "64"], 2, "prepared at 32px"),
    (["-d", "demo-celeba", "--d-repeat-num", "6"], 2, "too deep"),
    (["-d", "demo-celeba,demo-rafd"], 2, "--joint"),
    (["-d", "demo-celeba", "--adv-loss", "wgan"], 2, "--adv-loss"),
    (["-d", "celeba"], 1, "starcli prepare celeba"),
    (["--resume", "nowhere"], 1, "does not exist"),
])
def test_bad_requests_exit_before_work(prepared, tmp_path, args, code, text):
    result = runner.invoke(app, ["train", *args, *TINY])
    assert result.exit_code == code, result.output
    assert text in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_small_batch_warns(prepared, monkeypatch):
    import starcli.engine

    monkeypatch.setattr(starcli.engine, "train", lambda cfg, **kw: {
        "interrupted": True, "step": 1, "iters": 2, "checkpoint": "ck", "resume_command": "R"})
    result = runner.invoke(app, ["train", "-d", "demo-celeba", "--batch-size", "4", *TINY])
    assert result.exit_code == 0
    assert "below 8" in result.stderr
    assert "Interrupted" in result.stderr and "Resume with: R" in result.stderr


def test_real_tiny_run_then_resume(prepared, tmp_path):
    result = runner.invoke(app, ["train", "-d", "demo-celeba", "--iters", "2", "--json", *TINY])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["step"] == 2 and out["checkpoint"].endswith("step-00000002")
    assert (tmp_path / "runs" / "latest").resolve() == tmp_path / "runs" / \
        out["run_dir"].rsplit("/", 1)[-1]

    more = runner.invoke(app, ["train", "--resume", "latest", "--iters", "4", "--json"])
    assert more.exit_code == 0, more.output
    again = json.loads(more.stdout)
    assert again["resumed_from"] == 2 and again["step"] == 4
    assert again["run_dir"] == out["run_dir"]

    # The learning rates may change on resume (the way out of a non-finite loss).
    lower = runner.invoke(app, ["train", "--resume", "latest", "--iters", "6", "--g-lr", "5e-5",
                                "--d-lr", "5e-5", "--json"])
    assert lower.exit_code == 0, lower.output
    from starcli.config import TrainConfig

    saved = TrainConfig.from_dict(json.loads((Path(out["run_dir"]) / "config.json").read_text()))
    assert saved.g_lr == saved.d_lr == 5e-5
    assert json.loads(lower.stdout)["metrics"]["lr_g"] == saved.lr_at(6, 5e-5) > 0

    changed = runner.invoke(app, ["train", "--resume", "latest", "--image-size", "64"])
    assert changed.exit_code == 2 and "cannot change when resuming" in changed.output


# ---- family options are routed by name to the chosen family's OPTIONS ----------------------

@pytest.mark.parametrize("args, text", [
    (["--no-such-flag", "3"], "no such option --no-such-flag for --family stargan-v1"),
    (["--n-critic", "0"], "Invalid value for '--n-critic': 0 is not in the range x>=1"),
    (["--lambda-rec", "abc"], "'--lambda-rec'"),
    (["--g-ema", "1.0"], "'--g-ema'"),
    (["--adv-loss", "wgan"], "must be one of wgan-gp, lsgan, vanilla, hinge"),
    (["--n-critic"], "requires an argument"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_family_flags_are_checked_before_work(prepared, tmp_path, args, text):
    result = runner.invoke(app, ["train", "-d", "demo-celeba", *TINY, *args])
    assert result.exit_code == 2, result.output
    assert text in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_unknown_flag_lists_the_familys_flags(prepared):
    result = runner.invoke(app, ["train", "-d", "demo-celeba", "--cycle", "1", *TINY])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--n-critic" in text and "--g-ema" in text and "--family stargan-v1" in text


def test_family_flags_reach_the_options_and_help_lists_them(prepared, monkeypatch):
    result = runner.invoke(app, ["train", "-d", "demo-celeba", "--dry-run", "--json", *TINY,
                                 "--n-critic", "3", "--g-ema=0.5", "--lambda-gp", "2"])
    assert result.exit_code == 0, result.output
    options = json.loads(result.stdout)["config"]["options"]
    assert (options["n_critic"], options["g_ema"], options["lambda_gp"]) == (3, 0.5, 2.0)
    helptext = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout
    assert "Options of --family stargan-v1" in helptext and "--n-critic INTEGER" in helptext


def test_gpus_forwards_the_family_flags(prepared, monkeypatch):
    import starcli.engine

    seen = {}

    def fake_launch(n, cfg, words):
        seen.update(n=n, cfg=cfg, words=words)
        return 0

    monkeypatch.setattr(starcli.engine, "launch_local", fake_launch)
    result = runner.invoke(app, ["train", "-d", "demo-celeba", "--gpus", "2", *TINY,
                                 "--n-critic", "3"])
    assert result.exit_code == 0, result.output
    assert seen["words"][-2:] == ["--n-critic", "3"] and "--gpus" not in seen["words"]
    assert seen["cfg"].n_critic == 3


def test_cyclegan_flags_are_its_own(prepared):
    args = ["train", "--family", "cyclegan", "-d", "demo-celeba", "--dry-run", "--json",
            "--device", "cpu", "--precision", "fp32"]
    result = runner.invoke(app, [*args, "--image-size", "32", "--domains", "Blond_Hair,Black_Hair",
                                 "--lambda-cycle", "5", "--pool-size", "7", "--ngf", "8"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["config"]["preset"] == "cyclegan-paper"  # the family's paper preset
    options = summary["config"]["options"]
    assert (options["domains"], options["lambda_cycle"], options["pool_size"]) == \
        ("Blond_Hair,Black_Hair", 5.0, 7)
    assert summary["model"]["domains"]["names"] == ["Blond_Hair", "Black_Hair"]
    v1_flag = runner.invoke(app, [*args, "--image-size", "32", "--n-critic", "2"])
    assert v1_flag.exit_code == 2
    text = " ".join(v1_flag.output.split())
    assert "no such option --n-critic for --family cyclegan" in text and "--domains" in text
    bad = runner.invoke(app, [*args, "--image-size", "32", "--domains", "Male,Blond_Hair"])
    assert bad.exit_code == 2 and "--domains" in bad.output
    helptext = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout
    assert "Options of --family cyclegan" in helptext and "--lambda-cycle FLOAT" in helptext
