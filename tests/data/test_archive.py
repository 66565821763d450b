"""safe_extract(): hostile archives are refused before anything is written; good ones unpack."""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from starcli.data import archive as ar
from starcli.errors import ArchiveError

GOOD = {
    "celeba/img_align_celeba/000001.jpg": b"\xff\xd8jpeg-1" * 100,
    "celeba/img_align_celeba/000002.jpg": b"\xff\xd8jpeg-2" * 100,
    "celeba/list_attr_celeba.txt": b"2\nSmiling Male\n",
}


def make_zip(path, members):
    """members: name -> bytes, or (bytes, unix_mode) for special entries."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if isinstance(data, tuple):
                data, mode = data
                info.external_attr = mode << 16
                info.create_system = 3
            zf.writestr(info, data)
    return path


def make_tar(path, members, mode="w:gz"):
    """members: name -> bytes, or a ready TarInfo (for links and special files)."""
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            if isinstance(data, tarfile.TarInfo):
                tf.addfile(data)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.fixture
def box(tmp_path):
    """tmp_path/outside is what an attack would hit; tmp_path/out is the target."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "secret.txt").write_bytes(b"secret")
    return tmp_path


def assert_untouched(box, target, archive):
    """Nothing was written: no target, no temp folder, nothing outside, no link made."""
    assert not target.exists()
    assert sorted(p.name for p in box.iterdir()) == sorted(["outside", "secret.txt",
                                                            archive.name])
    assert list((box / "outside").iterdir()) == []
    assert not (box / "evil.txt").exists()
    assert (box / "secret.txt").read_bytes() == b"secret"
    assert (box / "secret.txt").stat().st_nlink == 1


# --------------------------------------------------------------------------- refusals


def _zip_attacks(box):
    return {
        "dotdot": {"ok.txt": b"fine", "../evil.txt": b"x"},
        "nested-dotdot": {"a/b/../../../evil.txt": b"x"},
        "absolute": {str(box / "evil.txt"): b"x"},
        "backslash": {"..\\evil.txt": b"x"},
        "drive": {"C:/evil.txt": b"x"},
        "symlink-then-write": {"ok.txt": b"fine",
                               "lnk": (b"../outside", stat.S_IFLNK | 0o777),
                               "lnk/evil.txt": b"x"},
        "absolute-symlink": {"lnk": (str(box / "outside").encode(), stat.S_IFLNK | 0o777)},
        "fifo": {"pipe": (b"", stat.S_IFIFO | 0o644)},
    }


@pytest.mark.parametrize("attack", list(_zip_attacks(Path("/x"))))
def test_hostile_zip_is_refused(box, attack):
    members = _zip_attacks(box)[attack]
    archive = make_zip(box / "a.zip", members)
    target = box / "out"
    with pytest.raises(ArchiveError) as info:
        ar.safe_extract(archive, target)
    msg = str(info.value)
    assert str(archive) in msg and "unsafe" in msg and "\n" not in msg
    assert_untouched(box, target, archive)


def _tar_attacks(box):
    return {
        "dotdot": {"ok.txt": b"fine", "../evil.txt": b"x"},
        "absolute": {str(box / "evil.txt"): b"x"},
        "symlink-outside-then-write": {
            "lnk": link("lnk", "../outside"), "lnk/evil.txt": b"x"},
        "absolute-symlink-then-write": {
            "lnk": link("lnk", str(box / "outside")), "lnk/evil.txt": b"x"},
        "symlink-outside-alone": {"lnk": link("d/lnk", "../../secret.txt")},
        # Each link stays inside on paper, but l/l/l/x really sits at the top: no member
        # may be reached through a link, so this chain is refused.
        "link-chain": {"l": link("l", "."), "l/l/l/x": link("l/l/l/x", "../../../outside")},
        "link-to-link": {"a": link("a", "d"), "b": link("b", "a/../../outside")},
        # On a case-insensitive disk "l/x" goes through the link "L".
        "case-folded-link": {"L": link("L", "sub"), "l/evil.txt": b"x"},
        "hardlink-outside": {"hl": link("hl", "../secret.txt", tarfile.LNKTYPE)},
        "hardlink-absolute": {"hl": link("hl", str(box / "secret.txt"), tarfile.LNKTYPE)},
        "hardlink-to-missing": {"hl": link("hl", "nothing.txt", tarfile.LNKTYPE)},
        "hardlink-via-symlink": {"d/s": link("d/s", "x"), "hl": link("hl", "d/s",
                                                                     tarfile.LNKTYPE)},
        "fifo": {"p": link("p", "", tarfile.FIFOTYPE)},
        "device": {"dev": link("dev", "", tarfile.CHRTYPE)},
    }


@pytest.mark.parametrize("attack", list(_tar_attacks(Path("/x"))))
def test_hostile_tar_is_refused(box, attack):
    archive = make_tar(box / "a.tar.gz", _tar_attacks(box)[attack])
    target = box / "out"
    with pytest.raises(ArchiveError) as info:
        ar.safe_extract(archive, target)
    assert str(archive) in str(info.value) and "unsafe" in str(info.value)
    assert_untouched(box, target, archive)


@pytest.mark.skipif(not hasattr(tarfile, "fully_trusted_filter"), reason="Python < 3.11.4")
def test_symlink_then_file_inside_archive_without_validation_would_escape(box):
    """Sanity check of the fixture: the plain tarfile API (no filter) really would write
    outside, so the refusal above is meaningful."""
    archive = make_tar(box / "a.tar", {"lnk": link("lnk", "../outside"), "lnk/evil.txt": b"x"},
                       mode="w")
    with tarfile.open(archive) as tf:
        tf.extractall(box / "raw", filter="fully_trusted")
    assert (box / "outside" / "evil.txt").exists()


# --------------------------------------------------------------------------- good archives


class Rec:
    def __init__(self):
        self.tasks = []

    def start_task(self, description, total=None, unit="it"):
        self.tasks.append({"description": description, "total": total, "unit": unit, "n": 0})
        outer = self.tasks[-1]

        class T:
            def advance(self, n=1):
                outer["n"] += n

            def update(self, **kw):
                pass

        return T()

    def stop_task(self, task):
        pass

    def log(self, message):
        pass


def _check_good(box, target, files):
    assert files == list(GOOD)
    for name, data in GOOD.items():
        assert (target / name).read_bytes() == data
    assert [p.name for p in box.iterdir() if ".extracting-" in p.name] == []


def test_good_zip_extracts(box):
    archive = make_zip(box / "celeba.zip", {"celeba/": b"", **GOOD})
    target = box / "out"
    progress = Rec()
    files = ar.safe_extract(archive, target, progress=progress)
    _check_good(box, target, files)
    assert progress.tasks == [{"description": "extract celeba.zip", "total": 4, "unit": "it",
                               "n": 4}]
    assert ar.count_images(target) == 2


@pytest.mark.parametrize("mode, name", [("w:gz", "a.tar.gz"), ("w:bz2", "a.tbz2"),
                                        ("w:xz", "a.tar.xz"), ("w", "a.tar"),
                                        ("w:gz", "no-suffix.bin")])
def test_good_tar_extracts_detected_by_content(box, mode, name):
    archive = make_tar(box / name, {"./": link(".", "", tarfile.DIRTYPE), **GOOD}, mode=mode)
    target = box / "out"
    _check_good(box, target, ar.safe_extract(archive, target))


def test_zip_detected_by_content_without_suffix(box):
    archive = make_zip(box / "download.part", GOOD)
    target = box / "out"
    _check_good(box, target, ar.safe_extract(archive, target))


def test_links_that_stay_inside_are_kept(box):
    archive = make_tar(box / "a.tar.gz", {
        "imgs/1.jpg": b"one",
        "latest": link("latest", "imgs"),
        "imgs/alias.jpg": link("imgs/alias.jpg", "1.jpg"),
        "copy.jpg": link("copy.jpg", "imgs/1.jpg", tarfile.LNKTYPE),
    })
    target = box / "out"
    files = ar.safe_extract(archive, target)
    assert files == ["imgs/1.jpg", "copy.jpg"]
    assert (target / "latest" / "1.jpg").read_bytes() == b"one"
    assert (target / "imgs" / "alias.jpg").is_symlink()
    assert (target / "copy.jpg").read_bytes() == b"one"


def test_existing_target_is_merged_per_top_level_entry(box):
    target = box / "out"
    (target / "celeba").mkdir(parents=True)
    (target / "celeba" / "stale.jpg").write_bytes(b"old")
    (target / "keep.txt").write_bytes(b"mine")
    ar.safe_extract(make_zip(box / "a.zip", GOOD), target)
    assert (target / "keep.txt").read_bytes() == b"mine"
    assert not (target / "celeba" / "stale.jpg").exists()  # the archive's folder replaced it
    assert (target / "celeba" / "list_attr_celeba.txt").read_bytes() == GOOD[
        "celeba/list_attr_celeba.txt"]
    assert sorted(p.name for p in target.iterdir()) == ["celeba", "keep.txt"]


def test_failure_midway_leaves_nothing_under_final_names(box, monkeypatch):
    real_copy = ar._copy
    calls = []

    def flaky(src, dest, archive, budget):
        calls.append(dest)
        if len(calls) == 2:
            raise ArchiveError("simulated crash")
        return real_copy(src, dest, archive, budget)

    monkeypatch.setattr(ar, "_copy", flaky)
    target = box / "out"
    with pytest.raises(ArchiveError, match="simulated"):
        ar.safe_extract(make_zip(box / "a.zip", GOOD), target)
    assert not target.exists()
    assert [p.name for p in box.iterdir() if ".extracting-" in p.name] == []


# --------------------------------------------------------------------------- damage and bombs


def test_truncated_zip_is_reported_damaged(box):
    archive = make_zip(box / "a.zip", GOOD)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError) as info:
        ar.safe_extract(archive, box / "out")
    msg = str(info.value)
    assert "damaged" in msg and "delete it and fetch it again" in msg and "\n" not in msg
    assert not (box / "out").exists()


def test_truncated_tar_gz_is_reported_damaged(box):
    big = {"a.bin": bytes(range(256)) * 4000, "b.bin": b"x" * 10}
    archive = make_tar(box / "a.tar.gz", big)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="damaged"):
        ar.safe_extract(archive, box / "out")
    assert not (box / "out").exists()
    assert [p.name for p in box.iterdir() if ".extracting-" in p.name] == []


def test_corrupt_member_midway_is_damaged_and_leaves_nothing(box):
    archive = make_zip(box / "a.zip", {"a.txt": b"first", "b.bin": bytes(range(256)) * 64})
    data = bytearray(archive.read_bytes())
    start = data.index(b"b.bin") + len("b.bin") + 20  # inside b.bin's compressed data
    data[start:start + 8] = b"\x00" * 8
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="damaged"):
        ar.safe_extract(archive, box / "out")
    assert sorted(p.name for p in box.iterdir()) == ["a.zip", "outside", "secret.txt"]


@pytest.mark.parametrize("content", [b"", b"<!DOCTYPE html><html>Quota exceeded</html>"])
def test_non_archive_is_reported_damaged(box, content):
    (box / "a.zip").write_bytes(content)
    with pytest.raises(ArchiveError, match="damaged"):
        ar.safe_extract(box / "a.zip", box / "out")


def test_member_count_guard(box):
    members = {f"f{i}.txt": b"x" for i in range(5)}
    for archive in (make_zip(box / "a.zip", members), make_tar(box / "a.tar.gz", members)):
        with pytest.raises(ArchiveError, match="members"):
            ar.safe_extract(archive, box / "out", max_members=3)
        assert not (box / "out").exists()
    assert len(ar.safe_extract(box / "a.zip", box / "out", max_members=5)) == 5


def test_uncompressed_size_guard(box):
    archive = make_zip(box / "a.zip", {"zeros.bin": bytes(100_000)})
    assert archive.stat().st_size < 1_000  # compresses ~1000:1
    with pytest.raises(ArchiveError, match="decompression bomb"):
        ar.safe_extract(archive, box / "out", max_bytes=50_000)
    assert not (box / "out").exists()


def test_count_images(tmp_path):
    for name in ("a.jpg", "b.JPEG", "sub/c.png", "sub/deeper/d.jpg", "notes.txt", "e.gif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert ar.count_images(tmp_path) == 4
    assert ar.count_images(tmp_path, exts=(".gif",)) == 1
    assert ar.count_images(tmp_path / "missing") == 0


# --------------------------------------------------------------------------- odd metadata, moves


@pytest.mark.parametrize("mtime", ["1e300", "nan", "-1e300", "inf"])
def test_absurd_tar_mtime_is_not_applied(box, mtime):
    info = tarfile.TarInfo("a.txt")
    info.size = 3
    info.pax_headers = {"mtime": mtime}  # pax carries the mtime as text, so anything fits
    archive = box / "a.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(b"abc"))
    with tarfile.open(archive) as tf:
        assert str(tf.getmembers()[0].mtime) == str(float(mtime))  # the archive really says so
    target = box / "out"
    assert ar.safe_extract(archive, target) == ["a.txt"]
    assert (target / "a.txt").read_bytes() == b"abc"


def _exdev_on_cross_device(monkeypatch, other_fs):
    """os.replace/os.rename fail with EXDEV whenever exactly one side is below `other_fs`,
    as they do between two file systems."""
    real_replace, real_rename = os.replace, os.rename

    def below(p):
        return Path(os.path.realpath(p)).is_relative_to(os.path.realpath(other_fs))

    def guard(real):
        def move(src, dst, *args, **kwargs):
            if below(src) != below(dst):
                raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
            return real(src, dst, *args, **kwargs)
        return move

    monkeypatch.setattr(os, "replace", guard(real_replace))
    monkeypatch.setattr(os, "rename", guard(real_rename))


def test_merge_into_a_symlinked_target_on_another_file_system(box, monkeypatch):
    disk = box / "otherdisk"
    (disk / "celeba" / "celeba").mkdir(parents=True)
    (disk / "celeba" / "celeba" / "stale.jpg").write_bytes(b"old")
    (disk / "celeba" / "keep.txt").write_bytes(b"mine")
    target = box / "out"
    target.symlink_to(disk / "celeba", target_is_directory=True)
    _exdev_on_cross_device(monkeypatch, disk)
    ar.safe_extract(make_zip(box / "a.zip", GOOD), target)
    assert target.is_symlink()  # the user's link is still the link
    assert (target / "keep.txt").read_bytes() == b"mine"
    assert (target / "celeba" / "list_attr_celeba.txt").read_bytes() == GOOD[
        "celeba/list_attr_celeba.txt"]
    assert not (target / "celeba" / "stale.jpg").exists()
    assert sorted(p.name for p in (disk / "celeba").iterdir()) == ["celeba", "keep.txt"]
    assert [p.name for p in box.iterdir() if ".extracting-" in p.name] == []


def test_exdev_on_every_move_still_merges_without_hiding_the_old_folder(box, monkeypatch):
    target = box / "out"
    (target / "celeba").mkdir(parents=True)
    (target / "celeba" / "stale.jpg").write_bytes(b"old")
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        # Only the move out of the extraction folder crosses a (pretend) device boundary.
        if ".extracting-" in str(src) and ".extracting-" not in str(dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", replace)
    ar.safe_extract(make_zip(box / "a.zip", GOOD), target)
    for name, data in GOOD.items():
        assert (target / name).read_bytes() == data
    assert sorted(p.name for p in target.iterdir()) == ["celeba"]  # no hidden .old- folder
    assert [p.name for p in box.iterdir() if ".extracting-" in p.name] == []
