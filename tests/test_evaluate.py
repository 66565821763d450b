"""`starcli eval`'s engine: the metrics mean what they say (oracle and identity generators),
reports are written, runs repeat exactly, and bad inputs fail with the reason."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import starcli.evaluate as ev
from starcli.checkpoint import LoadedCheckpoint, save_checkpoint
from starcli.data.celeba_attrs import CELEBA_ATTRIBUTES
from starcli.data.dataset import content_sha256, joint_layout, open_prepared
from starcli.data.labels import LabelLayout, LabelSpace
from starcli.errors import CheckpointError, ConfigError, StarcliError
from starcli.evaluate import EvalConfig, EvalTarget, default_out_dir, evaluate, targets_for
from starcli.families.stargan_v1.networks import Discriminator, Generator, ModelConfig

SIZE = 32
NAMES = ["Black_Hair", "Blond_Hair", "Male"]
EXPRESSIONS = ["angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad",
               "surprised"]


def _band(img: np.ndarray, k: int) -> None:
    """Label k is a white band across row block k (flip-invariant, exact in [-1, 1])."""
    img[4 * k:4 * k + 4, 4:SIZE - 4] = 255


def write_bands(home, name: str, fmt: str, counts: dict[str, int], seed: int = 0,
                names=NAMES) -> None:
    """A prepared dataset (shard contract): black images with one band per label that is on."""
    rng = np.random.default_rng(seed)
    root = home / "prepared" / name / str(SIZE)
    root.mkdir(parents=True)
    if fmt == "celeba":
        groups = [list(names[:2])] if len(names) > 2 else []
        table = {"columns": {"attributes": list(CELEBA_ATTRIBUTES)},
                 "space": {"dataset": name, "format": "celeba", "kind": "multilabel",
                           "names": list(names), "exclusive_groups": groups},
                 "source_column": "attributes",
                 "selected_columns": [CELEBA_ATTRIBUTES.index(n) for n in names],
                 "aliases": []}
    else:
        table = {"columns": {"expression": EXPRESSIONS},
                 "space": {"dataset": name, "format": "rafd", "kind": "onehot",
                           "names": EXPRESSIONS, "exclusive_groups": []},
                 "source_column": "expression", "selected_columns": None, "aliases": []}
    shards = []
    for split, n in counts.items():
        images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
        if fmt == "celeba":
            attrs = rng.integers(0, 2, (n, 40), dtype=np.uint8)
            cols = table["selected_columns"]
            hair = rng.integers(0, 2, n)
            attrs[:, cols[0]], attrs[:, cols[1]] = hair == 0, hair == 1
            for i in range(n):
                for k, col in enumerate(cols):
                    if attrs[i, col]:
                        _band(images[i], k)
            labels = {"attributes": attrs}
        else:
            expression = rng.permutation(np.arange(n) % 8).astype(np.uint8)
            for i in range(n):
                _band(images[i], int(expression[i]))
            labels = {"expression": expression}
        path = root / f"{split}-00000.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=images, chunks=(1, SIZE, SIZE, 3), fletcher32=True)
            for key, values in labels.items():
                f.create_dataset(f"labels/{key}", data=values)
            f.attrs.update({"starcli_schema": 1, "dataset": name, "split": split,
                            "shard_index": 0, "count": n, "image_size": SIZE,
                            "label_table": json.dumps(table)})
        with h5py.File(path, "r") as f:
            digest = content_sha256(f)
        shards.append({"path": path.name, "split": split, "index": 0, "count": n,
                       "bytes": path.stat().st_size, "content_sha256": digest})
    manifest = {"schema": 1, "dataset": name, "format": fmt, "image_size": SIZE,
                "label_table": table, "splits": dict(counts), "shards": shards, "skipped": []}
    (root / "manifest.json").write_text(json.dumps(manifest))


class OracleG(nn.Module):
    """Draws exactly the requested labels: a perfect translator whose reconstructions are
    exact (the data are drawn the same way)."""

    def __init__(self, layout: LabelLayout) -> None:
        super().__init__()
        self.layout = layout

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(x, -1.0)
        bands = torch.zeros(8, SIZE, SIZE)
        for k in range(8):
            bands[k, 4 * k:4 * k + 4, 4:SIZE - 4] = 1.0
        if self.layout.use_mask:
            which = c[:, self.layout.mask_offset:].argmax(1)
        else:
            which = torch.zeros(len(c), dtype=torch.long)
        for s, block in enumerate(self.layout.blocks):
            rows = which == s
            on = (c[rows, block.offset:block.stop] > 0.5).float()
            drawn = torch.einsum("nk,khw->nhw", on, bands[:block.space.width]).clamp(0, 1)
            out[rows] = (2 * drawn - 1)[:, None].expand(-1, 3, -1, -1)
        return out


class IdentityG(nn.Module):
    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x.clone()


class Logs:
    """A Progress that records log lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def start_task(self, description, total=None, unit="it"):
        return self

    def advance(self, n=1) -> None:
        pass

    def update(self, **kwargs) -> None:
        pass

    def stop_task(self, task) -> None:
        pass

    def log(self, message: str) -> None:
        self.lines.append(message)


@pytest.fixture
def data(home):
    write_bands(home, "sq-celeba", "celeba", {"train": 160, "test": 20})
    write_bands(home, "sq-rafd", "rafd", {"train": 160, "test": 16}, seed=1)
    return home


def _fake_checkpoint(monkeypatch, tmp_path, G, names=("sq-celeba", "sq-rafd"), home=None):
    layout = joint_layout([open_prepared(home, n) for n in names])
    model = ModelConfig(image_size=SIZE, c_dim=layout.c_dim, cls_dim=layout.cls_dim,
                        d_repeat_num=3)
    G = G if not isinstance(G, type) else G(layout)
    loaded = LoadedCheckpoint(family="stargan-v1", modules={"G": G},
                              model=model, layout=layout, meta={"step": 7},
                              path=tmp_path / "run" / "checkpoints" / "step-00000007")
    monkeypatch.setattr(ev, "load_checkpoint", lambda *a, **k: loaded)
    return loaded


def _tiny_run(tmp_path, layout: LabelLayout, labels: bool = True) -> Path:
    cfg = ModelConfig(image_size=SIZE, c_dim=layout.c_dim, cls_dim=layout.cls_dim,
                      g_conv_dim=8, d_conv_dim=8, g_repeat_num=1, d_repeat_num=3)
    torch.manual_seed(0)
    meta = {"model": cfg.to_dict(), "train": {}, "datasets": []}
    if labels:
        meta["labels"] = layout.to_dict()
    save_checkpoint(tmp_path / "run", 5, {"G": Generator(cfg), "D": Discriminator(cfg)}, meta,
                    None, keep_last=1)
    return tmp_path / "run"


def test_targets_follow_the_paper_protocol():
    space = LabelSpace("d", "celeba", "multilabel", ("Black_Hair", "Blond_Hair", "Male"),
                       (("Black_Hair", "Blond_Hair"),))
    names = [t.name for t in targets_for(space)]
    assert names == ["Black_Hair", "Blond_Hair", "Male=1", "Male=0"]
    onehot = LabelSpace("r", "rafd", "onehot", tuple(EXPRESSIONS))
    assert [t.name for t in targets_for(onehot)] == EXPRESSIONS


def test_target_vectors():
    labels = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    blond = EvalTarget("Blond_Hair", 1, 1, off=(0,))
    np.testing.assert_array_equal(blond.apply(labels), [[0, 1, 1], [0, 1, 0]])
    assert blond.carried(labels).tolist() == [False, True]
    female = EvalTarget("Male=0", 2, 0)
    np.testing.assert_array_equal(female.apply(labels), [[1, 0, 0], [0, 1, 0]])
    assert female.carried(labels).tolist() == [False, True]
    happy = EvalTarget("happy", 1, 1, onehot=True)
    np.testing.assert_array_equal(happy.apply(np.eye(3, dtype=np.float32)[[0, 2]]),
                                  [[0, 1, 0], [0, 1, 0]])


def test_oracle_generator_scores_perfectly(data, tmp_path, monkeypatch):
    _fake_checkpoint(monkeypatch, tmp_path, OracleG, home=data)
    report = evaluate(EvalConfig(metrics=("accuracy", "reconstruction"), classifier_epochs=6,
                                 out=tmp_path / "out"))
    assert [s["dataset"] for s in report["datasets"]] == ["sq-celeba", "sq-rafd"]
    rows = [r for s in report["datasets"] for r in s["targets"]]
    assert len(rows) == 4 + 8
    for r in rows:
        assert r["success"] == 1.0 and r["accuracy"] == 1.0, r
        assert r["ceiling"] in (1.0, None)
        assert r["reconstruction_l1"] == pytest.approx(0.0, abs=1e-7)
    assert report["summary"]["success"] == 1.0
    rafd = report["datasets"][1]
    assert rafd["classification_error"]["translated"] == 0.0
    assert rafd["classification_error"]["paper"] == {"stargan": 0.0212, "real": 0.0045}


def test_identity_generator_never_succeeds(data, tmp_path, monkeypatch):
    _fake_checkpoint(monkeypatch, tmp_path, IdentityG(), names=("sq-celeba",), home=data)
    report = evaluate(EvalConfig(metrics=("accuracy", "reconstruction"), classifier_epochs=6,
                                 out=tmp_path / "out"))
    truth = open_prepared(data, "sq-celeba").labels("test")
    expected_eligible = {"Black_Hair": (truth[:, 0] == 0).sum(),
                         "Blond_Hair": (truth[:, 1] == 0).sum(),
                         "Male=1": (truth[:, 2] == 0).sum(), "Male=0": (truth[:, 2] == 1).sum()}
    for r in report["datasets"][0]["targets"]:
        assert r["success"] == 0.0  # nothing changed, so no face gained its target
        # accuracy over all faces = the share that carried the target already
        assert r["accuracy"] == pytest.approx(1 - expected_eligible[r["target"]] / 20)
        assert r["eligible"] == expected_eligible[r["target"]]
        assert r["reconstruction_l1"] == 0.0


def test_real_checkpoint_writes_report_and_repeats_exactly(data, tmp_path):
    layout = joint_layout([open_prepared(data, "sq-celeba")])
    run = _tiny_run(tmp_path, layout)
    cfg = EvalConfig(checkpoint=run, metrics=("accuracy", "reconstruction"), num_images=12,
                     classifier_epochs=2, batch_size=5, device="cpu")
    first = evaluate(cfg)
    out = run / "eval"
    assert Path(first["out"]) == out == default_out_dir(run / "checkpoints" / "step-00000005")
    for name in ("report.json", "report.md", "samples-sq-celeba.png", "accuracy.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "report.json").read_text())
    assert saved["summary"] == first["summary"] and saved["step"] == 5
    assert first["summary"]["images"] == 12 and first["summary"]["targets"] == 4
    grid = Image.open(out / "samples-sq-celeba.png")
    assert grid.width > 5 * 96 and grid.height > 6 * 96  # input + 4 targets, 6 rows, upscaled
    md = (out / "report.md").read_text()
    assert "Black_Hair" in md and "samples-sq-celeba.png" in md
    for r in first["datasets"][0]["targets"]:
        assert 0.0 <= r["success"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0
        assert 0.0 < r["reconstruction_l1"] < 2.0

    second = evaluate(dataclasses.replace(cfg, out=tmp_path / "again"))
    assert second["summary"] == first["summary"]
    assert second["datasets"][0]["targets"] == first["datasets"][0]["targets"]


def test_fid_is_skipped_with_one_line_without_weights(data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    _fake_checkpoint(monkeypatch, tmp_path, IdentityG(), names=("sq-celeba",), home=data)
    logs = Logs()
    report = evaluate(EvalConfig(metrics=("reconstruction", "fid"), out=tmp_path / "o"),
                      progress=logs)
    skipped = [line for line in logs.lines if "FID" in line]
    assert len(skipped) == 1 and "--inception-weights" in skipped[0]
    assert report["fid"] == {"skipped": skipped[0]}
    assert report["summary"]["reconstruction_l1"] == 0.0  # the other metrics still ran
    assert report["summary"]["success"] is None and report["files"]["chart"] is None
    assert not (data / "classifiers").exists()  # no accuracy metric: no classifier trained


@pytest.mark.slow
def test_fid_full_path_with_created_weights(data, tmp_path, monkeypatch):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(),
               weights)
    _fake_checkpoint(monkeypatch, tmp_path, OracleG, names=("sq-celeba",), home=data)
    report = evaluate(EvalConfig(metrics=("fid",), num_images=6, inception_weights=weights,
                                 out=tmp_path / "o"))
    assert report["fid"]["kind"] == "torchvision"
    rows = report["datasets"][0]["targets"]
    scored = [r for r in rows if r["fid"] is not None]
    assert scored, rows
    assert all(np.isfinite(r["fid"]) and r["fid"] >= -1e-9 for r in scored)
    assert all("fid_note" in r for r in rows if r["fid"] is None)


def test_dataset_override_must_match_the_labels(data, tmp_path):
    layout = joint_layout([open_prepared(data, "sq-celeba")])
    run = _tiny_run(tmp_path, layout)
    write_bands(data, "sq-copy", "celeba", {"train": 40, "test": 6}, seed=9)
    report = evaluate(EvalConfig(checkpoint=run, datasets=("sq-copy",),
                                 metrics=("reconstruction",), out=tmp_path / "o"))
    section = report["datasets"][0]
    assert (section["dataset"], section["space"], section["images"]) == ("sq-copy",
                                                                         "sq-celeba", 6)
    with pytest.raises(StarcliError, match="match none of the checkpoint's label spaces"):
        evaluate(EvalConfig(checkpoint=run, datasets=("sq-rafd",), metrics=("reconstruction",),
                            out=tmp_path / "o2"))


def test_reprepared_dataset_with_other_labels_is_refused(data, tmp_path):
    space = LabelSpace("sq-celeba", "celeba", "multilabel", ("Black_Hair", "Blond_Hair",
                                                             "Young"))
    run = _tiny_run(tmp_path, LabelLayout((space,)))
    with pytest.raises(StarcliError, match="re-prepare") as info:
        evaluate(EvalConfig(checkpoint=run, metrics=("reconstruction",), out=tmp_path / "o"))
    assert info.value.exit_code == 1


def test_checkpoint_without_label_table(data, tmp_path):
    layout = joint_layout([open_prepared(data, "sq-celeba")])
    run = _tiny_run(tmp_path, layout, labels=False)
    with pytest.raises(CheckpointError, match="no label table") as info:
        evaluate(EvalConfig(checkpoint=run, out=tmp_path / "o"))
    assert info.value.exit_code == 1


def test_config_validation():
    with pytest.raises(ConfigError, match="--metrics"):
        EvalConfig(metrics=("accuracy", "beauty"))
    with pytest.raises(ConfigError, match="--num-images"):
        EvalConfig(num_images=0)
    with pytest.raises(ConfigError, match="--precision"):
        EvalConfig(precision="fp8")
    assert EvalConfig(metrics=(" FID", "accuracy", "fid")).metrics == ("fid", "accuracy")
