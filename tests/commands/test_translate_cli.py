"""`starcli translate`: options reach the engine, exit codes, and a real tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import starcli.translate as engine
from starcli.checkpoint import save_checkpoint
from starcli.cli import app
from starcli.data.labels import LabelLayout, LabelSpace
from starcli.families.stargan_v1.networks import Discriminator, Generator, ModelConfig

runner = CliRunner()
HAIR = ("Black_Hair", "Blond_Hair", "Brown_Hair")
LAYOUT = LabelLayout((LabelSpace("demo-celeba", "celeba", "multilabel",
                                 (*HAIR, "Male", "Young"), (HAIR,)),))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    cfg = ModelConfig(image_size=32, c_dim=5, g_conv_dim=8, d_conv_dim=8, g_repeat_num=1,
                      d_repeat_num=3)
    torch.manual_seed(0)
    meta = {"model": cfg.to_dict(), "labels": LAYOUT.to_dict(), "train": {}, "datasets": []}
    save_checkpoint(tmp_path / "run", 3, {"G": Generator(cfg), "D": Discriminator(cfg)}, meta, None,
                    keep_last=1)
    return tmp_path / "run"


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(
            folder / f"p{i}.jpg")
    (folder / "broken.jpg").write_text("not an image")
    return folder


def test_options_reach_the_engine(monkeypatch, tmp_path):
    seen = {}

    def fake(cfg, progress=None):
        seen["cfg"] = cfg
        return engine.TranslateResult(
            out=cfg.out, manifest=cfg.out / "manifest.csv", checkpoint=Path("ck"),
            device="cpu", precision="fp32", targets=[{"spec": "Male", "slug": "Male",
                                                      "notes": []}],
            inputs=1, translated=1, existing=0, written=1, skipped=[], seconds=1.0,
            images_per_s=1.0)

    monkeypatch.setattr(engine, "translate", fake)
    res = runner.invoke(app, ["translate", "a.jpg", "dir", "--to", "Male", "-t", "Young=flip",
                              "-c", "runs/x", "-o", str(tmp_path / "o"), "-b", "4",
                              "--device", "cpu", "--precision", "bf16", "--format", "JPG",
                              "--grid", "--overwrite", "--manifest", "csv", "--align",
                              "--paste-back", "--mix-label-spaces", "--workers", "3"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert cfg.inputs == (Path("a.jpg"), Path("dir"))
    assert cfg.targets == ("Male", "Young=flip")
    assert cfg.checkpoint == Path("runs/x") and cfg.batch_size == 4
    assert (cfg.precision, cfg.format, cfg.manifest, cfg.workers) == ("bf16", "jpg", "csv", 3)
    assert cfg.grid and cfg.overwrite and cfg.align and cfg.paste_back and cfg.mix_label_spaces


def test_real_run_with_json(run_dir, photos, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["translate", str(photos), "--to", "Blond_Hair", "--to", "Male=0",
                              "-c", str(run_dir), "-o", str(out), "--precision", "fp32",
                              "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["translated"] == 3 and summary["written"] == 6
    assert summary["skipped"][0]["input"].endswith("broken.jpg")
    assert (out / "Male=0" / "p2.png").is_file()
    assert "translated 3 images to 2 targets" in res.stderr
    assert "1 skipped" in res.stderr


def test_unknown_label_exit_2_lists_labels(run_dir, photos, tmp_path):
    res = runner.invoke(app, ["translate", str(photos), "--to", "Blonde_Hair", "-c",
                              str(run_dir), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "Did you mean Blond_Hair?" in res.output and "demo-celeba: Black_Hair" in res.output


def test_bad_checkpoint_exit_1(photos, tmp_path):
    res = runner.invoke(app, ["translate", str(photos), "--to", "Male", "-c",
                              str(tmp_path / "missing-run"), "-o", str(tmp_path / "out")])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_nothing_readable_exit_1(run_dir, tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    res = runner.invoke(app, ["translate", str(folder), "--to", "Male", "-c", str(run_dir),
                              "-o", str(tmp_path / "out")])
    assert res.exit_code == 1 and "could be translated" in res.output


def test_paste_back_without_align_exit_2(run_dir, photos, tmp_path):
    res = runner.invoke(app, ["translate", str(photos), "--to", "Male", "--paste-back", "-c",
                              str(run_dir)])
    assert res.exit_code == 2 and "--paste-back needs --align" in res.output


def test_help_mentions_examples():
    res = runner.invoke(app, ["translate", "--help"])
    assert res.exit_code == 0 and "--paste-back" in res.output and "Examples" in res.output


def test_non_utf8_names_are_one_escaped_line_each(run_dir, photos, tmp_path):
    """Names whose bytes are not UTF-8 reach the summary, the log and the CSV manifest as
    \\xNN escapes: no UnicodeEncodeError, exit 0."""
    import os

    raw = os.fsencode(photos)
    os.rename(photos / "p0.jpg", os.fsdecode(raw + b"/\xff-p0.jpg"))
    with open(os.fsdecode(raw + b"/caf\xe9.jpg"), "w") as fh:
        fh.write("not an image")
    out = tmp_path / "out"
    res = runner.invoke(app, ["translate", str(photos), "--to", "Male=0", "-c", str(run_dir),
                              "-o", str(out), "--precision", "fp32", "--manifest", "csv",
                              "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["translated"] == 3
    assert sorted(Path(s["input"]).name for s in summary["skipped"]) == ["broken.jpg",
                                                                         "caf\\xe9.jpg"]
    assert f"skipped {photos / 'caf'}\\xe9.jpg: not an image" in res.stderr
    manifest = (out / "manifest.csv").read_bytes().decode("utf-8")
    assert "\\xff-p0.jpg,translated" in manifest
