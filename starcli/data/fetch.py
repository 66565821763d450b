"""`starcli fetch`: put a dataset's raw files under <home>/raw/<name>/, verified.

Downloadable datasets try, per file: --mirror base URLs, $STARCLI_MIRROR, the registry's mirrors,
the registry's direct URLs, then Google Drive. Request-only datasets (RaFD) are imported from a
local archive or folder with --from. Synthetic sets are generated on the spot.

One fetch of a dataset runs at a time per home: a second one waits for the first (up to
`LOCK_TIMEOUT` seconds, then fails with one line naming the lock file). Formats that belong to
model code (official checkpoints) are fetched by a handler the caller passes in, so this data
layer never imports a model family.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from starcli.data.registry import DatasetSpec, FileSpec, Registry, load_registry
from starcli.errors import ChecksumError, DatasetNotFoundError, StarcliError, UsageError
from starcli.paths import raw_dir
from starcli.progress import Progress, log

DEMO_SETS = ("demo-celeba", "demo-rafd")
STAMP = ".starcli-fetch.json"  # written last into raw/<name>/: what was fetched and verified
# Registry formats that only model code can fetch (it converts what it downloads).
MODEL_FORMATS = ("stargan-v1-checkpoint", "stargan-v2-checkpoint")
# Seconds a second `fetch` of one dataset waits for the first before giving up.
LOCK_TIMEOUT = 10.0
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class FetchConfig:
    home: Path
    dataset: str  # registry name, or "demo" for both synthetic sets
    mirrors: tuple[str, ...] = ()  # --mirror, highest priority
    source: Path | None = None  # --from: a local archive or folder instead of downloading
    count: int | None = None  # synthetic CelebA-format image count
    subjects: int | None = None  # synthetic RaFD subject count
    seed: int = 0
    workers: int = 0
    force: bool = False  # download, verify and extract again even when stamps say done
    env_mirrors: tuple[str, ...] = field(default_factory=lambda: _env_mirrors())
    lock_timeout: float | None = None  # None: LOCK_TIMEOUT


# What a caller passes to fetch a format of MODEL_FORMATS: (spec, cfg, progress) -> summary.
FormatHandler = Callable[[DatasetSpec, FetchConfig, "Progress | None"], dict]


def _env_mirrors() -> tuple[str, ...]:
    value = os.environ.get("STARCLI_MIRROR", "")
    return tuple(v for v in value.replace(",", " ").split() if v)


def fetch(cfg: FetchConfig, progress: Progress | None = None,
          handlers: Mapping[str, FormatHandler] | None = None) -> dict:
    """Fetch (or generate, or import) `cfg.dataset`; returns a JSON-able summary.

    `handlers` maps a registry format to the function that fetches it; it is needed for
    MODEL_FORMATS (the CLI passes the model family's importer) and takes precedence over the
    built-in ways for any other format it names."""
    registry = load_registry(cfg.home)
    names = DEMO_SETS if cfg.dataset == "demo" else (cfg.dataset,)
    parts = []
    for name in names:
        spec = registry.get(name)
        handler = (handlers or {}).get(spec.format)
        if handler is None:
            _check_request(spec, cfg)
        with _dataset_lock(cfg, spec.name):
            if handler is not None:
                parts.append(handler(spec, cfg, progress))
            else:
                parts.append(_fetch_one(registry, spec, cfg, progress))
    return {"dataset": "demo", "parts": parts} if cfg.dataset == "demo" else parts[0]


def lock_path(home: Path, name: str) -> Path:
    """The lock a fetch of `name` holds. It sits beside raw/<name>/, not in it, because an
    import swaps that whole folder."""
    return home / "raw" / f".{name}.fetch.lock"


@contextlib.contextmanager
def _dataset_lock(cfg: FetchConfig, name: str) -> Iterator[None]:
    path = lock_path(cfg.home, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    timeout = LOCK_TIMEOUT if cfg.lock_timeout is None else cfg.lock_timeout
    lock = filelock.FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise StarcliError(f"another `starcli fetch {name}` is running on {cfg.home} (lock "
                           f"{path}); wait for it to finish and run again, or remove the lock "
                           "if no fetch is running.") from None
    try:
        yield
    finally:
        lock.release()


def _check_request(spec: DatasetSpec, cfg: FetchConfig) -> None:
    """Refuse a fetch that cannot work before anything (even the lock file) is written."""
    if spec.format in MODEL_FORMATS:
        raise StarcliError(
            f"{spec.name} is a '{spec.format}' entry, which model code fetches, and this "
            f"caller passed no handler for it; use `starcli fetch {spec.name}` (or pass "
            f"handlers={{'{spec.format}': ...}} to starcli.data.fetch.fetch).")
    if spec.access == "synthetic":
        if cfg.source is not None:
            raise UsageError(f"{spec.name} is generated by starcli; --from does not apply.")
        return
    if cfg.source is not None:
        _check_source_outside(cfg.source, raw_dir(cfg.home, spec.name))


def _check_source_outside(source: Path, target: Path) -> None:
    """An import rewrites `target`, so a --from source must not be it, hold it or sit in it:
    the user's copy is only ever read."""
    src, dst = Path(source).expanduser().resolve(), target.resolve()
    if src == dst or dst.is_relative_to(src) or src.is_relative_to(dst):
        raise UsageError(f"--from {source} overlaps {target}, the folder this import "
                         "replaces; move your copy somewhere else (e.g. ~/Downloads) and pass "
                         "that, so nothing of yours is rewritten.")


def _fetch_one(registry: Registry, spec: DatasetSpec, cfg: FetchConfig,
               progress: Progress | None) -> dict:
    if spec.access == "synthetic":
        return fetch_synthetic(spec, cfg, progress)
    if cfg.source is not None:
        if spec.format == "rafd":
            return import_rafd(spec, cfg.home, cfg.source, progress)
        return import_local(spec, cfg.home, cfg.source, progress)
    if spec.access == "request":
        raise StarcliError(spec.access_note or
                           f"{spec.name} cannot be downloaded; import it with --from PATH.")
    return download_dataset(spec, cfg, progress)


# -- synthetic -------------------------------------------------------------------------------

def fetch_synthetic(spec: DatasetSpec, cfg: FetchConfig, progress: Progress | None) -> dict:
    from starcli.data import synthetic

    target = raw_dir(cfg.home, spec.name)
    if spec.format == "celeba":
        params = {"count": cfg.count or spec.image_count or 4000, "seed": cfg.seed}
    else:
        params = {"subjects": cfg.subjects or spec.subjects or 24, "seed": cfg.seed}
    stamp = _read_stamp(target)
    if stamp and stamp.get("params") == params and not cfg.force:
        log(progress, f"{spec.name}: already generated in {target} (use --force to redo)")
        return {"dataset": spec.name, "path": str(target), "skipped": True, **stamp["summary"]}
    target.mkdir(parents=True, exist_ok=True)
    # The generators resume an interrupted run (a marker file records their parameters and
    # completion) and refuse to write over real data, so they write in place.
    if spec.format == "celeba":
        summary = synthetic.generate_celeba(target, count=params["count"], seed=cfg.seed,
                                            progress=progress, workers=cfg.workers)
    else:
        summary = synthetic.generate_rafd(target, subjects=params["subjects"], seed=cfg.seed,
                                          progress=progress, workers=cfg.workers)
    summary = {k: v for k, v in summary.items() if k != "root"}
    _write_stamp(target, {"dataset": spec.name, "params": params, "summary": summary})
    log(progress, f"{spec.name}: generated {summary.get('images')} images in {target}")
    return {"dataset": spec.name, "path": str(target), "skipped": False, **summary}


def _replace_dir(src: Path, dst: Path) -> None:
    """Swap a fully written folder into place (the old one is removed only afterwards)."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _read_stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _write_stamp(folder: Path, data: dict) -> None:
    from starcli.utils import atomic_write_text

    atomic_write_text(folder / STAMP, json.dumps(data, indent=2))


# -- download --------------------------------------------------------------------------------

def sources_for(spec: DatasetSpec, f: FileSpec, cfg: FetchConfig) -> list[str]:
    from starcli.data.download import file_url

    bases = list(cfg.mirrors) + list(cfg.env_mirrors) + list(spec.mirrors)
    out = [file_url(base, f.name) for base in bases]
    out += list(f.urls)
    if f.gdrive_id:
        out.append(f"gdrive:{f.gdrive_id}")
    return out


def download_dataset(spec: DatasetSpec, cfg: FetchConfig, progress: Progress | None) -> dict:
    from starcli.data.download import download

    target = raw_dir(cfg.home, spec.name)
    target.mkdir(parents=True, exist_ok=True)
    results = []
    for f in spec.files:
        dest = target / f.name
        if not cfg.force and _verified(dest, f, progress):
            log(progress, f"{f.name}: already verified, skipped")
            results.append({"file": f.name, "status": "verified"})
        else:
            sources = sources_for(spec, f, cfg)
            if not sources:
                raise StarcliError(f"{f.name}: no source known. Pass --mirror BASE_URL or set "
                                   "STARCLI_MIRROR, or import a local copy with --from PATH.")
            expect = "zip" if f.name.endswith(".zip") else ("text" if f.name.endswith(".txt")
                                                            else None)
            used = download(sources, dest, size=f.size, md5=f.md5, sha256=f.sha256,
                            expect=expect, progress=progress)
            _mark_verified(dest, f)
            results.append({"file": f.name, "status": "downloaded", "source": used})
        if f.kind == "archive":
            results[-1]["extracted"] = _extract_once(dest, target, spec, progress,
                                                     force=cfg.force)
    _write_stamp(target, {"dataset": spec.name, "files": results, "time": time.time()})
    return {"dataset": spec.name, "path": str(target), "files": results}


def _verify_key(dest: Path, f: FileSpec) -> str:
    """What a verification vouches for: these bytes (size, mtime) against these expectations
    (the registry's size and digests), so a changed checksum in the registry checks again."""
    st = dest.stat()
    return json.dumps([st.st_size, st.st_mtime_ns, f.size, (f.md5 or "").lower(),
                       (f.sha256 or "").lower()])


def _verified(dest: Path, f: FileSpec, progress: Progress | None) -> bool:
    """True when dest exists and matches the registry. A stamp next to the file remembers a
    successful check so a 1.4 GB zip is not re-hashed every run."""
    if not dest.is_file():
        return False
    stamp = dest.with_name(f".{dest.name}.verified")
    try:
        if stamp.read_text() == _verify_key(dest, f):
            return True
    except OSError:
        pass
    from starcli.data.download import verify_file

    try:
        verify_file(dest, size=f.size, md5=f.md5, sha256=f.sha256, progress=progress)
    except ChecksumError:
        return False
    _mark_verified(dest, f)
    return True


def _mark_verified(dest: Path, f: FileSpec) -> None:
    from starcli.utils import atomic_write_text

    atomic_write_text(dest.with_name(f".{dest.name}.verified"), _verify_key(dest, f))


def _archive_key(archive: Path) -> str:
    st = archive.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _images_on_disk(target: Path, tops: list[str]) -> int:
    from starcli.data.archive import count_images

    n = 0
    for top in tops:
        path = target / top
        if path.is_dir():
            n += count_images(path, _IMAGE_EXTS)
        elif path.is_file() and top.lower().endswith(_IMAGE_EXTS):
            n += 1
    return n


def _extraction_intact(stamp: Path, archive: Path, target: Path) -> int | None:
    """The stamp's count when this archive's extraction is still on disk: every top-level
    entry there and no image missing. None means extract (again)."""
    try:
        done = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or done.get("archive") != _archive_key(archive):
        return None  # an old-style stamp or another copy of the archive
    tops = done.get("tops", [])
    if not all((target / top).exists() for top in tops):
        return None
    if _images_on_disk(target, tops) < done.get("images", 0):
        return None
    return int(done.get("count", 0))


def _extract_once(archive: Path, target: Path, spec: DatasetSpec,
                  progress: Progress | None, force: bool = False) -> int:
    """Extract `archive` into `target` unless its stamp shows the result is still there."""
    from starcli.data.archive import count_images, safe_extract
    from starcli.utils import atomic_write_text

    stamp = target / f".{archive.name}.extracted"
    if not force and (n := _extraction_intact(stamp, archive, target)) is not None:
        return n
    members = safe_extract(archive, target, progress=progress)
    n = len(members)
    if spec.image_dir and archive.name.startswith(spec.image_dir) and spec.image_count:
        found = count_images(target / spec.image_dir)
        if found != spec.image_count:
            raise ChecksumError(
                f"{archive.name} extracted {found} images into {target / spec.image_dir}, "
                f"expected {spec.image_count}. Delete {archive} and run `starcli fetch "
                f"{spec.name}` again.")
        n = found
    tops = sorted({m.split("/")[0] for m in members})
    images = sum(1 for m in members if m.lower().endswith(_IMAGE_EXTS))
    atomic_write_text(stamp, json.dumps({"archive": _archive_key(archive), "count": n,
                                         "tops": tops, "images": images}))
    return n


# -- local imports ---------------------------------------------------------------------------

def _unpack_source(source: Path, workdir: Path, progress: Progress | None) -> Path:
    """A folder to read from: `source` itself, or where its archive was safely extracted."""
    if not source.exists():
        raise DatasetNotFoundError(f"--from {source}: no such file or folder.")
    if source.is_dir():
        return source
    from starcli.data.archive import safe_extract

    out = workdir / "unpacked"
    safe_extract(source, out, progress=progress)
    return out


def import_local(spec: DatasetSpec, home: Path, source: Path, progress: Progress | None) -> dict:
    """Import the registry's files from a local folder or archive, verifying each one.

    Archives named like a registry file are verified byte for byte, then extracted. Annotation
    files that differ from the official bytes (mirrors often convert line endings) are accepted
    when their structure checks out, with a warning; everything else must match exactly."""
    target = raw_dir(home, spec.name)
    target.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{spec.name}.import-") as tmp:
        if source.is_file() and any(source.name == f.name for f in spec.files):
            root = source.parent
        else:
            root = _unpack_source(source, Path(tmp), progress)
        index = {p.name: p for p in root.rglob("*") if p.is_file()}
        for f in spec.files:
            found = index.get(f.name)
            if found is None:
                image_dir = _find_image_dir(spec, root) if f.kind == "archive" else None
                if image_dir is not None:
                    n = _copy_tree(image_dir, target / spec.image_dir, progress)
                    _check_image_count(spec, target)
                    results.append({"file": f.name, "status": "imported-folder", "images": n})
                else:
                    results.append({"file": f.name, "status": "missing"})
                continue
            results.append(_import_file(spec, f, found, target, progress))
    missing = [r["file"] for r in results if r["status"] == "missing"]
    required = ({"list_attr_celeba.txt", "img_align_celeba.zip"} if spec.format == "celeba"
                else set())
    if required & set(missing):
        raise DatasetNotFoundError(
            f"--from {source}: {', '.join(sorted(required & set(missing)))} not found there. "
            "Point --from at the folder or archive that holds the dataset's files.")
    _write_stamp(target, {"dataset": spec.name, "files": results, "from": str(source)})
    return {"dataset": spec.name, "path": str(target), "files": results}


def _find_image_dir(spec: DatasetSpec, root: Path) -> Path | None:
    """The already-extracted image folder (e.g. img_align_celeba/) anywhere below root."""
    if not spec.image_dir:
        return None
    if (root / spec.image_dir).is_dir():
        return root / spec.image_dir
    return next((p for p in root.rglob(spec.image_dir) if p.is_dir()), None)


def _import_file(spec: DatasetSpec, f: FileSpec, found: Path, target: Path,
                 progress: Progress | None) -> dict:
    from starcli.data.download import verify_file

    dest = target / f.name
    try:
        verify_file(found, size=f.size, md5=f.md5, sha256=f.sha256, progress=progress)
        status = "verified"
    except ChecksumError as exc:
        if f.kind == "archive" or not f.name.endswith(".txt"):
            raise
        _check_text_structure(spec, f, found)
        log(progress, f"warning: {f.name} differs from the official bytes ({exc}); its "
                      "structure checks out, so it is used.")
        status = "verified-structure"
    if found.resolve() != dest.resolve():
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        shutil.copyfile(found, tmp)
        os.replace(tmp, dest)
    _mark_verified(dest, f)
    result = {"file": f.name, "status": status}
    if f.kind == "archive":
        result["extracted"] = _extract_once(dest, target, spec, progress)
    return result


def _check_text_structure(spec: DatasetSpec, f: FileSpec, path: Path) -> None:
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = sum(1 for line in fh if line.strip())
    expected = spec.image_count
    if f.name == "list_attr_celeba.txt" and expected is not None:
        expected += 2
    elif f.name == "list_landmarks_align_celeba.txt" and expected is not None:
        expected += 2
    if expected is not None and lines != expected:
        raise ChecksumError(f"{path}: {lines} lines, expected {expected} for {f.name}. "
                            "It is not a complete copy; fetch it again.")


def _copy_tree(src: Path, dst: Path, progress: Progress | None) -> int:
    from starcli.progress import progress_task

    files = [p for p in src.rglob("*") if p.is_file()]
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with progress_task(progress, f"copy {src.name}", total=len(files), unit="images") as task:
        for p in files:
            out = tmp / p.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(p, out)  # same file system: no copy needed
            except OSError:
                shutil.copyfile(p, out)
            task.advance()
    _replace_dir(tmp, dst)
    return len(files)


def _check_image_count(spec: DatasetSpec, target: Path) -> None:
    from starcli.data.archive import count_images

    if spec.image_count and spec.access == "download":
        found = count_images(target / spec.image_dir)
        if found != spec.image_count:
            raise ChecksumError(f"{target / spec.image_dir}: {found} images, expected "
                                f"{spec.image_count}. The copy is incomplete.")


def import_rafd(spec: DatasetSpec, home: Path, source: Path, progress: Progress | None) -> dict:
    """Copy RaFD images from a folder or archive, parsing every name; unparseable names are
    listed and skipped. Writes raw/<name>/rafd_index.csv with the parsed fields."""
    from starcli.data.rafd import parse_rafd_name
    from starcli.progress import progress_task

    target = raw_dir(home, spec.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{spec.name}.import-") as tmp:
        root = _unpack_source(source, Path(tmp), progress)
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        out = Path(tmp) / "out"
        out.mkdir()
        rows, skipped = [], []
        with progress_task(progress, f"import {spec.name}", total=len(files),
                           unit="images") as task:
            for p in files:
                parsed, reason = parse_rafd_name(p.name, spec)
                task.advance()
                if parsed is None:
                    skipped.append({"file": str(p.relative_to(root)), "reason": reason})
                    continue
                if (out / p.name).exists():
                    skipped.append({"file": str(p.relative_to(root)), "reason": "duplicate name"})
                    continue
                try:
                    os.link(p, out / p.name)
                except OSError:
                    shutil.copyfile(p, out / p.name)
                rows.append(parsed.as_row())
        if not rows:
            raise DatasetNotFoundError(
                f"--from {source}: no file follows the RaFD naming pattern "
                "(e.g. Rafd090_07_Caucasian_female_happy_frontal.jpg).")
        with open(out / "rafd_index.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        summary = {"images": len(rows), "skipped": len(skipped),
                   "subjects": len({r["subject"] for r in rows})}
        (out / STAMP).write_text(json.dumps({"dataset": spec.name, "from": str(source),
                                             "summary": summary, "skipped_files": skipped},
                                            indent=2))
        _replace_dir(out, target)
    for s in skipped[:20]:
        log(progress, f"skipped {s['file']}: {s['reason']}")
    if len(skipped) > 20:
        log(progress, f"… and {len(skipped) - 20} more skipped (see {target / STAMP})")
    return {"dataset": spec.name, "path": str(target), **summary, "skipped_files": skipped}
