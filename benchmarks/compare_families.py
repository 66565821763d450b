"""One StarGAN against one CycleGAN per domain pair: the StarGAN paper's comparison, measured.

On the built-in synthetic faces, the four hair colours are the domains (6 pairs, 12 directions).
One StarGAN v1 model (trained on the hair colours plus Male and Young, like the paper's CelebA
model) gets `--budget` seconds of CPU; the six CycleGAN pair models share the same `--budget`
(a sixth each). Both train at a constant learning rate and stop on time (a checkpoint is saved
when the time is up). Then, on the same held-out faces, for every direction s → t:

- success: the eval classifier (starcli.classifier, trained on the same prepared data) calls
  the translated face's hair t;
- identity L1: mean |fake − real| in [0, 1] pixels, over the whole image and over the frame
  (the outer eighth of each side: background that a translation should not touch);
- retention: the classifier's Male and Young decisions unchanged by the translation;
- FID (all directions pooled, translated vs real test faces) where Inception weights exist.

Then the analytic table: models and parameters for K domains, CycleGAN's K(K−1)/2 pairs of two
generators (and two discriminators) against StarGAN's one G and one D, for CelebA's 5
attributes and RaFD's 8 expressions at the papers' sizes.

    OMP_NUM_THREADS=1 python benchmarks/compare_families.py --budget 90
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

HAIR = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
ATTRS = (*HAIR, "Male", "Young")
KEPT = ("Male", "Young")  # what a hair translation must leave alone


def _prepare(home: Path, count: int, size: int, workers: int) -> None:
    from starcli.data.fetch import FetchConfig, fetch
    from starcli.data.prepare import PrepareConfig, prepare
    from starcli.demo import CROPS

    fetch(FetchConfig(home=home, dataset="demo", count=count, subjects=4, workers=workers))
    prepare(PrepareConfig(home=home, dataset="demo-celeba", size=size,
                          crop=CROPS["demo-celeba"], attrs=ATTRS, workers=workers))


def _train_for(cfg, seconds: float) -> dict:
    """Train `cfg` until `seconds` pass (or its iterations end)."""
    from starcli.engine import train

    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    start = time.perf_counter()
    timer.start()
    try:
        result = train(cfg, stop_event=stop)
    finally:
        timer.cancel()
    result["train_seconds"] = time.perf_counter() - start
    return result


def _test_faces(home: Path, size: int, limit: int):
    from starcli.data.dataset import iterate_split, open_prepared, to_tensor

    ds = open_prepared(home, "demo-celeba", size)
    images, labels = [], []
    for im, lab, _ in iterate_split(ds, "test", batch_size=256, limit=limit):
        images.append(im)
        labels.append(lab)
    names = list(ds.space.names)
    return ds, to_tensor(np.concatenate(images)), np.concatenate(labels), names


def _l1(fake: torch.Tensor, real: torch.Tensor) -> tuple[float, float]:
    diff = (fake.float() - real.float()).abs().mean(1) / 2  # [0, 1] pixel units
    s = diff.shape[-1]
    m = max(1, s // 8)
    frame = torch.ones_like(diff[0], dtype=torch.bool)
    frame[m:s - m, m:s - m] = False
    return float(diff.mean()), float(diff[:, frame].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=90.0,
                        help="CPU seconds of training for StarGAN, and the same for all six "
                             "CycleGANs together (default 90).")
    parser.add_argument("--count", type=int, default=2000, help="synthetic CelebA faces")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--eval-images", type=int, default=400)
    parser.add_argument("--home", type=Path, default=None,
                        help="data root (default: a temporary folder)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--inception-weights", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    from starcli.classifier import load_classifier, train_classifier
    from starcli.config import TrainConfig
    from starcli.data.domains import resolve_domains
    from starcli.families import get_family

    tmp = tempfile.TemporaryDirectory(prefix="starcli-compare-")
    home = (args.home or Path(tmp.name) / "home").resolve()
    runs = Path(tmp.name) / "runs"
    t0 = time.perf_counter()
    if not (home / "prepared" / "demo-celeba" / str(args.size)).is_dir():
        _prepare(home, args.count, args.size, args.workers)
    print(f"data: {args.count} synthetic faces at {args.size} px "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)
    common = dict(datasets=("demo-celeba",), home=str(home), device="cpu", iters=10**7,
                  lr_decay_iters=0, sample_every=0, save_every=0, log_every=50, keep_last=1)

    # ---- StarGAN: one model over every domain, the whole budget.
    star_cfg = TrainConfig.from_preset("demo", family="stargan-v1",
                                       run_dir=str(runs / "stargan"), **common)
    star = _train_for(star_cfg, args.budget)
    print(f"stargan-v1: {star['step']} iterations in {star['train_seconds']:.0f}s", flush=True)

    # ---- CycleGAN: one model per pair, a sixth of the budget each.
    pairs = list(itertools.combinations(HAIR, 2))
    cycle = {}
    for a, b in pairs:
        cfg = TrainConfig.from_preset("demo", family="cyclegan", domains=f"{a},{b}",
                                      run_dir=str(runs / f"cyclegan-{a}-{b}"), **common)
        cycle[(a, b)] = _train_for(cfg, args.budget / len(pairs))
        print(f"cyclegan {a}<->{b}: {cycle[(a, b)]['step']} iterations in "
              f"{cycle[(a, b)]['train_seconds']:.0f}s", flush=True)

    # ---- The same held-out faces for both.
    from starcli.checkpoint import load_checkpoint

    ds, x, labels, names = _test_faces(home, args.size, args.eval_images)
    judge = load_classifier(train_classifier(ds, home=home, device="cpu"), "cpu")
    judge_cols = [list(judge.space.names).index(n) for n in names]
    hair_cols = [names.index(h) for h in HAIR]
    kept_cols = [names.index(k) for k in KEPT]
    own = resolve_domains(ds.space, "hair")
    source = own.assign(labels)

    def judged(images: torch.Tensor) -> np.ndarray:
        return judge.predict(images).numpy()[:, judge_cols]

    device = torch.device("cpu")
    star_ckpt = load_checkpoint(star["checkpoint"])
    star_tr = get_family("stargan-v1").translator(star_ckpt, device, "fp32", fast=False)
    pair_tr = {}
    for (a, b), res in cycle.items():
        ckpt = load_checkpoint(res["checkpoint"])
        pair_tr[(a, b)] = (get_family("cyclegan").translator(ckpt, device, "fp32", fast=False),
                           ckpt.layout)

    try:
        from starcli.fid import fid_from_features, load_inception

        inception = load_inception(args.inception_weights)
    except Exception:  # noqa: BLE001 - FID is optional here
        inception = None
    rows = {"stargan-v1": [], "cyclegan": []}
    fakes: dict[str, list[torch.Tensor]] = {"stargan-v1": [], "cyclegan": []}
    real_decided = judged(x)
    for s, t in itertools.permutations(range(len(HAIR)), 2):
        idx = np.flatnonzero(source == s)
        if not len(idx):
            continue
        xs = x[torch.from_numpy(idx)]
        target = own.apply(t, labels[idx])
        with torch.no_grad():
            c = star_ckpt.layout.encode(0, torch.from_numpy(target))
            out_star = star_tr.forward(xs, c)
            key = (HAIR[s], HAIR[t]) if (HAIR[s], HAIR[t]) in pair_tr else (HAIR[t], HAIR[s])
            tr, layout = pair_tr[key]
            out_cyc = tr.forward(xs, layout.encode(0, torch.from_numpy(target)))
        for name, out in (("stargan-v1", out_star), ("cyclegan", out_cyc)):
            decided = judged(out)
            hair = decided[:, hair_cols]
            success = float((hair[:, t] & (hair.sum(1) == 1)).mean())
            retained = float((decided[:, kept_cols] == real_decided[idx][:, kept_cols]).mean())
            whole, frame = _l1(out, xs)
            rows[name].append({"from": HAIR[s], "to": HAIR[t], "n": len(idx),
                               "success": success, "l1": whole, "l1_frame": frame,
                               "retention": retained})
            fakes[name].append(out)

    def avg(name: str, key: str) -> float:
        r = rows[name]
        return sum(v[key] * v["n"] for v in r) / max(1, sum(v["n"] for v in r))

    params_star = sum(get_family("stargan-v1").parameter_counts(star_ckpt.model).values())
    params_cyc = sum(sum(get_family("cyclegan").parameter_counts(
        load_checkpoint(res["checkpoint"]).model).values()) for res in cycle.values())
    fid = {}
    if inception is not None:
        real_f = inception.features(x)
        for name in fakes:
            fid[name] = fid_from_features(real_f, inception.features(torch.cat(fakes[name])))
    summary = {
        "stargan-v1": {"models": 1, "parameters": params_star,
                       "train_seconds": star["train_seconds"], "iterations": star["step"]},
        "cyclegan": {"models": len(cycle), "parameters": params_cyc,
                     "train_seconds": sum(r["train_seconds"] for r in cycle.values()),
                     "iterations": sum(r["step"] for r in cycle.values())},
    }
    for name in summary:
        summary[name].update({k: avg(name, k) for k in ("success", "l1", "l1_frame",
                                                         "retention")})
        summary[name]["fid"] = fid.get(name)

    n_faces = sum(v["n"] for v in rows["cyclegan"]) // 3
    print(f"\nHair colour, 4 domains (12 directions), {n_faces} held-out faces, "
          f"budget {args.budget:.0f}s each side, {args.size} px, CPU")
    print(f"{'family':<12}{'models':>7}{'params':>11}{'train s':>9}{'iters':>8}{'success':>9}"
          f"{'L1':>7}{'L1 frame':>9}{'retain':>8}{'FID':>7}")
    for name, v in summary.items():
        fid_text = f"{v['fid']:.1f}" if v["fid"] is not None else "n/a"
        print(f"{name:<12}{v['models']:>7}{v['parameters']:>11,}{v['train_seconds']:>9.0f}"
              f"{v['iterations']:>8}{v['success']:>9.3f}{v['l1']:>7.3f}{v['l1_frame']:>9.3f}"
              f"{v['retention']:>8.3f}{fid_text:>7}")
    if inception is None:
        print("(FID n/a: no Inception-v3 weights found; see `starcli eval --help`.)")

    # ---- Analytic: models and parameters for K domains at the papers' sizes.
    from starcli.families.cyclegan.networks import CycleGANModel
    from starcli.families.stargan_v1.networks import ModelConfig

    print("\nModels for K domains (paper sizes: StarGAN 128 px; CycleGAN 128 px, 6 blocks, "
          "and 256 px, 9 blocks)")
    print(f"{'domains':<22}{'K':>3}{'StarGAN G+D':>14}{'CycleGAN pairs':>16}{'generators':>12}"
          f"{'params 128px':>15}{'params 256px':>15}")
    analytic = []
    for label, k in (("CelebA 5 attributes", 5), ("RaFD 8 expressions", 8)):
        star_p = sum(get_family("stargan-v1").parameter_counts(
            ModelConfig(image_size=128, c_dim=k)).values())
        p128 = sum(get_family("cyclegan").parameter_counts(
            CycleGANModel(image_size=128, n_blocks=6)).values())
        p256 = sum(get_family("cyclegan").parameter_counts(
            CycleGANModel(image_size=256, n_blocks=9)).values())
        n_pairs = k * (k - 1) // 2
        analytic.append({"domains": label, "K": k, "stargan_params": star_p, "pairs": n_pairs,
                         "generators": 2 * n_pairs, "cyclegan_params_128": n_pairs * p128,
                         "cyclegan_params_256": n_pairs * p256})
        print(f"{label:<22}{k:>3}{star_p / 1e6:>13.1f}M{n_pairs:>16}{2 * n_pairs:>12}"
              f"{n_pairs * p128 / 1e6:>14.1f}M{n_pairs * p256 / 1e6:>14.1f}M")
    print(f"(one CycleGAN pair, 2 G + 2 D: {p128:,} parameters at 128 px, {p256:,} at 256 px; "
          "StarGAN: 1 G + 1 D)")
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "directions": rows,
                                         "analytic": analytic}, indent=2))


if __name__ == "__main__":
    main()
