"""Images per second of the synthetic set generators, in this process and with 2 workers.

    python benchmarks/bench_synthetic.py [--count 2000] [--subjects 24]

Besides wall-clock speed it prints CPU seconds (this process plus finished workers), which
stay meaningful when other jobs share the machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from starcli.data.synthetic import generate_celeba, generate_rafd


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _report(name: str, workers: int, run: Callable[[], dict]) -> None:
    c0 = _cpu()
    s = run()
    cpu = _cpu() - c0
    print(f"{name} {s['images']} images, workers={workers}: {s['images_per_s']:.0f} images/s "
          f"({s['seconds']:.1f} s wall, {cpu:.1f} s CPU = {s['images'] / cpu:.0f} images per "
          "CPU-second)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="demo-celeba images per run")
    parser.add_argument("--subjects", type=int, default=24, help="demo-rafd subjects (x72 images)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for w in (0, 2):
            _report("demo-celeba", w, lambda w=w: generate_celeba(
                Path(tmp) / f"celeba{w}", count=args.count, workers=w))
        for w in (0, 2):
            _report("demo-rafd", w, lambda w=w: generate_rafd(
                Path(tmp) / f"rafd{w}", subjects=args.subjects, workers=w))


if __name__ == "__main__":
    main()
