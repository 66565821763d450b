"""The shard reader: manifests, labels, joint layout, deterministic resumable batches."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import shutil
import time

import h5py
import numpy as np
import pytest
import torch

from starcli.data.dataset import (
    PreparedDataset,
    TrainStream,
    content_sha256,
    iterate_split,
    joint_layout,
    open_prepared,
    to_tensor,
)
from starcli.errors import ConfigError, DatasetNotFoundError, ShardError

SIZE = 16
ATTRS = [f"Attr_{i:02d}" for i in range(40)]
ATTRS[8], ATTRS[9], ATTRS[20], ATTRS[31], ATTRS[39] = (
    "Black_Hair", "Blond_Hair", "Male", "Smiling", "Young")
EXPRESSIONS = ["angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad",
               "surprised"]


def _image(row: int, tag: int) -> np.ndarray:
    """Row identity in channels 0/1 (and which dataset), a left-to-right ramp in channel 2."""
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[..., 0] = row % 256
    img[..., 1] = row // 256 + 100 * tag
    img[..., 2] = (np.arange(SIZE) * (256 // SIZE))[None, :]
    return img


def _decode(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, dataset tags, flipped?) recovered from normalised batch images."""
    u8 = torch.round((images + 1) * 127.5).to(torch.int64).numpy()
    rows = u8[:, 0, 0, 0] + 256 * (u8[:, 1, 0, 0] % 100)
    flipped = u8[:, 2, 0, 0] > u8[:, 2, 0, -1]
    return rows, u8[:, 1, 0, 0] // 100, flipped


def _hash(images: np.ndarray, labels: dict[str, np.ndarray]) -> str:
    """The contract's content checksum, written independently of the reader's helper."""
    h = hashlib.sha256(images.tobytes())
    for name in sorted(labels):
        h.update(labels[name].tobytes())
    return h.hexdigest()


def write_prepared(home, name: str, fmt: str, splits: dict[str, int], rows_per_shard: int,
                   tag: int, names=None, size: int = SIZE) -> dict:
    """Shards + manifest.json per the shard contract, written directly with h5py."""
    rng = np.random.default_rng(tag)
    root = home / "prepared" / name / str(size)
    root.mkdir(parents=True)
    if fmt == "celeba":
        names = names or ["Black_Hair", "Blond_Hair", "Male", "Young"]
        space = {"dataset": name, "format": "celeba", "kind": "multilabel", "names": names,
                 "exclusive_groups": [["Black_Hair", "Blond_Hair"]]
                 if {"Black_Hair", "Blond_Hair"} <= set(names) else []}
        table = {"columns": {"attributes": ATTRS}, "space": space,
                 "source_column": "attributes",
                 "selected_columns": [ATTRS.index(n) for n in names], "aliases": []}
    else:
        space = {"dataset": name, "format": "rafd", "kind": "onehot", "names": EXPRESSIONS,
                 "exclusive_groups": []}
        table = {"columns": {"expression": EXPRESSIONS, "gaze": ["left", "frontal", "right"],
                             "angle": [45, 90, 135], "gender": ["female", "male"],
                             "ethnicity": ["Caucasian", "Moroccan"]},
                 "space": space, "source_column": "expression", "selected_columns": None,
                 "aliases": []}
    shards = []
    for split, n in splits.items():
        for k, start in enumerate(range(0, n, rows_per_shard)):
            rows = np.arange(start, min(start + rows_per_shard, n))
            images = np.stack([_image(int(r), tag) for r in rows])
            if fmt == "celeba":
                labels = {"attributes": rng.integers(0, 2, (len(rows), 40), dtype=np.uint8)}
            else:
                labels = {"expression": rng.integers(0, 8, len(rows), dtype=np.uint8),
                          "gaze": rng.integers(0, 3, len(rows), dtype=np.uint8),
                          "angle": rng.choice([45, 90, 135], len(rows)).astype(np.int16),
                          "subject": (rows // 24).astype(np.int16),
                          "gender": rng.integers(0, 2, len(rows), dtype=np.uint8),
                          "ethnicity": rng.integers(0, 2, len(rows), dtype=np.uint8)}
            path = root / f"{split}-{k:05d}.h5"
            with h5py.File(path, "w") as f:
                f.create_dataset("images", data=images, chunks=(1, size, size, 3),
                                 fletcher32=True)
                for col, values in labels.items():
                    f.create_dataset(f"labels/{col}", data=values)
                f.create_dataset("index/source_name", data=[f"{r:06d}.jpg" for r in rows],
                                 dtype=h5py.string_dtype())
                f.attrs.update({"starcli_schema": 1, "dataset": name, "split": split,
                                "shard_index": k, "count": len(rows), "image_size": size,
                                "label_table": json.dumps(table)})
            shards.append({"path": path.name, "split": split, "index": k, "count": len(rows),
                           "bytes": path.stat().st_size,
                           "content_sha256": _hash(images, labels), "_labels": labels})
    manifest = {"schema": 1, "dataset": name, "format": fmt, "created_by": "test",
                "image_size": size, "crop": 178, "compression": None,
                "rows_per_shard": rows_per_shard, "label_table": table, "splits": splits,
                "shards": [{k: v for k, v in s.items() if k != "_labels"} for s in shards],
                "skipped": []}
    (root / "manifest.json").write_text(json.dumps(manifest))
    truth = {split: {col: np.concatenate([s["_labels"][col] for s in shards
                                          if s["split"] == split])
                     for col in shards[0]["_labels"]} for split in splits}
    return truth


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    truth = {
        "demo-celeba": write_prepared(home, "demo-celeba", "celeba",
                                      {"train": 300, "test": 100}, 128, tag=0),
        "demo-rafd": write_prepared(home, "demo-rafd", "rafd", {"train": 200, "test": 80}, 64,
                                    tag=1),
        "other-celeba": write_prepared(home, "other-celeba", "celeba", {"train": 64}, 32, tag=2,
                                       names=["Smiling", "Male"]),
    }
    return home, truth


@pytest.fixture(scope="module")
def celeba(data):
    return open_prepared(data[0], "demo-celeba")


@pytest.fixture(scope="module")
def rafd(data):
    return open_prepared(data[0], "demo-rafd")


def take(stream: TrainStream, n: int) -> list:
    # With workers, images are views of a ring that is reused after two more batches.
    return [dataclasses.replace(b, images=b.images.clone()) for b in
            (next(stream) for _ in range(n))]


def assert_same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.space_index == y.space_index
        assert torch.equal(x.indices, y.indices)
        assert torch.equal(x.images, y.images)
        assert torch.equal(x.labels, y.labels)
        assert torch.equal(x.c, y.c)


# --- manifests and labels ---------------------------------------------------------------------

def test_open_prepared_reads_manifest(celeba, rafd):
    assert celeba.image_size == SIZE and celeba.splits == {"train": 300, "test": 100}
    assert [p.name for p in celeba.shards("train")] == [
        "train-00000.h5", "train-00001.h5", "train-00002.h5"]
    assert rafd.space.kind == "onehot" and rafd.space.names == tuple(EXPRESSIONS)
    with pytest.raises(ConfigError, match="no split 'valid'"):
        celeba.shards("valid")


def test_open_prepared_missing_and_ambiguous(data, tmp_path):
    home = data[0]
    with pytest.raises(DatasetNotFoundError, match=r"demo-celeba is not prepared \(at 64px\)\. "
                       r"Run `starcli prepare demo-celeba --size 64`\."):
        open_prepared(home, "demo-celeba", 64)
    with pytest.raises(DatasetNotFoundError, match="starcli prepare nothing"):
        open_prepared(home, "nothing")
    two = tmp_path / "two"
    for size in ("16", "32"):
        shutil.copytree(home / "prepared" / "demo-rafd" / "16",
                        two / "prepared" / "demo-rafd" / size)
    with pytest.raises(ConfigError, match="16px, 32px"):
        open_prepared(two, "demo-rafd")
    assert open_prepared(two, "demo-rafd", 16).image_size == SIZE


def test_labels_select_columns_and_one_hot(data, celeba, rafd):
    truth = data[1]
    attrs = truth["demo-celeba"]["train"]["attributes"]
    expected = attrs[:, [8, 9, 20, 39]].astype(np.float32)
    np.testing.assert_array_equal(celeba.labels("train"), expected)
    onehot = rafd.labels("test")
    assert onehot.shape == (80, 8) and onehot.dtype == np.float32
    np.testing.assert_array_equal(onehot.argmax(1), truth["demo-rafd"]["test"]["expression"])
    np.testing.assert_array_equal(onehot.sum(1), np.ones(80))


# --- joint layout (reference: stargan-v1.md, "Joint training with the mask vector") -------

def test_joint_layout_matches_stargan_mask_vector(celeba, rafd):
    layout = joint_layout([celeba, rafd])
    assert (layout.cls_dim, layout.c_dim) == (4 + 8, 4 + 8 + 2)
    attrs = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    c = layout.encode(0, attrs)
    assert c.tolist() == [[1, 0, 1, 1, *[0] * 8, 1, 0]]  # CelebA: [labels, zeros(8), 1, 0]
    happy = torch.zeros(1, 8)
    happy[0, 4] = 1
    c = layout.encode(1, happy)
    assert c.tolist() == [[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]]  # RaFD: [0s, 1-hot, 0, 1]
    single = joint_layout([celeba])
    assert single.c_dim == 4 and not single.use_mask


def test_joint_layout_three_datasets_and_aliases(data, celeba, rafd):
    other = open_prepared(data[0], "other-celeba")
    aliases = [("celeba:Smiling", "rafd:happy"), ("celeba:Male", "rafd:nobody")]
    layout = joint_layout([celeba, rafd, other], aliases)
    assert [b.offset for b in layout.blocks] == [0, 4, 12]
    assert (layout.cls_dim, layout.c_dim, layout.mask_offset) == (14, 17, 14)
    assert layout.encode(2, torch.tensor([[1.0, 1.0]])).tolist() == [
        [0] * 12 + [1, 1] + [0, 0, 1]]
    assert layout.cls_slice(1) == slice(4, 12)
    # Only other-celeba selected Smiling; "nobody" is no RaFD expression.
    assert layout.aliases == (("other-celeba:Smiling", "demo-rafd:happy"),)


def test_joint_layout_refuses_mixed_sizes(celeba, rafd):
    small = PreparedDataset(name=rafd.name, root=rafd.root, manifest=rafd.manifest,
                            image_size=32, space=rafd.space, splits=rafd.splits)
    with pytest.raises(ConfigError, match="different image sizes"):
        joint_layout([celeba, small])


# --- batches -----------------------------------------------------------------------------------

def test_to_tensor_range_and_layout():
    x = np.zeros((2, 4, 4, 3), np.uint8)
    x[0, 1, 2] = (255, 0, 128)
    t = to_tensor(x)
    assert t.shape == (2, 3, 4, 4) and t.dtype == torch.float32 and t.is_contiguous()
    assert t[0, :, 1, 2].tolist() == pytest.approx([1.0, -1.0, 128 / 127.5 - 1], abs=1e-6)
    assert t.min() == -1.0 and t.max() == 1.0


def test_batches_are_normalised_labelled_and_flips_mirror(celeba, rafd):
    layout = joint_layout([celeba, rafd])
    with TrainStream([celeba, rafd], layout, batch_size=32, seed=3) as stream:
        batches = take(stream, 6)
    plain = {}
    for images, _, rows in iterate_split(celeba, "train", batch_size=100):
        plain.update({int(r): img for r, img in zip(rows, images, strict=True)})
    n_flipped = 0
    for b in batches:
        assert b.images.shape == (32, 3, SIZE, SIZE)
        assert b.images.is_contiguous(memory_format=torch.channels_last)
        assert b.images.min() >= -1 and b.images.max() <= 1
        rows, tags, flipped = _decode(b.images)
        np.testing.assert_array_equal(rows, b.indices.numpy())
        assert set(tags.tolist()) == {b.space_index}  # never mixes datasets
        ds = [celeba, rafd][b.space_index]
        np.testing.assert_array_equal(b.labels.numpy(), ds.labels("train")[rows])
        assert torch.equal(b.c, layout.encode(b.space_index, b.labels))
        if b.space_index == 0:
            for i, r in enumerate(rows):
                expected = to_tensor(plain[int(r)][None])[0]
                if flipped[i]:
                    expected = expected.flip(-1)
                assert torch.equal(b.images[i], expected)
        n_flipped += int(flipped.sum())
    assert 0.3 < n_flipped / (6 * 32) < 0.7
    with TrainStream([celeba], joint_layout([celeba]), batch_size=32, augment=False) as s:
        assert not _decode(next(s).images)[2].any()


def test_same_seed_same_batches_other_seed_differs(celeba, rafd):
    layout = joint_layout([celeba, rafd])
    streams = [TrainStream([celeba, rafd], layout, batch_size=16, seed=s) for s in (7, 7, 8)]
    a, b, c = (take(s, 5) for s in streams)
    assert_same(a, b)
    assert not torch.equal(a[0].indices, c[0].indices)
    for s in streams:
        s.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact(celeba, rafd, workers):
    layout = joint_layout([celeba, rafd])
    # 32-row batches: 6 per RaFD epoch, so 20 alternating batches cross an epoch boundary.
    with TrainStream([celeba, rafd], layout, batch_size=32, seed=1, workers=0) as ref_stream:
        reference = take(ref_stream, 20)
    with TrainStream([celeba, rafd], layout, batch_size=32, seed=1, workers=workers) as first:
        assert_same(take(first, 7), reference[:7])
        state = json.loads(json.dumps(first.state_dict()))
        assert state == {"step": 7, "epochs": [0, 0], "positions": [4, 3]}
        assert_same(take(first, 3), reference[7:10])
        # Rewinding the same stream (workers already running ahead) restarts from the state.
        first.load_state_dict(state)
        assert_same(take(first, 2), reference[7:9])
        assert 0.0 <= first.wait_fraction() <= 1.0
    with TrainStream([celeba, rafd], layout, batch_size=32, seed=1, workers=workers) as second:
        second.load_state_dict(state)
        assert_same(take(second, 13), reference[7:20])
        assert second.state_dict()["epochs"] == [1, 1]


def test_resume_mid_group_with_workers_matches_uninterrupted(celeba, rafd):
    from starcli.data.dataset import _GROUP

    # With workers, DataLoader items are groups of _GROUP batches; resuming from a state taken
    # at every offset within a group continues exactly like an uninterrupted workers=0 stream.
    layout = joint_layout([celeba, rafd])
    total = 3 * _GROUP + 3
    with TrainStream([celeba, rafd], layout, batch_size=32, seed=2, workers=0) as ref_stream:
        reference = take(ref_stream, total)
    states = []
    with TrainStream([celeba, rafd], layout, batch_size=32, seed=2, workers=2) as first:
        for _ in range(2 * _GROUP + 1):
            next(first)
            states.append(json.loads(json.dumps(first.state_dict())))
        first.close()  # mid-group (unless _GROUP is 1): the next batch restarts the workers
        assert_same(take(first, total - 2 * _GROUP - 1), reference[2 * _GROUP + 1:])
    for cut in range(_GROUP + 1, 2 * _GROUP + 1):  # group offsets 1 .. _GROUP-1, then 0
        assert states[cut - 1]["step"] == cut
        with TrainStream([celeba, rafd], layout, batch_size=32, seed=2, workers=2) as resumed:
            resumed.load_state_dict(states[cut - 1])
            assert_same(take(resumed, total - cut), reference[cut:])


def test_worker_batches_stay_valid_while_two_more_are_taken(celeba, rafd):
    layout = joint_layout([celeba, rafd])
    with TrainStream([celeba, rafd], layout, batch_size=16, seed=3, workers=0) as ref:
        expected = [b.images for b in take(ref, 30)]
    with TrainStream([celeba, rafd], layout, batch_size=16, seed=3, workers=2) as stream:
        held = [next(stream).images, next(stream).images]
        for i in range(2, 30):
            time.sleep(0.005)  # a slow consumer: the workers fill every slot they may
            held.append(next(stream).images)
            # the batch taken two calls ago is untouched although the workers run ahead
            assert torch.equal(held[i - 2], expected[i - 2]), i
            assert torch.equal(held[i], expected[i])


def test_load_state_dict_rejects_other_setups(celeba, rafd):
    stream = TrainStream([celeba, rafd], joint_layout([celeba, rafd]), batch_size=32)
    with pytest.raises(ConfigError, match="this run has 2 datasets"):
        stream.load_state_dict({"step": 1, "epochs": [0], "positions": [0]})
    with pytest.raises(ConfigError, match="batch-size"):
        stream.load_state_dict({"step": 1, "epochs": [0, 0], "positions": [50, 0]})


def test_alternation_and_mix_weights(celeba, rafd):
    layout = joint_layout([celeba, rafd])
    with TrainStream([celeba, rafd], layout, batch_size=4) as stream:
        assert [b.space_index for b in take(stream, 6)] == [0, 1, 0, 1, 0, 1]
    with TrainStream([celeba, rafd], layout, batch_size=4, mix=[3, 1], seed=5) as stream:
        picks = np.array([b.space_index for b in take(stream, 400)])
    assert 0.68 < (picks == 0).mean() < 0.82
    with pytest.raises(ConfigError, match="--mix"):
        TrainStream([celeba, rafd], layout, batch_size=4, mix=[1])


def test_ranks_are_disjoint_and_cover_the_epoch(celeba):
    layout = joint_layout([celeba])
    seen = []
    for rank in (0, 1):
        # 300 rows / 2 ranks = 150 per rank = 15 batches of 10.
        with TrainStream([celeba], layout, batch_size=10, seed=4, rank=rank,
                         world_size=2) as stream:
            rows = torch.cat([b.indices for b in take(stream, 15)]).tolist()
        assert len(set(rows)) == 150
        seen.append(set(rows))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(300))


def test_too_few_rows_for_a_batch(rafd):
    with pytest.raises(ConfigError, match="fewer than one batch"):
        TrainStream([rafd], joint_layout([rafd]), batch_size=128, world_size=2)


def test_iterate_split_row_order_and_limit(data, rafd):
    chunks = list(iterate_split(rafd, "test", batch_size=30))
    assert [len(c[2]) for c in chunks] == [30, 30, 20]
    images = np.concatenate([c[0] for c in chunks])
    assert images.dtype == np.uint8 and images.shape == (80, SIZE, SIZE, 3)
    np.testing.assert_array_equal(images[:, 0, 0, 0], np.arange(80))
    np.testing.assert_array_equal(np.concatenate([c[2] for c in chunks]), np.arange(80))
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), rafd.labels("test"))
    assert sum(len(c[2]) for c in iterate_split(rafd, "test", batch_size=30, limit=45)) == 45


def test_reader_keeps_request_order_across_runs_and_shards(celeba):
    from starcli.data.dataset import _ShardReader

    reader = _ShardReader(celeba.name, celeba.shards("train"), celeba._counts("train"))
    # Shard 0 holds rows 0-127, shard 1 128-255: a reversed run crossing the boundary,
    # duplicates, an in-order run and the last row.
    rows = np.array([130, 129, 128, 127, 126, 5, 5, 299, 0, 1, 2, 64])
    images = reader.read(rows)
    reader.close()
    np.testing.assert_array_equal(images[:, 0, 0, 0].astype(int)
                                  + 256 * images[:, 0, 0, 1].astype(int), rows)
    np.testing.assert_array_equal(images[:, :, :, 2], np.broadcast_to(
        _image(0, 0)[:, :, 2], (len(rows), SIZE, SIZE)))


def test_pickling_drops_open_handles(celeba):
    stream = TrainStream([celeba], joint_layout([celeba]), batch_size=8, workers=0)
    first = next(stream)  # opens shards in this process
    reader = stream._source.readers[0]
    assert reader._files
    copy = pickle.loads(pickle.dumps(stream._source))
    assert copy.readers[0]._files == {}
    rows = first.indices.numpy()
    np.testing.assert_array_equal(copy.readers[0].read(rows), reader.read(rows))
    pickle.loads(pickle.dumps(celeba))
    stream.close()
    copy.readers[0].close()


# --- corruption --------------------------------------------------------------------------------

def test_content_sha256_matches_manifest(celeba, rafd):
    celeba.verify()
    rafd.verify()
    with h5py.File(rafd.shards("train")[1], "r") as f:
        assert content_sha256(f) == rafd.manifest["shards"][1]["content_sha256"]


@pytest.fixture
def corrupt_copy(data, tmp_path):
    """A copy of demo-celeba whose train shard 1 has flipped bytes in image row 5 (row 133)."""
    home = tmp_path / "home"
    shutil.copytree(data[0] / "prepared" / "demo-celeba", home / "prepared" / "demo-celeba")
    path = home / "prepared" / "demo-celeba" / "16" / "train-00001.h5"
    with h5py.File(path, "r") as f:
        info = f["images"].id.get_chunk_info(5)
    raw = bytearray(path.read_bytes())
    for i in range(info.byte_offset + 10, info.byte_offset + 20):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    return open_prepared(home, "demo-celeba")


def test_corrupted_shard_is_named_by_verify(corrupt_copy):
    with pytest.raises(ShardError, match=r"train-00001\.h5.*starcli prepare demo-celeba --force"):
        corrupt_copy.verify()


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupted_shard_is_named_when_read(corrupt_copy, workers):
    layout = joint_layout([corrupt_copy])
    stream = TrainStream([corrupt_copy], layout, batch_size=100, workers=workers, seed=0)
    with pytest.raises(ShardError, match=r"train-00001\.h5 is corrupted") as err:
        take(stream, 3)  # one epoch: every row, so row 133 too
    assert "\n" not in str(err.value)
    stream.close()
    with pytest.raises(ShardError, match=r"train-00001\.h5"):
        list(iterate_split(corrupt_copy, "train"))


def test_checksum_mismatch_without_read_error(data, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(data[0] / "prepared" / "demo-rafd", home / "prepared" / "demo-rafd")
    with h5py.File(home / "prepared" / "demo-rafd" / "16" / "test-00001.h5", "r+") as f:
        f["labels/expression"][0] = (f["labels/expression"][0] + 1) % 8
    with pytest.raises(ShardError, match=r"test-00001\.h5 fails its content checksum"):
        open_prepared(home, "demo-rafd").verify()


def test_class_balanced_stream_is_balanced_deterministic_and_resumes(celeba):
    """`balance` (StarGAN v2's sampler): each class equally likely, rows of no class never
    drawn, the same batches for a seed, and an exact resume from the state."""
    layout = joint_layout([celeba])
    labels = celeba.labels("train")
    male = list(celeba.space.names).index("Male")

    def rare_male(lab):  # class 1 = male; make every other male row "in no class"
        cls = (lab[:, male] > 0.5).astype(np.int64)
        rows = np.flatnonzero(cls == 1)
        cls[rows[1::2]] = -1
        return cls

    classes = rare_male(labels)
    share = (classes == 1).sum() / (classes >= 0).sum()
    with TrainStream([celeba], layout, batch_size=16, seed=3, balance=rare_male) as s:
        batches = take(s, 12)
    drawn = np.concatenate([b.indices.numpy() for b in batches])
    assert set(classes[drawn].tolist()) <= {0, 1}  # never a row of no class
    assert abs((classes[drawn] == 1).mean() - 0.5) < 0.15 < abs(share - 0.5)
    with TrainStream([celeba], layout, batch_size=16, seed=3, balance=rare_male) as again:
        assert_same(take(again, 5), batches[:5])
        state = json.loads(json.dumps(again.state_dict()))
    with TrainStream([celeba], layout, batch_size=16, seed=3, balance=rare_male) as resumed:
        resumed.load_state_dict(state)
        assert_same(take(resumed, 7), batches[5:12])
    with pytest.raises(ConfigError, match="no train image falls in any"):
        TrainStream([celeba], layout, batch_size=16, balance=lambda lab: -np.ones(len(lab),
                                                                                   np.int64))
