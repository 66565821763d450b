"""`starcli prepare` on hostile input: non-UTF-8 names, images whose headers claim huge sizes,
and `--labels` CSV files with bad values, encodings and paths. Each is a skip with a reason or
one clear error line, never a traceback."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from starcli.data.prepare import PrepareConfig, prepare
from starcli.errors import DatasetNotFoundError, UsageError

RED, BLUE = (200, 40, 40), (40, 40, 200)


def jpeg(colour=RED, side: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png(colour=RED, side: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, "PNG")
    return buf.getvalue()


def write_bytes_name(folder: Path, name: bytes, data: bytes) -> None:
    """A file whose name is raw bytes (not valid UTF-8), as a POSIX file system allows."""
    with open(os.path.join(os.fsencode(folder), name), "wb") as fh:
        fh.write(data)


def names_of(out: Path) -> list[str]:
    names = []
    for shard in sorted(out.glob("*.h5")):
        with h5py.File(shard, "r") as f:
            names += list(f["index/source_name"].asstr()[()])
    return names


def cfg(home: Path, **kw) -> PrepareConfig:
    kw.setdefault("size", 16)
    kw.setdefault("test_fraction", 0.0)
    return PrepareConfig(home=home, **kw)


# --------------------------------------------------------------------------------------------
# Non-UTF-8 file names (issue 18, item 8)


def test_non_utf8_names_are_kept_escaped_and_reruns_reuse_the_shards(tmp_path, home):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "a" / "ok.jpg").write_bytes(jpeg(RED))
    write_bytes_name(src / "a", b"\xff.jpg", jpeg(BLUE))
    write_bytes_name(src / "a", b"caf\xe9.png", b"not an image at all")
    (src / "b" / "x.jpg").write_bytes(jpeg(RED))
    # A domain folder whose name is not text cannot become a label name.
    os.mkdir(os.path.join(os.fsencode(src), b"d\xfem"))
    write_bytes_name(src / os.fsdecode(b"d\xfem"), b"y.jpg", jpeg(BLUE))

    first = prepare(cfg(home, dataset="odd", source=src))
    out = Path(first["path"])
    assert first["images"] == 3
    assert sorted(names_of(out)) == ["a/\\xff.jpg", "a/ok.jpg", "b/x.jpg"]
    assert first["label_table"]["space"]["names"] == ["a", "b"]
    skipped = {s["file"]: s["reason"] for s in first["skipped"]}
    assert skipped["a/caf\\xe9.png"].startswith("not an image")
    assert "not UTF-8" in skipped["d\\xfem/"]
    manifest_text = (out / "manifest.json").read_text(encoding="utf-8")
    # Everything a user may print is plain text (a lone surrogate cannot be encoded).
    json.dumps(json.loads(manifest_text), ensure_ascii=False).encode("utf-8")

    again = prepare(cfg(home, dataset="odd", source=src))
    assert again["built_shards"] == 0 and again["reused_shards"] == first["shards"]
    assert again["skipped"] == first["skipped"]
    forced = prepare(cfg(home, dataset="odd", source=src, force=True))
    assert forced["images"] == 3 and forced["built_shards"] == first["shards"]


# --------------------------------------------------------------------------------------------
# Headers that claim huge images (issue 18, item 13)


def huge_jpeg(width: int, height: int) -> bytes:
    """A complete 20x20 JPEG whose frame header claims width x height."""
    data = bytearray(jpeg(BLUE))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def huge_png(width: int, height: int) -> bytes:
    """A 20x20 PNG whose IHDR claims width x height (CRC fixed, so it opens)."""
    data = bytearray(png(BLUE))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def test_headers_claiming_huge_sizes_are_skipped_before_decoding(tmp_path, home):
    """Both decoders (cv2 for JPEG, PIL for the rest) check the header against translate's
    pixel limit; in a fresh process, so its peak memory is this prepare's alone."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "ok.jpg").write_bytes(jpeg(RED))
    (src / "a" / "wide.jpg").write_bytes(huge_jpeg(20000, 20000))  # 1.2 GB decoded
    (src / "a" / "tall.png").write_bytes(huge_png(9000, 11000))  # over 1x, under 2x the limit
    (src / "a" / "bomb.png").write_bytes(huge_png(40000, 40000))  # PIL's own bomb error
    script = (
        "import json, resource, sys\n"
        "from starcli.data.prepare import PrepareConfig, prepare\n"
        "s = prepare(PrepareConfig(home=sys.argv[1], dataset='huge', source=sys.argv[2],\n"
        "            size=16, crop=16, test_fraction=0.0, workers=0))\n"
        "peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps({'images': s['images'], 'skipped': s['skipped'], 'peak_mb': peak_mb}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(home), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["images"] == 1
    reasons = {s["file"]: s["reason"] for s in result["skipped"]}
    assert sorted(reasons) == ["a/bomb.png", "a/tall.png", "a/wide.jpg"]
    assert reasons["a/wide.jpg"].startswith("too large: 20000x20000 = 400.0 megapixels")
    assert reasons["a/tall.png"].startswith("too large: 9000x11000 = 99.0 megapixels")
    assert reasons["a/bomb.png"].startswith("too large")
    assert all("downscale it first" in r for r in reasons.values())
    # Decoding wide.jpg alone would take 1.2 GB; the imports take about 200 MB, and one full
    # suite run here peaked at 885 MB without decoding anything (allocator arenas), so the bar
    # sits between the two.
    assert result["peak_mb"] < 1100, result["peak_mb"]


# --------------------------------------------------------------------------------------------
# --labels CSV files (issue 18, item 12)


def csv_folder(tmp_path: Path, n: int = 4) -> Path:
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(n):
        (src / f"{i}.jpg").write_bytes(jpeg((40 * i, 0, 0)))
    return src


@pytest.mark.parametrize("value", ["inf", "5", "0.5", "-inf", "nan", "maybe"])
def test_labels_csv_refuses_values_other_than_0_and_1(tmp_path, home, value):
    src = csv_folder(tmp_path)
    path = tmp_path / "labels.csv"
    path.write_text(f"file,smile\n0.jpg,1\n1.jpg,{value}\n2.jpg,0\n")
    with pytest.raises(UsageError) as err:
        prepare(cfg(home, dataset="mine", source=src, labels_csv=path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "line 3" in msg and value in msg
    assert "use 1 or 0" in msg


def test_labels_csv_in_latin1_is_one_line_naming_the_line(tmp_path, home):
    src = csv_folder(tmp_path)
    path = tmp_path / "labels.csv"
    path.write_bytes("file,smile\n0.jpg,1\n1.jpg,0\ncafé.jpg,1\n".encode("latin-1"))
    with pytest.raises(UsageError) as err:
        prepare(cfg(home, dataset="mine", source=src, labels_csv=path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "line 4" in msg and "UTF-8" in msg


def test_labels_csv_never_reads_outside_path(tmp_path, home):
    src = csv_folder(tmp_path)
    (tmp_path / "secret.jpg").write_bytes(jpeg(BLUE))
    path = tmp_path / "labels.csv"
    path.write_text("file,smile\n0.jpg,1\n../secret.jpg,1\n"
                    f"{tmp_path / 'secret.jpg'},0\nsub/../1.jpg,0\n{src / '2.jpg'},1\n")
    s = prepare(cfg(home, dataset="mine", source=src, labels_csv=path))
    assert s["images"] == 3
    assert names_of(Path(s["path"])) == ["0.jpg", "1.jpg", "2.jpg"]
    reasons = {x["file"]: x["reason"] for x in s["skipped"]}
    assert set(reasons) == {"../secret.jpg", str(tmp_path / "secret.jpg")}
    assert all("outside" in r for r in reasons.values())


def test_labels_csv_blank_cells_and_bad_headers_are_one_line_errors(tmp_path, home):
    src = csv_folder(tmp_path)
    path = tmp_path / "labels.csv"
    cases = [
        ("file,smile,glasses\n0.jpg,1,\n", "line 2"),  # prepare needs every value
        ("file,smile\n0.jpg,1,0\n", "line 2"),  # more cells than the header names
        ("image,smile\n0.jpg,1\n", "first column must be 'file'"),
        ("file,smile,smile\n0.jpg,1,0\n", "twice"),
        ("", "empty"),
    ]
    for text, fragment in cases:
        path.write_text(text)
        with pytest.raises(UsageError, match=fragment) as err:
            prepare(cfg(home, dataset="mine", source=src, labels_csv=path))
        assert "\n" not in str(err.value) and str(path) in str(err.value)


# --------------------------------------------------------------------------------------------
# CelebA's attribute and partition lists go through the same parser


def make_tiny_celeba(home: Path, n: int = 6) -> Path:
    from starcli.data.registry import load_registry

    attrs = load_registry().get("demo-celeba").attributes
    raw = home / "raw" / "demo-celeba"
    (raw / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = [f"{n}", " ".join(attrs)]
    for i in range(n):
        (raw / "img_align_celeba" / f"{i:06d}.jpg").write_bytes(jpeg(RED, 40))
        lines.append(f"{i:06d}.jpg " + " ".join(f"{v:2d}" for v in rng.choice([-1, 1], 40)))
    (raw / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (raw / "list_eval_partition.txt").write_text(
        "".join(f"{i:06d}.jpg {0 if i < n - 1 else 2}\n" for i in range(n)))
    return raw


def test_celeba_partition_with_a_bad_value_names_the_line(home):
    raw = make_tiny_celeba(home)
    part = raw / "list_eval_partition.txt"
    part.write_text(part.read_text().replace("000003.jpg 0", "000003.jpg 7"))
    with pytest.raises(DatasetNotFoundError) as err:
        prepare(cfg(home, dataset="demo-celeba"))
    msg = str(err.value)
    assert "\n" not in msg and str(part) in msg and "line 4" in msg
    assert "starcli fetch demo-celeba --force" in msg


def test_celeba_attribute_list_that_is_not_utf8_names_the_line(home):
    raw = make_tiny_celeba(home)
    attr = raw / "list_attr_celeba.txt"
    attr.write_bytes(attr.read_bytes().replace(b"000002.jpg", b"00000\xe9.jpg"))
    with pytest.raises(DatasetNotFoundError) as err:
        prepare(cfg(home, dataset="demo-celeba"))
    msg = str(err.value)
    assert "\n" not in msg and str(attr) in msg and "line 5" in msg and "UTF-8" in msg
