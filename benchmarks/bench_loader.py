"""Loader benchmark: starcli's TrainStream vs the official StarGAN CelebA pipeline.

Both deliver normalised 128px training batches of 16 from the same N faces, with the same
number of DataLoader workers, run side by side in this process:

- official: a torch Dataset that PIL-opens each 178x218 JPEG per sample, then
  RandomHorizontalFlip -> CenterCrop(178) -> Resize(128) -> ToTensor -> Normalize(.5, .5)
  (the get_loader transform of the StarGAN repository), DataLoader(batch 16, shuffle);
- starcli: HDF5 shards (centre crop 178, resize 128, packed once) read by TrainStream
  (flip by schedule, normalised on the whole batch).

    python benchmarks/bench_loader.py                    # 3000 faces, workers 0 and 2
    python benchmarks/bench_loader.py --images 1000 --workers 0 --seconds 1

The faces come from starcli's synthetic demo-celeba generator and are packed by
`starcli prepare` (each falls back to a simple stand-in here when missing).

Both sides are measured in steady state, as a long training run sees them: the first
`--warmup` seconds (worker start-up and the first prefetches) are not counted, then batches
are counted for at least `--seconds` and at least `--batches` batches. The official loader
keeps its workers between epochs (`persistent_workers`): with a few thousand faces an epoch
is ~190 batches, and re-spawning workers that often would slow the baseline far more than on
CelebA's 12,600 batches per epoch. The CPU columns add up the CPU time of this process and
its workers per batch: on a machine shared with other work they compare the pipelines more
fairly than wall time. On a busy machine torch's default
OpenMP threads slow the official workers=0 run several-fold; `--torch-threads 1` removes that.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from starcli.data.dataset import TrainStream, content_sha256, joint_layout, open_prepared
from starcli.paths import raw_dir

NAME = "demo-celeba"
SELECTED = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]
CROP, SIZE, BATCH = 178, 128, 16


def make_jpegs(root: Path, count: int) -> bool:
    """`count` CelebA-style 178x218 JPEGs + list_attr_celeba.txt under root. True when they
    come from starcli's synthetic demo-celeba generator (so `starcli prepare` can read them)."""
    try:
        from starcli.data.synthetic import generate_celeba
    except ImportError:
        generate_celeba = None
    if generate_celeba is not None:
        generate_celeba(root, count=count, workers=os.cpu_count() or 1)  # skips finished work
        return True
    if (root / "list_attr_celeba.txt").is_file() and len(
            list((root / "img_align_celeba").glob("*.jpg"))) == count:
        return False
    # Fallback: smooth random colour fields, JPEG-compressed like the aligned release.
    images = root / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = ["5_o_Clock_Shadow"] * 8 + SELECTED + ["Attr"] * 27
    lines = [str(count), " ".join(names)]
    for i in range(1, count + 1):
        small = rng.integers(0, 256, (14, 12, 3), dtype=np.uint8)
        Image.fromarray(small).resize((178, 218), Image.BILINEAR).save(
            images / f"{i:06d}.jpg", quality=90)
        labels = rng.choice(["-1", "1"], 40)
        lines.append(f"{i:06d}.jpg " + " ".join(labels))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    return False


def read_attrs(root: Path) -> tuple[list[str], list[str], np.ndarray]:
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    files, rows = [], []
    for line in lines[2:]:
        parts = line.split()
        files.append(parts[0])
        rows.append([int(v) > 0 for v in parts[1:]])
    return names, files, np.asarray(rows, dtype=np.uint8)


def pack_shards(raw: Path, home: Path, rows_per_shard: int = 1024) -> None:
    """Shards per the shard contract, written here: the fallback without `starcli prepare`."""
    out = home / "prepared" / NAME / str(SIZE)
    if (out / "manifest.json").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    names, files, attrs = read_attrs(raw)
    shards = []
    for k, start in enumerate(range(0, len(files), rows_per_shard)):
        chunk = files[start:start + rows_per_shard]
        images = np.empty((len(chunk), SIZE, SIZE, 3), np.uint8)
        for i, name in enumerate(chunk):
            with Image.open(raw / "img_align_celeba" / name) as im:
                im = im.convert("RGB")
                left, top = (im.width - CROP) // 2, (im.height - CROP) // 2
                im = im.crop((left, top, left + CROP, top + CROP))
                images[i] = np.asarray(im.resize((SIZE, SIZE), Image.LANCZOS))
        path = out / f"train-{k:05d}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=images, chunks=(1, SIZE, SIZE, 3), fletcher32=True)
            f.create_dataset("labels/attributes", data=attrs[start:start + len(chunk)])
            f.create_dataset("index/source_name", data=chunk, dtype=h5py.string_dtype())
        with h5py.File(path, "r") as f:
            digest = content_sha256(f)
        shards.append({"path": path.name, "split": "train", "index": k, "count": len(chunk),
                       "bytes": path.stat().st_size, "content_sha256": digest})
    space = {"dataset": NAME, "format": "celeba", "kind": "multilabel",
             "names": SELECTED, "exclusive_groups": [SELECTED[:3]]}
    manifest = {"schema": 1, "dataset": NAME, "format": "celeba",
                "created_by": "bench_loader", "image_size": SIZE, "crop": CROP,
                "compression": None, "rows_per_shard": rows_per_shard,
                "label_table": {"columns": {"attributes": names}, "space": space,
                                "source_column": "attributes",
                                "selected_columns": [names.index(n) for n in SELECTED],
                                "aliases": []},
                "splits": {"train": len(files)}, "shards": shards, "skipped": []}
    (out / "manifest.json").write_text(json.dumps(manifest))


class OfficialCelebA(Dataset):
    """The official pipeline: one PIL decode + torchvision transform per sample."""

    def __init__(self, raw: Path) -> None:
        names, files, attrs = read_attrs(raw)
        cols = [names.index(n) for n in SELECTED]
        self.image_dir = raw / "img_align_celeba"
        self.items = [(f, attrs[i, cols].tolist()) for i, f in enumerate(files)]
        self.transform = T.Compose([
            T.RandomHorizontalFlip(), T.CenterCrop(CROP), T.Resize(SIZE), T.ToTensor(),
            T.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        filename, label = self.items[index]
        image = Image.open(self.image_dir / filename)
        return self.transform(image), torch.FloatTensor(label)


def cpu_seconds() -> float:
    """CPU time of this process and all its children (live DataLoader workers included)."""
    total = time.process_time()
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    total += done.ru_utime + done.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def timed(batches, warmup: float, seconds: float, at_least: int) -> tuple[float, float]:
    """(images/s, CPU ms per batch summed over all processes) in steady state: batches taken
    during the first `warmup` seconds (at least one) are not counted; then at least `at_least`
    batches over at least `seconds`. CPU time is a fairer comparison than wall time on a busy
    machine."""
    it = iter(batches)

    def take() -> int:
        item = next(it)
        images = item.images if hasattr(item, "images") else item[0]
        assert images.shape[1:] == (3, SIZE, SIZE)
        return images.shape[0]

    start = time.perf_counter()
    take()
    while time.perf_counter() - start < warmup:
        take()
    n = count = 0
    t0, c0 = time.perf_counter(), cpu_seconds()
    while count < at_least or time.perf_counter() - t0 < seconds:
        n += take()
        count += 1
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return n / wall, 1000 * cpu / count


def cycle(loader: DataLoader):
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="synthetic faces (default 3000)")
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--batches", type=int, default=100,
                        help="timed batches per run, at least (default 100)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="timed seconds per run, at least (default 2)")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="seconds of batches not counted at the start of a run (default 0.5)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the JPEGs and shards here (reused when present)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per configuration, interleaved; the best is kept, since "
                             "other load on the machine only ever slows a run down")
    parser.add_argument("--own-packer", action="store_true",
                        help="write the shards with this script instead of `starcli prepare`")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads in this process (default: torch's own; 1 "
                             "avoids OpenMP spinning slowing the official workers=0 run on a "
                             "busy machine)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-loader-")
        args.workdir = Path(tmp.name)
    home = args.workdir / "home"
    raw = raw_dir(home, NAME)
    t0 = time.perf_counter()
    synthetic = make_jpegs(raw, args.images)
    t1 = time.perf_counter()
    try:
        from starcli.data.prepare import PrepareConfig, prepare
    except ImportError:
        prepare = None
    if prepare is not None and synthetic and not args.own_packer:
        packer = "starcli prepare"
        prepare(PrepareConfig(home=home, dataset=NAME, size=SIZE, crop=CROP,
                              attrs=tuple(SELECTED), workers=os.cpu_count() or 1))
    else:
        packer = "the benchmark's own packer"
        pack_shards(raw, home)
    t2 = time.perf_counter()
    print(f"data: {args.images} JPEGs in {t1 - t0:.1f}s, packed to {SIZE}px shards by {packer} "
          f"in {t2 - t1:.1f}s ({args.workdir})")

    dataset = open_prepared(home, NAME, SIZE)
    layout = joint_layout([dataset])
    official = OfficialCelebA(raw)
    results = []
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'workers':>7} {'official img/s':>15} {'starcli img/s':>14} {'ratio':>7} "
          f"{'official cpu ms/batch':>22} {'starcli cpu ms/batch':>21} {'cpu ratio':>10}")
    for workers in [int(w) for w in args.workers.split(",")]:
        ref = ours = (0.0, float("inf"))
        for run in range(args.repeat):
            loader = DataLoader(official, batch_size=BATCH, shuffle=True, num_workers=workers,
                                persistent_workers=workers > 0)
            got = timed(cycle(loader), args.warmup, args.seconds, args.batches)
            ref = (max(ref[0], got[0]), min(ref[1], got[1]))
            del loader
            stream = TrainStream([dataset], layout, batch_size=BATCH, workers=workers,
                                 seed=run)
            got = timed(stream, args.warmup, args.seconds, args.batches)
            ours = (max(ours[0], got[0]), min(ours[1], got[1]))
            stream.close()
        results.append({"workers": workers, "official_images_per_s": round(ref[0], 1),
                        "starcli_images_per_s": round(ours[0], 1),
                        "ratio": round(ours[0] / ref[0], 2),
                        "official_cpu_ms_per_batch": round(ref[1], 2),
                        "starcli_cpu_ms_per_batch": round(ours[1], 2),
                        "cpu_ratio": round(ref[1] / ours[1], 2)})
        print(f"{workers:>7} {ref[0]:>15,.0f} {ours[0]:>14,.0f} {ours[0] / ref[0]:>6.1f}x "
              f"{ref[1]:>22.2f} {ours[1]:>21.2f} {ref[1] / ours[1]:>9.1f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps({"images": args.images, "batch": BATCH, "size": SIZE,
                          "results": results}))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
