"""Safe extraction of zip and tar archives downloaded from the internet.

`safe_extract` reads the whole member list first and refuses the archive, before writing a
single byte, if any member could land outside the target folder (absolute paths, drive
letters, ``..``, paths through links), is a device or fifo, or if the archive is too big
(decompression bombs). Accepted archives are unpacked into a hidden temporary folder next to
the target and then moved into place, so a crash never leaves a half-extracted tree under
the final names.

Link policy: a symbolic link is accepted only when its target is relative, stays inside the
target folder and does not pass through another link; no member may be written through a
link. A hard link is accepted only when it points to a regular file stored earlier in the
same archive. Everything is checked on the names alone (case-insensitively, to be safe on
macOS and Windows file systems) before anything is written.
"""

from __future__ import annotations

import errno
import lzma
import math
import os
import re
import shutil
import stat
import tarfile
import time
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from starcli.errors import ArchiveError
from starcli.progress import Progress, progress_task

__all__ = ["count_images", "safe_extract"]

DEFAULT_MAX_BYTES = 64 << 30
DEFAULT_MAX_MEMBERS = 1_000_000
_CHUNK = 1 << 20
# Longest symlink target read from a zip member (zip stores the target as the member's data).
_MAX_LINK = 4096
_DRIVE = re.compile(r"^[A-Za-z]:")
# Member times outside [epoch, year 9999] are not applied: os.utime overflows on some (a pax
# header can say 1e300 or nan) and none of them is a real time.
_MAX_MTIME = 253402300799.0
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# What a damaged archive raises while it is being read (gzip and bz2 raise OSError).
_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError,
                OSError, ValueError)


@dataclass(frozen=True)
class _Entry:
    name: str  # normalised relative path with "/" separators; "" is the target itself
    raw: str  # the name as stored, for messages
    kind: str  # "file", "dir", "symlink" or "hardlink"
    size: int = 0
    link: str = ""  # symlink target as stored, or the normalised hard-link target
    mtime: float | None = None
    ref: object = None  # the ZipInfo or TarInfo


def _damaged(archive: Path, exc: BaseException | str) -> ArchiveError:
    detail = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    detail = " ".join(str(detail).split())  # keep the message on one line
    return ArchiveError(f"{archive} is damaged or incomplete ({detail}); delete it and fetch it "
                        "again (`starcli fetch`).")


def _unsafe(archive: Path, raw: str, why: str) -> ArchiveError:
    return ArchiveError(f"{archive} is unsafe: member {raw!r} {why}; nothing was extracted. "
                        "Delete the file and fetch it again from a trusted source.")


def _disk_error(folder: Path, exc: OSError) -> ArchiveError:
    return ArchiveError(f"Could not write into {folder}: {exc.strerror or exc}; free space on "
                        f"{folder} (or fix its permissions) and run again.")


def _key(name: str) -> str:
    # Case-insensitive file systems would treat "A" and "a" as one path.
    return unicodedata.normalize("NFC", name).casefold()


def _parts(archive: Path, raw: str) -> list[str]:
    """The path components of member name `raw`, refusing anything that could escape."""
    if "\x00" in raw:
        raise _unsafe(archive, raw, "has a NUL byte in its name")
    if raw.startswith(("/", "\\")):
        raise _unsafe(archive, raw, "has an absolute path")
    if _DRIVE.match(raw):
        raise _unsafe(archive, raw, "has a drive letter")
    # Backslashes count as separators too: that is how a Windows tool would read the name.
    parts = [p for p in re.split(r"[\\/]", raw) if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(archive, raw, "has a '..' component")
    return parts


# --------------------------------------------------------------------------- listing


def _zip_entries(zf: zipfile.ZipFile, archive: Path, max_members: int) -> list[_Entry]:
    infos = zf.infolist()
    if len(infos) > max_members:
        raise ArchiveError(f"{archive} has {len(infos)} members, more than the limit of "
                           f"{max_members}; refusing it as a possible zip bomb.")
    entries = []
    for info in infos:
        name = "/".join(_parts(archive, info.filename))
        mode = info.external_attr >> 16  # Unix mode bits, 0 for zips made on Windows
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{archive} has an encrypted member {info.filename!r}; "
                               "starcli cannot extract it. Extract it by hand and use --from.")
        mtime = _zip_mtime(info)
        if info.is_dir():
            entries.append(_Entry(name, info.filename, "dir", ref=info))
        elif stat.S_ISLNK(mode):
            if info.file_size > _MAX_LINK:
                raise _unsafe(archive, info.filename, "is a link with an oversized target")
            target = zf.read(info).decode("utf-8", "surrogateescape")
            entries.append(_Entry(name, info.filename, "symlink", link=target, ref=info))
        elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise _unsafe(archive, info.filename, "is a device, fifo or socket")
        else:
            entries.append(_Entry(name, info.filename, "file", info.file_size, mtime=mtime,
                                  ref=info))
    return entries


def _zip_mtime(info: zipfile.ZipInfo) -> float | None:
    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return None


def _usable_mtime(value: float) -> float | None:
    return float(value) if math.isfinite(value) and 0 <= value <= _MAX_MTIME else None


def _tar_entries(tf: tarfile.TarFile, archive: Path, max_members: int) -> list[_Entry]:
    entries = []
    for member in tf:  # reads headers lazily, so a huge member count stops early
        if len(entries) >= max_members:
            raise ArchiveError(f"{archive} has more than {max_members} members; refusing it "
                               "as a possible archive bomb.")
        name = "/".join(_parts(archive, member.name))
        if member.isreg():
            entries.append(_Entry(name, member.name, "file", member.size,
                                  mtime=_usable_mtime(member.mtime), ref=member))
        elif member.isdir():
            entries.append(_Entry(name, member.name, "dir", ref=member))
        elif member.issym():
            entries.append(_Entry(name, member.name, "symlink", link=member.linkname,
                                  ref=member))
        elif member.islnk():
            try:
                target = "/".join(_parts(archive, member.linkname))
            except ArchiveError:
                raise _unsafe(archive, member.name,
                              f"is a hard link to {member.linkname!r} outside the target"
                              ) from None
            entries.append(_Entry(name, member.name, "hardlink", link=target, ref=member))
        else:
            raise _unsafe(archive, member.name, "is a device, fifo or other special file")
    return entries


# --------------------------------------------------------------------------- validation


def _check_symlink(archive: Path, entry: _Entry, link_keys: set[str]) -> None:
    target = entry.link
    if not target or "\x00" in target or "\\" in target:
        raise _unsafe(archive, entry.raw, f"is a link with an unusable target {target!r}")
    if target.startswith("/") or _DRIVE.match(target):
        raise _unsafe(archive, entry.raw, f"is a link to the absolute path {target!r}")
    # Walk the target from the link's folder; names are free of links, so this is exact.
    where = entry.name.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not where:
                raise _unsafe(archive, entry.raw, f"is a link to {target!r}, outside the target")
            where.pop()
            continue
        where.append(part)
        if _key("/".join(where)) in link_keys:
            raise _unsafe(archive, entry.raw, f"is a link to {target!r}, through another link")


def _validate(archive: Path, entries: list[_Entry], max_bytes: int) -> int:
    """Refuse the archive if any member is unsafe; return the total size of its files."""
    link_keys = {_key(e.name) for e in entries if e.kind == "symlink"}
    files: set[str] = set()
    total = 0
    for entry in entries:
        parts = entry.name.split("/") if entry.name else []
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if _key(prefix) in link_keys:
                raise _unsafe(archive, entry.raw, f"would be written through the link {prefix!r}")
        if not entry.name and entry.kind != "dir":
            raise _unsafe(archive, entry.raw, "has an empty name")
        if entry.kind in ("symlink", "dir"):
            # A later copy of a name replaces the earlier one, so it is no longer a file.
            files.discard(_key(entry.name))
        if entry.kind == "symlink":
            _check_symlink(archive, entry, link_keys)
        elif entry.kind == "hardlink":
            if _key(entry.link) not in files:
                raise _unsafe(archive, entry.raw, f"is a hard link to {entry.link!r}, which is "
                                                  "not a file stored earlier in the archive")
            files.add(_key(entry.name))
        elif entry.kind == "file":
            files.add(_key(entry.name))
            total += entry.size
            if total > max_bytes:
                raise ArchiveError(
                    f"{archive} would unpack to more than {max_bytes} bytes; refusing it as a "
                    "possible decompression bomb (raise max_bytes if the archive is trusted).")
    return total


# --------------------------------------------------------------------------- extraction


def _copy(src: IO[bytes], dest: Path, archive: Path, budget: int) -> int:
    try:
        out = open(dest, "wb")
    except OSError as exc:
        raise _disk_error(dest.parent, exc) from exc
    written = 0
    with out:
        while True:
            try:
                block = src.read(_CHUNK)
            except _READ_ERRORS as exc:
                raise _damaged(archive, exc) from exc
            if not block:
                return written
            written += len(block)
            if written > budget:
                raise ArchiveError(f"{archive} unpacks to more bytes than its headers say; "
                                   "refusing it as a possible decompression bomb.")
            try:
                out.write(block)
            except OSError as exc:
                raise _disk_error(dest.parent, exc) from exc


def _clear(path: Path, archive: Path, raw: str) -> None:
    """Make room for a member stored twice (the later copy wins, as with tar)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        raise ArchiveError(f"{archive} stores {raw!r} both as a folder and as a file; delete "
                           "the archive and fetch it again.")


def _open_member(handle: zipfile.ZipFile | tarfile.TarFile, entry: _Entry) -> IO[bytes]:
    if isinstance(handle, zipfile.ZipFile):
        return handle.open(entry.ref)  # type: ignore[arg-type]
    stream = handle.extractfile(entry.ref)  # type: ignore[arg-type]
    assert stream is not None  # only regular files get here
    return stream


def _extract(handle: zipfile.ZipFile | tarfile.TarFile, archive: Path, entries: list[_Entry],
             tmp: Path, budget: int, progress: Progress | None) -> list[str]:
    kinds: dict[str, str] = {}
    with progress_task(progress, f"extract {archive.name}", total=len(entries), unit="it") as t:
        for entry in entries:
            dest = tmp.joinpath(*entry.name.split("/")) if entry.name else tmp
            try:
                if entry.kind == "dir":
                    dest.mkdir(parents=True, exist_ok=True)
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    _clear(dest, archive, entry.raw)
            except (FileExistsError, NotADirectoryError):
                raise ArchiveError(f"{archive} stores {entry.raw!r} below a file of the same "
                                   "name; delete the archive and fetch it again.") from None
            except OSError as exc:
                raise _disk_error(tmp.parent, exc) from exc
            if entry.kind == "file":
                try:
                    src = _open_member(handle, entry)
                except _READ_ERRORS as exc:
                    raise _damaged(archive, exc) from exc
                except NotImplementedError as exc:
                    raise ArchiveError(f"{archive} uses a compression method starcli cannot "
                                       f"read ({exc}); extract it by hand and use --from."
                                       ) from None
                with src:
                    budget -= _copy(src, dest, archive, budget)
                _set_mtime(dest, entry.mtime)
            elif entry.kind == "symlink":
                try:
                    os.symlink(entry.link, dest)
                except OSError as exc:
                    raise _disk_error(tmp.parent, exc) from exc
            elif entry.kind == "hardlink":
                source = tmp.joinpath(*entry.link.split("/"))
                try:
                    os.link(source, dest)
                except OSError:
                    try:  # file systems without hard links get a copy
                        shutil.copyfile(source, dest)
                    except OSError as exc:
                        raise _disk_error(tmp.parent, exc) from exc
            if entry.name:
                kinds.pop(entry.name, None)  # keep the order of the last copy
                kinds[entry.name] = entry.kind
            t.advance(1)
    return [name for name, kind in kinds.items() if kind in ("file", "hardlink")]


def _set_mtime(dest: Path, mtime: float | None) -> None:
    if mtime is None:
        return
    try:
        os.utime(dest, (mtime, mtime))
    except (OverflowError, ValueError, OSError):
        pass  # a time the file system cannot store is not worth failing the extraction for


def _move(src: Path, dst: Path) -> None:
    """os.replace, or (between file systems, EXDEV) a copy next to `dst` renamed over it."""
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    copy = dst.with_name(f".{dst.name}.copying-{os.getpid()}")
    _remove(copy)
    try:
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, copy, symlinks=True)
        else:
            shutil.copy2(src, copy, follow_symlinks=False)
        os.replace(copy, dst)  # same folder, so same file system
    except BaseException:
        _remove(copy)
        raise
    _remove(src)


def _move_into_place(tmp: Path, target: Path) -> None:
    if not target.exists() and not target.is_symlink():
        _move(tmp, target)  # one rename: the tree appears complete
        return
    if not target.is_dir():
        raise ArchiveError(f"{target} exists and is not a folder; move it away and run again.")
    # Merge: each top-level entry replaces its namesake; other entries of target are kept.
    # Each entry first moves next to its namesake (a copy if target is on another file
    # system), so the swap below is two renames inside one folder and cannot fail halfway.
    for entry in os.scandir(tmp):
        dest = target / entry.name
        staged = target / f".{entry.name}.new-{os.getpid()}"
        _remove(staged)
        _move(Path(entry.path), staged)
        if dest.is_dir() and not dest.is_symlink():
            trash = target / f".{entry.name}.old-{os.getpid()}"
            os.replace(dest, trash)
            os.replace(staged, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staged, dest)
    shutil.rmtree(tmp, ignore_errors=True)


def _staging_parent(target: Path) -> Path:
    """Where to unpack before moving into `target`: next to the real folder when `target` is
    a link to one, so the final moves are renames on one file system."""
    if target.is_symlink() and target.is_dir():
        return target.resolve().parent
    return target.parent


def _detect(archive: Path) -> str:
    """'zip' or 'tar', from the first bytes (the suffix only breaks ties)."""
    try:
        with open(archive, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise ArchiveError(f"Cannot read {archive}: {exc.strerror or exc}; check the path "
                           "and fetch it again if it is missing.") from exc
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        raise ArchiveError(f"{archive} is a 7z archive, which starcli cannot read; extract it "
                           "with 7-Zip and pass the folder with --from.")
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar":
        return "tar"
    if zipfile.is_zipfile(archive):  # e.g. a self-extracting zip with a stub in front
        return "zip"
    lower = archive.name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(_TAR_SUFFIXES):
        return "tar"
    raise _damaged(archive, "not a zip or tar archive")


def _open(archive: Path, kind: str) -> zipfile.ZipFile | tarfile.TarFile:
    try:
        if kind == "zip":
            return zipfile.ZipFile(archive)
        return tarfile.open(archive, "r:*")
    except _READ_ERRORS as exc:
        raise _damaged(archive, exc) from exc


def safe_extract(archive: Path, target: Path, *, progress: Progress | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 max_members: int = DEFAULT_MAX_MEMBERS) -> list[str]:
    """Extract a zip or tar (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz) archive into `target`.

    Every member is checked before anything is written; an unsafe, damaged or oversized
    archive raises ArchiveError and leaves `target` untouched. If `target` already exists,
    each top-level entry of the archive replaces the entry of the same name in it and the
    other entries are kept. Returns the relative paths ("/"-separated) of the regular files
    extracted, in archive order.
    """
    archive, target = Path(archive), Path(target)
    kind = _detect(archive)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(target.parent, exc) from exc
    tmp = _staging_parent(target) / f".{target.name}.extracting-{os.getpid()}"
    with _open(archive, kind) as handle:
        try:
            if isinstance(handle, zipfile.ZipFile):
                entries = _zip_entries(handle, archive, max_members)
            else:
                entries = _tar_entries(handle, archive, max_members)
        except _READ_ERRORS as exc:
            raise _damaged(archive, exc) from exc
        total = _validate(archive, entries, max_bytes)
        free = shutil.disk_usage(tmp.parent).free
        if total > free:
            raise ArchiveError(f"{archive} needs {total / 1e9:.1f} GB but only "
                               f"{free / 1e9:.1f} GB is free on {tmp.parent}; free space "
                               "and run again.")
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
        try:
            tmp.mkdir()
            files = _extract(handle, archive, entries, tmp, max_bytes, progress)
            _move_into_place(tmp, target)
        finally:
            if tmp.exists() or tmp.is_symlink():
                _remove(tmp)
    return files


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _walk_files(folder: Path) -> Iterator[str]:
    for _root, _dirs, names in os.walk(folder):
        yield from names


def count_images(folder: Path, exts: tuple[str, ...] = (".jpg", ".jpeg", ".png")) -> int:
    """How many files under `folder` (recursively) end in one of `exts`, ignoring case."""
    wanted = tuple(e.lower() for e in exts)
    return sum(1 for name in _walk_files(Path(folder)) if name.lower().endswith(wanted))
