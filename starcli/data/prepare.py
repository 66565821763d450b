"""`starcli prepare`: pack raw images into HDF5 shards with a label table.

    summary = prepare(PrepareConfig(home, "demo-celeba", size=64, attrs=("Male", "Young")))

Output (the shard contract): `<home>/prepared/<name>/<size>/` holds `<split>-<k:05d>.h5`
shards of `rows_per_shard` planned source rows each, `manifest.json` (written last; readers
trust only it), `progress.json` (a journal of finished shards, for resuming) and `.lock`.

Every label column of the source is stored in the shards, so choosing other `--attrs` later
only rewrites the label table in the manifest and in the shard attributes. A shard is written
to `<name>.tmp`, fsynced and renamed into place, then recorded in the journal; after a crash
a rerun keeps the shards the journal vouches for and rebuilds the rest. Decoding is
deterministic, so a resumed run ends with the same content checksums as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import posixpath
import random
import re
import stat
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import cv2
import filelock
import h5py
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from starcli import __version__
from starcli.data.labels import LabelSpace, did_you_mean
from starcli.data.rafd import parse_rafd_name
from starcli.data.registry import DatasetSpec, load_registry
from starcli.data.tables import read_celeba_attributes, read_celeba_partition, read_label_csv
from starcli.errors import (
    ConfigError,
    DatasetNotFoundError,
    StarcliError,
    UsageError,
)
from starcli.imaging import (
    DEFAULT_MAX_PIXELS,
    Framing,
    cut_square,
    jpeg_reduction,
    printable_path,
)
from starcli.paths import prepared_dir, raw_dir
from starcli.progress import Progress, log, progress_task
from starcli.utils import atomic_write_json, fsync_path

SCHEMA = 1
# Bump when decoding/resizing changes pixels: it is part of every shard's plan hash, so old
# shards are rebuilt instead of being mixed with new ones.
DECODER_VERSION = 1
SPLIT_ORDER = ("train", "valid", "test")
COMPRESSIONS = (None, "lzf", "gzip")
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
FOLDER_SPLIT_NAMES = frozenset({"train", "test", "val", "valid", "validation"})
SPLIT_SEED = 1234  # rafd subjects and folder test images are drawn with this seed
JOURNAL = "progress.json"
MANIFEST = "manifest.json"
LOCK = ".lock"
# The most bytes read for one image file. An 8-bit RGBA image at the pixel limit is 358 MB
# uncompressed, so real images fit; the cap bounds each worker's read of anything else.
MAX_FILE_BYTES = 512 << 20
# Opening a named pipe (swapped in after the stat) must not wait for a writer, nor a
# terminal become the controlling one (POSIX flags; Windows has O_BINARY instead).
_OPEN_FLAGS = (getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_BINARY", 0))
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Test hook: with STARCLI_PREPARE_PAUSE_S set, sleep that long half-way through writing each
# shard and after committing it (lets tests kill -9 a prepare at a known point).
_PAUSE_ENV = "STARCLI_PREPARE_PAUSE_S"


@dataclass(frozen=True)
class PrepareConfig:
    """What to prepare and how. See `starcli prepare --help` for the user-facing story."""

    home: Path
    dataset: str  # registry name (celeba, demo-celeba, rafd, demo-rafd) or a folder dataset's name
    size: int = 128  # output side in pixels
    crop: int | None = None  # centre crop side; None: registry default (folders: short side)
    attrs: tuple[str, ...] | None = None  # celeba/CSV labels in label order; None: defaults
    split: str = "official"  # celeba: official (list_eval_partition.txt) | stargan
    angles: tuple[int, ...] | None = None  # rafd: camera angles kept (None: registry default)
    gazes: tuple[str, ...] | None = None  # rafd: gazes kept (None: all)
    test_subjects: tuple[int, ...] | None = None  # rafd: explicit test subjects
    test_fraction: float = 0.1  # rafd: share of subjects; folder: share of images
    workers: int = 0  # decode/resize processes; 0 decodes in this process
    compression: str | None = None  # None | "lzf" | "gzip"
    force: bool = False  # rebuild every shard
    rows_per_shard: int = 4096  # planned source rows per shard (fixed: shard k = same rows)
    source: Path | None = None  # folder datasets: the folder of images
    labels_csv: Path | None = None  # folder datasets: file name + 0/1 attribute columns
    lock_timeout: float = 10.0  # seconds to wait for another prepare of the same output

    def __post_init__(self) -> None:
        # Accept str paths and lists from Python callers; keep the dataclass hashable.
        object.__setattr__(self, "home", Path(self.home))
        for name in ("source", "labels_csv"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        for name in ("attrs", "angles", "gazes", "test_subjects"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.size < 1:
            raise ConfigError(f"--size {self.size}: use a positive image size.")
        if self.crop is not None and self.crop < 1:
            raise ConfigError(f"--crop {self.crop}: use a positive crop size.")
        if self.split not in ("official", "stargan"):
            raise ConfigError(f"--split {self.split}: use official or stargan.")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"--compression {self.compression}: use none, lzf or gzip.")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"--test-fraction {self.test_fraction}: use a value in [0, 1).")
        if self.workers < 0:
            raise ConfigError(f"--workers {self.workers}: use 0 (this process) or more.")
        if self.rows_per_shard < 1:
            raise ConfigError(f"rows_per_shard {self.rows_per_shard}: use a positive count.")


# --------------------------------------------------------------------------------------------
# Plan: which source rows go to which split, with every label column


@dataclass
class _Split:
    names: list[str] = field(default_factory=list)  # paths relative to the plan's base folder
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # column -> (n, ...) array


@dataclass
class _Plan:
    dataset: str
    format: str
    base: Path  # source files are base / name
    crop: int | None  # None: the short side
    splits: dict[str, _Split]
    label_table: dict[str, Any]
    source: dict[str, Any]
    skipped: list[dict[str, str]]  # found while planning (missing files, bad names, ...)
    filtered: int = 0  # rows left out on purpose (rafd angle/gaze filters)
    source_size: tuple[int, int] | None = None  # (width, height) of every file; None: varied


def _selected(names: Sequence[str], wanted: Sequence[str] | None, flag: str = "--attrs"
              ) -> list[str]:
    """`wanted` checked against `names` (ConfigError with a did-you-mean), or all names."""
    if wanted is None:
        return list(names)
    if not wanted:
        raise ConfigError(f"{flag} is empty: name at least one of {', '.join(names)}.")
    for a in wanted:
        if a not in names:
            raise ConfigError(f"Unknown attribute '{a}' in {flag}.{did_you_mean(a, names)} "
                              f"Valid names: {', '.join(names)}.")
    dupes = sorted({a for a in wanted if list(wanted).count(a) > 1})
    if dupes:
        raise ConfigError(f"{flag} names {', '.join(dupes)} twice; list each attribute once.")
    return list(wanted)


def _aliases(fmt: str, registry_aliases: Iterable[tuple[str, str]]) -> list[list[str]]:
    return [list(pair) for pair in registry_aliases
            if any(p.split(":", 1)[0] == fmt for p in pair)]


def _multilabel_table(dataset: str, fmt: str, columns: list[str], selected: list[str],
                      groups: Iterable[Sequence[str]], aliases: list[list[str]]) -> dict:
    chosen = set(selected)
    kept = tuple(tuple(n for n in g if n in chosen) for g in groups)
    space = LabelSpace(dataset=dataset, format=fmt, kind="multilabel", names=tuple(selected),
                       exclusive_groups=tuple(g for g in kept if len(g) >= 2))
    return {"columns": {"attributes": list(columns)}, "space": space.to_dict(),
            "source_column": "attributes",
            "selected_columns": [columns.index(n) for n in selected], "aliases": aliases}


# Bytes of a file name that are not UTF-8 (Python keeps them as lone surrogates, which HDF5,
# JSON readers and terminals refuse) are stored and listed as \xNN, as translate does; the
# file on disk is still read by its real name.
_shown = printable_path


def _is_text(name: str) -> bool:
    return _shown(name) == name


def _file_names(folder: Path) -> set[str]:
    return {e.name for e in os.scandir(folder) if not e.name.startswith(".")}


def _plan_celeba(cfg: PrepareConfig, spec: DatasetSpec, registry_aliases) -> _Plan:
    raw = raw_dir(cfg.home, spec.name)
    images = raw / (spec.image_dir or "img_align_celeba")
    attr_file = raw / "list_attr_celeba.txt"
    fetch = f"Run `starcli fetch {spec.name}` first."
    refetch = f"Re-run `starcli fetch {spec.name} --force`."
    if not images.is_dir():
        raise DatasetNotFoundError(f"Raw images of {spec.name} not found: {images} is missing. "
                                   f"{fetch}")
    if not attr_file.is_file():
        raise DatasetNotFoundError(f"{attr_file} is missing. {fetch}")
    known = list(spec.attributes)
    if cfg.angles or cfg.gazes or cfg.test_subjects:
        raise ConfigError("--angles, --gazes and --test-subjects apply to RaFD-format "
                          f"datasets, not {spec.name}.")
    selected = _selected(known, cfg.attrs if cfg.attrs is not None
                         else (spec.default_selected or None))

    attrs = read_celeba_attributes(attr_file, known, fix=refetch, error=DatasetNotFoundError)
    n_lines = len(attrs.files)
    if cfg.split == "official":
        part_file = raw / "list_eval_partition.txt"
        if not part_file.is_file():
            raise DatasetNotFoundError(
                f"{part_file} is missing (needed by --split official). Re-run "
                f"`starcli fetch {spec.name} --force` or use --split stargan.")
        partition = read_celeba_partition(part_file, fix=refetch, error=DatasetNotFoundError)
        order = range(n_lines)
    else:
        params = spec.splits.get("stargan", {}) if isinstance(spec.splits, dict) else {}
        seed, n_test = int(params.get("seed", 1234)), int(params.get("test", 1999))
        # The official code shuffles lines[2:] of the file, blank lines included.
        # random.shuffle's permutation depends only on the length, so shuffling positions
        # reproduces the official `random.seed(1234); random.shuffle(lines)`.
        order = list(range(n_lines))
        random.Random(seed).shuffle(order)

    present = _file_names(images)
    rows: dict[str, list[int]] = {s: [] for s in SPLIT_ORDER}  # attribute-list rows per split
    skipped: list[dict[str, str]] = []
    for i, pos in enumerate(order):
        name = attrs.files[pos]
        if name is None:
            continue
        if attrs.malformed[pos]:
            skipped.append({"file": name, "reason": f"malformed line {attrs.line_of(pos)} in "
                                                    "list_attr_celeba.txt"})
            continue
        if cfg.split == "official":
            split = partition.get(name)
            if split is None:
                skipped.append({"file": name, "reason": "not in list_eval_partition.txt"})
                continue
        else:
            split = "test" if i < n_test else "train"
        if name not in present:
            skipped.append({"file": name, "reason": "missing file"})
            continue
        rows[split].append(pos)

    splits = {split: _Split([attrs.files[p] for p in picked], {"attributes": attrs.bits[picked]})
              for split, picked in rows.items() if picked}
    if cfg.split == "official":
        _check_official_counts(spec, splits, n_lines)

    table = _multilabel_table(spec.name, spec.format, known, selected, spec.exclusive_groups,
                              _aliases(spec.format, registry_aliases))
    return _Plan(dataset=spec.name, format=spec.format, base=images,
                 crop=cfg.crop or spec.default_crop or 178, splits=splits, label_table=table,
                 source={"raw_dir": str(raw), "split_mode": cfg.split}, skipped=skipped,
                 source_size=_width_height(spec))


def _width_height(spec: DatasetSpec) -> tuple[int, int] | None:
    """The registry's (height, width) of a dataset's files as (width, height)."""
    return (spec.image_size[1], spec.image_size[0]) if spec.image_size else None


def _check_official_counts(spec: DatasetSpec, splits: dict[str, _Split], lines: int) -> None:
    """The real partition file must give the registry's counts when nothing is missing."""
    want = spec.splits.get("official", {}) if isinstance(spec.splits, dict) else {}
    if not want or lines != sum(want.values()):
        return
    got = {s: len(v.names) for s, v in splits.items()}
    if all(got.get(s, 0) == n for s, n in want.items()):
        return
    if sum(got.values()) == lines:  # every file present, yet the partition differs
        raise DatasetNotFoundError(
            f"list_eval_partition.txt of {spec.name} gives {got}, not the official {want}. "
            f"Re-run `starcli fetch {spec.name} --force`.")


def _plan_rafd(cfg: PrepareConfig, spec: DatasetSpec, registry_aliases) -> _Plan:
    raw = raw_dir(cfg.home, spec.name)
    if not raw.is_dir():
        raise DatasetNotFoundError(f"Raw images of {spec.name} not found: {raw} is missing. "
                                   f"Run `starcli fetch {spec.name}` first.")
    if cfg.attrs is not None:
        raise ConfigError(f"--attrs applies to CelebA-format datasets; {spec.name} is labelled "
                          f"by expression ({', '.join(spec.expressions)}).")
    angles = tuple(cfg.angles) if cfg.angles else (spec.default_angles or spec.angles)
    for a in angles:
        if spec.angles and a not in spec.angles:
            raise ConfigError(f"--angles {a}: RaFD angles are {', '.join(map(str, spec.angles))}.")
    gazes = tuple(cfg.gazes) if cfg.gazes else spec.gazes
    for g in gazes:
        if g not in spec.gazes:
            raise ConfigError(f"--gazes {g}: RaFD gazes are {', '.join(spec.gazes)}."
                              f"{did_you_mean(g, spec.gazes)}")

    records, skipped, seen, filtered = [], [], set(), 0
    for path in sorted(_walk_images(raw)):
        rel = path.relative_to(raw).as_posix()
        shown = _shown(rel)
        parsed, reason = parse_rafd_name(path.name, spec)
        if parsed is None:
            skipped.append({"file": shown, "reason": reason})
            continue
        if parsed.gender not in ("female", "male"):
            skipped.append({"file": shown, "reason": f"unknown gender '{parsed.gender}'"})
            continue
        if path.name in seen:
            skipped.append({"file": shown, "reason": "duplicate name"})
            continue
        seen.add(path.name)
        if parsed.angle not in angles or parsed.gaze not in gazes:
            filtered += 1
            continue
        records.append((rel, parsed))
    if not records:
        raise DatasetNotFoundError(
            f"No RaFD images for angles {','.join(map(str, angles))} and gazes "
            f"{','.join(gazes)} in {raw}. Run `starcli fetch {spec.name}` or change the filters.")

    subjects = sorted({p.subject for _, p in records})
    if cfg.test_subjects:
        unknown = sorted(set(cfg.test_subjects) - set(subjects))
        if unknown:
            raise ConfigError(f"--test-subjects {','.join(map(str, unknown))}: no such subject "
                              f"in {spec.name} (subjects: {','.join(map(str, subjects))}).")
        test = sorted(set(cfg.test_subjects))
        if len(test) == len(subjects):
            raise ConfigError("--test-subjects lists every subject; leave some for training.")
    else:
        n = len(subjects)
        k = math.ceil(cfg.test_fraction * n) if cfg.test_fraction > 0 else 0
        k = min(k, n - 1) if n > 1 else 0
        test = sorted(random.Random(SPLIT_SEED).sample(subjects, k))
    test_set = set(test)

    ethnicities = sorted({p.ethnicity for _, p in records})
    index = {
        "expression": {e: i for i, e in enumerate(spec.expressions)},
        "gaze": {g: i for i, g in enumerate(spec.gazes)},
        "ethnicity": {e: i for i, e in enumerate(ethnicities)},
        "gender": {"female": 0, "male": 1},
    }
    splits = {}
    for split in ("train", "test"):
        mine = [(rel, p) for rel, p in records if (p.subject in test_set) == (split == "test")]
        if not mine:
            continue
        splits[split] = _Split([rel for rel, _ in mine], {
            "expression": np.array([index["expression"][p.expression] for _, p in mine], np.uint8),
            "gaze": np.array([index["gaze"][p.gaze] for _, p in mine], np.uint8),
            "angle": np.array([p.angle for _, p in mine], np.int16),
            "subject": np.array([p.subject for _, p in mine], np.int16),
            "gender": np.array([index["gender"][p.gender] for _, p in mine], np.uint8),
            "ethnicity": np.array([index["ethnicity"][p.ethnicity] for _, p in mine], np.uint8),
        })
    space = LabelSpace(dataset=spec.name, format=spec.format, kind="onehot",
                       names=tuple(spec.expressions))
    table = {"columns": {"expression": list(spec.expressions), "gaze": list(spec.gazes),
                         "angle": sorted(angles), "gender": ["female", "male"],
                         "ethnicity": ethnicities},
             "space": space.to_dict(), "source_column": "expression", "selected_columns": None,
             "aliases": _aliases(spec.format, registry_aliases)}
    source = {"raw_dir": str(raw), "split_mode": "subject", "angles": sorted(angles),
              "gazes": list(gazes), "test_subjects": test,
              "test_fraction": None if cfg.test_subjects else cfg.test_fraction}
    return _Plan(dataset=spec.name, format=spec.format, base=raw,
                 crop=cfg.crop or spec.default_crop or 256, splits=splits, label_table=table,
                 source=source, skipped=skipped, filtered=filtered,
                 source_size=_width_height(spec))


def _walk_images(root: Path) -> Iterator[Path]:
    """Image files under root, recursively, ignoring hidden files and folders."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTS:
                yield Path(folder) / f


def _random_test(names: list[str], fraction: float, salt: str) -> set[str]:
    """A deterministic `fraction` of `names` (at least one when there are two or more)."""
    if fraction <= 0 or len(names) < 2:
        return set()
    k = min(max(1, round(fraction * len(names))), len(names) - 1)
    return set(random.Random(f"{SPLIT_SEED}:{salt}").sample(sorted(names), k))


def _walk_domains(src: Path) -> tuple[list[str], dict[str, list[str]], list[dict[str, str]]]:
    """(domain folder names in sorted order, their image files relative to `src`, skipped
    entries) for a folder with one sub-folder per domain."""
    subdirs = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    # Real folders first: a link is judged against the domains they make.
    found_in = {d: sorted(p.relative_to(src).as_posix() for p in _walk_images(src / d))
                for d in subdirs if not (src / d).is_symlink()}
    links = _overlapping_links(src, [d for d in subdirs if d not in found_in],
                               {d: src / d for d, found in found_in.items() if found})
    domains, files, skipped = [], {}, []
    for d in subdirs:
        if d in links:  # never walked: it may lead to PATH itself or far above it
            skipped.append({"file": f"{_shown(d)}/", "reason": links[d]})
            continue
        found = found_in[d] if d in found_in else sorted(
            p.relative_to(src).as_posix() for p in _walk_images(src / d))
        if found and not _is_text(d):
            skipped.append({"file": f"{_shown(d)}/", "reason": "folder name is not UTF-8 text, "
                            f"so it cannot be a label name; rename it ({len(found)} images "
                            "left out)"})
        elif found:
            domains.append(d)
            files[d] = found
    return domains, files, skipped


def _plan_split_folders(cfg: PrepareConfig, src: Path, subdirs: list[str]) -> _Plan:
    """A root with train/ and val/ (or test/) folders, each with one sub-folder per domain
    (the StarGAN v2 layout of CelebA-HQ and AFHQ): that split is kept, and the domains are
    train/'s sub-folders in sorted order (the official label order)."""
    if "train" not in subdirs:
        raise UsageError(f"{src} holds only {'/'.join(subdirs)} sub-folders and no train/; "
                         "pass the folder with one sub-folder per domain instead.")
    held = [d for d in subdirs if d != "train"]
    if len(held) > 1:
        raise UsageError(f"{src} holds {' and '.join(d + '/' for d in held)}; keep one of them "
                         "as the held-out split (or pass train/ alone for a random split).")
    domains, train_files, skipped = _walk_domains(src / "train")
    if not domains:
        raise UsageError(f"{src / 'train'} has no sub-folders with images; make one sub-folder "
                         "per domain (e.g. train/cat/, train/dog/).")
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for i, d in enumerate(domains):
        rows["train"] += [(f"train/{rel}", i) for rel in train_files[d]]
    for entry in skipped:
        entry["file"] = f"train/{entry['file']}"
    if held:
        test_domains, test_files, test_skipped = _walk_domains(src / held[0])
        extra = [d for d in test_domains if d not in domains]
        if extra:
            raise UsageError(f"{src / held[0] / extra[0]} is a domain that {src / 'train'} does "
                             f"not have ({', '.join(domains)}); the held-out split must use "
                             "the training domains.")
        for i, d in enumerate(domains):
            rows["test"] += [(f"{held[0]}/{rel}", i) for rel in test_files.get(d, [])]
        skipped += [{**e, "file": f"{held[0]}/{e['file']}"} for e in test_skipped]
    return _domain_plan(cfg, src, domains, rows, skipped,
                        {"raw_dir": str(src), "split_mode": "folders",
                         "test_folder": held[0] if held else None, "labels_csv": None})


def _domain_plan(cfg: PrepareConfig, src: Path, domains: list[str],
                 rows: dict[str, list[tuple[str, int]]], skipped: list[dict[str, str]],
                 source: dict[str, Any]) -> _Plan:
    """The plan of a folder-per-domain dataset from its (file, domain index) rows per split."""
    if len(domains) > 255:
        raise ConfigError(f"{src} has {len(domains)} domains; at most 255 are supported.")
    splits = {s: _Split([r for r, _ in v], {"domain": np.array([i for _, i in v], np.uint8)})
              for s, v in rows.items() if v}
    space = LabelSpace(dataset=cfg.dataset, format="folder", kind="onehot", names=tuple(domains))
    table = {"columns": {"domain": domains}, "space": space.to_dict(), "source_column": "domain",
             "selected_columns": None, "aliases": []}
    return _Plan(dataset=cfg.dataset, format="folder", base=src, crop=cfg.crop, splits=splits,
                 label_table=table, skipped=skipped, source=source)


def _plan_folder(cfg: PrepareConfig) -> _Plan:
    if cfg.angles or cfg.gazes or cfg.test_subjects:
        raise ConfigError("--angles, --gazes and --test-subjects apply to RaFD-format datasets.")
    csv_path = Path(cfg.labels_csv).expanduser() if cfg.labels_csv else None
    src = Path(cfg.source).expanduser() if cfg.source else (csv_path.parent if csv_path else None)
    if src is None or not src.is_dir():
        raise UsageError(f"PATH {src}: not a folder. Pass the folder that holds the images.")
    src = src.resolve()
    if csv_path is not None:
        return _plan_csv(cfg, src, csv_path)
    if cfg.attrs is not None:
        raise ConfigError("--attrs applies to CelebA-format datasets and to --labels CSV files; "
                          f"{src} is labelled by its sub-folder names.")
    subdirs = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs and set(subdirs) <= FOLDER_SPLIT_NAMES:
        return _plan_split_folders(cfg, src, subdirs)
    domains, files, skipped = _walk_domains(src)
    if not domains:
        raise UsageError(f"{src} has no sub-folders with images; make one sub-folder per domain "
                         "(e.g. smiling/, neutral/) or pass --labels FILE.csv.")
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for i, d in enumerate(domains):
        test = _random_test(files[d], cfg.test_fraction, d)
        for rel in files[d]:
            rows["test" if rel in test else "train"].append((rel, i))
    return _domain_plan(cfg, src, domains, rows, skipped,
                        {"raw_dir": str(src), "split_mode": "random", "labels_csv": None,
                         "test_fraction": cfg.test_fraction})


def _overlapping_links(src: Path, links: Sequence[str], domains: dict[str, Path]
                       ) -> dict[str, str]:
    """Reasons, by name, to leave out the sub-folder links of `src` (resolved) that lead to
    src, a folder above it, or into or above a domain folder (`domains`, then the links kept
    before, in name order): their images would be listed again under a second label."""
    kept = dict(domains)
    reasons: dict[str, str] = {}
    for name in links:
        target = Path(os.path.realpath(src / name))
        shown = f"{_shown(name)} -> {_shown(os.readlink(src / name))}"
        if src.is_relative_to(target):
            where = "PATH itself" if target == src else f"{_shown(target)}, a folder above PATH"
            reasons[name] = (f"a link to {where} ({shown}), not a domain folder: it would hold "
                             "every image again under its own label; left out")
            continue
        other = next((d for d, k in kept.items()
                      if target.is_relative_to(k) or k.is_relative_to(target)), None)
        if other is not None:
            how = "into" if target.is_relative_to(kept[other]) else "to a folder holding"
            reasons[name] = (f"a link {how} the domain folder {_shown(other)}/ ({shown}): its "
                             "images would be listed twice under two labels; left out")
            continue
        kept[name] = target
    return reasons


def _inside(name: str, roots: Sequence[Path]) -> str | None:
    """A --labels file name as a clean path relative to the image folder, or None when it
    points outside it (`../x.jpg`, or an absolute path not under one of `roots`)."""
    path = posixpath.normpath(name)
    if posixpath.isabs(path):
        for root in roots:
            try:
                return Path(path).relative_to(root).as_posix()
            except ValueError:
                continue
        return None
    return None if path == ".." or path.startswith("../") else path


def _plan_csv(cfg: PrepareConfig, src: Path, csv_path: Path) -> _Plan:
    where = f"--labels {csv_path}"
    table = read_label_csv(csv_path, where=where, blanks=False)
    if not table.columns or not table.files:
        raise UsageError(f"{where}: need a header (file, then attribute names) and at least "
                         "one row, e.g. file,smiling then photo1.jpg,1.")
    columns = list(table.columns)
    selected = _selected(columns, cfg.attrs)
    roots = [src] + ([Path(cfg.source).expanduser().absolute()] if cfg.source else [])
    present, skipped, seen = [], [], set()
    for name, values in zip(table.files, table.values, strict=True):
        rel = _inside(name, roots)
        if rel is None:
            skipped.append({"file": name, "reason": f"outside the image folder {src}; file "
                                                    "names in --labels are relative to it"})
            continue
        if rel in seen:
            skipped.append({"file": name, "reason": "listed twice in the CSV"})
            continue
        seen.add(rel)
        if not (src / rel).is_file():
            skipped.append({"file": name, "reason": "missing file"})
            continue
        present.append((rel, values.astype(np.uint8)))
    if not present:
        raise DatasetNotFoundError(f"{where}: none of its files exist under {src}.")
    present.sort(key=lambda p: p[0])
    test = _random_test([r for r, _ in present], cfg.test_fraction, "csv")
    splits = {}
    for split in ("train", "test"):
        mine = [(r, v) for r, v in present if (r in test) == (split == "test")]
        if mine:
            splits[split] = _Split([r for r, _ in mine],
                                   {"attributes": np.array([v for _, v in mine], np.uint8)})
    table = _multilabel_table(cfg.dataset, "folder", columns, selected, (), [])
    return _Plan(dataset=cfg.dataset, format="folder", base=src, crop=cfg.crop, splits=splits,
                 label_table=table, skipped=skipped,
                 source={"raw_dir": str(src), "split_mode": "random",
                         "labels_csv": str(csv_path.resolve()),
                         "test_fraction": cfg.test_fraction})


def _make_plan(cfg: PrepareConfig) -> _Plan:
    home = Path(cfg.home)
    registry = load_registry(home)
    if cfg.source is not None or cfg.labels_csv is not None:
        if cfg.dataset in registry.datasets:
            raise ConfigError(f"--name {cfg.dataset} is a registry dataset; choose another name "
                              "for your folder.")
        if not _NAME_RE.match(cfg.dataset):
            raise ConfigError(f"--name {cfg.dataset!r}: use letters, digits, '.', '_' or '-'.")
        return _plan_folder(cfg)
    if cfg.dataset not in registry.datasets:
        previous = _previous_folder_source(cfg)
        if previous is not None:
            return _plan_folder(previous)
    spec = registry.get(cfg.dataset)  # UnknownDatasetError with a did-you-mean
    if spec.format == "celeba":
        return _plan_celeba(cfg, spec, registry.aliases)
    if spec.format == "rafd":
        return _plan_rafd(cfg, spec, registry.aliases)
    if spec.format == "domain-folders":
        return _plan_registry_folders(cfg, spec)
    raise ConfigError(f"{spec.name} is a {spec.format}, not an image dataset; "
                      "`starcli prepare` takes celeba-, rafd- or domain-folders-format datasets "
                      "or `folder`.")


def _plan_registry_folders(cfg: PrepareConfig, spec: DatasetSpec) -> _Plan:
    """A registry dataset in StarGAN v2's train|val/<domain>/ layout (celeba-hq, afhq)."""
    if cfg.angles or cfg.gazes or cfg.test_subjects or cfg.attrs is not None:
        raise ConfigError(f"{spec.name} is labelled by its domain folders; --attrs, --angles, "
                          "--gazes and --test-subjects do not apply.")
    raw = raw_dir(Path(cfg.home), spec.name)
    # The archive's top folder (image_dir), or the raw folder itself for an import of it.
    candidates = [raw / spec.image_dir] if spec.image_dir else []
    candidates += [raw] + (sorted(p for p in raw.iterdir() if p.is_dir()) if raw.is_dir()
                           else [])
    root = next((c for c in candidates if (c / "train").is_dir()), None)
    if root is None:
        raise UsageError(f"{spec.name} is not in {raw} (no train/ folder found); run "
                         f"`starcli fetch {spec.name}` or `starcli fetch {spec.name} --from "
                         "PATH` first.")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    plan = _plan_split_folders(cfg, root, [d for d in subdirs if d in FOLDER_SPLIT_NAMES])
    expected = list(spec.raw.get("domains") or [])
    found = list(plan.label_table["columns"]["domain"])
    if expected and found != expected:
        raise UsageError(f"{root / 'train'} holds the domains {', '.join(found)}; {spec.name} "
                         f"has {', '.join(expected)}. Check the copy (or prepare it as `starcli "
                         "prepare folder PATH --name NAME`).")
    plan.dataset, plan.format = spec.name, spec.format
    plan.crop = cfg.crop or spec.default_crop
    plan.source_size = _width_height(spec)
    plan.source["raw_dir"] = str(raw)
    return plan


def _previous_folder_source(cfg: PrepareConfig) -> PrepareConfig | None:
    """A folder dataset prepared before at this size can be re-prepared by name alone."""
    try:
        manifest = json.loads((prepared_dir(Path(cfg.home), cfg.dataset, cfg.size)
                               / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    source = manifest.get("source", {})
    if manifest.get("format") != "folder" or not source.get("raw_dir"):
        return None
    fraction = source.get("test_fraction")
    labels_csv = source.get("labels_csv")
    return dataclasses.replace(
        cfg, source=Path(source["raw_dir"]), labels_csv=Path(labels_csv) if labels_csv else None,
        test_fraction=cfg.test_fraction if fraction is None else fraction)


# --------------------------------------------------------------------------------------------
# Decoding: read, decode, centre-crop, resize (runs in worker processes)


class _Skip(Exception):
    """An image that cannot be used; the message is the reason recorded in the manifest."""


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _jpeg_info(data: bytes) -> tuple[int, int, int] | None:
    """(components, height, width) from a complete JPEG's frame header, else None."""
    if data[:2] != b"\xff\xd8" or not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return None  # not a JPEG, or truncated (no end-of-image marker): decode with PIL
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in _SOF:
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return data[i + 9], h, w
        if marker in (0xD9, 0xDA):
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} megapixels"


_LIMIT = (f"over the {_megapixels(DEFAULT_MAX_PIXELS)} limit that guards against "
          "decompression bombs; downscale it first")


def _check_pixels(w: int, h: int) -> None:
    """Refuse an image from its header, before decoding allocates it (translate's limit:
    a 32768x32768 JPEG of 20 MB would take 3.2 GB in a worker)."""
    if w * h > DEFAULT_MAX_PIXELS:
        raise _Skip(f"too large: {w}x{h} = {_megapixels(w * h)}, {_LIMIT}")


_CV2_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
                4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def _decode(data: bytes, crop: int | None, size: int
            ) -> tuple[np.ndarray, bool, int, tuple[int, int]]:
    """(pixels, is_bgr, reduction r, (height, width) at full size). cv2 for complete 1- or
    3-channel JPEGs (fastest, measured); PIL for everything else (PNG, CMYK, palette, and
    truncated files, which PIL detects). With r > 1 the JPEG was decoded at 1/r scale."""
    info = _jpeg_info(data)
    if info is not None and info[0] in (1, 3):
        _, h, w = info
        _check_pixels(w, h)
        r = jpeg_reduction(w, h, crop, size)
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_REDUCED[r])
        if arr is not None:
            if arr.shape[:2] != (-(-h // r), -(-w // r)):  # EXIF rotated by 90 degrees
                h, w = w, h
            return arr, True, r, (h, w)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            _check_pixels(w, h)
            r = 1
            if im.format == "JPEG":
                r = jpeg_reduction(w, h, crop, size)
                if r > 1:
                    im.draft(None, (-(-w // r), -(-h // r)))
                    r = next((k for k in (8, 4, 2) if -(-w // k) == im.width), 1)
            im.load()
            im = ImageOps.exif_transpose(im)  # cv2 applies EXIF orientation too
            if im.size != (-(-w // r), -(-h // r)):
                h, w = w, h
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im), False, r, (h, w)
    except _Skip:
        raise
    except Image.DecompressionBombError as exc:  # over twice the limit: PIL refuses to open it
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        claimed = f" {_megapixels(int(pixels[1]))}," if pixels else ""
        raise _Skip(f"too large:{claimed} {_LIMIT}") from None
    except UnidentifiedImageError:
        raise _Skip("not an image (unknown format)") from None
    except Exception as exc:  # PIL raises many types for broken files
        msg = " ".join(str(exc).split())
        if "truncated" in msg:
            raise _Skip("truncated image") from None
        raise _Skip(f"unreadable image ({type(exc).__name__}: {msg[:120]})") from None


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, in translate's words (imaging.walk_inputs)."""
    return ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a folder" if stat.S_ISDIR(mode) else "a device")


def _check_regular(st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise _Skip(f"not a regular file ({_kind(st.st_mode)})")
    if st.st_size > MAX_FILE_BYTES:
        raise _Skip(f"too large: {st.st_size / 2**20:.0f} MiB, over the "
                    f"{MAX_FILE_BYTES >> 20} MiB limit for one image file; downscale it first")


def _read(path: str) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES; _Skip for anything else.

    Checked before opening (following links), as every plan's rows (CelebA lists, RaFD and
    folder walks, CSV rows) meet here: opening a named pipe blocks until a writer appears,
    and a device such as /dev/zero never ends. O_NONBLOCK and the fstat after opening cover
    a file swapped for one of those in between; the capped read covers a file still growing.
    """
    try:
        _check_regular(os.stat(path))
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except FileNotFoundError:
        raise _Skip("missing file") from None
    except OSError as exc:
        raise _Skip(f"unreadable file ({exc.strerror or exc})") from None
    try:
        with open(fd, "rb", buffering=0) as fh:
            st = os.fstat(fh.fileno())
            _check_regular(st)
            return _read_capped(fh, st.st_size)
    except OSError as exc:
        raise _Skip(f"unreadable file ({exc.strerror or exc})") from None


def _read_capped(fh: io.RawIOBase, expected: int) -> bytes:
    """All of `fh`, in one read of `expected` bytes when the size is right, else in 1 MiB
    steps (read(n) allocates n bytes up front) up to MAX_FILE_BYTES, then _Skip."""
    parts, total, want = [], 0, expected or 1 << 20
    while True:
        part = fh.read(min(want, MAX_FILE_BYTES + 1 - total))
        if not part:
            return b"".join(parts)
        parts.append(part)
        total += len(part)
        want = 1 << 20
        if total > MAX_FILE_BYTES:
            raise _Skip(f"too large: over the {MAX_FILE_BYTES >> 20} MiB limit for one image "
                        "file (more than its stated size); downscale it first")


def _load(path: str, crop: int | None, size: int, times: list[float]) -> np.ndarray:
    """One image as RGB uint8 (size, size, 3); _Skip with the reason when unusable."""
    t0 = time.process_time()  # CPU seconds: honest under contention for the cores
    data = _read(path)
    if not data:
        raise _Skip("empty file")
    arr, bgr, r, (h, w) = _decode(data, crop, size)
    t1 = time.process_time()
    arr = cut_square(arr, r, w, h, crop, size)
    if bgr:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    times[0] += t1 - t0
    times[1] += time.process_time() - t1
    return arr


def _decode_into(paths: Sequence[str], crop: int | None, size: int, out: np.ndarray
                 ) -> tuple[int, list[str | None], float, float]:
    """Decode files into out[0:n] (kept images packed in order): (n, reason per file or None,
    decode CPU s, resize CPU s)."""
    reasons: list[str | None] = []
    times = [0.0, 0.0]
    n = 0
    for path in paths:
        try:
            out[n] = _load(path, crop, size, times)
        except _Skip as skip:
            reasons.append(str(skip))
            continue
        reasons.append(None)
        n += 1
    return n, reasons, times[0], times[1]


_ATTACHED: dict[str, shared_memory.SharedMemory] = {}


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; threads would oversubscribe


def _worker_decode(task: tuple) -> tuple[int, list[str | None], float, float]:
    """In a worker: decode a chunk straight into its slot of the shared buffer. Only the
    reasons and timings travel back through the pipe (pickling ~3 MB of pixels per chunk
    through 64 KB pipe writes cost the writer ~15% of all CPU, measured)."""
    paths, crop, size, shm_name, offset, rows = task
    shm = _ATTACHED.get(shm_name)
    if shm is None:
        shm = _ATTACHED[shm_name] = shared_memory.SharedMemory(name=shm_name)
    out = np.ndarray((rows, size, size, 3), np.uint8, buffer=shm.buf, offset=offset)
    return _decode_into(paths, crop, size, out)


def _chunk_rows(size: int) -> int:
    """Images per decode task: up to 64, at most ~4 MB of pixels."""
    return max(1, min(64, (4 << 20) // (size * size * 3)))


class _Decoder:
    """Decoded chunks in task order, from this process or from a pool of workers writing into
    shared memory. At most `slots` chunks are in flight (Pool.imap would queue every result
    when the writer falls behind: unbounded RAM)."""

    def __init__(self, workers: int, size: int) -> None:
        self.size, self.rows = size, _chunk_rows(size)
        self.slots = 2 * workers + 2
        self.pool = self.shm = None
        if workers > 0:
            self.shm = shared_memory.SharedMemory(
                create=True, size=self.slots * self.rows * size * size * 3)
            self.pool = multiprocessing.get_context("spawn").Pool(workers,
                                                                  initializer=_worker_init)

    def run(self, tasks: Iterable[tuple[list[str], int | None]]) -> Iterator[tuple]:
        """(images (n, S, S, 3), reasons, decode s, resize s) per task. The images are only
        valid until the next item is requested."""
        if self.pool is None:
            out = np.empty((self.rows, self.size, self.size, 3), np.uint8)
            for paths, crop in tasks:
                n, reasons, t_dec, t_res = _decode_into(paths, crop, self.size, out)
                yield out[:n], reasons, t_dec, t_res
            return
        slot_bytes = self.rows * self.size * self.size * 3
        free = list(range(self.slots))
        window: deque = deque()
        tasks = iter(tasks)

        def submit() -> None:
            for paths, crop in tasks:
                slot = free.pop()
                work = (paths, crop, self.size, self.shm.name, slot * slot_bytes, self.rows)
                window.append((slot, self.pool.apply_async(_worker_decode, (work,))))
                return

        for _ in range(self.slots):
            submit()
        while window:
            slot, pending = window.popleft()
            n, reasons, t_dec, t_res = pending.get()
            images = np.ndarray((n, self.size, self.size, 3), np.uint8, buffer=self.shm.buf,
                                offset=slot * slot_bytes)
            yield images, reasons, t_dec, t_res
            del images  # the writer is done with this slot: reuse it
            free.append(slot)
            submit()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        if self.shm is not None:
            try:
                self.shm.close()
            except BufferError:  # a view is still alive somewhere; freed with the process
                pass
            self.shm.unlink()


# --------------------------------------------------------------------------------------------
# Shards


@dataclass
class _Job:
    split: str
    index: int
    start: int  # rows start..stop of the split plan
    stop: int
    plan_sha256: str

    @property
    def path(self) -> str:
        return f"{self.split}-{self.index:05d}.h5"


def _le_bytes(values: np.ndarray) -> bytes:
    values = np.asarray(values)
    return np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<"), copy=False)
                                ).tobytes()


def _jobs(plan: _Plan, size: int, rows_per_shard: int, compression: str | None) -> list[_Job]:
    """The fixed shard plan: shard k of a split holds planned rows [k*R, (k+1)*R)."""
    params = json.dumps({"schema": SCHEMA, "decoder": DECODER_VERSION, "format": plan.format,
                         "size": size, "crop": plan.crop, "compression": compression},
                        sort_keys=True).encode()
    jobs = []
    for split in SPLIT_ORDER:
        rows = plan.splits.get(split)
        if rows is None:
            continue
        for k, start in enumerate(range(0, len(rows.names), rows_per_shard)):
            stop = min(start + rows_per_shard, len(rows.names))
            h = hashlib.sha256(params)
            h.update(json.dumps([split, k, rows.names[start:stop]]).encode())
            for col in sorted(rows.labels):
                h.update(col.encode())
                h.update(_le_bytes(rows.labels[col][start:stop]))
            jobs.append(_Job(split, k, start, stop, h.hexdigest()))
    return jobs




def _pause() -> None:
    seconds = os.environ.get(_PAUSE_ENV)
    if seconds:
        time.sleep(float(seconds))


@dataclass
class _Timing:
    decode: float = 0.0  # CPU seconds of reading + decoding, summed over workers
    resize: float = 0.0  # CPU seconds of crop + resize + colour order, summed over workers
    write: float = 0.0  # CPU seconds of the writer (main process) in HDF5
    checksum: float = 0.0  # CPU seconds of the writer hashing content
    fsync: float = 0.0  # wall seconds of fsync + rename
    wait: float = 0.0  # wall seconds the writer waited for decoded chunks

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.__dict__.items()}


def _write_shard(out: Path, job: _Job, rows: _Split, results: Iterator[tuple], *, size: int,
                 compression: str | None, attrs: dict[str, Any], timing: _Timing
                 ) -> dict[str, Any]:
    """Write one shard from the decoded chunks of its rows, atomically; its journal record."""
    n_planned = job.stop - job.start
    final = out / job.path
    tmp = out / f"{job.path}.tmp"
    digest = hashlib.sha256()
    kept: list[bool] = []
    skipped: list[dict[str, str]] = []
    paused = False
    with h5py.File(tmp, "w", locking=False) as f:
        images = f.create_dataset(
            "images", shape=(n_planned, size, size, 3), maxshape=(n_planned, size, size, 3),
            dtype=np.uint8, chunks=(1, size, size, 3), fletcher32=True, compression=compression)
        pos = 0
        while len(kept) < n_planned:
            t0 = time.perf_counter()
            batch, reasons, t_dec, t_res = next(results)
            timing.wait += time.perf_counter() - t0
            timing.decode += t_dec
            timing.resize += t_res
            t1 = time.process_time()
            if len(batch):
                images[pos:pos + len(batch)] = batch
            t2 = time.process_time()
            digest.update(batch.data if batch.flags.c_contiguous else batch.tobytes())
            t3 = time.process_time()
            timing.write += t2 - t1
            timing.checksum += t3 - t2
            for reason in reasons:
                if reason is not None:
                    skipped.append({"file": _shown(rows.names[job.start + len(kept)]),
                                    "reason": reason})
                kept.append(reason is None)
            pos += len(batch)
            if not paused and len(kept) * 2 >= n_planned:
                paused = True
                _pause()
        t0 = time.process_time()
        if pos < n_planned:
            images.resize(pos, axis=0)
        mask = np.array(kept, bool)
        labels = f.create_group("labels")
        for col in sorted(rows.labels):
            values = rows.labels[col][job.start:job.stop][mask]
            labels.create_dataset(col, data=values)
            t1 = time.process_time()
            digest.update(_le_bytes(values))
            timing.checksum += time.process_time() - t1
        names = [_shown(n) for n, k in zip(rows.names[job.start:job.stop], kept, strict=True)
                 if k]
        f.create_dataset("index/source_name", data=np.array(names, dtype=object),
                         dtype=h5py.string_dtype())
        content = digest.hexdigest()
        f.attrs.update({**attrs, "split": job.split, "shard_index": job.index, "count": pos,
                        "image_size": size, "content_sha256": content,
                        "plan_sha256": job.plan_sha256})
    timing.write += time.process_time() - t0
    t0 = time.perf_counter()
    fsync_path(tmp, strict=True)
    os.replace(tmp, final)
    fsync_path(out)
    timing.fsync += time.perf_counter() - t0
    return {"plan_sha256": job.plan_sha256, "count": pos, "content_sha256": content,
            "skipped": skipped}


def _reusable(path: Path, record: dict | None, job: _Job) -> bool:
    """A finished shard the journal vouches for (same plan, same content checksum)."""
    if not record or record.get("plan_sha256") != job.plan_sha256 or not path.is_file():
        return False
    try:
        with h5py.File(path, "r", locking=False) as f:
            return (f.attrs.get("content_sha256") == record.get("content_sha256")
                    and f.attrs.get("plan_sha256") == job.plan_sha256
                    and f["images"].shape[0] == record.get("count"))
    except (OSError, KeyError, ValueError):
        return False


def _set_label_table(path: Path, table_json: str) -> bool:
    """Rewrite a shard's `label_table` attribute in place; True if it changed."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            if f.attrs.get("label_table") == table_json:
                return False
        with h5py.File(path, "r+", locking=False) as f:
            f.attrs["label_table"] = table_json
        fsync_path(path, strict=True)
    except OSError as exc:
        raise StarcliError(f"Cannot update the label table of {path} ({exc}); close programs "
                           "reading it, or re-run with --force.") from exc
    return True


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _clean(out: Path, keep: set[str]) -> int:
    """Remove stray temp files and shards that are not in the plan; how many shards went."""
    removed = 0
    for entry in os.scandir(out):
        if entry.name.endswith(".tmp"):
            os.unlink(entry.path)
        elif entry.name.endswith(".h5") and entry.name not in keep:
            os.unlink(entry.path)
            removed += 1
    return removed


def _lock(out: Path, timeout: float) -> filelock.BaseFileLock:
    lock = filelock.FileLock(str(out / LOCK), timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise StarcliError(f"another `starcli prepare` is writing {out} (lock {out / LOCK}); "
                           "wait for it or remove the lock if no prepare is running.") from None
    return lock


def prepare(cfg: PrepareConfig, progress: Progress | None = None) -> dict:
    """Pack a dataset into HDF5 shards and write its manifest; returns a summary.

    Resumable: shards recorded in `progress.json` whose plan and checksum still match are
    kept, so a rerun after a crash (or with other `attrs` only) does the least work.
    """
    started = time.perf_counter()
    plan = _make_plan(cfg)
    total = sum(len(s.names) for s in plan.splits.values())
    if total == 0:
        first = plan.skipped[0] if plan.skipped else None
        why = f" ({len(plan.skipped)} skipped, e.g. {first['file']}: {first['reason']})" \
            if first else ""
        raise DatasetNotFoundError(f"No images of {plan.dataset} to prepare in "
                                   f"{plan.source['raw_dir']}{why}. Check the raw files "
                                   f"(`starcli datasets show {plan.dataset}`).")
    out = prepared_dir(Path(cfg.home), plan.dataset, cfg.size)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out, cfg.lock_timeout)
    try:
        return _prepare_locked(cfg, plan, out, progress, started)
    finally:
        lock.release()


def _prepare_locked(cfg: PrepareConfig, plan: _Plan, out: Path, progress: Progress | None,
                    started: float) -> dict:
    jobs = _jobs(plan, cfg.size, cfg.rows_per_shard, cfg.compression)
    journal_path, manifest_path = out / JOURNAL, out / MANIFEST
    old_manifest = _read_json(manifest_path)
    journal = {} if cfg.force else (_read_json(journal_path) or {})
    records: dict[str, dict] = {}
    if journal.get("schema") == SCHEMA:
        records = {k: v for k, v in journal.get("shards", {}).items() if isinstance(v, dict)}
    todo = [j for j in jobs if not _reusable(out / j.path, records.get(j.path), j)]
    planned = {j.path for j in jobs}
    stale = [e.name for e in os.scandir(out) if e.name.endswith(".h5") and e.name not in planned]
    if todo or stale:
        # Shards are about to change under the old manifest: readers must not trust it.
        manifest_path.unlink(missing_ok=True)
    _clean(out, planned - {j.path for j in todo})
    records = {k: v for k, v in records.items() if k in planned and k not in
               {j.path for j in todo}}

    table_json = json.dumps(plan.label_table, sort_keys=True)
    attrs = {"starcli_schema": SCHEMA, "dataset": plan.dataset, "label_table": table_json}
    timing = _Timing()
    built_images = 0
    t_build = time.perf_counter()
    todo_paths = {j.path for j in todo}
    decoder = _Decoder(cfg.workers if todo else 0, cfg.size)
    try:
        for split in SPLIT_ORDER:
            split_jobs = [j for j in jobs if j.split == split]
            if not split_jobs:
                continue
            rows = plan.splits[split]
            with progress_task(progress, f"prepare {plan.dataset} {split}",
                               total=len(rows.names), unit="images") as task:
                building = [j for j in split_jobs if j.path in todo_paths]
                tasks = _chunk_tasks(plan, rows, building, decoder.rows)
                results = _counted(decoder.run(tasks), task)
                for job in split_jobs:
                    if job.path not in todo_paths:
                        task.advance(job.stop - job.start)
                        continue
                    try:
                        records[job.path] = _write_shard(
                            out, job, rows, results, size=cfg.size,
                            compression=cfg.compression, attrs=attrs, timing=timing)
                    except OSError as exc:  # disk full, permissions, I/O errors
                        raise StarcliError(
                            f"Cannot write {out / job.path} ({_one_line(exc)}). Fix that and "
                            f"re-run: finished shards are kept.") from exc
                    built_images += records[job.path]["count"]
                    atomic_write_json(journal_path, {"schema": SCHEMA, "shards": records})
                    _pause()
    finally:
        decoder.close()
    build_seconds = time.perf_counter() - t_build

    relabelled = 0
    for job in jobs:
        if job.path not in todo_paths:
            relabelled += _set_label_table(out / job.path, table_json)
    old_table = (old_manifest or {}).get("label_table")
    relabelled_only = not todo and not stale and (
        relabelled > 0 or (old_table is not None and old_table != plan.label_table))

    manifest = _manifest(cfg, plan, out, jobs, records, started, built_images, build_seconds)
    atomic_write_json(manifest_path, manifest)
    fsync_path(out)

    skipped = manifest["skipped"]
    reasons = Counter(s["reason"] for s in skipped)
    if skipped:
        top = "; ".join(f"{n} {r}" for r, n in reasons.most_common(4))
        log(progress, f"{plan.dataset}: skipped {len(skipped)} files ({top}); "
                      f"listed in {manifest_path}")
    if relabelled_only:
        log(progress, f"{plan.dataset}: shards unchanged, label table rewritten")
    return {
        "dataset": plan.dataset, "format": plan.format, "path": str(out),
        "manifest": str(manifest_path), "image_size": cfg.size,
        "splits": manifest["splits"], "images": sum(manifest["splits"].values()),
        "shards": len(jobs), "built_shards": len(todo), "reused_shards": len(jobs) - len(todo),
        "relabelled_only": relabelled_only, "label_table": plan.label_table,
        "skipped": skipped, "skipped_count": len(skipped), "skipped_reasons": dict(reasons),
        "filtered": plan.filtered, "stats": manifest["stats"], "timing": timing.as_dict(),
    }


def _chunk_tasks(plan: _Plan, rows: _Split, jobs: list[_Job], chunk: int
                 ) -> Iterator[tuple[list[str], int | None]]:
    """(paths, crop) per decode task for the shards to build, in order; a chunk never spans
    two shards."""
    base = str(plan.base)
    for job in jobs:
        for start in range(job.start, job.stop, chunk):
            names = rows.names[start:min(start + chunk, job.stop)]
            yield [os.path.join(base, n) for n in names], plan.crop


def _counted(results: Iterator[tuple], task) -> Iterator[tuple]:
    for result in results:
        task.advance(len(result[1]))
        yield result


def _manifest(cfg: PrepareConfig, plan: _Plan, out: Path, jobs: list[_Job],
              records: dict[str, dict], started: float, built_images: int,
              build_seconds: float) -> dict:
    shards, skipped, splits = [], list(plan.skipped), {}
    for job in jobs:
        rec = records[job.path]
        shards.append({"path": job.path, "split": job.split, "index": job.index,
                       "count": rec["count"], "bytes": (out / job.path).stat().st_size,
                       "content_sha256": rec["content_sha256"]})
        skipped.extend(rec.get("skipped", []))
        splits[job.split] = splits.get(job.split, 0) + rec["count"]
    seconds = time.perf_counter() - started
    crop_size = plan.crop
    return {
        "schema": SCHEMA, "dataset": plan.dataset, "format": plan.format,
        "created_by": f"starcli {__version__}", "image_size": cfg.size, "crop": crop_size,
        "compression": cfg.compression, "rows_per_shard": cfg.rows_per_shard,
        "preprocess": {"crop": "center" if crop_size else "center-square",
                       "crop_size": crop_size, "resize": cfg.size,
                       "interp": "area/antialiased"},
        # What translate repeats on raw files of this dataset (imaging.Framing).
        "framing": Framing(dataset=plan.dataset, format=plan.format, source=plan.source_size,
                           crop=crop_size, size=cfg.size).to_dict(),
        "source": plan.source, "label_table": plan.label_table, "splits": splits,
        "shards": shards, "skipped": skipped,
        "stats": {"seconds": round(seconds, 3),
                  "images_per_s": round(built_images / build_seconds, 1)
                  if built_images and build_seconds > 0 else None,
                  "built_images": built_images,
                  "filtered": plan.filtered},
    }


__all__ = ["PrepareConfig", "prepare", "DECODER_VERSION", "SCHEMA"]
