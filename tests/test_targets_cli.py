"""`starcli translate --labels CSV` through the CLI: a bad table is one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

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
    save_checkpoint(tmp_path / "run", 3, {"G": Generator(cfg), "D": Discriminator(cfg)}, meta,
                    None, keep_last=1)
    return tmp_path / "run"


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "p0.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(path)
    return path


def _translate(run_dir: Path, photo: Path, labels: Path, out: Path):
    return runner.invoke(app, ["translate", str(photo), "--to", "Blond_Hair", "-c", str(run_dir),
                               "-o", str(out), "--device", "cpu", "--precision", "fp32",
                               "--labels", str(labels)])


@pytest.mark.parametrize("body, fragment", [
    (b"file,Male\np0.jpg,1\nJos\xe9.jpg,0\n", "line 3: byte 0xe9 is not UTF-8"),
    (b"file,Male\np0.jpg,inf\n", "line 2: column 'Male': 'inf' is not a label value"),
    (b"file,Male\np0.jpg,0.5\n", "line 2: column 'Male': '0.5' is not a label value"),
    (b"file,Young\np0.jpg,1\nq.jpg,5\n", "line 3: column 'Young': '5' is not a label value"),
])
def test_bad_labels_csv_is_one_line_and_exit_2(run_dir, photo, tmp_path, body, fragment):
    labels = tmp_path / "bad.csv"
    labels.write_bytes(body)
    res = _translate(run_dir, photo, labels, tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    text = " ".join(" ".join(lines).split())  # rich may wrap a long path
    assert "Traceback" not in res.output
    assert f"--labels {labels}" in text and fragment in text
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # before any work


def test_good_labels_csv_translates(run_dir, photo, tmp_path):
    labels = tmp_path / "good.csv"
    labels.write_text("file,Male,Young\np0.jpg,1,-1\n")
    out = tmp_path / "out"
    res = _translate(run_dir, photo, labels, out)
    assert res.exit_code == 0, res.output
    assert len(list(out.rglob("p0.*"))) == 1
