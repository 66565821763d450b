"""Fuzz pass: `starcli prepare folder` over a few hundred hostile files mixed with good images.

Two domain folders hold good images of every mode and container prepare converts, and every
kind of hostile input from the hostile-input tests (truncated files, text and random bytes
named like images, empty files, headers claiming huge sizes, non-UTF-8 names, links that
dangle or loop, folders named like images). The run exits 0, every good image lands in the
shards, every bad file is in the manifest's skipped list with a reason, the files prepare
never considers are neither, a rerun reuses the shards, and nothing outside the prepared
output changes (a checksum listing of the whole tmp tree, before and after).

Cases that once hung or mislabelled are separate tests, each small.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from starcli.cli import app
from starcli.data import prepare as prepare_module
from starcli.data.prepare import PrepareConfig, prepare
from starcli.imaging import printable_path

pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")

SIZE = 16
DOMAINS = ("a", "b")


# --------------------------------------------------------------------------- file makers


def encoded(rgb: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A 2x2 PNG whose IHDR (CRC fixed, so it opens) claims width x height."""
    data = bytearray(encoded(np.zeros((2, 2, 3), np.uint8), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A complete 8x8 JPEG whose frame header claims width x height."""
    data = bytearray(encoded(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


class Tree:
    """The source folder and what prepare must make of each entry, by the name the manifest
    and the shards use (relative to the folder, \\xNN for bytes that are not UTF-8)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.good: set[str] = set()
        self.bad: dict[str, tuple[str, ...]] = {}  # name -> accepted reason prefixes
        self.ignored: set[str] = set()  # never candidates: not an image name, hidden, ...

    def path(self, rel: bytes | str) -> Path:
        raw = rel if isinstance(rel, bytes) else rel.encode()
        path = Path(os.fsdecode(os.fsencode(self.root) + b"/" + raw))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def name(self, path: Path) -> str:
        return printable_path(path.relative_to(self.root).as_posix())

    def add(self, rel: bytes | str, data: bytes, outcome: str = "good",
            reasons: tuple[str, ...] = ()) -> Path:
        path = self.path(rel)
        path.write_bytes(data)
        self.expect(path, outcome, reasons)
        return path

    def expect(self, path: Path, outcome: str, reasons: tuple[str, ...] = ()) -> None:
        name = self.name(path)
        if outcome == "good":
            self.good.add(name)
        elif outcome == "bad":
            self.bad[name] = reasons
        else:
            self.ignored.add(name)


BROKEN = ("truncated image", "unreadable image", "not an image")
TOO_LARGE = ("too large",)


def add_good(tree: Tree, d: str, rng: np.random.Generator, outside: Path) -> None:
    def rgb(h: int, w: int) -> np.ndarray:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    for i in range(10):
        h, w = (int(v) for v in rng.integers(8, 60, 2))
        tree.add(f"{d}/png-{i:02d}.png", encoded(rgb(h, w), "PNG"))
        tree.add(f"{d}/jpg-{i:02d}.jpg", encoded(rgb(w, h), "JPEG", quality=90))
    tree.add(f"{d}/progressive.jpg", encoded(rgb(40, 30), "JPEG", progressive=True))
    tree.add(f"{d}/big-reduced.jpg", encoded(rgb(300, 260), "JPEG"))  # DCT-scaled decode
    Image.fromarray(rgb(20, 30)).convert("CMYK").save(tree.path(f"{d}/cmyk.jpg"))
    tree.expect(tree.path(f"{d}/cmyk.jpg"), "good")
    modes = {"grey16.png": Image.fromarray(np.full((12, 12), 40000, np.uint16)),
             "palette.png": Image.fromarray(rgb(16, 16)).convert("P"),
             "rgba.png": Image.fromarray(rng.integers(0, 256, (9, 9, 4), np.uint8), "RGBA"),
             "la.png": Image.fromarray(rgb(9, 9)).convert("LA"),
             "bits.png": Image.fromarray(rgb(9, 9)).convert("1"),
             "a.bmp": Image.fromarray(rgb(10, 14)), "a.tif": Image.fromarray(rgb(10, 14)),
             "a.tiff": Image.fromarray(rgb(10, 14)), "a.webp": Image.fromarray(rgb(10, 14)),
             "upper.PNG": Image.fromarray(rgb(10, 14)), "upper.JPEG": Image.fromarray(rgb(10, 14)),
             "line-1x300.png": Image.fromarray(rgb(1, 300))}
    for name, im in modes.items():
        im.save(tree.path(f"{d}/modes/{name}"))
        tree.expect(tree.path(f"{d}/modes/{name}"), "good")
    names = ["=HYPERLINK(\"x\").png", "+1.png", "-1.png", "\tt.png", " sp ace .png",
             "é-ünï.png", "\N{GRINNING FACE}.png", "x" * 240 + ".png", "new\nline.png"]
    for name in names:
        tree.add(f"{d}/names/{name}", encoded(rgb(12, 12), "PNG"))
    tree.add(f"{d}/names/".encode() + b"\xff\xfe-latin.png", encoded(rgb(12, 12), "PNG"))
    tree.add(f"{d}/".encode() + b"caf\xe9-dir/ok.png", encoded(rgb(12, 12), "PNG"))
    tree.add(f"{d}/album.jpg/inner.png", encoded(rgb(12, 12), "PNG"))  # a folder, walked
    tree.add(f"{d}/deep/1/2/3/4/5/f.png", encoded(rgb(12, 12), "PNG"))
    # A link to an image outside PATH is read (never written); a hard link is a second file.
    (outside / f"{d}-real.png").write_bytes(encoded(rgb(12, 12), "PNG"))
    os.symlink(outside / f"{d}-real.png", tree.path(f"{d}/link-out.png"))
    tree.expect(tree.path(f"{d}/link-out.png"), "good")
    first = tree.add(f"{d}/dup/first.png", encoded(rgb(12, 12), "PNG"))
    os.link(first, tree.path(f"{d}/dup/second.png"))
    tree.expect(tree.path(f"{d}/dup/second.png"), "good")


def add_bad(tree: Tree, d: str, rng: np.random.Generator) -> None:
    src = {"jpg": encoded(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG"),
           "png": encoded(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "PNG")}
    for ext, data in src.items():
        for k, frac in enumerate(np.linspace(0.02, 0.8, 20)):
            tree.add(f"{d}/cut/{ext}-{k:02d}.{ext}", data[:max(2, int(len(data) * frac))], "bad",
                     BROKEN)
    for ext in ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "JPG"):
        tree.add(f"{d}/text/{ext}.{ext}", b"this is not a picture\n" * 3, "bad", BROKEN)
        tree.add(f"{d}/empty/{ext}.{ext}", b"", "bad", ("empty file",))
    for i in range(40):
        tree.add(f"{d}/random/{i:02d}.{('jpg', 'png', 'bmp', 'webp')[i % 4]}",
                 rng.bytes(int(rng.integers(1, 3000))), "bad", BROKEN)
    magics = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM", b"II*\0", b"RIFF\0\0\0\0WEBP"]
    for i, magic in enumerate(magics):
        for k in range(6):
            tree.add(f"{d}/magic/{i}-{k}.png", magic + rng.bytes(int(rng.integers(0, 400))),
                     "bad", BROKEN)
    for w, h in ((20000, 20000), (100000, 100000), (2**31 - 1, 1), (1, 2**31 - 1)):
        tree.add(f"{d}/huge/png-{w}x{h}.png", png_claiming(w, h), "bad", TOO_LARGE + BROKEN)
    tree.add(f"{d}/huge/jpeg-65535.jpg", jpeg_claiming(65535, 65535), "bad", TOO_LARGE)
    tree.add(f"{d}/huge/png-0x0.png", png_claiming(0, 0), "bad", BROKEN)
    bmp = bytearray(encoded(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "BMP"))
    bmp[18:26] = struct.pack("<ii", 50000, 50000)
    tree.add(f"{d}/huge/a.bmp", bytes(bmp), "bad", TOO_LARGE + BROKEN)
    png = encoded(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "PNG")
    bomb = png_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"\0" * (20 << 20), 9))
    tree.add(f"{d}/huge/text-bomb.png", png[:33] + bomb + png[33:], "bad", BROKEN)
    tree.add(f"{d}/".encode() + b"bad-caf\xe9.jpg", b"latin-1 name, text inside", "bad", BROKEN)
    os.symlink("missing.png", tree.path(f"{d}/dangling.png"))
    tree.expect(tree.path(f"{d}/dangling.png"), "bad", ("missing file",))
    os.symlink("self.jpg", tree.path(f"{d}/self.jpg"))
    tree.expect(tree.path(f"{d}/self.jpg"), "bad", ("unreadable file",))


def add_ignored(tree: Tree, d: str) -> None:
    """Entries prepare never treats as images: it neither reads nor lists them."""
    for name in ("notes.txt", "README", "image.jpg.part", "anim.gif", "a.ppm", "x.jfif"):
        tree.add(f"{d}/other/{name}", b"x", "ignored")
    tree.add(f"{d}/.hidden.jpg", b"x", "ignored")
    tree.add(f"{d}/.cache/inside.png", b"x", "ignored")  # hidden folders are not walked
    tree.path(f"{d}/empty-folder.jpg/x")  # creates a folder named like an image, empty
    # A link loop and a link to a folder: os.walk does not follow links to folders.
    os.symlink("..", tree.path(f"{d}/loop"))
    os.symlink(str(tree.root / d / "deep"), tree.path(f"{d}/deep-again"))


def build(tree: Tree, outside: Path, rng: np.random.Generator) -> None:
    for d in DOMAINS:
        add_good(tree, d, rng, outside)
        add_bad(tree, d, rng)
        add_ignored(tree, d)
    # A domain folder whose name is not text: one skip entry for the folder, not per file.
    tree.add(b"dom\xfe/x.png", encoded(np.zeros((12, 12, 3), np.uint8), "PNG"), "ignored")
    tree.bad["dom\\xfe/"] = ("folder name is not UTF-8",)
    tree.path("empty-domain/x")  # a folder with no images: not a domain
    tree.add("loose.jpg", encoded(np.zeros((12, 12, 3), np.uint8), "JPEG"), "ignored")
    tree.add("notes.txt", b"top-level files are not in any domain", "ignored")


# --------------------------------------------------------------------------- checks


def listing(root: Path, skip: Path) -> dict[str, tuple]:
    """Every entry below root except `skip`'s tree and the folders that lead to it (created
    for it; their other contents are listed): kind, size, mtime, mode and sha256 (opens only
    regular files, never follows links)."""
    out: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) != skip]
        for name in dirs + files:
            path = os.path.join(folder, name)
            if Path(path) in skip.parents:
                continue
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
                out[path] = ("file", st.st_size, st.st_mtime_ns, st.st_mode, digest)
            elif stat.S_ISLNK(st.st_mode):
                out[path] = ("link", os.readlink(path))
            else:
                out[path] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_mtime_ns)
    return out


def shard_names(out: Path) -> list[str]:
    names: list[str] = []
    for shard in sorted(out.glob("*.h5")):
        with h5py.File(shard, "r") as f:
            assert f["images"].shape[1:] == (SIZE, SIZE, 3)
            names += list(f["index/source_name"].asstr()[()])
    return names


def run_prepare(tree: Tree) -> dict:
    res = CliRunner().invoke(app, ["prepare", "folder", str(tree.root), "--name", "fuzz",
                                   "--size", str(SIZE), "--workers", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_prepare_survives_a_hostile_folder(tmp_path, home, monkeypatch):
    tree = Tree(tmp_path / "src")
    outside = tmp_path / "outside"
    outside.mkdir()
    build(tree, outside, np.random.default_rng(18))
    assert len(tree.good) >= 80 and len(tree.bad) >= 250  # a few hundred files
    monkeypatch.chdir(tmp_path)  # anything written to the working folder shows below
    out = home / "prepared" / "fuzz" / str(SIZE)
    before = listing(tmp_path, out)

    first = run_prepare(tree)
    assert listing(tmp_path, out) == before
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["label_table"]["columns"]["domain"] == list(DOMAINS)
    names = shard_names(out)
    assert len(names) == len(set(names)) == first["images"] == sum(first["splits"].values())
    assert set(names) == tree.good
    skipped = {s["file"]: s["reason"] for s in manifest["skipped"]}
    assert len(skipped) == len(manifest["skipped"])  # each file listed once
    assert set(skipped) == set(tree.bad)
    wrong = {n: r for n, r in skipped.items() if not r.startswith(tree.bad[n])}
    assert not wrong
    assert not tree.ignored & (set(names) | set(skipped))
    assert first["skipped"] == manifest["skipped"]

    again = run_prepare(tree)
    assert again["built_shards"] == 0 and again["reused_shards"] == first["shards"]
    assert (again["images"], again["splits"]) == (first["images"], first["splits"])
    assert again["skipped"] == first["skipped"]
    assert sorted(shard_names(out)) == sorted(names)
    assert listing(tmp_path, out) == before


# --------------------------------------------------------------------------- fixed bugs


def small_dataset(root: Path) -> Path:
    src = root / "src"
    for d in DOMAINS:
        (src / d).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(src / d / f"{i}.png")
    return src


def test_a_named_pipe_is_skipped_not_waited_on(tmp_path, home):
    src = small_dataset(tmp_path)
    pipe = src / "a" / "pipe.jpg"
    os.mkfifo(pipe)
    result: dict = {}

    def work() -> None:
        try:
            result["summary"] = prepare(PrepareConfig(home=home, dataset="pipe", source=src,
                                                      size=SIZE, test_fraction=0.0, workers=0))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(5)  # a generous bound: six tiny images take well under a second
    hung = thread.is_alive()
    if hung:  # unblock the reader: a writer that closes at once gives it end-of-file
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(30)
    assert not hung, "prepare blocked opening the named pipe a/pipe.jpg"
    skipped = {s["file"]: s["reason"] for s in result["summary"]["skipped"]}
    assert result["summary"]["images"] == 6 and "not a regular file" in skipped["a/pipe.jpg"]


def test_a_link_to_a_device_is_skipped_not_read_forever(tmp_path, home):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    src = small_dataset(tmp_path)
    os.symlink("/dev/zero", src / "a" / "zero.jpg")
    # In a child with a 1.5 GiB address-space limit: reading /dev/zero ended in a
    # MemoryError there before it was skipped unopened.
    script = (
        "import json, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))\n"
        "from starcli.data.prepare import PrepareConfig, prepare\n"
        "s = prepare(PrepareConfig(home=sys.argv[1], dataset='dev', source=sys.argv[2],\n"
        "            size=16, test_fraction=0.0, workers=0))\n"
        "print(json.dumps({'images': s['images'], 'skipped': s['skipped']}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(home), str(src)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    skipped = {s["file"]: s["reason"] for s in result["skipped"]}
    assert result["images"] == 6 and "not a regular file" in skipped["a/zero.jpg"]


def test_a_domain_link_back_to_the_folder_is_not_a_domain(tmp_path, home):
    src = small_dataset(tmp_path)
    os.symlink(".", src / "loop")
    s = prepare(PrepareConfig(home=home, dataset="loop", source=src, size=SIZE,
                              test_fraction=0.0, workers=0))
    assert s["label_table"]["columns"]["domain"] == list(DOMAINS)
    assert s["images"] == 6
    assert any(x["file"].startswith("loop") for x in s["skipped"])
    reasons = {x["file"]: x["reason"] for x in s["skipped"]}
    assert reasons["loop/"].startswith("a link to PATH itself (loop -> .)")


def test_domain_links_are_kept_only_when_they_add_new_images(tmp_path, home):
    src = small_dataset(tmp_path)
    ext = tmp_path / "ext"
    (ext / "sub").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (20, 20), (0, 50 * i, 0)).save(ext / "sub" / f"{i}.png")
    os.symlink("a", src / "a-again")  # the same folder as domain a
    os.symlink(src / "b" / "..", src / "up")  # resolves to PATH through another domain
    os.symlink("..", src / "parent")  # the folder above PATH (holds home/ too)
    os.symlink(ext, src / "c")  # outside PATH: a domain, as before
    os.symlink(ext / "sub", src / "d")  # inside c, kept just before it
    s = prepare(PrepareConfig(home=home, dataset="links", source=src, size=SIZE,
                              test_fraction=0.0, workers=0))
    assert s["label_table"]["columns"]["domain"] == ["a", "b", "c"]
    assert s["images"] == 8 and s["splits"] == {"train": 8}
    reasons = {x["file"]: x["reason"] for x in s["skipped"]}
    assert set(reasons) == {"a-again/", "up/", "parent/", "d/"}
    assert reasons["a-again/"].startswith("a link into the domain folder a/ (a-again -> a)")
    assert reasons["up/"].startswith("a link to PATH itself")
    assert reasons["parent/"].startswith(f"a link to {tmp_path}, a folder above PATH")
    assert reasons["d/"].startswith("a link into the domain folder c/")


def test_a_file_over_the_size_limit_is_skipped_unread(tmp_path, home, monkeypatch):
    src = small_dataset(tmp_path)
    big = encoded(np.random.default_rng(3).integers(0, 256, (40, 40, 3), np.uint8), "PNG")
    (src / "a" / "big.png").write_bytes(big)
    monkeypatch.setattr(prepare_module, "MAX_FILE_BYTES", len(big) - 1)
    s = prepare(PrepareConfig(home=home, dataset="big", source=src, size=SIZE,
                              test_fraction=0.0, workers=0))
    reasons = {x["file"]: x["reason"] for x in s["skipped"]}
    assert s["images"] == 6 and reasons["a/big.png"].startswith("too large")


def test_a_file_longer_than_its_stated_size_is_read_to_the_limit_only(monkeypatch):
    # Files under /proc say 0 bytes and a file being appended to says too few: the reader
    # goes on past the stated size, but never past the limit.
    monkeypatch.setattr(prepare_module, "MAX_FILE_BYTES", 3 << 20)
    data = bytes(range(256)) * (10 << 10)  # 2.5 MiB
    assert prepare_module._read_capped(io.BytesIO(data), 0) == data
    assert prepare_module._read_capped(io.BytesIO(data), 100) == data
    with pytest.raises(prepare_module._Skip, match="^too large"):
        prepare_module._read_capped(io.BytesIO(data * 2), len(data))
