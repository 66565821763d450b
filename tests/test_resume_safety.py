"""Resume: weights checked before anything is built, learning rates that may change after a
non-finite loss, and checkpoints recovered from a writer that died mid-swap."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from starcli.checkpoint import list_checkpoints, load_training_state
from starcli.config import TrainConfig
from starcli.errors import CheckpointError, TrainingError

pytestmark = pytest.mark.usefixtures("one_thread")


def _training_helpers():
    path = Path(__file__).resolve().parent / "test_training.py"
    spec = importlib.util.spec_from_file_location("_starcli_training_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-step tiny run with checkpoints at steps 3 and 6 (tests copy it before changing it)."""
    from starcli.engine import train

    root = tmp_path_factory.mktemp("trained")
    home = root / "home"
    _training_helpers().make_dataset(home)
    cfg = _tiny(home, root / "run")
    train(cfg)
    return home, root / "run"


def _tiny(home: Path, run: Path, **overrides) -> TrainConfig:
    values = dict(datasets=("demo-celeba",), home=str(home), device="cpu", precision="fp32",
                  run_dir=str(run), iters=6, save_every=3, sample_every=0, log_every=1)
    values.update(overrides)
    return TrainConfig.from_preset("tiny", **values)


def _copy(trained, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained[1], run)
    return run


def test_resume_checks_the_weight_headers_before_building(trained, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    import starcli.engine.loop as loop
    from starcli.engine import resume_config, train
    from starcli.families.stargan_v1.networks import Generator, ModelConfig

    run = _copy(trained, tmp_path)
    narrow = ModelConfig(image_size=32, c_dim=3, g_conv_dim=4, g_repeat_num=1, d_repeat_num=3)
    save_file(Generator(narrow).state_dict(), str(run / "checkpoints" / "step-00000006" /
                                                  "G.safetensors"))

    def no_build(plan):
        raise AssertionError("the networks were built before the weights were checked")

    monkeypatch.setattr(loop, "build_parts", no_build)
    with pytest.raises(CheckpointError, match=r"step-00000006/G.safetensors does not match the "
                                              r"model in meta.json \(stem.conv.weight"):
        train(resume_config(run))


def test_after_a_nan_resume_with_lower_learning_rates(trained, tmp_path, monkeypatch):
    import starcli.families.stargan_v1.step as step_module
    from starcli.engine import resume_config, train

    home = trained[0]
    real = step_module.reconstruction_loss
    calls = {"n": 0}

    def poisoned(x, x_rec):
        calls["n"] += 1
        loss = real(x, x_rec)
        return loss * float("nan") if calls["n"] >= 4 else loss

    monkeypatch.setattr(step_module, "reconstruction_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as info:
        train(_tiny(home, run, iters=12, n_critic=1, save_every=3))
    good = run / "checkpoints" / "step-00000003"
    message = str(info.value)
    assert f"resume from {good} with lower --g-lr/--d-lr" in message
    assert f"starcli train --resume {good} --g-lr 0.0005 --d-lr 0.0005" in message
    assert "--precision fp32" not in message  # the run already is fp32
    monkeypatch.setattr(step_module, "reconstruction_loss", real)

    cfg = resume_config(good, g_lr=5e-4, d_lr=2e-4)
    assert (cfg.g_lr, cfg.d_lr) == (5e-4, 2e-4)
    result = train(cfg)
    assert result["step"] == 12 and result["run_dir"] == str(run.resolve())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    after = [r for r in records if r["step"] > 3]
    assert [r["step"] for r in after] == list(range(4, 13))
    assert all(r["lr_g"] == cfg.lr_at(r["step"], 5e-4) for r in after)
    assert all(r["lr_d"] == cfg.lr_at(r["step"], 2e-4) for r in after)
    state = load_training_state(list_checkpoints(run)[-1])
    assert state["opt_g"]["param_groups"][0]["lr"] == pytest.approx(cfg.lr_at(12, 5e-4))
    env = json.loads((run / "environment.json").read_text())
    assert env["resumes"][-1]["step"] == 3
    assert env["resumes"][-1]["changed"] == {"g_lr": [1e-3, 5e-4], "d_lr": [1e-3, 2e-4]}
    assert json.loads((run / "config.json").read_text())["options"]["g_lr"] == 5e-4

    # Other option fields still cannot change.
    from starcli.errors import ConfigError

    with pytest.raises(ConfigError, match="--g-conv-dim cannot change"):
        resume_config(run, g_conv_dim=16)


def test_resume_restores_a_checkpoint_a_dead_writer_moved_aside(trained, tmp_path):
    import os
    import subprocess

    from starcli.engine import resume_config

    run = _copy(trained, tmp_path)
    proc = subprocess.Popen(["true"])
    proc.wait()
    root = run / "checkpoints"
    os.replace(root / "step-00000006", root / f".old-step-00000006-{proc.pid}")
    cfg = resume_config(run)
    assert cfg.resume == str(root / "step-00000006")
    assert not list(root.glob(".old-*"))
