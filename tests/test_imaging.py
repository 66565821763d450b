"""Robust image loading and the folder walk: every hostile file gets a reason, never a crash."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from starcli.imaging import ImageSkipped, centre_square, load_image, walk_inputs


def _rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _huge_png_header(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height pixels (only the header is valid): the pixel limit
    must trigger before any decoding or allocation."""
    small = path.with_suffix(".small.png")
    Image.fromarray(_rgb(2, 2)).save(small)
    data = bytearray(small.read_bytes())
    small.unlink()
    ihdr = 8  # chunk: length(4) "IHDR"(4) data(13) crc(4)
    data[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4:ihdr + 8 + 13])) & 0xFFFFFFFF
    data[ihdr + 8 + 13:ihdr + 8 + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


@pytest.fixture
def hostile(tmp_path) -> Path:
    """The issue's hostile folder: one of each problem, plus a normal image."""
    d = tmp_path / "hostile"
    d.mkdir()
    Image.fromarray(_rgb()).save(d / "ok.png")
    full = d / "full.jpg"
    Image.fromarray(_rgb(64, 64)).save(full, quality=90)
    (d / "truncated.jpg").write_bytes(full.read_bytes()[:600])
    full.unlink()
    Image.fromarray(np.full((16, 16, 3), (200, 50, 30), np.uint8)).convert("CMYK").save(
        d / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(d / "grey16.png")
    Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE).save(d / "palette.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.fromarray(np.full((8, 8), 100, np.uint8), "L").save(d / "grey.png")
    rotated = np.zeros((20, 40, 3), np.uint8)
    rotated[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(rotated).save(d / "exif.jpg", exif=exif.tobytes(), quality=95)
    (d / "text.jpg").write_text("this is not a picture\n")
    (d / "empty.png").write_bytes(b"")
    _huge_png_header(d / "huge.png", 20000, 20000)
    (d / "notes.txt").write_text("hello")
    sub = d / "sub"
    sub.mkdir()
    Image.fromarray(_rgb(seed=3)).save(sub / "nested.png")
    os.symlink("..", sub / "loop")  # sub/loop -> hostile/: a symlink loop
    os.symlink("missing.png", d / "dangling.png")
    return d


def test_hostile_folder_every_file_has_an_outcome(hostile):
    items, skipped = walk_inputs([hostile])
    reasons = {}
    loaded = {}
    for item in items:
        try:
            loaded[item.relative.as_posix()] = load_image(item.path)
        except ImageSkipped as exc:
            reasons[item.relative.as_posix()] = exc.reason
    skipped_names = {s.path.name: s.reason for s in skipped}

    assert set(loaded) == {"ok.png", "cmyk.jpg", "grey16.png", "palette.png", "rgba.png",
                           "grey.png", "exif.jpg", "sub/nested.png"}
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
               for a in loaded.values())
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["text.jpg"]
    assert "empty" in reasons["empty.png"]
    assert "20000x20000" in reasons["huge.png"] and "decompression" in reasons["huge.png"]
    assert "not an image file name" in skipped_names["notes.txt"]
    assert "broken symbolic link" in skipped_names["dangling.png"]
    assert "already visited" in skipped_names["loop"]


def test_conversions(hostile):
    cmyk = load_image(hostile / "cmyk.jpg")
    assert np.abs(cmyk[8, 8].astype(int) - [200, 50, 30]).max() <= 6
    assert (load_image(hostile / "grey16.png") == 255).all()  # scaled, not clipped garbage
    rgba = load_image(hostile / "rgba.png")
    assert tuple(rgba[0, 0]) == (255, 0, 0)
    assert tuple(rgba[7, 0]) == (255, 255, 255)  # transparent → white background
    assert (load_image(hostile / "grey.png") == 100).all()
    exif = load_image(hostile / "exif.jpg")
    assert exif.shape == (40, 20, 3)  # upright: the stored 40x20 becomes 20 wide, 40 high
    assert exif[5, 10, 0] > 200 and exif[35, 10, 0] < 50  # the red half moved to the top


def test_sixteen_bit_scaling(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_pixel_limit_is_configurable(tmp_path):
    Image.fromarray(_rgb(100, 100)).save(tmp_path / "a.png")
    with pytest.raises(ImageSkipped, match="100x100"):
        load_image(tmp_path / "a.png", max_pixels=5000)
    assert load_image(tmp_path / "a.png", max_pixels=10000).shape == (100, 100, 3)


def test_draft_decodes_big_jpegs_smaller(tmp_path):
    Image.fromarray(np.zeros((800, 1200, 3), np.uint8)).save(tmp_path / "big.jpg")
    small = load_image(tmp_path / "big.jpg", draft=100)
    assert min(small.shape[:2]) >= 100 and small.shape[0] < 800


def test_walk_order_relative_paths_and_duplicates(tmp_path):
    d = tmp_path / "in"
    (d / "b").mkdir(parents=True)
    for name in ("z.png", "a.PNG", "b/m.jpg"):
        Image.fromarray(_rgb()).save(d / name, format="PNG")
    os.symlink(d / "z.png", d / "b" / "link.png")  # the same file twice
    lone = tmp_path / "photo.data"  # an explicit file argument is always a candidate
    lone.write_bytes(b"x")
    items, skipped = walk_inputs([d, lone, tmp_path / "nope.png"])
    assert [i.relative.as_posix() for i in items] == ["a.PNG", "b/link.png", "b/m.jpg",
                                                      "photo.data"]
    assert items[-1].root == lone
    reasons = {s.path.name: s.reason for s in skipped}
    assert "same file" in reasons["z.png"]  # already read through b/link.png
    assert reasons["nope.png"] == "no such file or folder"


def test_centre_square():
    a = np.arange(6 * 10).reshape(6, 10, 1)
    sq = centre_square(a)
    assert sq.shape == (6, 6, 1) and sq[0, 0, 0] == 2


def test_named_pipes_and_devices_are_skipped_without_being_opened(tmp_path):
    """Opening a FIFO blocks until someone writes to it: a folder walk must never try."""
    d = tmp_path / "in"
    d.mkdir()
    os.mkfifo(d / "pipe.jpg")
    Image.fromarray(_rgb()).save(d / "ok.png")
    items, skipped = walk_inputs([d, d / "pipe.jpg", Path("/dev/null")])
    assert [i.path.name for i in items] == ["ok.png"]
    assert sorted((s.path.name, s.reason) for s in skipped) == [
        ("null", "not a regular file (a device)"),
        ("pipe.jpg", "not a regular file (a named pipe)"),  # found in the folder
        ("pipe.jpg", "not a regular file (a named pipe)")]  # and named as an argument


def test_printable_path_escapes_bytes_that_are_not_utf8():
    from starcli.imaging import printable_path

    assert printable_path(Path("a/é.png")) == "a/é.png"
    assert printable_path(os.fsdecode(b"dir/caf\xe9-\xff.jpg")) == "dir/caf\\xe9-\\xff.jpg"
    assert printable_path("\ud800x").encode("utf-8") == b"\\ud800x"


def test_a_gif_frame_larger_than_its_screen_is_too_large_not_a_crash(tmp_path):
    """Pillow's GIF reader checks the frame's size while *opening* the file, so even the
    header-only size probe raised DecompressionBombError out of load_image."""
    screen = struct.pack("<HHBBB", 10, 10, 0, 0, 0)
    frame = struct.pack("<HHHHB", 0, 0, 60000, 60000, 0)
    (tmp_path / "frame.gif").write_bytes(b"GIF89a" + screen + b"," + frame + b"\x08\x00;")
    with pytest.raises(ImageSkipped, match=r"^too large: 3600\.0 megapixels, over the 89\.5 "):
        load_image(tmp_path / "frame.gif")
