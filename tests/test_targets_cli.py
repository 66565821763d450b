"""`starcli translate` through the CLI: a bad `--labels` table is one line and exit 2; `--align
--paste-back` works on a photo wider than OpenCV's warpAffine accepts."""

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


def _test_module(name: str):
    # pytest runs with --import-mode=importlib, so sibling test files are not importable.
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_align_and_paste_back_on_a_panorama_wider_than_opencv_allows(run_dir, tmp_path):
    drawn_face = _test_module("test_align").drawn_face  # the cartoon face the cascade finds
    # 40000 px wide (warpAffine refuses 32767 and up); before the fix it was skipped with
    # "(-215:Assertion failed) ... in function 'remap'" and the run ended with exit 1.
    strip = np.full((64, 40_000, 3), 60, np.uint8)
    strip[:, 35_000:35_064] = drawn_face(64)[0]
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(strip).save(folder / "pano.png")
    out = tmp_path / "out"
    res = runner.invoke(app, ["translate", str(folder), "--to", "Blond_Hair", "-c", str(run_dir),
                              "-o", str(out), "--device", "cpu", "--precision", "fp32",
                              "--align", "--paste-back"])
    assert res.exit_code == 0, res.output
    with Image.open(out / "Blond_Hair" / "pano.png") as written:
        pasted = np.asarray(written.convert("RGB"))
    assert pasted.shape == strip.shape
    changed = np.flatnonzero(np.abs(pasted.astype(int) - strip).max(axis=(0, 2)))
    assert changed.size and 34_900 <= changed.min() and changed.max() < 35_200  # the face only
