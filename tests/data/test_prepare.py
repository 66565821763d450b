"""`starcli prepare` engine: shards, label tables, splits, robustness, resume and locking."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from starcli.data.prepare import PrepareConfig, prepare
from starcli.data.registry import load_registry
from starcli.errors import (
    ConfigError,
    DatasetNotFoundError,
    ShardError,
    StarcliError,
    UsageError,
)

ATTRS = load_registry().get("demo-celeba").attributes
RED, BLUE, GREEN = (200, 40, 40), (40, 40, 200), (40, 200, 40)


# --------------------------------------------------------------------------------------------
# Fixtures: tiny CelebA- and RaFD-format raw folders written with PIL


def celeba_image(i: int) -> Image.Image:
    """178x218: green bands top and bottom (cut by the 178 centre crop), a red left half and a
    blue right half inside the crop. The red level tags the row: 60 + 4 * (i % 40)."""
    a = np.zeros((218, 178, 3), np.uint8)
    a[:] = GREEN
    a[20:198, :89] = (60 + 4 * (i % 40), 40, 40)
    a[20:198, 89:] = BLUE
    return Image.fromarray(a)


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def make_celeba(home: Path, n_images: int = 40, n_lines: int | None = None, seed: int = 0,
                crlf: bool = False, name: str = "demo-celeba") -> tuple[list[str], np.ndarray]:
    """raw/<name>/{img_align_celeba/*.jpg, list_attr_celeba.txt, list_eval_partition.txt}.
    Attribute lines for n_lines files, images only for the first n_images. Partition: first
    70% train, next 15% valid, rest test. Returns the names and the {-1,1} values."""
    n_lines = n_lines or n_images
    raw = home / "raw" / name
    (raw / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    values = rng.choice([-1, 1], size=(n_lines, len(ATTRS)))
    names = [f"{i + 1:06d}.jpg" for i in range(n_lines)]
    for i, n in enumerate(names[:n_images]):
        (raw / "img_align_celeba" / n).write_bytes(jpeg_bytes(celeba_image(i)))
    nl = "\r\n" if crlf else "\n"
    body = "".join(n + "".join(f" {v:2d}" for v in row) + nl
                   for n, row in zip(names, values, strict=True))
    (raw / "list_attr_celeba.txt").write_bytes(
        f"{n_lines}{nl}{' '.join(ATTRS)} {nl}{body}".encode())
    part = "".join(f"{n} {0 if i < 0.7 * n_lines else 1 if i < 0.85 * n_lines else 2}\r\n"
                   for i, n in enumerate(names))
    (raw / "list_eval_partition.txt").write_bytes(part.encode())
    return names, values


def out_dir(home: Path, name: str = "demo-celeba", size: int = 32) -> Path:
    return home / "prepared" / name / str(size)


def manifest(home: Path, name: str = "demo-celeba", size: int = 32) -> dict:
    return json.loads((out_dir(home, name, size) / "manifest.json").read_text())


def read_split(home: Path, split: str, name: str = "demo-celeba", size: int = 32) -> dict:
    """Concatenated images, labels and names of a split, in shard order."""
    m = manifest(home, name, size)
    images, names, labels = [], [], {}
    for s in sorted((s for s in m["shards"] if s["split"] == split), key=lambda s: s["index"]):
        with h5py.File(out_dir(home, name, size) / s["path"], "r") as f:
            images.append(f["images"][()])
            names += list(f["index/source_name"].asstr()[()])
            for k in f["labels"]:
                labels.setdefault(k, []).append(f["labels"][k][()])
    return {"images": np.concatenate(images), "names": names,
            "labels": {k: np.concatenate(v) for k, v in labels.items()}}


def checksum(path: Path) -> str:
    """The contract's content checksum, recomputed independently."""
    with h5py.File(path, "r") as f:
        h = hashlib.sha256(f["images"][()].tobytes())
        for k in sorted(f["labels"]):
            h.update(np.ascontiguousarray(f["labels"][k][()]).tobytes())
    return h.hexdigest()


def cfg(home: Path, **kw) -> PrepareConfig:
    kw.setdefault("dataset", "demo-celeba")
    kw.setdefault("size", 32)
    return PrepareConfig(home=home, **kw)


# --------------------------------------------------------------------------------------------
# CelebA format


def test_celeba_shards_follow_the_contract(home):
    names, values = make_celeba(home, n_images=40)
    summary = prepare(cfg(home, attrs=("Blond_Hair", "Male", "Black_Hair", "Young"),
                          rows_per_shard=16))
    m = manifest(home)
    assert m["splits"] == {"train": 28, "valid": 6, "test": 6} == summary["splits"]
    assert [s["path"] for s in m["shards"]] == ["train-00000.h5", "train-00001.h5",
                                                "valid-00000.h5", "test-00000.h5"]
    assert m["schema"] == 1 and m["format"] == "celeba" and m["image_size"] == 32
    assert m["crop"] == 178 and m["compression"] is None and m["rows_per_shard"] == 16
    table = m["label_table"]
    assert table["columns"]["attributes"] == list(ATTRS)
    assert table["space"]["names"] == ["Blond_Hair", "Male", "Black_Hair", "Young"]
    assert table["space"]["kind"] == "multilabel"
    assert table["space"]["exclusive_groups"] == [["Black_Hair", "Blond_Hair"]]
    assert table["selected_columns"] == [9, 20, 8, 39] and table["source_column"] == "attributes"
    assert ["celeba:Smiling", "rafd:happy"] in table["aliases"]

    for s in m["shards"]:
        path = out_dir(home) / s["path"]
        with h5py.File(path, "r") as f:
            img = f["images"]
            assert img.dtype == np.uint8 and img.shape == (s["count"], 32, 32, 3)
            assert img.chunks == (1, 32, 32, 3) and img.fletcher32 and img.compression is None
            assert f["labels/attributes"].dtype == np.uint8
            assert f["labels/attributes"].shape == (s["count"], 40)
            assert f["index/source_name"].shape == (s["count"],)
            assert f.attrs["starcli_schema"] == 1 and f.attrs["dataset"] == "demo-celeba"
            assert f.attrs["split"] == s["split"] and f.attrs["shard_index"] == s["index"]
            assert f.attrs["count"] == s["count"] and f.attrs["image_size"] == 32
            assert json.loads(f.attrs["label_table"]) == table
        assert checksum(path) == s["content_sha256"]
        assert s["bytes"] == path.stat().st_size

    train = read_split(home, "train")
    assert train["names"] == names[:28]
    np.testing.assert_array_equal(train["labels"]["attributes"], (values[:28] > 0))
    # Centre crop + resize: no green band, red left / blue right, rows in file order.
    img = train["images"].astype(int)
    assert np.abs(img[:, :, :12] - np.array(BLUE)).max() > 100  # left is not blue
    assert np.abs(img[:, 4:28, 20:] - np.array(BLUE)).max() < 40
    red = img[:, 4:28, 2:12, 0].mean(axis=(1, 2))
    np.testing.assert_allclose(red, [60 + 4 * i for i in range(28)], atol=6)


def test_pixels_match_a_plain_crop_and_resize(home):
    """The fast paths (cv2 at full size, JPEG DCT scaling for small outputs) stay close to the
    textbook PIL crop + area resize; a crop 4 px off would differ by ~14 on this content."""
    make_celeba(home, n_images=6)
    raw = home / "raw" / "demo-celeba" / "img_align_celeba"
    for i in range(6):  # smooth random colour fields instead of flat halves
        noise = np.random.default_rng(i).integers(0, 255, (11, 9, 3)).astype(np.uint8)
        field = Image.fromarray(noise).resize((178, 218), Image.BICUBIC)
        (raw / f"{i + 1:06d}.jpg").write_bytes(jpeg_bytes(field))
    for size, tolerance in ((16, 7.0), (32, 3.5), (128, 2.0)):  # decoded at 1/4, 1/2, 1/1
        prepare(cfg(home, size=size))
        got = read_split(home, "train", size=size)
        assert len(got["names"]) == 5
        for name, pixels in zip(got["names"], got["images"], strict=True):
            with Image.open(raw / name) as im:
                ref = np.asarray(im.convert("RGB").crop((0, 20, 178, 198))
                                 .resize((size, size), Image.BOX), np.float64)
            assert np.abs(pixels - ref).mean() < tolerance, (size, name)


def test_stargan_split_reproduces_the_official_shuffle(home):
    names, _ = make_celeba(home, n_images=30, n_lines=2100, crlf=True)
    summary = prepare(cfg(home, split="stargan"))
    # The official data_loader.py: lines[2:], random.seed(1234), shuffle, (i+1) < 2000 -> test.
    lines = list(names)
    random.seed(1234)
    random.shuffle(lines)
    want_test = [n for i, n in enumerate(lines) if (i + 1) < 2000 and n in names[:30]]
    want_train = [n for i, n in enumerate(lines) if (i + 1) >= 2000 and n in names[:30]]
    assert read_split(home, "test")["names"] == want_test
    assert read_split(home, "train")["names"] == want_train
    assert summary["splits"] == {"train": len(want_train), "test": len(want_test)}
    assert manifest(home)["source"]["split_mode"] == "stargan"
    missing = [s for s in summary["skipped"] if s["reason"] == "missing file"]
    assert len(missing) == 2070 and summary["skipped_reasons"] == {"missing file": 2070}

    official = prepare(cfg(home, split="official"))
    assert official["splits"] == {"train": 30}  # every present file is in the first 70%
    assert official["built_shards"] == 1
    assert sorted(p.name for p in out_dir(home).glob("*.h5")) == ["train-00000.h5"]


def test_relabel_only_rewrites_the_label_table(home):
    make_celeba(home, n_images=24)
    first = prepare(cfg(home, attrs=("Male", "Young"), rows_per_shard=8))
    assert first["built_shards"] == 5 and not first["relabelled_only"]  # train 17 = 3 shards
    before = {s["path"]: s["content_sha256"] for s in manifest(home)["shards"]}

    second = prepare(cfg(home, attrs=("Smiling", "Bald", "Eyeglasses"), rows_per_shard=8))
    assert second["relabelled_only"] is True
    assert second["built_shards"] == 0 and second["reused_shards"] == 5
    m = manifest(home)
    assert m["label_table"]["space"]["names"] == ["Smiling", "Bald", "Eyeglasses"]
    assert m["label_table"]["selected_columns"] == [31, 4, 15]
    assert {s["path"]: s["content_sha256"] for s in m["shards"]} == before
    for s in m["shards"]:
        with h5py.File(out_dir(home) / s["path"], "r") as f:
            assert json.loads(f.attrs["label_table"]) == m["label_table"]

    again = prepare(cfg(home, attrs=("Smiling", "Bald", "Eyeglasses"), rows_per_shard=8))
    assert again["built_shards"] == 0 and not again["relabelled_only"]
    forced = prepare(cfg(home, attrs=("Smiling",), rows_per_shard=8, force=True))
    assert forced["built_shards"] == 5
    other_crop = prepare(cfg(home, attrs=("Smiling",), rows_per_shard=8, crop=160))
    assert other_crop["built_shards"] == 5 and manifest(home)["crop"] == 160


def test_unknown_attribute_is_a_config_error_with_did_you_mean(home):
    make_celeba(home, n_images=4)
    with pytest.raises(ConfigError, match="Did you mean Blond_Hair") as err:
        prepare(cfg(home, attrs=("Blond_hair", "Male")))
    assert err.value.exit_code == 2 and "Valid names: 5_o_Clock_Shadow" in str(err.value)
    with pytest.raises(ConfigError, match="twice"):
        prepare(cfg(home, attrs=("Male", "Male")))
    assert not (out_dir(home) / "manifest.json").exists()


def test_missing_raw_folder_says_how_to_fetch(home):
    with pytest.raises(DatasetNotFoundError, match="starcli fetch demo-celeba"):
        prepare(cfg(home))
    make_celeba(home, n_images=4)
    (home / "raw" / "demo-celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="--split stargan"):
        prepare(cfg(home))
    for p in (home / "raw" / "demo-celeba" / "img_align_celeba").iterdir():
        p.unlink()
    with pytest.raises(DatasetNotFoundError, match=r"4 skipped, e.g. 00000\d.jpg: missing file"):
        prepare(cfg(home, split="stargan"))


def test_bad_files_are_skipped_and_odd_modes_converted(home):
    make_celeba(home, n_images=12)
    raw = home / "raw" / "demo-celeba" / "img_align_celeba"
    good = (raw / "000001.jpg").read_bytes()
    (raw / "000002.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (raw / "000003.jpg").write_bytes(b"this is not an image" * 20)  # unreadable
    (raw / "000004.jpg").write_bytes(b"")  # empty
    (raw / "000005.jpg").unlink()  # listed but missing
    gray = celeba_image(0).convert("L")
    (raw / "000006.jpg").write_bytes(jpeg_bytes(gray))  # 1-channel JPEG
    (raw / "000007.jpg").write_bytes(jpeg_bytes(celeba_image(0).convert("CMYK")))
    png = io.BytesIO()
    celeba_image(0).convert("RGBA").save(png, "PNG")  # a PNG under a .jpg name
    (raw / "000008.jpg").write_bytes(png.getvalue())

    summary = prepare(cfg(home, rows_per_shard=4))
    reasons = {s["file"]: s["reason"] for s in summary["skipped"]}
    assert reasons == {"000002.jpg": "truncated image", "000003.jpg": reasons["000003.jpg"],
                       "000004.jpg": "empty file", "000005.jpg": "missing file"}
    assert reasons["000003.jpg"].startswith("not an image")
    assert summary["skipped_count"] == 4 == len(manifest(home)["skipped"])
    train = read_split(home, "train")  # rows 1-9 (70% of 12) minus the four bad ones
    assert train["names"] == ["000001.jpg", "000006.jpg", "000007.jpg", "000008.jpg",
                              "000009.jpg"]
    assert manifest(home)["splits"]["train"] == 5
    g = train["images"][1].astype(int)
    assert np.abs(g[..., 0] - g[..., 1]).max() <= 1  # gray stays gray in RGB
    for k in (2, 3):  # CMYK and RGBA converted, colours kept
        assert np.abs(train["images"][k][4:28, 20:].astype(int) - BLUE).mean() < 25
    # Missing files leave the plan; unreadable ones leave gaps in their shard (planned rows
    # 1-4 -> only 000001.jpg kept; 6-9 all kept).
    counts = {s["path"]: s["count"] for s in manifest(home)["shards"]}
    assert counts["train-00000.h5"] == 1 and counts["train-00001.h5"] == 4


def test_workers_give_the_same_shards_as_in_process(home, tmp_path):
    make_celeba(home, n_images=40)
    other = tmp_path / "other"
    make_celeba(other, n_images=40)
    a = prepare(cfg(home, rows_per_shard=16, workers=0))
    b = prepare(cfg(other, rows_per_shard=16, workers=2, compression="lzf"))
    assert a["splits"] == b["splits"]
    sums_a = [s["content_sha256"] for s in manifest(home)["shards"]]
    sums_b = [s["content_sha256"] for s in manifest(other)["shards"]]
    assert sums_a == sums_b  # compression does not enter the content checksum
    with h5py.File(out_dir(other) / "train-00000.h5", "r") as f:
        assert f["images"].compression == "lzf"


# --------------------------------------------------------------------------------------------
# Resume after kill -9, and the lock


_RUN = ("import sys; from pathlib import Path; from starcli.data.prepare import PrepareConfig, "
        "prepare; prepare(PrepareConfig(home=Path(sys.argv[1]), dataset='demo-celeba', "
        "size=16, rows_per_shard=6))")


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for root in (killed, clean):
        make_celeba(root, n_images=30)
        raw = root / "raw" / "demo-celeba" / "img_align_celeba"
        (raw / "000009.jpg").write_bytes((raw / "000009.jpg").read_bytes()[:900])  # truncated
    out = out_dir(killed, size=16)
    env = {**os.environ, "STARCLI_PREPARE_PAUSE_S": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _RUN, str(killed)], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a shard committed and the next one half-written
            journal = out / "progress.json"
            done = json.loads(journal.read_text())["shards"] if journal.exists() else {}
            if done and list(out.glob("*.h5.tmp")):
                break
            assert proc.poll() is None, "prepare finished before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("prepare never reached the second shard")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not (out / "manifest.json").exists()

    resumed = prepare(PrepareConfig(home=killed, dataset="demo-celeba", size=16,
                                    rows_per_shard=6))
    assert resumed["reused_shards"] >= 1 and resumed["built_shards"] >= 1
    assert not list(out.glob("*.tmp"))
    prepare(PrepareConfig(home=clean, dataset="demo-celeba", size=16, rows_per_shard=6))
    a, b = manifest(killed, size=16), manifest(clean, size=16)
    key = [(s["path"], s["count"], s["content_sha256"]) for s in a["shards"]]
    assert key == [(s["path"], s["count"], s["content_sha256"]) for s in b["shards"]]
    assert a["splits"] == b["splits"] and a["skipped"] == b["skipped"]
    assert a["skipped"] == [{"file": "000009.jpg", "reason": "truncated image"}]


def test_a_second_prepare_waits_then_fails_on_the_lock(home):
    make_celeba(home, n_images=6)
    out = out_dir(home)
    out.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import filelock, sys, time; lock = filelock.FileLock(sys.argv[1]);"
         " lock.acquire(); print('locked', flush=True); time.sleep(60)", str(out / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(StarcliError, match="another `starcli prepare` is writing") as err:
            prepare(cfg(home, lock_timeout=0.5))
        assert time.monotonic() - t0 >= 0.4 and str(out / ".lock") in str(err.value)
        assert err.value.exit_code == 1
        assert not (out / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert prepare(cfg(home))["images"] == 6  # the lock dies with its holder


# --------------------------------------------------------------------------------------------
# RaFD format


def make_rafd(home: Path, subjects=(1, 2, 3, 4, 5), angles=(45, 90), gazes=("frontal", "left"),
              name: str = "demo-rafd") -> Path:
    raw = home / "raw" / name
    (raw / "sub").mkdir(parents=True, exist_ok=True)
    spec = load_registry().get(name)
    for s in subjects:
        for e, expr in enumerate(spec.expressions):
            for a in angles:
                for g in gazes:
                    img = Image.new("RGB", (64, 80), (20 * e + 10, 5 * s, a))
                    gender, eth = ("male", "Moroccan") if s % 2 else ("female", "Caucasian")
                    folder = raw / "sub" if s == 5 else raw  # recursive layouts work
                    img.save(folder / f"Rafd{a:03d}_{s:02d}_{eth}_{gender}_{expr}_{g}.jpg")
    Image.new("RGB", (64, 80)).save(raw / "holiday.jpg")
    Image.new("RGB", (64, 80)).save(raw / "Rafd090_01_Caucasian_female_bored_frontal.jpg")
    Image.new("RGB", (64, 80)).save(raw / "Rafd090_01_Caucasian_robot_happy_frontal.jpg")
    Image.new("RGB", (64, 80)).save(raw / "Rafd000_01_Caucasian_female_happy_frontal.jpg")
    (raw / "rafd_index.csv").write_text("not an image\n")
    return raw


def test_rafd_labels_filters_and_subject_disjoint_split(home):
    make_rafd(home)
    summary = prepare(cfg(home, dataset="demo-rafd", angles=(90,), gazes=("frontal",)))
    reasons = {s["file"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {
        "holiday.jpg", "Rafd090_01_Caucasian_female_bored_frontal.jpg",
        "Rafd090_01_Caucasian_robot_happy_frontal.jpg",
        "Rafd000_01_Caucasian_female_happy_frontal.jpg"}
    assert reasons["Rafd090_01_Caucasian_female_bored_frontal.jpg"] == \
        "unknown expression 'bored'"
    assert reasons["Rafd090_01_Caucasian_robot_happy_frontal.jpg"] == "unknown gender 'robot'"
    assert summary["filtered"] == 5 * 8 * 3  # angle 45 and gaze left left out on purpose
    m = manifest(home, "demo-rafd")
    table = m["label_table"]
    expressions = list(load_registry().get("demo-rafd").expressions)
    assert table["space"] == {"dataset": "demo-rafd", "format": "rafd", "kind": "onehot",
                              "names": expressions, "exclusive_groups": []}
    assert table["source_column"] == "expression" and table["selected_columns"] is None
    assert table["columns"]["gender"] == ["female", "male"]
    assert table["columns"]["ethnicity"] == ["Caucasian", "Moroccan"]
    assert table["columns"]["angle"] == [90]
    assert m["splits"] == {"train": 32, "test": 8}  # ceil(10% of 5 subjects) = 1 held out
    train, test = read_split(home, "train", "demo-rafd"), read_split(home, "test", "demo-rafd")
    assert not set(train["labels"]["subject"]) & set(test["labels"]["subject"])
    assert m["source"]["test_subjects"] == sorted(set(test["labels"]["subject"].tolist()))
    for part in (train, test):
        for name, e, a, g, sex in zip(part["names"], part["labels"]["expression"],
                                      part["labels"]["angle"], part["labels"]["gaze"],
                                      part["labels"]["gender"], strict=True):
            base = Path(name).name.split("_")
            assert base[4] == expressions[e] and int(base[0][4:]) == a == 90
            assert g == 1 and sex == (base[3] == "male")
        assert part["labels"]["angle"].dtype == np.int16
        assert part["labels"]["subject"].dtype == np.int16
        assert part["images"].shape[1:] == (32, 32, 3)  # 64x80 < crop 256: largest square
    assert any(n.startswith("sub/") for n in train["names"] + test["names"])

    explicit = prepare(cfg(home, dataset="demo-rafd", angles=(90,), gazes=("frontal",),
                           test_subjects=(2, 3)))
    assert explicit["splits"] == {"train": 24, "test": 16}
    assert set(read_split(home, "test", "demo-rafd")["labels"]["subject"]) == {2, 3}
    with pytest.raises(ConfigError, match="no such subject"):
        prepare(cfg(home, dataset="demo-rafd", test_subjects=(42,)))
    with pytest.raises(ConfigError, match="--attrs"):
        prepare(cfg(home, dataset="demo-rafd", attrs=("happy",)))
    with pytest.raises(ConfigError, match="gazes"):
        prepare(cfg(home, dataset="demo-rafd", gazes=("up",)))
    everything = prepare(cfg(home, dataset="demo-rafd"))  # default angles 45/90/135, all gazes
    assert everything["images"] == 5 * 8 * 2 * 2 and everything["filtered"] == 0


# --------------------------------------------------------------------------------------------
# Folder format


def test_folder_domains_are_sorted_and_split_deterministically(tmp_path, home):
    src = tmp_path / "faces"
    for d, n in (("smiling", 10), ("neutral", 10), ("Angry", 3)):
        (src / d).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (50, 30), (i * 20, 0, 0)).save(src / d / f"{i}.png")
    Image.new("RGBA", (40, 40), (0, 0, 255, 128)).save(src / "smiling" / "rgba.png")
    Image.new("L", (40, 40), 77).save(src / "smiling" / "gray.png")
    Image.new("P", (40, 40)).save(src / "neutral" / "pal.png")
    (src / "neutral" / "deep").mkdir()
    Image.new("RGB", (40, 40)).save(src / "neutral" / "deep" / "x.jpg")
    (src / "empty").mkdir()
    (src / ".cache").mkdir()
    Image.new("RGB", (40, 40)).save(src / ".cache" / "ignored.jpg")

    s = prepare(cfg(home, dataset="mine", source=src, size=16))
    m = manifest(home, "mine", 16)
    assert m["format"] == "folder" and m["label_table"]["columns"]["domain"] == [
        "Angry", "neutral", "smiling"]
    assert m["label_table"]["space"]["kind"] == "onehot"
    assert s["images"] == 3 + 12 + 12 and s["splits"]["test"] == 3  # 10% per domain, >= 1
    test = read_split(home, "test", "mine", 16)
    again = prepare(cfg(home, dataset="mine", source=src, size=16, force=True))
    assert again["splits"] == s["splits"]
    assert read_split(home, "test", "mine", 16)["names"] == test["names"]
    train = read_split(home, "train", "mine", 16)
    by_name = dict(zip(train["names"] + test["names"],
                       list(train["images"]) + list(test["images"]), strict=True))
    assert by_name["smiling/gray.png"][..., 0].mean() == pytest.approx(77, abs=1)
    assert "neutral/deep/x.jpg" in by_name
    domains = dict(zip(train["names"], train["labels"]["domain"], strict=True))
    assert all(domains[n] == ["Angry", "neutral", "smiling"].index(n.split("/")[0])
               for n in domains)
    # Re-prepare by name alone: the manifest remembers the folder.
    assert prepare(cfg(home, dataset="mine", size=16))["built_shards"] == 0


def test_folder_keeps_a_train_val_split_with_train_s_domain_order(tmp_path, home):
    """The StarGAN v2 layout (CelebA-HQ, AFHQ): train|val/<domain>/; the split is kept and
    the domains are train/'s sub-folders in sorted order (the released weights' label order)."""
    root = tmp_path / "afhq"
    for split, counts in (("train", {"wild": 3, "cat": 4, "dog": 2}),
                          ("val", {"dog": 1, "cat": 2})):
        for d, n in counts.items():
            (root / split / d).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 40), (i * 30, 0, 0)).save(root / split / d / f"{i}.png")
    s = prepare(cfg(home, dataset="animals", source=root, size=16))
    m = manifest(home, "animals", 16)
    assert m["label_table"]["columns"]["domain"] == ["cat", "dog", "wild"]
    assert m["source"]["split_mode"] == "folders" and m["source"]["test_folder"] == "val"
    assert s["splits"] == {"train": 9, "test": 3}
    test = read_split(home, "test", "animals", 16)
    assert sorted(test["names"]) == ["val/cat/0.png", "val/cat/1.png", "val/dog/0.png"]
    domains = dict(zip(test["names"], test["labels"]["domain"], strict=True))
    assert domains["val/dog/0.png"] == 1 and domains["val/cat/1.png"] == 0
    train = read_split(home, "train", "animals", 16)
    assert all(n.startswith("train/") for n in train["names"])

    (root / "val" / "fox").mkdir()
    Image.new("RGB", (40, 40)).save(root / "val" / "fox" / "x.png")
    with pytest.raises(UsageError, match="domain that .* does not have"):
        prepare(cfg(home, dataset="animals2", source=root, size=16))


def test_folder_refuses_odd_split_roots_and_registry_names(tmp_path, home):
    root = tmp_path / "data"
    for d in ("val/a", "test/a"):
        (root / d).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / d / "x.png")
    with pytest.raises(UsageError, match="no train/"):
        prepare(cfg(home, dataset="mine", source=root))
    (root / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "train" / "a" / "x.png")
    with pytest.raises(UsageError, match="keep one of them"):
        prepare(cfg(home, dataset="mine", source=root))
    with pytest.raises(ConfigError, match="registry dataset"):
        prepare(cfg(home, dataset="celeba", source=root / "train"))


def test_folder_with_labels_csv_is_multilabel(tmp_path, home):
    src = tmp_path / "imgs"
    src.mkdir()
    rows = []
    for i in range(12):
        Image.new("RGB", (30, 30), (i * 10, 0, 0)).save(src / f"{i:02d}.jpg")
        rows.append(f"{i:02d}.jpg,{i % 2},{int(i % 3 == 0)}")
    rows.append("gone.jpg,1,1")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("file,smile,glasses\n" + "\n".join(rows) + "\n")
    s = prepare(cfg(home, dataset="mine", source=src, labels_csv=csv_path, size=16,
                    attrs=("glasses",)))
    assert s["images"] == 12 and s["skipped"] == [{"file": "gone.jpg", "reason": "missing file"}]
    table = manifest(home, "mine", 16)["label_table"]
    assert table["columns"] == {"attributes": ["smile", "glasses"]}
    assert table["space"]["kind"] == "multilabel" and table["space"]["names"] == ["glasses"]
    assert table["selected_columns"] == [1]
    train = read_split(home, "train", "mine", 16)
    for name, row in zip(train["names"], train["labels"]["attributes"], strict=True):
        i = int(name[:2])
        assert list(row) == [i % 2, int(i % 3 == 0)]
    with pytest.raises(ConfigError, match="Did you mean smile"):
        prepare(cfg(home, dataset="mine", source=src, labels_csv=csv_path, attrs=("smiles",)))


# --------------------------------------------------------------------------------------------
# Interplay with the reader and the progress protocol


class RecordingProgress:
    def __init__(self) -> None:
        self.tasks: dict[str, list[float]] = {}  # description -> [total, advanced]
        self.lines: list[str] = []

    def start_task(self, description, total=None, unit="it"):
        record = self.tasks.setdefault(description, [total, 0.0])
        assert unit == "images"

        class _Task:
            def advance(self, n=1):
                record[1] += n

            def update(self, **kw):
                pass

        return _Task()

    def stop_task(self, task) -> None:
        pass

    def log(self, message: str) -> None:
        self.lines.append(message)


def test_reader_opens_verifies_and_labels_prepared_output(home):
    dataset = pytest.importorskip("starcli.data.dataset")
    names, values = make_celeba(home, n_images=20)
    raw = home / "raw" / "demo-celeba" / "img_align_celeba"
    (raw / "000003.jpg").write_bytes(b"junk")
    progress = RecordingProgress()
    prepare(cfg(home, attrs=("Young", "Male"), rows_per_shard=8), progress=progress)
    assert progress.tasks == {"prepare demo-celeba train": [14, 14],
                              "prepare demo-celeba valid": [3, 3],
                              "prepare demo-celeba test": [3, 3]}
    assert any("skipped 1 files" in line for line in progress.lines)

    ds = dataset.open_prepared(home, "demo-celeba", 32)
    ds.verify()  # the reader's content_sha256 agrees with the writer's
    keep = [i for i in range(14) if i != 2]
    np.testing.assert_array_equal(ds.labels("train"), (values[keep][:, [39, 20]] > 0))
    # A flipped byte in a shard is caught by the reader's checksum.
    path = out_dir(home) / "train-00000.h5"
    with h5py.File(path, "r+") as f:
        f["labels/attributes"][0, 0] ^= 1
    with pytest.raises(ShardError, match="train-00000.h5"):
        dataset.open_prepared(home, "demo-celeba", 32).verify()


def test_malformed_attribute_lines_are_skipped(home):
    make_celeba(home, n_images=10)
    path = home / "raw" / "demo-celeba" / "list_attr_celeba.txt"
    lines = path.read_text().split("\n")
    lines[4] = lines[4].rsplit(" ", 1)[0]  # 000003.jpg: 39 values
    lines[5] = lines[5][:-2] + " 2"  # 000004.jpg: a value that is not -1/1
    path.write_text("\n".join(lines))
    summary = prepare(cfg(home))
    assert summary["skipped"] == [
        {"file": "000003.jpg", "reason": "malformed line 5 in list_attr_celeba.txt"},
        {"file": "000004.jpg", "reason": "malformed line 6 in list_attr_celeba.txt"}]
    assert summary["images"] == 8


def test_exif_orientation_is_applied_on_both_decoders(tmp_path, home):
    """A phone photo stored sideways (EXIF orientation 6) is used upright, whether cv2
    (RGB JPEG) or PIL (CMYK JPEG) decodes it."""
    a = np.zeros((40, 60, 3), np.uint8)
    a[:, :30], a[:, 30:] = RED, BLUE  # stored: red left, blue right
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "x" / "rgb.jpg").write_bytes(jpeg_bytes(img, exif=exif.tobytes()))
    (src / "x" / "cmyk.jpg").write_bytes(jpeg_bytes(img.convert("CMYK"), exif=exif.tobytes()))
    prepare(cfg(home, dataset="phone", source=src, size=20, test_fraction=0.0))
    got = read_split(home, "train", "phone", 20)
    assert got["names"] == ["x/cmyk.jpg", "x/rgb.jpg"]
    for pixels in got["images"].astype(int):  # upright: red on top, blue below
        assert np.abs(pixels[2:8] - RED).mean() < 30 and np.abs(pixels[12:18] - BLUE).mean() < 30
