"""Checkpoints written before model families existed load and resume as StarGAN v1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from starcli.checkpoint import load_checkpoint, read_meta, resolve_checkpoint
from starcli.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "legacy_v1"


@pytest.fixture
def legacy_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    return run


def test_legacy_meta_has_no_family_and_loads_as_stargan_v1(legacy_run):
    meta = read_meta(resolve_checkpoint(legacy_run))
    assert "family" not in meta and meta["version"] == 1
    ckpt = load_checkpoint(legacy_run)
    assert ckpt.family == "stargan-v1" and ckpt.ema and ckpt.step == 4
    want = load_file(str(FIXTURE / "expected_outputs.safetensors"))
    with torch.no_grad():
        y = ckpt.G(want["x"], want["c"])
        src, cls = ckpt.D(want["x"])
    torch.testing.assert_close(y, want["G_ema_out"], rtol=0, atol=1e-6)
    torch.testing.assert_close(src, want["D_src"], rtol=0, atol=1e-6)
    torch.testing.assert_close(cls, want["D_cls"], rtol=0, atol=1e-6)


def test_legacy_checkpoint_resumes_exactly_like_the_old_code(legacy_run, home, make_dataset):
    from starcli.engine import resume_config, train

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    cfg = resume_config(legacy_run, home=str(home))
    assert cfg.family == "stargan-v1" and cfg.g_conv_dim == 4 and cfg.iters == 6
    result = train(cfg)
    assert result["step"] == 6 and result["resumed_from"] == 4
    after = load_file(str(FIXTURE / "expected_step6.safetensors"))
    ckpt_dir = legacy_run / "checkpoints" / "step-00000006"
    before_dir = FIXTURE / "run" / "checkpoints" / "step-00000004"
    for name in ("G", "G_ema", "D"):
        mine = load_file(str(ckpt_dir / f"{name}.safetensors"))
        start = load_file(str(before_dir / f"{name}.safetensors"))
        diff = torch.cat([(v - after[f"{name}.{k}"]).abs().flatten() for k, v in mine.items()])
        moved = torch.cat([(after[f"{name}.{k}"] - start[k]).abs().flatten() for k in mine])
        # Bit-identical on the CPU that wrote the fixture; another CPU's fp32 conv kernels
        # (AVX2 vs AVX-512/AMX) round differently, and Adam turns a sign flip of a
        # near-zero gradient into a full step on that one weight. So: nearly every weight
        # equal, none off by more than what two steps move a weight.
        assert (diff > 1e-6).float().mean() < 0.05, name
        assert diff.max() <= 2 * moved.max() + 1e-6, name
        assert moved.mean() > 10 * diff.mean(), name
    old = json.loads((FIXTURE / "expected_metrics.json").read_text())[-1]
    new = [json.loads(line) for line in (legacy_run / "metrics.jsonl").read_text().splitlines()]
    new = next(r for r in new if r["step"] == old["step"])
    for key in ("D/loss", "D/gp", "G/loss", "G/rec", "G/cls", "lr_g", "lr_d"):
        assert new[key] == pytest.approx(old[key], rel=1e-3), key
    assert read_meta(ckpt_dir)["family"] == "stargan-v1"


def test_legacy_checkpoint_translates_from_the_cli(legacy_run, tmp_path, home):
    faces = tmp_path / "faces"
    faces.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(faces / f"{i}.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["translate", str(faces), "--to", "Blond_Hair", "-c",
                                      str(legacy_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (out / "Blond_Hair").iterdir())
    assert written == ["0.png", "1.png", "2.png"]
