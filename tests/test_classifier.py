"""The eval classifier: learns a trivially learnable label, caches by content, is deterministic."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import starcli.classifier as clf_mod
from starcli.classifier import (
    accuracy_on,
    accuracy_table,
    auto_epochs,
    classifier_path,
    find_cached,
    load_classifier,
    train_classifier,
)
from starcli.data.celeba_attrs import CELEBA_ATTRIBUTES
from starcli.data.dataset import content_sha256, open_prepared
from starcli.data.labels import LabelSpace
from starcli.errors import StarcliError

SIZE = 32
NAMES = ["Black_Hair", "Blond_Hair", "Male"]
EXPRESSIONS = ["angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad",
               "surprised"]


def _square(img: np.ndarray, k: int) -> None:
    """Label k is a bright band across row block k (survives the horizontal-flip
    augmentation, unlike a square at one side)."""
    img[4 * k:4 * k + 4, 4:SIZE - 4] = 255


def write_squares(home, name: str, fmt: str, counts: dict[str, int], seed: int = 0) -> None:
    """A prepared dataset (shard contract) whose labels are drawn as bands on noise."""
    rng = np.random.default_rng(seed)
    root = home / "prepared" / name / str(SIZE)
    root.mkdir(parents=True)
    if fmt == "celeba":
        table = {"columns": {"attributes": list(CELEBA_ATTRIBUTES)},
                 "space": {"dataset": name, "format": "celeba", "kind": "multilabel",
                           "names": NAMES, "exclusive_groups": [NAMES[:2]]},
                 "source_column": "attributes",
                 "selected_columns": [CELEBA_ATTRIBUTES.index(n) for n in NAMES],
                 "aliases": []}
    else:
        table = {"columns": {"expression": EXPRESSIONS},
                 "space": {"dataset": name, "format": "rafd", "kind": "onehot",
                           "names": EXPRESSIONS, "exclusive_groups": []},
                 "source_column": "expression", "selected_columns": None, "aliases": []}
    shards = []
    for split, n in counts.items():
        images = rng.integers(0, 90, (n, SIZE, SIZE, 3), dtype=np.uint8)
        if fmt == "celeba":
            attrs = rng.integers(0, 2, (n, 40), dtype=np.uint8)
            hair = rng.integers(0, 2, n)
            cols = [table["selected_columns"][i] for i in range(3)]
            attrs[:, cols[0]], attrs[:, cols[1]] = hair == 0, hair == 1
            for i in range(n):
                for k, col in enumerate(cols):
                    if attrs[i, col]:
                        _square(images[i], k)
            labels = {"attributes": attrs}
        else:
            expression = (np.arange(n) % 8).astype(np.uint8)
            rng.shuffle(expression)
            for i in range(n):
                _square(images[i], int(expression[i]))
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


@pytest.fixture
def celeba(home):
    write_squares(home, "sq-celeba", "celeba", {"train": 160, "valid": 32, "test": 64})
    return open_prepared(home, "sq-celeba")


def test_learns_bands_multilabel(celeba):
    path = train_classifier(celeba, epochs=12, seed=0)
    assert path.parent.name == "classifiers" and path.name.startswith("sq-celeba-32-")
    clf = load_classifier(path)
    result = accuracy_on(clf, celeba, "test")
    assert result["images"] == 64
    assert result["mean"] >= 0.95, result
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["holdout"]["split"] == "valid" and meta["holdout"]["accuracy"] >= 0.9
    assert meta["space"]["names"] == NAMES


def test_learns_bands_onehot(home):
    write_squares(home, "sq-rafd", "rafd", {"train": 192, "test": 64}, seed=1)
    ds = open_prepared(home, "sq-rafd")
    clf = load_classifier(train_classifier(ds, epochs=12, seed=0))
    decisions = clf.predict(torch.zeros(2, 3, SIZE, SIZE))
    assert decisions.shape == (2, 8) and decisions.sum(1).tolist() == [1, 1]  # one class each
    result = accuracy_on(clf, ds, "test")
    assert result["overall"] >= 0.95, result


def test_cache_is_reused_and_keyed(celeba, monkeypatch):
    built = []
    real_stream = clf_mod.TrainStream

    def counting_stream(*args, **kwargs):
        built.append(1)
        return real_stream(*args, **kwargs)

    monkeypatch.setattr(clf_mod, "TrainStream", counting_stream)
    path = train_classifier(celeba, epochs=1, seed=0)
    mtime = path.stat().st_mtime_ns
    assert len(built) == 1
    assert find_cached(celeba, epochs=1, seed=0) == path
    assert train_classifier(celeba, epochs=1, seed=0) == path  # cache hit: no training
    assert len(built) == 1 and path.stat().st_mtime_ns == mtime
    train_classifier(celeba, epochs=2, seed=0)  # another recipe: retrained
    assert len(built) == 2
    train_classifier(celeba, epochs=2, seed=0, force=True)
    assert len(built) == 3
    assert find_cached(celeba, epochs=1, seed=0) is None  # the file now holds epochs=2


def test_other_data_gets_another_key(home, celeba):
    write_squares(home, "sq-celeba2", "celeba", {"train": 160, "test": 64}, seed=5)
    other = open_prepared(home, "sq-celeba2")
    a, b = classifier_path(celeba), classifier_path(other)
    assert a != b and a.name.split("-")[-1] != b.name.split("-")[-1]


def test_training_is_deterministic(celeba, tmp_path):
    first = train_classifier(celeba, epochs=1, seed=3, home=tmp_path / "h1")
    second = train_classifier(celeba, epochs=1, seed=3, home=tmp_path / "h2")
    a, b = load_file(str(first)), load_file(str(second))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_load_without_meta_is_a_clear_error(celeba):
    path = train_classifier(celeba, epochs=1, seed=0)
    path.with_suffix(".json").unlink()
    with pytest.raises(StarcliError, match="train-classifier"):
        load_classifier(path)


def test_no_train_split_is_an_error(home):
    write_squares(home, "sq-test-only", "celeba", {"test": 8})
    with pytest.raises(StarcliError, match="train"):
        train_classifier(open_prepared(home, "sq-test-only"), epochs=1)


def test_accuracy_table_by_hand():
    multi = LabelSpace("d", "celeba", "multilabel", ("A", "B"))
    truth = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], bool)
    guess = np.array([[1, 0], [0, 1], [0, 1], [0, 1]], bool)
    table = accuracy_table(guess, truth, multi)
    assert table["per_label"] == {"A": 0.75, "B": 0.75} and table["mean"] == 0.75
    onehot = LabelSpace("r", "rafd", "onehot", ("x", "y", "z"))
    truth = np.eye(3, dtype=bool)[[0, 0, 1, 1]]
    guess = np.eye(3, dtype=bool)[[0, 1, 1, 1]]
    table = accuracy_table(guess, truth, onehot)
    assert table["per_label"] == {"x": 0.5, "y": 1.0, "z": None}  # z never occurs
    assert table["overall"] == 0.75 and table["mean"] == 0.75


def test_auto_epochs_bounds():
    assert auto_epochs(162_770, 64) == 2  # full CelebA: the minimum
    assert auto_epochs(3_214, 64) == 16  # demo-celeba
    assert auto_epochs(1_440, 64) == 30  # demo-rafd: the maximum
    assert auto_epochs(50, 64) == 30  # tiny: the maximum
    assert auto_epochs(20_000, 64) == 3  # 313 steps an epoch
