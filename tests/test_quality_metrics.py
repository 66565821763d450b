"""`starcli eval`'s measures of what must not change: identity L1 (whole image and outer
frame, Male flips apart), attribute retention judged on labels the model does not condition
on, the cycle L1 under its own name, and cross-dataset transfer on joint models.

Images are black with one white band per label that is on (flip-invariant, exact in
[-1, 1]); generators are hand-made so every number has a known value."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import starcli.evaluate as ev
from starcli.checkpoint import LoadedCheckpoint
from starcli.classifier import (
    group_view,
    judge_view,
    load_classifier,
    rendered_columns,
    train_classifier,
)
from starcli.data.celeba_attrs import CELEBA_ATTRIBUTES
from starcli.data.dataset import content_sha256, joint_layout, open_prepared
from starcli.evaluate import EvalConfig, evaluate, frame_mask, identity_l1
from starcli.families.stargan_v1.networks import ModelConfig

SIZE = 32
# Band k of an image is label DRAWN[k]; the model conditions on the first three only, the
# fourth (Eyeglasses) is drawn but not selected, like demo-celeba's rendered extras.
DRAWN = ["Black_Hair", "Blond_Hair", "Male", "Eyeglasses"]
SELECTED = DRAWN[:3]
GAZES = ["left", "frontal", "right"]
EXPRESSIONS = ["angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad",
               "surprised"]


def _band(img: np.ndarray, k: int) -> None:
    img[1 + 4 * k:1 + 4 * k + 3, 5:SIZE - 5] = 255


def _write(home, name: str, fmt: str, counts: dict[str, int], seed: int = 0,
           gaze: bool = False) -> None:
    """A prepared dataset in the shard contract. CelebA format stores all 40 attribute
    columns (as prepare does) and selects SELECTED; bands are drawn for all of DRAWN."""
    rng = np.random.default_rng(seed)
    root = home / "prepared" / name / str(SIZE)
    root.mkdir(parents=True)
    if fmt == "celeba":
        table = {"columns": {"attributes": list(CELEBA_ATTRIBUTES)},
                 "space": {"dataset": name, "format": "celeba", "kind": "multilabel",
                           "names": SELECTED, "exclusive_groups": [SELECTED[:2]]},
                 "source_column": "attributes",
                 "selected_columns": [CELEBA_ATTRIBUTES.index(n) for n in SELECTED],
                 "aliases": []}
    else:
        others = {"gaze": GAZES, "gender": ["female", "male"]} if gaze else {}
        table = {"columns": {"expression": EXPRESSIONS, **others},
                 "space": {"dataset": name, "format": "rafd", "kind": "onehot",
                           "names": EXPRESSIONS, "exclusive_groups": []},
                 "source_column": "expression", "selected_columns": None, "aliases": []}
    shards = []
    for split, n in counts.items():
        images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
        if fmt == "celeba":
            attrs = rng.integers(0, 2, (n, 40), dtype=np.uint8)
            cols = [CELEBA_ATTRIBUTES.index(d) for d in DRAWN]
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
            if gaze:  # a short mark in the left frame, one row block per gaze
                looks = rng.integers(0, len(GAZES), n).astype(np.uint8)
                for i in range(n):
                    images[i, 1 + 4 * looks[i]:4 + 4 * looks[i], 1:4] = 255
                labels["gaze"] = looks
                labels["gender"] = rng.integers(0, 2, n).astype(np.uint8)  # not drawn
        path = root / f"{split}-00000.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=images, chunks=(1, SIZE, SIZE, 3))
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


def _rendered(home, name: str, names) -> None:
    """A user registry entry that says which columns of `name` are drawn into the pixels."""
    def listed(values) -> str:
        return ", ".join(f'"{v}"' for v in values)

    (home / "datasets.toml").write_text(
        f'[{name}]\ntitle = "bands"\naccess = "synthetic"\nformat = "celeba"\n'
        f'[{name}.attributes]\nnames = [{listed(CELEBA_ATTRIBUTES)}]\n'
        f'rendered = [{listed(names)}]\n')


def _bands_tensor() -> torch.Tensor:
    bands = torch.zeros(8, SIZE, SIZE)
    for k in range(8):
        bands[k, 1 + 4 * k:1 + 4 * k + 3, 5:SIZE - 5] = 1.0
    return bands


def _read_bands(x: torch.Tensor, count: int) -> torch.Tensor:
    """(N, count) bool: which bands are white in images x (in [-1, 1])."""
    return torch.stack([x[:, 0, 2 + 4 * k, SIZE // 2] > 0 for k in range(count)], 1)


class OracleG(nn.Module):
    """Draws exactly the labels in c (per the mask's space) on black: unconditioned bands
    (Eyeglasses) are lost, so faces that had them do not keep them."""

    def __init__(self, layout) -> None:
        super().__init__()
        self.layout = layout

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(x, -1.0)
        bands = _bands_tensor()
        which = (c[:, self.layout.mask_offset:].argmax(1) if self.layout.use_mask
                 else torch.zeros(len(c), dtype=torch.long))
        for s, block in enumerate(self.layout.blocks):
            rows = which == s
            on = (c[rows, block.offset:block.stop] > 0.5).float()
            drawn = torch.einsum("nk,khw->nhw", on, bands[:block.space.width]).clamp(0, 1)
            out[rows] = (2 * drawn - 1)[:, None].expand(-1, 3, -1, -1)
        return out


class KeepG(nn.Module):
    """Redraws the conditioned bands from c and keeps every other pixel of x (a perfect
    translator that leaves the rest alone)."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        bands = _bands_tensor()
        for k in range(len(SELECTED)):
            rows = bands[k] > 0
            value = (2 * (c[:, k] > 0.5).float() - 1)[:, None, None]
            out[:, :, rows] = value.expand(-1, 3, int(rows.sum()))
        return out


class IdentityG(nn.Module):
    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x.clone()


class CentreG(nn.Module):
    """Adds 0.25 inside the frame and leaves the outer eighth untouched."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x + 0.25 * (~frame_mask(x.shape[-1])).to(x.dtype)


class MaleFrameG(nn.Module):
    """Changes the frame by 0.5 exactly when c asks for another Male value than x shows."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        male_now = _read_bands(x, 3)[:, 2]
        flips = (male_now != (c[:, 2] > 0.5)).to(x.dtype)[:, None, None, None]
        return x + 0.5 * flips * frame_mask(x.shape[-1]).to(x.dtype)


class BandJudge:
    """A classifier whose decisions are the image's bands (what the test controls)."""

    def __init__(self, space, path) -> None:
        self.space, self.meta, self.path = space, {"epochs": 0, "train_images": 0}, path

    @property
    def kind(self) -> str:
        return self.space.kind

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict(images).float()

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        if self.space.names[0].startswith("gaze="):
            return torch.stack([images[:, 0, 2 + 4 * k, 2] > 0 for k in range(len(GAZES))], 1)
        if self.space.kind == "onehot":
            read = _read_bands(images, len(self.space.names)).float()
            return torch.nn.functional.one_hot(read.argmax(1), len(self.space.names)).bool()
        read = _read_bands(images, len(DRAWN))
        return torch.stack([read[:, DRAWN.index(n)] for n in self.space.names], 1)


def _checkpoint(monkeypatch, tmp_path, home, G, names=("sq-celeba",)):
    layout = joint_layout([open_prepared(home, n) for n in names])
    model = ModelConfig(image_size=SIZE, c_dim=layout.c_dim, cls_dim=layout.cls_dim,
                        d_repeat_num=3)
    G = G(layout) if G is OracleG else G
    loaded = LoadedCheckpoint(family="stargan-v1", modules={"G": G}, model=model, layout=layout,
                              meta={"step": 3}, path=tmp_path / "run" / "checkpoints" / "s")
    monkeypatch.setattr(ev, "load_checkpoint", lambda *a, **k: loaded)
    return loaded


def _fixed_judge(monkeypatch):
    """Replace the trained classifier by BandJudge (same space as train_classifier got)."""
    spaces = {}

    def train(prepared, **kwargs):
        path = prepared.root / f"judge-{len(spaces)}"
        spaces[path] = prepared.space
        return path

    monkeypatch.setattr(ev, "train_classifier", train)
    monkeypatch.setattr(ev, "load_classifier", lambda path, device=None:
                        BandJudge(spaces[path], path))
    return spaces


@pytest.fixture
def data(home):
    _write(home, "sq-celeba", "celeba", {"train": 160, "test": 24})
    _write(home, "sq-rafd", "rafd", {"train": 160, "test": 16}, seed=1)
    _rendered(home, "sq-celeba", DRAWN)
    return home


def _truth(home):
    ds = judge_view(open_prepared(home, "sq-celeba"), ["Eyeglasses"])
    return ds.labels("test")


def test_identity_l1_by_hand():
    x = torch.zeros(2, 3, SIZE, SIZE)
    whole, frame = identity_l1(x, x.clone())
    assert whole.tolist() == [0.0, 0.0] and frame.tolist() == [0.0, 0.0]
    inner = ~frame_mask(SIZE)
    assert int(inner.sum()) == 24 * 24  # the frame is the outer 4 = 32/8 pixels per side
    whole, frame = identity_l1(x, x + 0.25 * inner)
    assert whole.tolist() == pytest.approx([0.25 * 576 / 1024] * 2)
    assert frame.tolist() == [0.0, 0.0]
    whole, frame = identity_l1(x, x - 1.0 * frame_mask(SIZE))
    assert frame.tolist() == [1.0, 1.0] and whole.tolist() == pytest.approx([448 / 1024] * 2)


def test_identity_generator_changes_nothing(data, tmp_path, monkeypatch):
    _checkpoint(monkeypatch, tmp_path, data, IdentityG())
    _fixed_judge(monkeypatch)
    report = evaluate(EvalConfig(metrics=("accuracy", "reconstruction"), out=tmp_path / "o"))
    rows = report["datasets"][0]["targets"]
    for r in rows:
        assert r["identity_l1"] == 0.0 and r["identity_l1_frame"] == 0.0
        assert r["cycle_l1"] == 0.0 == r["reconstruction_l1"]
        assert r["retention"] == 1.0 and r["success"] == 0.0
    s = report["summary"]
    assert s["figures"] == {"success": 0.0, "identity_l1": 0.0, "identity_l1_frame_no_male": 0.0,
                            "identity_l1_frame_male": 0.0, "retention": 1.0, "transfer": None}


def test_centre_change_leaves_the_frame_at_zero(data, tmp_path, monkeypatch):
    _checkpoint(monkeypatch, tmp_path, data, CentreG())
    report = evaluate(EvalConfig(metrics=("reconstruction",), out=tmp_path / "o"))
    for r in report["datasets"][0]["targets"]:
        assert r["identity_l1_frame"] == 0.0
        assert r["identity_l1"] == pytest.approx(0.25 * 576 / 1024)
        assert r["cycle_l1"] == pytest.approx(2 * 0.25 * 576 / 1024)  # two passes add up
    s = report["summary"]
    assert s["identity_l1"] == pytest.approx(0.25 * 576 / 1024)
    assert s["identity_l1_frame_no_male"] == 0.0 and s["retention"] is None  # no classifier
    md = (tmp_path / "o" / "report.md").read_text()
    assert "identity L1, outer frame (Male flips excluded) | 0.000" in md
    assert f"identity L1, whole image | {0.25 * 576 / 1024:.3f}" in md


def test_male_flips_are_reported_apart(data, tmp_path, monkeypatch):
    _checkpoint(monkeypatch, tmp_path, data, MaleFrameG())
    report = evaluate(EvalConfig(metrics=("reconstruction",), out=tmp_path / "o"))
    male = _truth(data)[:, 2]
    per = {r["target"]: r for r in report["datasets"][0]["targets"]}
    frame_share = 448 / 1024
    assert per["Male=1"]["identity_l1_frame"] == pytest.approx(0.5 * (male == 0).mean())
    assert per["Male=0"]["identity_l1_frame"] == pytest.approx(0.5 * (male == 1).mean())
    assert per["Male=1"]["identity_l1"] == pytest.approx(0.5 * frame_share * (male == 0).mean())
    assert per["Black_Hair"]["identity_l1_frame"] == 0.0 == per["Blond_Hair"]["identity_l1"]
    s = report["summary"]
    assert s["identity_l1_frame_no_male"] == 0.0
    assert s["identity_l1_frame_male"] == pytest.approx(0.25)  # (share + (1 - share)) / 2 x 0.5
    assert s["identity_l1_frame"] == pytest.approx(0.125)  # over all four targets
    assert s["figures"]["identity_l1_frame_male"] == s["identity_l1_frame_male"]


def test_retention_with_a_fixed_classifier(data, tmp_path, monkeypatch):
    spaces = _fixed_judge(monkeypatch)
    _checkpoint(monkeypatch, tmp_path, data, OracleG)
    report = evaluate(EvalConfig(metrics=("accuracy",), out=tmp_path / "o"))
    # The judge was given the rendered column the model does not condition on.
    assert [list(s.names) for s in spaces.values()] == [DRAWN]
    sec = report["datasets"][0]
    assert sec["classifier"]["not_conditioned"] == ["Eyeglasses"]
    glasses = _truth(data)[:, 3]
    for r in sec["targets"]:
        assert r["success"] == 1.0
        # OracleG drops the unconditioned band: only faces without glasses keep every label.
        assert r["retention"] == pytest.approx((glasses == 0).mean()), r["target"]
        assert "Eyeglasses" in r["retained_labels"]
        # Which label broke: only Eyeglasses changes its reading, every other is kept.
        by = r["retention_by_label"]
        assert list(by) == r["retained_labels"]
        assert by["Eyeglasses"] == pytest.approx((glasses == 0).mean(), abs=1e-4)
        assert all(v == 1.0 for k, v in by.items() if k != "Eyeglasses")
    per = {r["target"]: r["retained_labels"] for r in sec["targets"]}
    assert per["Blond_Hair"] == ["Male", "Eyeglasses"]  # its hair group is targeted
    assert per["Male=1"] == ["Black_Hair", "Blond_Hair", "Eyeglasses"]


def test_retention_counts_a_changed_label_the_model_conditions_on(data, tmp_path,
                                                                  monkeypatch):
    """A G that also switches Male on whenever it changes the hair: hair targets keep only
    the faces that were male already; Male targets keep everything."""
    _fixed_judge(monkeypatch)

    def forward(x, c):
        c = c.clone()
        c[:, 2] = 1.0
        return KeepG()(x, c)

    class SloppyG(nn.Module):
        def forward(self, x, c):
            hair_asked = c[:, :2]
            own = _read_bands(x, 2).float()
            out = KeepG()(x, c)
            changed = (hair_asked != own).any(1)
            return torch.where(changed[:, None, None, None], forward(x, c), out)

    _checkpoint(monkeypatch, tmp_path, data, SloppyG())
    report = evaluate(EvalConfig(metrics=("accuracy",), out=tmp_path / "o"))
    truth = _truth(data)
    per = {r["target"]: r for r in report["datasets"][0]["targets"]}
    black, male = truth[:, 0] == 1, truth[:, 2] == 1
    # Black_Hair: faces already black-haired are untouched; the others turn male.
    assert per["Black_Hair"]["retention"] == pytest.approx((black | male).mean())
    assert per["Male=1"]["retention"] == 1.0 and per["Male=0"]["retention"] == 1.0
    assert report["summary"]["retention"] == pytest.approx(
        np.mean([r["retention"] for r in per.values()]))


def test_trained_classifier_reads_the_unconditioned_columns(data, tmp_path, monkeypatch):
    """The real judge (trained on the judge view of the same shards) learns Eyeglasses, and
    retention under OracleG is the share of faces without glasses; under KeepG it is 1."""
    _checkpoint(monkeypatch, tmp_path, data, OracleG)
    report = evaluate(EvalConfig(metrics=("accuracy",), classifier_epochs=6, device="cpu",
                                 out=tmp_path / "o"))
    sec = report["datasets"][0]
    clf = load_classifier(sec["classifier"]["path"])
    assert list(clf.space.names) == DRAWN
    assert sec["classifier"]["real_accuracy"]["per_label"]["Eyeglasses"] == 1.0
    glasses = _truth(data)[:, 3]
    for r in sec["targets"]:
        assert r["retention"] == pytest.approx((glasses == 0).mean())
    _checkpoint(monkeypatch, tmp_path, data, KeepG())
    kept = evaluate(EvalConfig(metrics=("accuracy",), classifier_epochs=6, device="cpu",
                               out=tmp_path / "o2"))
    assert kept["datasets"][0]["classifier"]["path"] == sec["classifier"]["path"]  # cached
    assert all(r["retention"] == 1.0 and r["success"] == 1.0
               for r in kept["datasets"][0]["targets"])


def test_judge_view_reads_the_same_shards(data):
    ds = open_prepared(data, "sq-celeba")
    assert rendered_columns(ds, data) == tuple(DRAWN)
    wide = judge_view(ds, rendered_columns(ds, data))
    assert wide.space.names == tuple(DRAWN) and wide.root == ds.root
    np.testing.assert_array_equal(wide.labels("test")[:, :3], ds.labels("test"))
    assert ds.space.names == tuple(SELECTED)  # the original is untouched
    rafd = open_prepared(data, "sq-rafd")
    assert judge_view(rafd, ["Eyeglasses"]) is rafd
    assert judge_view(ds, ["Not_A_Column", "Male"]) is ds  # nothing new to add


def test_transfer_on_a_joint_checkpoint(data, tmp_path, monkeypatch):
    _fixed_judge(monkeypatch)
    _checkpoint(monkeypatch, tmp_path, data, OracleG, names=("sq-celeba", "sq-rafd"))
    report = evaluate(EvalConfig(metrics=("accuracy", "reconstruction"), out=tmp_path / "o"))
    (transfer,) = report["transfer"]
    assert (transfer["source"], transfer["target_space"]) == ("sq-celeba", "sq-rafd")
    assert [r["target"] for r in transfer["targets"]] == EXPRESSIONS
    assert all(r["success"] == 1.0 and r["images"] == 24 for r in transfer["targets"])
    assert report["summary"]["transfer"] == 1.0 == report["summary"]["figures"]["transfer"]
    rafd = report["datasets"][1]
    assert all(r["retention"] is None for r in rafd["targets"])
    assert "no label is left untargeted" in rafd["retention_note"]
    saved = json.loads((tmp_path / "o" / "report.json").read_text())
    assert saved["transfer"][0]["mean"] == 1.0 and saved["summary"]["transfer"] == 1.0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "## Transfer: sq-celeba faces to sq-rafd classes" in md
    assert "| happy | 100.0% |" in md


def test_transfer_judges_what_g_draws(data, tmp_path, monkeypatch):
    """A joint G that always draws 'happy' for RaFD targets: transfer hits only happy."""
    _fixed_judge(monkeypatch)
    loaded = _checkpoint(monkeypatch, tmp_path, data, OracleG, names=("sq-celeba", "sq-rafd"))
    oracle = loaded.modules["G"]
    layout = loaded.layout
    rafd = layout.cls_slice(1)

    class HappyG(nn.Module):
        def forward(self, x, c):
            c = c.clone()
            on_rafd = c[:, layout.mask_offset + 1] > 0.5
            c[on_rafd, rafd] = 0
            c[on_rafd, rafd.start + EXPRESSIONS.index("happy")] = 1
            return oracle(x, c)

    loaded.modules["G"] = HappyG()
    report = evaluate(EvalConfig(metrics=("accuracy",), out=tmp_path / "o"))
    per = {r["target"]: r["success"] for r in report["transfer"][0]["targets"]}
    assert per["happy"] == 1.0 and all(v == 0.0 for k, v in per.items() if k != "happy")
    assert report["summary"]["transfer"] == pytest.approx(1 / 8)


def test_no_transfer_for_a_single_dataset(data, tmp_path, monkeypatch):
    _fixed_judge(monkeypatch)
    _checkpoint(monkeypatch, tmp_path, data, OracleG)
    report = evaluate(EvalConfig(metrics=("accuracy",), out=tmp_path / "o"))
    assert report["transfer"] is None and report["summary"]["transfer"] is None
    assert "Transfer" not in (tmp_path / "o" / "report.md").read_text()


def test_rafd_retention_reads_its_other_label_groups(home, tmp_path, monkeypatch):
    """Expressions are one exclusive group: what must not change is the other groups (here
    gaze), read by a second judge on the same shards."""
    _write(home, "sq-rafd", "rafd", {"train": 48, "test": 16}, seed=1, gaze=True)
    view = group_view(open_prepared(home, "sq-rafd"))
    assert view.space.names == ("gaze=left", "gaze=frontal", "gaze=right")
    assert view.groups == ("gaze",)  # gender is the person's, not the photo's: left out
    looks = view.labels("test")
    assert looks.sum(1).tolist() == [1.0] * 16  # one gaze per face
    spaces = _fixed_judge(monkeypatch)
    _checkpoint(monkeypatch, tmp_path, home, IdentityG(), names=("sq-rafd",))
    report = evaluate(EvalConfig(metrics=("accuracy",), out=tmp_path / "o"))
    assert [s.kind for s in spaces.values()] == ["onehot", "multilabel"]
    sec = report["datasets"][0]
    assert all(r["retention"] == 1.0 for r in sec["targets"])
    assert sec["targets"][0]["retained_labels"] == list(view.space.names)
    assert "gaze" in sec["retention_note"] and sec["classifier"]["groups"]["labels"]
    assert sec["classifier"]["groups"]["real_accuracy"] == {"gaze": 1.0}  # BandJudge is exact
    assert "That classifier on real images (its ceiling): gaze 100.0%" in (
        tmp_path / "o" / "report.md").read_text()
    _checkpoint(monkeypatch, tmp_path, home, OracleG, names=("sq-rafd",))
    drawn = evaluate(EvalConfig(metrics=("accuracy",), out=tmp_path / "o2"))
    for r in drawn["datasets"][0]["targets"]:  # the gaze mark is lost on every face
        assert r["success"] == 1.0 and r["retention"] == 0.0


def test_group_view_trains_a_real_judge(home):
    _write(home, "sq-rafd", "rafd", {"train": 128, "test": 16}, seed=2, gaze=True)
    view = group_view(open_prepared(home, "sq-rafd"))
    assert view.flip_invariant is False  # mirrored faces look the other way
    clf = load_classifier(train_classifier(view, epochs=20, seed=0))
    assert clf.space.names == view.space.names
    decided = clf.predict(torch.from_numpy(_images(view)))
    np.testing.assert_array_equal(decided.numpy(), view.labels("test") > 0.5)
    assert group_view(open_prepared(home, "sq-rafd")) is not None
    _write(home, "sq-plain", "rafd", {"train": 8, "test": 4})
    assert group_view(open_prepared(home, "sq-plain")) is None  # no other groups


def _images(ds) -> np.ndarray:
    from starcli.data.dataset import iterate_split, to_tensor

    return np.concatenate([to_tensor(images).numpy()
                           for images, _, _ in iterate_split(ds, "test")])
