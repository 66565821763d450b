"""`starcli eval`: options reach the engine, exit codes, a real tiny run, train-classifier."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import starcli.evaluate as engine
from starcli.checkpoint import save_checkpoint
from starcli.cli import app
from starcli.data.celeba_attrs import CELEBA_ATTRIBUTES
from starcli.data.dataset import content_sha256
from starcli.data.labels import LabelLayout, LabelSpace
from starcli.families.stargan_v1.networks import Discriminator, Generator, ModelConfig

runner = CliRunner()
SIZE = 32
NAMES = ["Black_Hair", "Blond_Hair", "Male"]
SPACE = LabelSpace("sq", "celeba", "multilabel", tuple(NAMES), (tuple(NAMES[:2]),))


def _write_prepared(home: Path, name: str, names=NAMES) -> None:
    """A small prepared CelebA-format dataset (shard contract): a band per label that is on."""
    rng = np.random.default_rng(0)
    root = home / "prepared" / name / str(SIZE)
    root.mkdir(parents=True)
    cols = [CELEBA_ATTRIBUTES.index(n) for n in names]
    table = {"columns": {"attributes": list(CELEBA_ATTRIBUTES)},
             "space": {"dataset": name, "format": "celeba", "kind": "multilabel",
                       "names": list(names), "exclusive_groups": [list(names[:2])]},
             "source_column": "attributes", "selected_columns": cols, "aliases": []}
    shards = []
    for split, n in {"train": 96, "test": 8}.items():
        attrs = rng.integers(0, 2, (n, 40), dtype=np.uint8)
        attrs[:, cols[1]] = 1 - attrs[:, cols[0]]
        images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
        for i in range(n):
            for k, col in enumerate(cols):
                if attrs[i, col]:
                    images[i, 4 * k:4 * k + 4, 4:SIZE - 4] = 255
        path = root / f"{split}-00000.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=images, chunks=(1, SIZE, SIZE, 3))
            f.create_dataset("labels/attributes", data=attrs)
            f.attrs.update({"starcli_schema": 1, "dataset": name, "split": split,
                            "shard_index": 0, "count": n, "image_size": SIZE,
                            "label_table": json.dumps(table)})
        with h5py.File(path, "r") as f:
            digest = content_sha256(f)
        shards.append({"path": path.name, "split": split, "index": 0, "count": n,
                       "bytes": path.stat().st_size, "content_sha256": digest})
    (root / "manifest.json").write_text(json.dumps({
        "schema": 1, "dataset": name, "format": "celeba", "image_size": SIZE,
        "label_table": table, "splits": {"train": 96, "test": 8}, "shards": shards}))


def _run(tmp_path: Path, labels: bool = True) -> Path:
    layout = LabelLayout((SPACE,))
    cfg = ModelConfig(image_size=SIZE, c_dim=layout.c_dim, g_conv_dim=8, d_conv_dim=8,
                      g_repeat_num=1, d_repeat_num=3)
    torch.manual_seed(0)
    meta = {"model": cfg.to_dict(), "train": {}, "datasets": []}
    if labels:
        meta["labels"] = layout.to_dict()
    save_checkpoint(tmp_path / "run", 2, {"G": Generator(cfg), "D": Discriminator(cfg)}, meta, None,
                    keep_last=1)
    return tmp_path / "run"


def test_help_lists_options_and_the_subcommand():
    res = runner.invoke(app, ["eval", "--help"])
    assert res.exit_code == 0
    for flag in ("--checkpoint", "--dataset", "--metrics", "--num-images", "--out",
                 "--inception-weights", "--json", "train-classifier", "starcli eval"):
        assert flag in res.stdout, flag


def test_options_reach_the_engine(monkeypatch, tmp_path):
    seen = {}
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")

    def fake(cfg, progress=None):
        seen["cfg"] = cfg
        mean = {"success": 0.5, "accuracy": 0.6, "ceiling": 0.9, "reconstruction_l1": 0.1,
                "fid": None}
        return {"step": 3, "split": cfg.split, "checkpoint": "ck", "out": str(cfg.out),
                "summary": {"success": 0.5, "accuracy": 0.6, "ceiling": 0.9,
                            "reconstruction_l1": 0.1, "fid": None, "targets": 1, "images": 4},
                "datasets": [{"dataset": "sq", "kind": "multilabel", "images": 4,
                              "mean": mean, "targets": [
                                  {"target": "Male=1", "success": 0.5, "accuracy": 0.6,
                                   "ceiling": 0.9, "reconstruction_l1": 0.1, "fid": None}]}],
                "fid": None, "files": {"markdown": "r.md", "samples": {}, "chart": None}}

    monkeypatch.setattr(engine, "evaluate", fake)
    res = runner.invoke(app, ["eval", "-c", "runs/x", "-d", "a,b", "--dataset", "c",
                              "--split", "valid", "--metrics", "accuracy, fid", "-n", "7",
                              "-o", str(tmp_path / "o"), "--inception-weights", str(weights),
                              "-b", "3", "--seed", "4", "--classifier-epochs", "2",
                              "--device", "cpu", "--precision", "BF16", "--json"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert cfg.checkpoint == Path("runs/x") and cfg.datasets == ("a", "b", "c")
    assert (cfg.split, cfg.metrics, cfg.num_images) == ("valid", ("accuracy", "fid"), 7)
    assert cfg.out == tmp_path / "o" and cfg.inception_weights == weights
    assert (cfg.batch_size, cfg.seed, cfg.classifier_epochs, cfg.device) == (3, 4, 2, "cpu")
    assert cfg.precision == "bf16"
    out = json.loads(res.stdout)
    assert out["summary"]["success"] == 0.5 and out["targets"][0]["target"] == "Male=1"
    assert "Male=1" in res.stderr and "50.0%" in res.stderr  # the rich table


def test_real_run_prints_a_table_and_json(home, tmp_path, monkeypatch):
    import sys

    _write_prepared(home, "sq")
    run = _run(tmp_path)
    args = ["eval", "-c", str(run), "--metrics", "accuracy,reconstruction",
            "--classifier-epochs", "2", "--device", "cpu", "--json"]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/starcli", *args])  # as a shell starts it
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["summary"]["targets"] == 4 and out["summary"]["images"] == 8
    assert [t["target"] for t in out["targets"]] == ["Black_Hair", "Blond_Hair", "Male=1",
                                                     "Male=0"]
    assert Path(out["files"]["markdown"]).is_file() and Path(out["files"]["chart"]).is_file()
    assert "Blond_Hair" in res.stderr and "report:" in res.stderr
    figures = out["summary"]["figures"]
    assert set(figures) == {"success", "identity_l1", "identity_l1_frame_no_male",
                            "identity_l1_frame_male", "retention", "transfer"}
    assert 0.0 <= figures["retention"] <= 1.0 and figures["identity_l1"] > 0.0
    assert figures["transfer"] is None and out["transfer"] is None  # one dataset
    for row in out["targets"]:
        assert row["cycle_l1"] == row["reconstruction_l1"] > 0.0
        assert row["identity_l1_frame"] >= 0.0 and row["retention"] is not None
    assert "retention" in res.stderr and "cycle L1" in res.stderr
    md = Path(out["files"]["markdown"]).read_text()
    assert "attribute retention" in md and "identity L1, whole image" in md
    # The page a person opens names the command that made it.
    saved = json.loads(Path(out["files"]["json"]).read_text())
    assert saved["command"].startswith("starcli ") and "--classifier-epochs 2" in \
        saved["command"]
    page = Path(out["files"]["html"]).read_text()
    assert "classifier-epochs" in page and "page:" in res.stderr


def test_bad_metric_is_exit_2(home):
    res = runner.invoke(app, ["eval", "--metrics", "accuracy,beauty"])
    assert res.exit_code == 2
    assert "--metrics" in res.output and "Traceback" not in res.output


def test_missing_inception_weights_file_is_exit_2(home, tmp_path):
    res = runner.invoke(app, ["eval", "--inception-weights", str(tmp_path / "none.pth")])
    assert res.exit_code == 2


def test_checkpoint_without_label_table_is_exit_1(home, tmp_path):
    run = _run(tmp_path, labels=False)
    res = runner.invoke(app, ["eval", "-c", str(run)])
    assert res.exit_code == 1
    assert "no label table" in res.output and "Traceback" not in res.output


def test_dataset_with_other_labels_is_exit_1(home, tmp_path):
    _write_prepared(home, "sq")
    _write_prepared(home, "other", names=["Brown_Hair", "Gray_Hair", "Young"])
    run = _run(tmp_path)
    res = runner.invoke(app, ["eval", "-c", str(run), "-d", "other", "--metrics",
                              "reconstruction"])
    assert res.exit_code == 1
    assert "--dataset other" in res.output and "match none" in res.output


def test_train_classifier_then_reuse(home):
    _write_prepared(home, "sq")
    first = runner.invoke(app, ["eval", "train-classifier", "sq", "--epochs", "1", "--device",
                                "cpu", "--json"])
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout)["classifiers"][0]
    assert result["reused"] is False and Path(result["path"]).is_file()
    assert Path(result["path"]).parent == home / "classifiers"
    again = runner.invoke(app, ["eval", "train-classifier", "sq", "--epochs", "1", "--json"])
    assert again.exit_code == 0
    assert json.loads(again.stdout)["classifiers"][0]["reused"] is True
    assert "reused" in again.stderr


@pytest.mark.parametrize("args", [["train-classifier", "nope"]])
def test_train_classifier_unprepared_dataset_is_exit_1(home, args):
    res = runner.invoke(app, ["eval", *args])
    assert res.exit_code == 1
    assert "starcli prepare nope" in res.output


def test_compare_puts_two_checkpoints_through_one_eval(home, tmp_path):
    """--compare: both checkpoints on the same faces and targets (one cached classifier), a
    column each; the same checkpoint twice gives equal columns."""
    _write_prepared(home, "sq")
    a = _run(tmp_path / "a")
    b = _run(tmp_path / "b")
    out = tmp_path / "cmp"
    res = runner.invoke(app, ["eval", "--compare", str(a), "--compare", str(b), "--metrics",
                              "accuracy", "--classifier-epochs", "1", "--device", "cpu",
                              "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert [r["name"] for r in result["runs"]] == ["01-run", "02-run"]
    assert result["targets"] == ["sq:Black_Hair", "sq:Blond_Hair", "sq:Male=1", "sq:Male=0"]
    first, second = result["runs"]
    assert first["targets"] == second["targets"]  # same weights (seed 0), same faces
    assert first["figures"]["success"] == second["figures"]["success"] is not None
    md = (out / "compare.md").read_text()
    assert "| success |" in md and "01-run (step 2)" in md
    page = (out / "compare.html").read_text()
    assert 'href="01-run/report.html"' in page
    assert (out / "02-run" / "report.json").is_file()
    assert "Success per target" in res.stderr
    bad = runner.invoke(app, ["eval", "--compare", str(a), "--device", "cpu"])
    assert bad.exit_code == 2 and "at least two" in bad.output
