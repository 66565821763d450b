"""Fuzz pass: `starcli translate` over a few hundred hostile files mixed with good images.

Every file gets exactly one outcome (translated, or skipped with a reason), every good image
is translated, the run exits 0, and nothing outside the output folder changes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
import struct
import zlib
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
from starcli.imaging import printable_path

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")]

HAIR = ("Black_Hair", "Blond_Hair", "Brown_Hair")
LAYOUT = LabelLayout((LabelSpace("demo-celeba", "celeba", "multilabel",
                                 (*HAIR, "Male", "Young"), (HAIR,)),))
SIZE = 32


def tiny_checkpoint(run_dir: Path) -> Path:
    cfg = ModelConfig(image_size=SIZE, c_dim=LAYOUT.c_dim, cls_dim=LAYOUT.cls_dim,
                      g_conv_dim=8, d_conv_dim=8, g_repeat_num=1, d_repeat_num=3)
    torch.manual_seed(0)
    meta = {"model": cfg.to_dict(), "labels": LAYOUT.to_dict(), "train": {}, "datasets": []}
    return save_checkpoint(run_dir, 1, {"G": Generator(cfg), "D": Discriminator(cfg)}, meta,
                           None, keep_last=1)


# --------------------------------------------------------------------------- file makers


def encoded(rgb: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_claiming(width: int, height: int) -> bytes:
    """A 2x2 PNG whose header (with a valid CRC) claims width x height."""
    data = bytearray(encoded(np.zeros((2, 2, 3), np.uint8), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def with_app1(jpeg: bytes, payload: bytes) -> bytes:
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


class Tree:
    """Builds the hostile folder and remembers what each file should become."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.good: set[str] = set()  # printable input paths that must be translated
        self.bad: set[str] = set()  # ... that must be skipped with a reason
        self.either: set[str] = set()  # readable or not, depending on the decoder

    def path(self, rel: bytes | str) -> Path:
        raw = rel if isinstance(rel, bytes) else rel.encode()
        path = Path(os.fsdecode(os.fsencode(self.root) + b"/" + raw))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add(self, rel: bytes | str, data: bytes, outcome: str) -> Path:
        path = self.path(rel)
        path.write_bytes(data)
        self.expect(path, outcome)
        return path

    def expect(self, path: Path, outcome: str) -> None:
        getattr(self, outcome).add(printable_path(path))


def build(tree: Tree, outside: Path, rng: np.random.Generator) -> None:
    def rgb(h: int, w: int) -> np.ndarray:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    # Good images: every mode and container the decoder converts, odd names and places.
    for i in range(12):
        h, w = rng.integers(8, 90, 2)
        tree.add(f"png/{i:02d}.png", encoded(rgb(h, w), "PNG"), "good")
    for i in range(6):
        tree.add(f"jpg/{i:02d}.jpg", encoded(rgb(40, 56), "JPEG", quality=90), "good")
    tree.add("modes/cmyk.jpg", encoded(rgb(20, 30), "JPEG"), "good")
    Image.fromarray(rgb(20, 30)).convert("CMYK").save(tree.path("modes/cmyk2.jpg"))
    tree.expect(tree.path("modes/cmyk2.jpg"), "good")
    modes = {"grey16.png": Image.fromarray(np.full((12, 12), 40000, np.uint16)),
             "palette.png": Image.fromarray(rgb(16, 16)).convert("P"),
             "rgba.png": Image.fromarray(rng.integers(0, 256, (9, 9, 4), np.uint8), "RGBA"),
             "la.png": Image.fromarray(rgb(9, 9)).convert("LA"),
             "grey.png": Image.fromarray(rgb(9, 9)).convert("L"),
             "bits.png": Image.fromarray(rgb(9, 9)).convert("1"),
             "anim.gif": Image.fromarray(rgb(10, 10)).convert("P"),
             "a.bmp": Image.fromarray(rgb(10, 14)), "a.tiff": Image.fromarray(rgb(10, 14)),
             "a.webp": Image.fromarray(rgb(10, 14)), "a.ppm": Image.fromarray(rgb(10, 14)),
             "a.pgm": Image.fromarray(rgb(10, 14)).convert("L"),
             "a.PNG": Image.fromarray(rgb(10, 14)), "b.JPEG": Image.fromarray(rgb(10, 14))}
    for name, im in modes.items():
        im.save(tree.path(f"modes/{name}"))
        tree.expect(tree.path(f"modes/{name}"), "good")
    jpeg = encoded(rgb(16, 16), "JPEG")
    tree.add("modes/bad-exif.jpg", with_app1(jpeg, b"Exif\0\0MM\0*\0\0\0\x08\xff\xff"
                                            + rng.bytes(40)), "good")
    tree.add("modes/orientation-9.jpg", with_app1(
        jpeg, b"Exif\0\0II*\0\x08\0\0\0\x01\0" + struct.pack("<HHII", 0x0112, 3, 1, 9)),
        "good")
    tree.add("modes/line-1x300.png", encoded(rgb(1, 300), "PNG"), "good")
    names = ["=HYPERLINK(\"x\").png", "+1.png", "-1.png", "@a.png", "\tt.png", " sp ace .png",
             "é-ünï.png", "\N{GRINNING FACE}.png", "x" * 251 + ".png", "new\nline.png"]
    for name in names:
        tree.add(f"names/{name}", encoded(rgb(12, 12), "PNG"), "good")
    tree.add(b"names/\xff\xfe-latin.png", encoded(rgb(12, 12), "PNG"), "good")
    tree.add(b"caf\xe9-dir/ok.png", encoded(rgb(12, 12), "PNG"), "good")
    tree.add("album.jpg/inner.png", encoded(rgb(12, 12), "PNG"), "good")  # a folder
    tree.path("empty-folder.jpg/x").parent.mkdir(exist_ok=True)  # no file: no row
    tree.add("deep/a/b/c/d/e/f.png", encoded(rgb(12, 12), "PNG"), "good")
    # Links out of the input folder: read, never written to.
    (outside / "real.png").write_bytes(encoded(rgb(12, 12), "PNG"))
    (outside / "other.png").write_bytes(encoded(rgb(12, 12), "PNG"))
    os.symlink(outside / "real.png", tree.path("link-out.png"))
    tree.expect(tree.path("link-out.png"), "good")
    os.symlink(outside, tree.path("linkdir"))
    tree.expect(tree.path("linkdir/other.png"), "good")
    tree.expect(tree.path("linkdir/real.png"), "bad")  # the same file as link-out.png
    dup = tree.add("dup/a.png", encoded(rgb(12, 12), "PNG"), "good")
    os.link(dup, tree.path("dup/b.png"))
    tree.expect(tree.path("dup/b.png"), "bad")

    # Bad files.
    for i, src in enumerate([encoded(rgb(64, 64), "JPEG", quality=90),
                             encoded(rgb(64, 64), "PNG")]):
        ext = ("jpg", "png")[i]
        for k, frac in enumerate(np.linspace(0.02, 0.8, 30)):
            tree.add(f"cut/{ext}-{k:02d}.{ext}", src[:max(2, int(len(src) * frac))], "bad")
    for ext in ("jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "ppm", "jfif"):
        tree.add(f"text/{ext}.{ext}", b"this is not a picture\n" * 3, "bad")
        tree.add(f"empty/{ext}.{ext}", b"", "bad")
    for i in range(100):
        tree.add(f"random/{i:02d}.{('jpg', 'png', 'gif', 'bmp')[i % 4]}",
                 rng.bytes(int(rng.integers(1, 3000))), "bad")
    magics = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\0",
              b"RIFF\0\0\0\0WEBP"]
    for i, magic in enumerate(magics):
        for k in range(10):
            tree.add(f"magic/{i}-{k}.png", magic + rng.bytes(int(rng.integers(0, 400))),
                     "bad")
    for w, h in ((20000, 20000), (100000, 100000), (2**31 - 1, 1), (1, 2**31 - 1),
                 (5000, 5000), (0, 0)):
        tree.add(f"huge/png-{w}x{h}.png", png_claiming(w, h), "bad")
    tree.add("huge/jpeg-65535.jpg", jpeg_claiming(65535, 65535), "bad")
    tree.add("huge/jpeg-60000x1000.jpg", jpeg_claiming(60000, 1000), "either")
    gif = bytearray(encoded(rgb(8, 8), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    tree.add("huge/screen.gif", bytes(gif), "bad")
    bmp = bytearray(encoded(rgb(8, 8), "BMP"))
    bmp[18:26] = struct.pack("<ii", 50000, 50000)
    tree.add("huge/a.bmp", bytes(bmp), "bad")
    png = encoded(rgb(8, 8), "PNG")
    tree.add("huge/text-bomb.png", png[:33] + png_chunk(
        b"zTXt", b"k\0\0" + zlib.compress(b"\0" * (20 << 20), 9)) + png[33:], "bad")
    tree.add(b"bad-caf\xe9.jpg", b"latin-1 name, text inside", "bad")
    os.mkfifo(tree.path("pipe.jpg"))
    tree.expect(tree.path("pipe.jpg"), "bad")
    os.symlink("missing.png", tree.path("dangling.png"))
    tree.expect(tree.path("dangling.png"), "bad")
    os.symlink("self.jpg", tree.path("self.jpg"))
    tree.expect(tree.path("self.jpg"), "bad")
    os.symlink("..", tree.path("png/loop"))
    tree.expect(tree.path("png/loop"), "bad")
    for name in ("notes.txt", "README", ".DS_Store", "image.jpg.part"):
        tree.add(f"other/{name}", b"x", "bad")


def listing(root: Path, skip: Path) -> dict[str, tuple]:
    """Every entry below root except `skip`: type, size, mtime and sha256 (never opens
    anything but regular files, never follows links)."""
    out: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        if Path(folder) == skip:
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.join(folder, name)
            if Path(path) == skip:
                continue
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    what = hashlib.sha256(fh.read()).hexdigest()
                out[path] = ("file", st.st_size, st.st_mtime_ns, st.st_mode, what)
            elif stat.S_ISLNK(st.st_mode):
                out[path] = ("link", os.readlink(path))
            else:
                out[path] = (stat.S_IFMT(st.st_mode), st.st_mode)
    return out


def test_translate_survives_a_hostile_folder(tmp_path, home, monkeypatch):
    rng = np.random.default_rng(7)
    tree = Tree(tmp_path / "in")
    outside = tmp_path / "outside"
    outside.mkdir()
    build(tree, outside, rng)
    ckpt = tiny_checkpoint(tmp_path / "run")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # anything written to the working folder shows below
    assert len(tree.good) >= 50 and len(tree.bad) >= 250  # a few hundred files
    before = listing(tmp_path, out)

    def translate(*extra: str):
        res = CliRunner().invoke(app, ["translate", str(tree.root), "--to", "Blond_Hair", "-c",
                                       str(ckpt), "-o", str(out), "--precision", "fp32",
                                       "--workers", "2", "--json", *extra])
        assert res.exit_code == 0, res.output
        assert listing(tmp_path, out) == before
        return json.loads(res.stdout.strip().splitlines()[-1])

    summary = translate("--batch-size", "7")
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    status = {r["input"]: r for r in rows}
    assert len(status) == len(rows)  # one row per file
    assert set(status) == tree.good | tree.bad | tree.either
    # Manifest paths are printable (\\xNN for bytes that are not UTF-8): map them back.
    written = {printable_path(p): p for p in (out / "Blond_Hair").rglob("*") if p.is_file()}
    for name in tree.good:
        assert status[name]["status"] == "translated", (name, status[name])
        output = written[printable_path(out / status[name]["outputs"]["Blond_Hair"])]
        assert Image.open(output).size == (SIZE, SIZE)
    for name in tree.bad:
        assert status[name]["status"] == "skipped" and status[name]["reason"], name
    for name in tree.either:
        assert status[name]["status"] in ("translated", "skipped"), name
    skipped = {s["input"] for s in summary["skipped"]}
    assert tree.bad <= skipped and not skipped & tree.good
    assert summary["translated"] == len(tree.good) + len(tree.either - skipped)

    # Again with a CSV manifest: everything is kept, nothing decoded twice is written.
    again = translate("--manifest", "csv")
    assert again["translated"] == 0 and again["existing"] == summary["translated"]
    with open(out / "manifest.csv", encoding="utf-8", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert {r["status"] for r in table} == {"exists", "skipped"}
    assert not [c for r in table for c in r.values() if c[:1] in ("=", "+", "-", "@", "\t",
                                                                   "\r")]
