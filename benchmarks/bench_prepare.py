"""Prepare benchmark: N synthetic CelebA-size JPEGs -> 128 px HDF5 shards.

    python benchmarks/bench_prepare.py                      # 202,599 faces (generated once)
    python benchmarks/bench_prepare.py --count 20000 --workers 2 --json

The faces are generated once into WORKDIR/n<count>/home/raw/demo-celeba (starcli.data.synthetic,
or a plain fallback generator) and reused. Prepare then runs in a fresh child process with
--force, so its peak RSS (getrusage of the main process, /proc samples of the decode workers)
is not polluted by the generator. Targets for 202,599 images on 2 cores: <= 2 min and <= 1 GB
peak RSS.

Where time goes: decode and resize are CPU seconds summed over the decode workers; hdf5
write and checksum are CPU seconds of the single writer (main) process; fsync and wait are
its wall seconds (`wait`: idle, waiting for decoded chunks; when it dominates, decoding is
the bottleneck). CPU seconds stay meaningful when other programs compete for the cores; the
"idle 2-core estimate" divides the measured CPU seconds (main + workers) by the cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

FULL = 202_599
DATASET = "demo-celeba"


def _raw(home: Path) -> Path:
    return home / "raw" / DATASET


def _generated_count(raw: Path) -> int | None:
    try:
        marker = json.loads((raw / "synthetic.json").read_text())
    except (OSError, ValueError):
        marker = None
    if marker and marker.get("complete"):
        return int(marker.get("count", -1))
    if (raw / "bench.json").is_file():
        return int(json.loads((raw / "bench.json").read_text())["count"])
    return None


def _fallback_generate(raw: Path, count: int) -> None:
    """Smooth random colour fields as 178x218 JPEGs plus the CelebA lists (no synthetic.py)."""
    from PIL import Image

    from starcli.data.registry import load_registry

    attrs = load_registry().get(DATASET).attributes
    images = raw / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(raw / "list_attr_celeba.txt", "w") as attr, \
            open(raw / "list_eval_partition.txt", "w") as part:
        attr.write(f"{count}\n{' '.join(attrs)}\n")
        for i in range(1, count + 1):
            small = rng.integers(0, 256, (14, 12, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(small).resize((178, 218), Image.BILINEAR).save(buf, "JPEG",
                                                                          quality=90)
            (images / f"{i:06d}.jpg").write_bytes(buf.getvalue())
            attr.write(f"{i:06d}.jpg " + " ".join(rng.choice(["-1", " 1"], len(attrs))) + "\n")
            part.write(f"{i:06d}.jpg {0 if i <= 0.8 * count else 1 if i <= 0.9 * count else 2}\n")
    (raw / "bench.json").write_text(json.dumps({"count": count}))


def generate(home: Path, count: int, workers: int) -> float:
    """Make sure `count` faces exist; seconds spent generating (0 when reused)."""
    raw = _raw(home)
    if _generated_count(raw) == count:
        return 0.0
    t0 = time.perf_counter()
    try:
        from starcli.data.synthetic import generate_celeba
    except ImportError:
        _fallback_generate(raw, count)
    else:
        generate_celeba(raw, count=count, workers=workers)
    return time.perf_counter() - t0


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in task.read_text().split()]
        except OSError:
            continue
    return out


class _RssSampler(threading.Thread):
    """Peak of (this process + its children) resident memory, sampled every 0.2 s. Linux
    ru_maxrss of spawned children is useless here: it keeps the parent's size from the
    fork that preceded exec."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_total = self.peak_worker = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self._done.wait(0.2):
            workers = [_rss_mb(c) for c in _children(me)]
            self.peak_worker = max([self.peak_worker, *workers])
            self.peak_total = max(self.peak_total, _rss_mb(me) + sum(workers))

    def stop(self) -> None:
        self._done.set()
        self.join()


def _child_prepare(home: Path, size: int, workers: int, compression: str | None) -> None:
    """Runs in the child: prepare with --force, print one JSON line with the numbers."""
    from starcli.data.prepare import PrepareConfig, prepare

    sampler = _RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    summary = prepare(PrepareConfig(home=home, dataset=DATASET, size=size, workers=workers,
                                    compression=compression, force=True))
    wall = time.perf_counter() - t0
    sampler.stop()
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU only (see _RssSampler)
    print(json.dumps({
        "images": summary["images"], "skipped": summary["skipped_count"], "wall_s": wall,
        "shards": summary["shards"], "timing": summary["timing"],
        "bytes": sum(p.stat().st_size for p in Path(summary["path"]).glob("*.h5")),
        "rss_main_mb": me.ru_maxrss / 1024, "rss_worker_sampled_mb": sampler.peak_worker,
        "rss_total_sampled_mb": sampler.peak_total,
        "cpu_main_s": me.ru_utime + me.ru_stime, "cpu_workers_s": kids.ru_utime + kids.ru_stime,
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=FULL, help="faces to generate and prepare")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2, help="decode processes for prepare")
    ap.add_argument("--gen-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--compression", choices=["none", "lzf", "gzip"], default="none")
    ap.add_argument("--workdir", type=Path,
                    default=Path(os.environ.get("STARCLI_BENCH_DIR", "/tmp/starcli-bench")))
    ap.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    ap.add_argument("--generate-only", action="store_true", help="only make the faces")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    home = args.workdir / f"n{args.count}" / "home"
    compression = None if args.compression == "none" else args.compression
    if args.child:
        _child_prepare(home, args.size, args.workers, compression)
        return

    gen_s = generate(home, args.count, args.gen_workers)
    if gen_s:
        print(f"generated {args.count:,} faces in {gen_s:.0f} s")
    if args.generate_only:
        return
    cmd = [sys.executable, __file__, "--child", "--workdir", str(args.workdir), "--count",
           str(args.count), "--size", str(args.size), "--workers", str(args.workers),
           "--compression", args.compression]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    n, wall = r["images"], r["wall_s"]
    t = r["timing"]
    # Upper bound: main's peak plus every worker at the largest worker's sampled peak.
    rss_total = r["rss_main_mb"] + args.workers * r["rss_worker_sampled_mb"]
    scale = FULL / max(n, 1)
    print(f"prepare {n:,} images -> {args.size}px, workers={args.workers}, "
          f"compression={args.compression}, cores={os.cpu_count()}")
    print(f"  wall {wall:.1f} s   {n / wall:,.0f} images/s   shards {r['shards']}   "
          f"{r['bytes'] / 1e9:.2f} GB")
    print(f"  peak RSS: main {r['rss_main_mb']:.0f} MB (getrusage), largest worker "
          f"{r['rss_worker_sampled_mb']:.0f} MB (sampled), main + {args.workers} workers "
          f"<= {rss_total:.0f} MB; sampled total peak {r['rss_total_sampled_mb']:.0f} MB")
    print(f"  CPU s: main {r['cpu_main_s']:.1f}, workers {r['cpu_workers_s']:.1f}")
    print(f"  where time goes (CPU s): decode {t['decode']:.1f} + resize {t['resize']:.1f} "
          f"(workers); hdf5 write {t['write']:.1f} + checksum {t['checksum']:.1f} (writer); "
          f"wall: fsync {t['fsync']:.1f} s, writer waiting for workers {t['wait']:.1f} s")
    cpu = r["cpu_main_s"] + r["cpu_workers_s"]
    cores = min(os.cpu_count() or 1, args.workers + 1)
    print(f"  CPU per image {cpu / n * 1e3:.2f} ms -> idle {cores}-core estimate "
          f"{n / max(cpu / cores, 1e-9):,.0f} images/s, {cpu / cores * scale:.0f} s for {FULL:,}"
          f" (load average now {os.getloadavg()[0]:.1f})")
    if n < FULL:
        print(f"  extrapolated to {FULL:,}: ~{wall * scale:.0f} s (linear; RSS does not grow "
              "with N: streaming, one shard at a time)")
    print(f"  targets: <= 120 s -> {'ok' if wall * scale <= 120 else 'MISSED'}, "
          f"<= 1024 MB -> {'ok' if rss_total <= 1024 else 'MISSED'}")
    if args.json:
        print(json.dumps({**r, "count": args.count, "workers": args.workers,
                          "images_per_s": n / wall, "rss_total_mb": rss_total,
                          "extrapolated_full_s": wall * scale}))


if __name__ == "__main__":
    main()
