"""Reading prepared datasets: HDF5 shards into normalised training batches.

    ds = open_prepared(home, "demo-celeba")                  # manifest + label space
    layout = joint_layout([ds])                              # c_dim etc.
    stream = TrainStream([ds], layout, batch_size=16, workers=2, seed=0)
    for batch in stream:                                     # infinite, deterministic
        batch.images, batch.c, batch.space_index
    state = stream.state_dict()                              # JSON-able; resume is exact

Which rows form a batch and which of them are flipped depend only on (seed, dataset, epoch,
position), computed in the main process; DataLoader workers only read and decode them. HDF5
files are opened lazily in the process that reads them and are never pickled.

With workers, one DataLoader item is a group of `_GROUP` consecutive batch plans: the worker
reads, flips and normalises each into its slot of a shared-memory ring and sends back one
small message for the group, and the stream hands the group's batches out one by one: the
DataLoader's per-item cost (index queue, pickling, result queue, wake-ups; about 0.3 ms of
CPU in all) is paid once per `_GROUP` batches. Groups are an implementation detail: the
batches, their order and `state_dict()` are those of workers=0, and a resume from any batch
(mid-group too) restarts exactly after it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# albumentations asks the network for a newer version on import unless told not to.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from h5py import h5s  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from starcli.data.labels import LabelLayout, LabelSpace  # noqa: E402
from starcli.errors import (  # noqa: E402
    ConfigError,
    DatasetNotFoundError,
    ShardError,
)
from starcli.paths import prepared_dir, prepared_root  # noqa: E402
from starcli.progress import Progress, progress_task  # noqa: E402

SCHEMA = 1
_HASH_ROWS = 512  # rows hashed per read in content_sha256: bounded memory for big shards
_GROUP = 4  # batches per DataLoader item with workers (see _BatchSource)
# Groups queued per worker. 2 keeps the workers busy while the consumer picks results up
# (2 workers, 128 px: 18.5k img/s against 16.9k with 1; 3 gave no more) at a ring of 22
# slots (69 MB at 128 px, batch 16).
_PREFETCH = 2
# With workers, a Batch's images stay valid until this many further batches are taken.
_HOLD = 2


def _rerun_hint(name: str) -> str:
    return f"Re-run `starcli prepare {name} --force`."


def content_sha256(h5file: h5py.File) -> str:
    """The content checksum of one shard, as recorded in the manifest ("content_sha256").

    Definition (the prepare writer computes the same): SHA-256 over
      1. the bytes of `/images` (uint8, shape (N, S, S, 3)) in C order, rows 0..N-1, then
      2. for each dataset under `/labels`, in sorted name order (Python `sorted` of the names),
         its values in C order, as the dataset's stored dtype in little-endian byte order
         (a no-op on x86/ARM; uint8 columns are just their bytes).
    Nothing else is hashed: no names, shapes, separators, `/index` or attributes. So two
    shards holding the same pixels and labels hash equal however they were compressed.
    """
    digest = hashlib.sha256()
    images = h5file["images"]
    for start in range(0, images.shape[0], _HASH_ROWS):
        digest.update(np.ascontiguousarray(images[start:start + _HASH_ROWS]).data)
    labels = h5file["labels"]
    for name in sorted(labels.keys()):
        values = np.asarray(labels[name][()])
        values = values.astype(values.dtype.newbyteorder("<"), copy=False)
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def _open_h5(path: Path, dataset: str) -> h5py.File:
    if not path.is_file():
        raise ShardError(f"Shard {path} is missing. {_rerun_hint(dataset)}")
    try:
        # No HDF5 file locking: shards are read-only once the manifest exists, and locking
        # fails on NFS/Lustre ("unable to lock file").
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise ShardError(f"Shard {path} cannot be opened ({_one_line(exc)}). "
                         f"{_rerun_hint(dataset)}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True)
class PreparedDataset:
    """One prepared dataset at one image size, described by its manifest.json."""

    name: str
    root: Path
    manifest: dict
    image_size: int
    space: LabelSpace
    splits: dict[str, int]
    # Label arrays per split, filled on first use (small: rows x selected labels).
    _labels: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False,
                                           compare=False)

    def content_digest(self) -> str:
        """SHA-256 over the manifest's per-shard content checksums, in (split, index) order:
        what a checkpoint or a cached eval classifier records to notice re-prepared data."""
        h = hashlib.sha256()
        for shard in sorted(self.manifest.get("shards", []),
                            key=lambda s: (str(s["split"]), int(s["index"]))):
            h.update(f"{shard['path']}:{shard.get('content_sha256', '')}\n".encode())
        return h.hexdigest()

    def _entries(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise ConfigError(f"{self.name} has no split {split!r} (it has "
                              f"{', '.join(sorted(self.splits))}).")
        entries = [s for s in self.manifest.get("shards", []) if s["split"] == split]
        return sorted(entries, key=lambda s: int(s["index"]))

    def shards(self, split: str) -> list[Path]:
        """Shard files of `split` in row order."""
        return [self.root / s["path"] for s in self._entries(split)]

    def _counts(self, split: str) -> list[int]:
        return [int(s["count"]) for s in self._entries(split)]

    def source_names(self, split: str) -> list[str]:
        """The source file of every row of `split` (relative to the dataset's image folder,
        as prepare recorded it in each shard's index/source_name), in row order."""
        import h5py

        names: list[str] = []
        for path in self.shards(split):
            with h5py.File(path, "r", locking=False) as f:
                names += [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)
                          for n in f["index/source_name"][()]]
        return names

    def labels(self, split: str) -> np.ndarray:
        """(n, space.width) float32 labels of the selected names, in row order."""
        cached = self._labels.get(split)
        if cached is None:
            cached = self._read_labels(split)
            cached.flags.writeable = False  # shared by every caller
            self._labels[split] = cached
        return cached

    def _read_labels(self, split: str) -> np.ndarray:
        table = self.manifest["label_table"]
        column = table["source_column"]
        column_names = list(table["columns"][column])
        parts = []
        for path, count in zip(self.shards(split), self._counts(split), strict=True):
            with _open_h5(path, self.name) as f:
                try:
                    values = f["labels"][column][()]
                except (OSError, KeyError) as exc:
                    raise ShardError(f"Shard {path} has no readable /labels/{column} "
                                     f"({_one_line(exc)}). {_rerun_hint(self.name)}") from exc
            if len(values) != count:
                raise ShardError(f"Shard {path} holds {len(values)} rows, the manifest says "
                                 f"{count}. {_rerun_hint(self.name)}")
            parts.append(values)
        width = self.space.width
        if not parts:
            return np.zeros((0, width), np.float32)
        values = np.concatenate(parts)
        if values.ndim == 2:  # multi-label table: pick the selected columns
            selected = table.get("selected_columns")
            if selected is None:
                selected = [column_names.index(n) for n in self.space.names]
            return (values[:, selected] > 0).astype(np.float32)
        # An index column (expression, domain): one-hot over the space's names.
        lookup = np.array([self.space.names.index(n) if n in self.space.names else -1
                           for n in column_names], dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() >= len(lookup)):
            raise ShardError(f"{self.root}: /labels/{column} holds values outside "
                             f"0..{len(lookup) - 1}. {_rerun_hint(self.name)}")
        position = lookup[values.astype(np.int64)]
        out = np.zeros((len(values), width), np.float32)
        on = position >= 0
        out[np.flatnonzero(on), position[on]] = 1.0
        return out

    def verify(self, progress: Progress | None = None) -> None:
        """Recompute every shard's content checksum; ShardError naming the first bad shard."""
        entries = sorted(self.manifest.get("shards", []),
                         key=lambda s: (s["split"], int(s["index"])))
        total = sum(int(s["count"]) for s in entries)
        with progress_task(progress, f"verify {self.name}", total=total, unit="images") as task:
            for entry in entries:
                path = self.root / entry["path"]
                with _open_h5(path, self.name) as f:
                    try:
                        actual = content_sha256(f)
                    except (OSError, KeyError) as exc:
                        raise ShardError(f"Shard {path} is corrupted ({_one_line(exc)}). "
                                         f"{_rerun_hint(self.name)}") from exc
                if actual != entry.get("content_sha256"):
                    raise ShardError(f"Shard {path} fails its content checksum (corrupted or "
                                     f"changed after prepare). {_rerun_hint(self.name)}")
                task.advance(int(entry["count"]))


def prepared_sizes(home: Path, name: str) -> list[int]:
    """Image sizes at which `name` is prepared under `home` (a size folder with its manifest,
    which prepare writes last), smallest first."""
    root = prepared_root(Path(home), name)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir()
                  if p.name.isdigit() and (p / "manifest.json").is_file())


def open_prepared(home: Path, name: str, image_size: int | None = None) -> PreparedDataset:
    """The prepared dataset `name` under `home` (at `image_size`, or the only size prepared)."""
    sizes = prepared_sizes(Path(home), name)
    if image_size is None:
        if not sizes:
            raise DatasetNotFoundError(f"{name} is not prepared. "
                                       f"Run `starcli prepare {name}`.")
        if len(sizes) > 1:
            raise ConfigError(f"{name} is prepared at several sizes "
                              f"({', '.join(f'{s}px' for s in sizes)}); choose one with --size.")
        image_size = sizes[0]
    if image_size not in sizes:
        raise DatasetNotFoundError(f"{name} is not prepared (at {image_size}px). "
                                   f"Run `starcli prepare {name} --size {image_size}`.")
    root = prepared_dir(Path(home), name, image_size)
    path = root / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("schema") != SCHEMA:
            raise ValueError(f"schema {manifest.get('schema')!r}, this starcli reads {SCHEMA}")
        space = LabelSpace.from_dict(manifest["label_table"]["space"])
        splits = {str(k): int(v) for k, v in manifest["splits"].items()}
        size = int(manifest["image_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ShardError(f"{path} is unreadable ({_one_line(exc)}). "
                         f"{_rerun_hint(name)}") from exc
    return PreparedDataset(name=name, root=root, manifest=manifest, image_size=size,
                           space=space, splits=splits)


def joint_layout(datasets: Sequence[PreparedDataset],
                 aliases: Sequence[tuple[str, str]] = ()) -> LabelLayout:
    """The label layout of the given datasets, in order (a mask vector when there are several).

    `aliases` are registry pairs qualified by format ("celeba:Smiling", "rafd:happy") or by
    dataset name; they are kept, dataset-qualified, for the datasets present that have both
    labels.
    """
    if not datasets:
        raise ConfigError("No dataset given: name at least one prepared dataset.")
    sizes = sorted({d.image_size for d in datasets})
    if len(sizes) > 1:
        listed = ", ".join(f"{d.name} {d.image_size}px" for d in datasets)
        raise ConfigError(f"The datasets are prepared at different image sizes ({listed}); "
                          f"prepare them at one size with `starcli prepare NAME --size N`.")
    spaces = tuple(d.space for d in datasets)

    def matches(qualified: str) -> list[str]:
        prefix, _, label = qualified.partition(":")
        hits = [s for s in spaces if s.dataset == prefix] or [s for s in spaces
                                                              if s.format == prefix]
        return [f"{s.dataset}:{label}" for s in hits if label in s.names]

    out: list[tuple[str, str]] = []
    for left, right in aliases:
        for a in matches(left):
            for b in matches(right):
                if a.partition(":")[0] != b.partition(":")[0] and (a, b) not in out:
                    out.append((a, b))
    return LabelLayout(spaces=spaces, aliases=tuple(out))


def to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """(n, S, S, 3) uint8 → contiguous float32 (n, 3, S, S) in [-1, 1] (x / 127.5 - 1)."""
    n, h, w, c = images_uint8.shape
    out = np.empty((n, c, h, w), dtype=np.float32)
    _normalise_into(images_uint8, out)
    return torch.from_numpy(out)


# x / 127.5 - 1 for every uint8 x, computed as the batches once were (float32 multiply by
# 1/127.5, then subtract 1), so looking values up gives the same bits.
_NORMALISED = torch.arange(256, dtype=torch.float32).mul_(1.0 / 127.5).sub_(1.0).numpy()
_LUT_ELEMENTS = (1 << 18) - 1  # cv2.LUT runs on its thread pool from 2**18 elements


def _lookup(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[i, j] = _NORMALISED[src[i, j]] for 2-D uint8 `src` and float32 `dst`, in row
    blocks under cv2's threading threshold: multi-threaded copies stall badly when the cores
    are busy (torch's: 60 ms vs 1.7 ms per batch on a loaded 2-core machine)."""
    step = max(1, _LUT_ELEMENTS // src.shape[1])
    for r in range(0, src.shape[0], step):
        cv2.LUT(src[r:r + step], _NORMALISED, dst=dst[r:r + step])


def _normalise_nhwc(images_uint8: np.ndarray, out: np.ndarray) -> None:
    """uint8 (n, H, W, C) -> float32 (n, H, W, C) in [-1, 1], same values as to_tensor.

    No transpose: one contiguous table lookup, about half the cost of the NCHW version
    (0.25 vs 0.57 ms per 16x128px batch); TrainStream hands the result out as an
    (n, C, H, W) tensor in channels_last memory."""
    if out.shape != images_uint8.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"need a contiguous float32 {images_uint8.shape} output array")
    row = int(np.prod(images_uint8.shape[2:], dtype=np.int64))
    _lookup(np.ascontiguousarray(images_uint8).reshape(-1, row), out.reshape(-1, row))


def _normalise_into(images_uint8: np.ndarray, out: np.ndarray) -> None:
    # Per image: a uint8 HWC -> CHW copy, then a table lookup writing float32 straight into
    # `out`. That is one pass over the 4x larger float32 output where torch's convert, scale
    # and shift made three (0.72 vs 0.82 ms per 16x128px batch).
    n, h, w, c = images_uint8.shape
    if out.shape != (n, c, h, w) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"need a contiguous float32 {(n, c, h, w)} output array")
    for i in range(n):
        planar = np.ascontiguousarray(images_uint8[i].transpose(2, 0, 1)).reshape(c * h, w)
        _lookup(planar, out[i].reshape(c * h, w))


class _ShardReader:
    """Reads image rows of one split; opens its HDF5 files lazily in the reading process."""

    def __init__(self, dataset: str, paths: Sequence[Path], counts: Sequence[int]) -> None:
        self.dataset = dataset
        self.paths = [Path(p) for p in paths]
        self.counts = [int(c) for c in counts]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        # Per shard: (file, low-level /images id, its file dataspace, shape of one row),
        # opened on first read; memory dataspaces by run length. Reused because creating
        # them per read costs a fifth of a one-image read.
        self._files: dict[int, tuple[h5py.File, Any, Any, tuple[int, ...]]] = {}
        self._mem_spaces: dict[tuple[int, ...], Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # h5py handles cannot be pickled; each process opens its own.
        state["_files"], state["_mem_spaces"] = {}, {}
        return state

    def _images(self, k: int) -> tuple[Any, Any, tuple[int, ...]]:
        if self._pid != os.getpid():
            # Inherited across fork: HDF5 state must not be shared with the parent.
            self._files, self._mem_spaces, self._pid = {}, {}, os.getpid()
        entry = self._files.get(k)
        if entry is None:
            f = _open_h5(self.paths[k], self.dataset)
            images = f["images"] if "images" in f else None
            n = images.shape[0] if images is not None else -1
            if n != self.counts[k]:
                f.close()
                raise ShardError(f"Shard {self.paths[k]} holds {n} images, the manifest says "
                                 f"{self.counts[k]}. {_rerun_hint(self.dataset)}")
            entry = (f, images.id, images.id.get_space(), tuple(images.shape[1:]))
            self._files[k] = entry
        return entry[1:]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (len(rows), S, S, 3) in the order of `rows` (split row indices)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not rows.size:
            return np.empty((0, *self._images(0)[2]), dtype=np.uint8)
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"row out of range 0..{len(self) - 1}")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        shard = np.searchsorted(self.starts, ordered, side="right") - 1
        # Runs of consecutive rows within one shard become one slice read.
        cut = np.flatnonzero((np.diff(ordered) != 1) | (np.diff(shard) != 0)) + 1
        bounds = np.concatenate([[0], cut, [len(ordered)]]).tolist()
        destinations = order.tolist()
        out: np.ndarray | None = None
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            k = int(shard[a])
            dataset_id, file_space, row_shape = self._images(k)
            if out is None:
                out = np.empty((len(rows), *row_shape), dtype=np.uint8)
            # Read straight into place when the run's rows sit side by side in the output
            # (always for single rows and in-order reads); otherwise via a scratch buffer.
            first = destinations[a]
            direct = destinations[a:b] == list(range(first, first + b - a))
            target = out[first:first + b - a] if direct else np.empty((b - a, *row_shape),
                                                                      dtype=np.uint8)
            # h5py's low-level read: high-level slicing costs several times more per call,
            # which dominates when most runs are a single one-chunk image.
            count = (b - a, *row_shape)
            mem_space = self._mem_spaces.get(count)
            if mem_space is None:
                mem_space = self._mem_spaces[count] = h5s.create_simple(count)
            file_space.select_hyperslab((int(ordered[a] - self.starts[k]),) + (0,) * len(row_shape),
                                        count)
            try:
                dataset_id.read(mem_space, file_space, target)
            except OSError as exc:  # fletcher32 mismatch, truncated file, …
                raise ShardError(f"Shard {self.paths[k]} is corrupted ({_one_line(exc)}). "
                                 f"{_rerun_hint(self.dataset)}") from exc
            if not direct:
                out[order[a:b]] = target
        assert out is not None
        return out

    def close(self) -> None:
        for f, *_ in self._files.values():
            f.close()
        self._files, self._mem_spaces = {}, {}


def iterate_split(dataset: PreparedDataset, split: str = "test", batch_size: int = 64,
                  limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(uint8 images (n,S,S,3), labels (n,width) float32, row indices) in row order."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size}).")
    labels = dataset.labels(split)
    reader = _ShardReader(dataset.name, dataset.shards(split), dataset._counts(split))
    total = len(reader) if limit is None else min(len(reader), max(0, limit))
    try:
        for start in range(0, total, batch_size):
            rows = np.arange(start, min(start + batch_size, total), dtype=np.int64)
            yield reader.read(rows), labels[rows], rows
    finally:
        reader.close()


@dataclass
class Batch:
    """One training batch, all rows from one dataset.

    `images` is in channels_last memory (the loader normalises pixels where they lie, half
    the cost of also transposing them); `.contiguous()` gives NCHW memory. With loader
    workers it is a view of shared memory that stays valid while the next two batches are
    taken; `clone()` it to keep it longer.
    """

    images: torch.Tensor  # float32 (N,3,S,S) in [-1,1], channels_last memory
    labels: torch.Tensor  # float32 (N, width of the batch's own space)
    c: torch.Tensor  # float32 (N, layout.c_dim), mask included
    space_index: int
    indices: torch.Tensor  # int64 (N,) rows within the dataset's split

    def model_input(self, device: torch.device | str = "cpu",
                    channels_last: bool = False) -> torch.Tensor:
        """`images` on `device` in the memory format the model runs in (NCHW unless
        `channels_last`). Like `images`, it may still be a view of the loader's ring."""
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return self.images.to(device, non_blocking=True).contiguous(memory_format=fmt)


@dataclass(frozen=True)
class _Plan:
    """One scheduled batch; `epoch`/`position` are the dataset's cursor after it."""

    step: int
    dataset: int
    epoch: int
    position: int
    rows: np.ndarray
    flips: np.ndarray


class _Schedule:
    """The deterministic order of batches: a pure function of (seed, dataset, epoch, position)."""

    _MIX_BLOCK = 1024  # dataset choices drawn per generator when sampling by weights

    def __init__(self, seed: int, sizes: Sequence[int], batch_size: int, rank: int,
                 world_size: int, mix: Sequence[float] | None,
                 classes: Sequence[np.ndarray | None] | None = None) -> None:
        self.seed = seed % 2**63
        # Class-balanced epochs (StarGAN v2's sampler): row weights 1/count(class), rows of
        # class -1 never drawn; an epoch is then len(rows) draws with replacement.
        self.row_p: list[np.ndarray | None] = [None] * len(sizes)
        for d, cls in enumerate(classes or ()):
            if cls is None:
                continue
            cls = np.asarray(cls)
            counts = np.bincount(cls[cls >= 0])
            w = np.where(cls >= 0, 1.0 / np.maximum(counts[np.maximum(cls, 0)], 1), 0.0)
            self.row_p[d] = w / w.sum()
        self.sizes = list(sizes)
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.per_rank = [n // world_size for n in self.sizes]
        self.batches_per_epoch = [p // batch_size for p in self.per_rank]
        self.weights = None if mix is None else np.asarray(mix, float) / float(np.sum(mix))
        self._epoch_cache: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        self._mix_cache: tuple[int, np.ndarray] | None = None

    def dataset_at(self, step: int) -> int:
        if self.weights is None:
            return step % len(self.sizes)
        block, offset = divmod(step, self._MIX_BLOCK)
        if self._mix_cache is None or self._mix_cache[0] != block:
            rng = np.random.default_rng([self.seed, 0x6D6978, block])
            self._mix_cache = (block, rng.choice(len(self.sizes), self._MIX_BLOCK,
                                                 p=self.weights))
        return int(self._mix_cache[1][offset])

    def _epoch(self, d: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        cached = self._epoch_cache.get(d)
        if cached is None or cached[0] != epoch:
            n = self.sizes[d]
            rng = np.random.default_rng([self.seed, d, epoch, 0])
            p = self.row_p[d]
            perm = rng.permutation(n) if p is None else rng.choice(n, n, replace=True, p=p)
            flips = np.random.default_rng([self.seed, d, epoch, 1]).random(n) < 0.5
            keep = self.per_rank[d] * self.world_size  # drop the tail so ranks are equal
            cached = (epoch, perm[:keep][self.rank::self.world_size],
                      flips[:keep][self.rank::self.world_size])
            self._epoch_cache[d] = cached
        return cached[1], cached[2]

    def batch(self, d: int, epoch: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        perm, flips = self._epoch(d, epoch)
        sl = slice(position * self.batch_size, (position + 1) * self.batch_size)
        return perm[sl].astype(np.int64), flips[sl].copy()

    def plans(self, step: int, epochs: Sequence[int], positions: Sequence[int]
              ) -> Iterator[_Plan]:
        epochs, positions = list(epochs), list(positions)
        while True:
            d = self.dataset_at(step)
            rows, flips = self.batch(d, epochs[d], positions[d])
            positions[d] += 1
            if positions[d] >= self.batches_per_epoch[d]:
                epochs[d], positions[d] = epochs[d] + 1, 0
            yield _Plan(step, d, epochs[d], positions[d], rows, flips)
            step += 1


class _PlanSampler:
    """DataLoader sampler: the schedule from the stream's consumed position onwards.

    With `group=None` (no workers) it yields one `_Plan` per item, otherwise tuples of
    `group` consecutive plans. The DataLoader calls `iter()` on it each time an iterator
    starts, so a restored stream resumes from its restored position, mid-group included
    (groups then start at that step: they need no alignment)."""

    def __init__(self, stream: TrainStream, group: int | None) -> None:
        self._stream = stream
        self._group = group

    def __iter__(self) -> Iterator[_Plan] | Iterator[tuple[_Plan, ...]]:
        s = self._stream
        plans = s._schedule.plans(s._step, s._epochs, s._positions)
        if self._group is None:
            return plans
        group = self._group
        return iter(lambda: tuple(itertools.islice(plans, group)), ())


_FLIP = A.HorizontalFlip(p=1.0)


class _BatchSource(Dataset):
    """Map-style dataset whose "index" is a `_Plan` (no workers) or a group of consecutive
    plans (workers); runs in the DataLoader workers.

    With workers, normalised images are written into `ring`, a shared-memory tensor of
    batch slots (slot = step % slots), and only the group's plans travel back: passing each
    batch as a fresh shared tensor cost more CPU than reading and decoding it, and each
    DataLoader item costs about 0.3 ms of queue traffic and wake-ups, hence groups. The
    consumer hands slots out as they are (no copy; copying cost the main process 0.7 ms per
    128 px batch, a third of its loader time).

    Ring size, with groups of K batches and wp = workers x prefetch: once the consumer has
    received a group, the DataLoader keeps at most wp later groups in flight (being
    written), and sends the next one only when the consumer receives the following group.
    Batch s must survive until s + _HOLD has been taken, i.e. until the group holding
    s + _HOLD (which starts at or before it) has been received; the highest step in flight
    then ends the wp-th group after it, below s + _HOLD + (wp + 1) x K. Slot s % slots is
    next written for step s + slots, so `slots = (wp + 1) x K + _HOLD` keeps batch s intact
    (K = 1 gives the ungrouped wp + 1 + _HOLD).
    """

    def __init__(self, readers: Sequence[_ShardReader], image_size: int, augment: bool) -> None:
        self.readers = list(readers)
        self.image_size = image_size
        self.augment = augment
        self.ring: torch.Tensor | None = None

    def __len__(self) -> int:  # the schedule is infinite; the sampler drives iteration
        return 2**62

    def __getitem__(self, index: _Plan | tuple[_Plan, ...]) -> Any:
        """No ring: (plan, error message or None, images or None).
        Ring: (the plans whose images are now in the ring, error message or None); on an
        error, the plans before the failing one, so the consumer raises at that batch."""
        if self.ring is None:
            images, error = self._load(index)
            if images is None:
                return index, error, None
            out = np.empty(images.shape, dtype=np.float32)
            _normalise_nhwc(images, out)
            return index, None, out
        done = []
        for plan in index:
            images, error = self._load(plan)
            if images is None:
                return tuple(done), error
            _normalise_nhwc(images, self.ring[plan.step % len(self.ring)].numpy())
            done.append(plan)
        return tuple(done), None

    def _load(self, plan: _Plan) -> tuple[np.ndarray | None, str | None]:
        """(uint8 images, flipped as planned, None) or, when they cannot be read,
        (None, error message)."""
        reader = self.readers[plan.dataset]
        try:
            images = reader.read(plan.rows)
        except ShardError as exc:
            # Sent back as text: the DataLoader would re-raise it with a multi-line traceback.
            return None, str(exc)
        size = self.image_size
        if images.shape[1:] != (size, size, 3):
            return None, (f"{reader.dataset} shards hold {images.shape[1:]} images, the "
                          f"manifest says {size}px. {_rerun_hint(reader.dataset)}")
        if self.augment:
            for i in np.flatnonzero(plan.flips):
                # the transform's own apply(): HorizontalFlip has no random parameters, and
                # the __call__ wrapper (argument checks, probability draw) cost as much again
                images[i] = _FLIP.apply(images[i])
        return images, None


def _identity(item: Any) -> Any:
    return item


class TrainStream:
    """Infinite, deterministic, resumable training batches over one or more datasets.

    Batches hold `batch_size` rows of one dataset. With `mix=None` datasets alternate
    0,1,0,1,… (StarGAN's 1:1 joint training); otherwise each batch's dataset is drawn with
    the given weights. Each epoch of a dataset is a fresh permutation of its split; with
    `world_size > 1` rank r takes every world_size-th row of it. With `balance` (a row's
    class from its labels) an epoch is instead as many draws with replacement, each class
    equally likely (StarGAN v2's class-balanced sampler): still a pure function of the seed
    and the cursor, so resume stays exact.
    """

    def __init__(self, datasets: Sequence[PreparedDataset], layout: LabelLayout, *,
                 batch_size: int, split: str = "train", augment: bool = True,
                 workers: int = 0, seed: int = 0, mix: Sequence[float] | None = None,
                 rank: int = 0, world_size: int = 1,
                 balance: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        datasets = list(datasets)
        if not datasets:
            raise ConfigError("TrainStream needs at least one prepared dataset.")
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1 (got {batch_size}).")
        if workers < 0:
            raise ConfigError(f"--workers must be 0 or more (got {workers}).")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}.")
        if mix is not None:
            mix = [float(w) for w in mix]
            if len(mix) != len(datasets) or min(mix) < 0 or sum(mix) <= 0:
                raise ConfigError(f"--mix needs {len(datasets)} non-negative weights with a "
                                  f"positive sum (got {mix}).")
        sizes = {d.image_size for d in datasets}
        if len(sizes) > 1:
            raise ConfigError("The datasets are prepared at different image sizes; prepare "
                              "them at one size with `starcli prepare NAME --size N`.")
        space_indices = []
        for d in datasets:
            try:
                space_indices.append(layout.index_of(d.space.dataset))
            except KeyError:
                raise ConfigError(f"{d.name} is not part of the label layout "
                                  f"({', '.join(s.dataset for s in layout.spaces)}).") from None
            per_rank = sum(d._counts(split)) // world_size
            if per_rank < batch_size:
                raise ConfigError(f"{d.name} has {per_rank} {split} images per rank, fewer "
                                  f"than one batch of {batch_size}; lower --batch-size.")
        self.datasets = datasets
        self.layout = layout
        self.batch_size = batch_size
        self.workers = workers
        readers = [_ShardReader(d.name, d.shards(split), d._counts(split)) for d in datasets]
        self._source = _BatchSource(readers, datasets[0].image_size, augment)
        self._labels = [d.labels(split) for d in datasets]
        self._space_indices = space_indices
        # Full label vectors of every row, once: encoding per batch cost more than reading.
        self._c = [layout.encode(i, labels) for i, labels in zip(space_indices, self._labels,
                                                                 strict=True)]
        # `balance(labels)`: the class of each row from its own-space labels (-1: none),
        # for class-balanced sampling (StarGAN v2 over its domains).
        classes = None if balance is None else [np.asarray(balance(np.asarray(lab)))
                                                for lab in self._labels]
        if classes is not None:
            for d, cls in zip(datasets, classes, strict=True):
                if not (np.asarray(cls) >= 0).any():
                    raise ConfigError(f"{d.name}: no {split} image falls in any of the "
                                      "model's domains; check --domains.")
        self._schedule = _Schedule(seed, [len(r) for r in readers], batch_size, rank,
                                   world_size, mix, classes)
        # The consumed position: what state_dict() reports and where iteration restarts.
        self._step = 0
        self._epochs = [0] * len(datasets)
        self._positions = [0] * len(datasets)
        self._loader: DataLoader | None = None
        self._it: Iterator | None = None
        # With workers: plans of the current group not yet handed out (their images are in
        # the ring), and the group's error, raised once they are.
        self._ready: deque[_Plan] = deque()
        self._error: str | None = None
        self._waited = 0.0
        self._started: float | None = None

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        t0 = time.perf_counter()
        if self._started is None:
            self._started = t0
        if self._it is None:
            self._it = iter(self._make_loader())
            self._ready.clear()
            self._error = None
        if self.workers == 0:
            plan, error, images = next(self._it)
        else:
            while not self._ready and self._error is None:
                plans, self._error = next(self._it)
                self._ready.extend(plans)
            error = None if self._ready else self._error
            if error is None:
                plan = self._ready.popleft()
                # In the ring, valid for _HOLD more batches (see _BatchSource).
                ring = self._source.ring
                images = ring[plan.step % len(ring)].numpy()
        if error is not None:
            self.close()
            raise ShardError(error)
        if plan.step != self._step:  # cannot happen unless the DataLoader reorders
            raise RuntimeError(f"loader returned step {plan.step}, expected {self._step}")
        self._step = plan.step + 1
        self._epochs[plan.dataset] = plan.epoch
        self._positions[plan.dataset] = plan.position
        labels = torch.from_numpy(self._labels[plan.dataset][plan.rows])
        space_index = self._space_indices[plan.dataset]
        # (n, S, S, 3) memory viewed as (n, 3, S, S): a channels_last tensor, no copy.
        batch = Batch(images=torch.from_numpy(images).permute(0, 3, 1, 2), labels=labels,
                      c=torch.from_numpy(self._c[plan.dataset][plan.rows]),
                      space_index=space_index, indices=torch.from_numpy(plan.rows))
        self._waited += time.perf_counter() - t0
        return batch

    def _make_loader(self) -> DataLoader:
        if self._loader is None:
            extra: dict[str, Any] = {}
            group = None
            if self.workers > 0:
                group = _GROUP
                extra = {"persistent_workers": True, "prefetch_factor": _PREFETCH}
                size = self._source.image_size
                slots = (self.workers * _PREFETCH + 1) * group + _HOLD  # see _BatchSource
                self._source.ring = torch.empty((slots, self.batch_size, size, size, 3),
                                                dtype=torch.float32).share_memory_()
            self._loader = DataLoader(self._source, batch_size=None,
                                      sampler=_PlanSampler(self, group),
                                      num_workers=self.workers, collate_fn=_identity,
                                      pin_memory=False, **extra)
        return self._loader

    def state_dict(self) -> dict:
        """The position after the last batch returned, as plain ints and lists."""
        return {"step": self._step, "epochs": list(self._epochs),
                "positions": list(self._positions)}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly after the batch at which `state` was taken."""
        try:
            step = int(state["step"])
            epochs = [int(e) for e in state["epochs"]]
            positions = [int(p) for p in state["positions"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"Data-loader state is malformed ({_one_line(exc)}).") from exc
        n = len(self.datasets)
        if len(epochs) != n or len(positions) != n:
            raise ConfigError(f"Data-loader state holds {len(epochs)} dataset cursor(s); this "
                              f"run has {n} datasets. Resume with the same datasets.")
        bad = [i for i, p in enumerate(positions)
               if not 0 <= p < self._schedule.batches_per_epoch[i]]
        if bad or step < 0:
            raise ConfigError("Data-loader state does not fit these datasets and batch size; "
                              "resume with the same datasets and --batch-size.")
        self._step, self._epochs, self._positions = step, epochs, positions
        self._it = None  # the next batch restarts the loader from here

    def wait_fraction(self) -> float:
        """Share of wall time since the first batch that the consumer spent waiting for data."""
        if self._started is None:
            return 0.0
        elapsed = time.perf_counter() - self._started
        return min(1.0, self._waited / elapsed) if elapsed > 0 else 0.0

    def close(self) -> None:
        """Stop the workers and close the files this process opened."""
        it, self._it = self._it, None
        self._ready.clear()
        self._error = None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        if self._loader is not None:
            self._loader._iterator = None  # let the persistent workers go
            self._loader = None
        self._source.ring = None
        for reader in self._source.readers:
            reader.close()

    def __enter__(self) -> TrainStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Batch", "PreparedDataset", "TrainStream", "content_sha256", "iterate_split",
           "joint_layout", "open_prepared", "prepared_sizes", "to_tensor"]
