"""Training-step benchmark: starcli's step vs a faithful copy of the official StarGAN step.

Both sides train the same networks (starcli's Generator/Discriminator, whose layers and
parameter counts equal the official ones) with the same config (WGAN-GP, n_critic 5, batch 16,
5 CelebA attributes) on the same synthetic CelebA faces, in this process, one after the other:

- official: fp32 eager; the data comes from a torch Dataset that PIL-opens each 178x218 JPEG
  (RandomHorizontalFlip, CenterCrop 178, Resize, ToTensor, Normalize) with 1 DataLoader
  worker; the D step makes the fakes WITH a graph and detaches them, as the official code does;
  real, fake and interpolated images go through D in three passes; the gradient penalty is
  written inline; default (for-loop) Adam; G and D gradients zeroed before each backward.
- starcli: the engine's own step (`starcli.engine.build_parts` + `attach_step`, exactly what
  `starcli train` runs) fed by TrainStream from HDF5 shards:
  bf16 autocast where the CPU has it, fakes without a graph, real+fake in one D pass, no D
  weight gradients in the G step, foreach Adam. Also run in fp32 to split the gain into
  algorithm and precision.

Iterations are timed in whole n_critic cycles after a warm-up cycle, data loading included;
"data wait" is the share of that time spent waiting for the next batch.

    python benchmarks/bench_train.py                 # (a) paper model 128px, (b) 64px model
    python benchmarks/bench_train.py --only small --cycles 4
    python benchmarks/bench_train.py --learning 300  # + bf16 vs fp32 learning check

`--family stargan-v2` times one StarGAN v2 iteration (reference/stargan-v2.md §2.3) instead:

- official: a faithful fp32 eager copy of the official iteration, written here from that
  description over starcli's plain v2 networks (the official layers): D latent and D
  reference steps, each with R1 through `autograd.grad(create_graph=True)` on
  `x_real.requires_grad_()` and the fakes made under no_grad; G latent (steps G, F, E) and G
  reference (steps G) with the full loss, D's gradients computed and discarded, every
  optimiser zeroed before each backward; then `torch.lerp` moving averages of G, F, E.
  Default Adam(betas 0, 0.99, weight decay 1e-4; F lr 1e-6), NCHW, no compile.
- starcli: the engine's own step (`build_parts` + `attach_step`, what `starcli train
  --family stargan-v2` runs) in the runtime's precision (bf16 where the CPU has it),
  channels_last unless told otherwise.

Both get the same model config (v2-afhq options, domains Male of the synthetic faces), batch,
image size and batches, pre-loaded (data loading is not timed); both are built once and timed
alternately, warm-up first. s/iter are medians over rounds; ratio = official / starcli.

    python benchmarks/bench_train.py --family stargan-v2 --iters 4 --rounds 2
    python benchmarks/bench_train.py --family stargan-v2 --device cuda --image-size 256 \
        --dim-in 64 --max-conv-dim 512
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from starcli.config import TrainConfig
from starcli.data.dataset import TrainStream, iterate_split, open_prepared, to_tensor
from starcli.engine import attach_step, build_parts, describe_run
from starcli.families.stargan_v1.networks import Discriminator, Generator, ModelConfig

SELECTED = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
BATCH = 16


@dataclass(frozen=True)
class Case:
    name: str
    image_size: int
    conv: int
    g_repeat: int
    d_repeat: int


CASES = {
    "paper": Case("paper model, 128px, batch 16", 128, 64, 6, 6),
    "small": Case("small model, 64px, batch 16 (conv 32, G 3 blocks, D 5 convs)", 64, 32, 3, 5),
}


# ---------------------------------------------------------------------------------------------
# Data


def make_data(work: Path, count: int, sizes: list[int]) -> Path:
    """Synthetic CelebA JPEGs (raw) and their prepared shards at each size; returns home."""
    from starcli.data.prepare import PrepareConfig, prepare
    from starcli.data.synthetic import generate_celeba

    home = work / "home"
    raw = home / "raw" / "demo-celeba"
    if not (raw / "list_attr_celeba.txt").is_file():
        generate_celeba(raw, count=count, workers=os.cpu_count() or 1)
    for size in sizes:
        if not (home / "prepared" / "demo-celeba" / str(size) / "manifest.json").is_file():
            prepare(PrepareConfig(home=home, dataset="demo-celeba", size=size, crop=178,
                                  attrs=SELECTED, workers=os.cpu_count() or 1))
    return home


class OfficialCelebA(Dataset):
    """The official loader: attribute file parsed once, one PIL JPEG decode per sample."""

    def __init__(self, root: Path, size: int) -> None:
        lines = (root / "list_attr_celeba.txt").read_text().split("\n")
        names = lines[1].split()
        idx = [names.index(a) for a in SELECTED]
        self.items = []
        for line in lines[2:]:
            parts = line.split()
            if parts:
                self.items.append((parts[0], [parts[1:][i] == "1" for i in idx]))
        self.dir = root / "img_align_celeba"
        self.transform = T.Compose([
            T.RandomHorizontalFlip(), T.CenterCrop(178), T.Resize(size), T.ToTensor(),
            T.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        name, label = self.items[i]
        image = Image.open(self.dir / name)
        return self.transform(image), torch.FloatTensor(label)


# ---------------------------------------------------------------------------------------------
# The two steps


def official_runner(case: Case, home: Path, seed: int):
    """A faithful fp32 eager copy of the official StarGAN training iteration."""
    torch.manual_seed(seed)
    mc = ModelConfig(image_size=case.image_size, c_dim=len(SELECTED), g_conv_dim=case.conv,
                     d_conv_dim=case.conv, g_repeat_num=case.g_repeat,
                     d_repeat_num=case.d_repeat)
    G, D = Generator(mc), Discriminator(mc)
    g_opt = torch.optim.Adam(G.parameters(), 1e-4, [0.5, 0.999])
    d_opt = torch.optim.Adam(D.parameters(), 1e-4, [0.5, 0.999])
    loader = DataLoader(OfficialCelebA(home / "raw" / "demo-celeba", case.image_size),
                        batch_size=BATCH, shuffle=True, num_workers=1)
    state = {"it": iter(loader), "i": 0}

    def cls_loss(logit, target):
        return F.binary_cross_entropy_with_logits(logit, target, reduction="sum") / logit.size(0)

    def step() -> float:
        t0 = time.perf_counter()
        try:
            x_real, label_org = next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            x_real, label_org = next(state["it"])
        waited = time.perf_counter() - t0
        rand_idx = torch.randperm(label_org.size(0))
        label_trg = label_org[rand_idx]
        c_org, c_trg = label_org.clone(), label_trg.clone()

        out_src, out_cls = D(x_real)
        d_loss_real = -torch.mean(out_src)
        d_loss_cls = cls_loss(out_cls, label_org)
        x_fake = G(x_real, c_trg)
        out_src, out_cls = D(x_fake.detach())
        d_loss_fake = torch.mean(out_src)
        alpha = torch.rand(x_real.size(0), 1, 1, 1)
        x_hat = (alpha * x_real.data + (1 - alpha) * x_fake.data).requires_grad_(True)
        out_src, _ = D(x_hat)
        grad = torch.autograd.grad(outputs=out_src, inputs=x_hat,
                                   grad_outputs=torch.ones(out_src.size()),
                                   retain_graph=True, create_graph=True, only_inputs=True)[0]
        grad = grad.view(grad.size(0), -1)
        d_loss_gp = torch.mean((torch.sqrt(torch.sum(grad ** 2, dim=1)) - 1) ** 2)
        d_loss = d_loss_real + d_loss_fake + 1.0 * d_loss_cls + 10.0 * d_loss_gp
        g_opt.zero_grad()
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()

        if (state["i"] + 1) % 5 == 0:
            x_fake = G(x_real, c_trg)
            out_src, out_cls = D(x_fake)
            g_loss_fake = -torch.mean(out_src)
            g_loss_cls = cls_loss(out_cls, label_trg)
            x_reconst = G(x_fake, c_org)
            g_loss_rec = torch.mean(torch.abs(x_real - x_reconst))
            g_loss = g_loss_fake + 10.0 * g_loss_rec + 1.0 * g_loss_cls
            g_opt.zero_grad()
            d_opt.zero_grad()
            g_loss.backward()
            g_opt.step()
        state["i"] += 1
        return waited

    return step, lambda: None


def starcli_runner(case: Case, home: Path, seed: int, precision: str, workers: int):
    cfg = TrainConfig.from_preset(
        "paper", datasets=("demo-celeba",), home=str(home), image_size=case.image_size,
        g_conv_dim=case.conv, d_conv_dim=case.conv, g_repeat_num=case.g_repeat,
        d_repeat_num=case.d_repeat, precision=precision, device="cpu", workers=workers,
        seed=seed, batch_size=BATCH)
    plan = describe_run(cfg)
    ds, layout = plan.datasets[0], plan.layout
    step_fn = attach_step(plan, build_parts(plan))
    stream = TrainStream([ds], layout, batch_size=BATCH, workers=workers, seed=seed)
    it = iter(stream)
    state = {"i": 0}

    def step() -> float:
        t0 = time.perf_counter()
        batch = next(it)
        waited = time.perf_counter() - t0
        state["i"] += 1
        step_fn(state["i"], batch)
        return waited

    return step, stream.close


def time_side(step, iters: int, warmup: int) -> dict:
    for _ in range(warmup):
        step()
    times, waits = [], 0.0
    for _ in range(iters):
        t0 = time.perf_counter()
        waits += step()
        times.append(time.perf_counter() - t0)
    total = sum(times)
    return {"s_per_iter": total / iters, "iters_per_s": iters / total,
            "data_wait_fraction": waits / total, "iters": iters}


def bench_case(case: Case, home: Path, cycles: int, rounds: int, workers: int,
               warmup: int) -> dict:
    sides = {
        "official_fp32": lambda: official_runner(case, home, 0),
        "starcli_fp32": lambda: starcli_runner(case, home, 0, "fp32", workers),
        "starcli_auto": lambda: starcli_runner(case, home, 0, "auto", workers),
    }
    results: dict[str, list[dict]] = {k: [] for k in sides}
    order = list(sides)
    for r in range(rounds):  # alternate the order so drifting machine load hits both sides
        for name in (order if r % 2 == 0 else order[::-1]):
            step, close = sides[name]()
            try:
                res = time_side(step, iters=5 * cycles, warmup=warmup)
            finally:
                close()
            results[name].append(res)
            print(f"  {name:14s} round {r + 1}: {res['s_per_iter']:.3f} s/iter, "
                  f"data wait {res['data_wait_fraction']:.1%}", flush=True)
    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "s_per_iter": statistics.median(x["s_per_iter"] for x in runs),
            "data_wait_fraction": statistics.median(x["data_wait_fraction"] for x in runs),
            "rounds": [round(x["s_per_iter"], 4) for x in runs],
        }
    base = summary["official_fp32"]["s_per_iter"]
    for name in summary:
        summary[name]["speedup_vs_official"] = base / summary[name]["s_per_iter"]
    return summary


# ---------------------------------------------------------------------------------------------
# Does bf16 hurt learning?


@torch.no_grad()
def evaluate(ckpt_dir: str, home: Path, size: int) -> dict:
    """D's accuracy on held-out real faces, on their translations (targets: each face's
    labels with one attribute changed, hair colours kept exclusive), and the cycle L1."""
    from starcli.checkpoint import load_checkpoint

    ck = load_checkpoint(ckpt_dir)
    ds = open_prepared(home, "demo-celeba", size)
    space = ck.layout.spaces[0]
    group = [space.names.index(n) for n in (space.exclusive_groups[0]
                                            if space.exclusive_groups else ())]
    real_hits = fake_hits = n_real = n_fake = 0
    rec = []
    for images, labels, _ in iterate_split(ds, "test", batch_size=64):
        x, lab = to_tensor(images), torch.from_numpy(labels)
        c_org = ck.layout.encode(0, lab)
        _, cls = ck.D(x)
        real_hits += ((cls > 0).float() == lab).float().sum().item()
        n_real += lab.numel()
        for k in range(space.width):
            trg = lab.clone()
            if k in group:
                trg[:, group] = 0
                trg[:, k] = 1
            else:
                trg[:, k] = 1 - trg[:, k]
            fake = ck.G(x, ck.layout.encode(0, trg))
            _, cls_f = ck.D(fake)
            fake_hits += ((cls_f[:, k] > 0).float() == trg[:, k]).float().sum().item()
            n_fake += len(trg)
            rec.append((x - ck.G(fake, c_org)).abs().mean().item())
    return {"d_acc_real": real_hits / n_real, "d_acc_fake_target": fake_hits / n_fake,
            "rec_l1": float(np.mean(rec))}


def learning_check(home: Path, iters: int, seeds: list[int], work: Path) -> dict:
    from starcli.engine import train

    out: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    for seed in seeds:
        for precision in ("fp32", "bf16"):
            cfg = TrainConfig.from_preset(
                "demo", datasets=("demo-celeba",), home=str(home), iters=iters,
                precision=precision, device="cpu", seed=seed, sample_every=0, save_every=0,
                log_every=max(1, iters // 4), run_dir=str(work / f"learn-{precision}-{seed}"))
            t0 = time.perf_counter()
            result = train(cfg)
            metrics = evaluate(result["checkpoint"], home, cfg.image_size)
            metrics["seconds"] = time.perf_counter() - t0
            out[precision].append(metrics)
            shown = {k: round(v, 4) for k, v in metrics.items()}
            print(f"  {precision} seed {seed}: {json.dumps(shown)}", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# StarGAN v2


V2_SIDES = ("official_fp32", "starcli")


def v2_config(args: argparse.Namespace, home: Path) -> TrainConfig:
    cl = {"auto": None, "on": True, "off": False}[args.channels_last]
    return TrainConfig.from_preset(
        "v2-afhq", family="stargan-v2", datasets=("demo-celeba",), home=str(home),
        domains="Male", image_size=args.image_size, batch_size=args.batch, dim_in=args.dim_in,
        max_conv_dim=args.max_conv_dim, precision=args.precision, device=args.device,
        channels_last=cl, workers=0, seed=0)


def v2_batches(plan, count: int, seed: int) -> list:
    """`count` training batches (cloned out of the loader) with, per batch, what the official
    reference loader would add: target domains and two references of each target's domain."""
    from starcli.data.domains import resolve_domains

    domains = resolve_domains(plan.layout.spaces[0], plan.cfg.options.domains)
    stream = TrainStream([plan.datasets[0]], plan.layout, batch_size=plan.cfg.batch_size,
                         workers=0, seed=seed)
    it = iter(stream)
    batches = []
    for _ in range(count):
        b = next(it)
        batches.append(type(b)(images=b.images.clone(), labels=b.labels.clone(), c=b.c.clone(),
                               space_index=b.space_index, indices=b.indices.clone()))
    stream.close()
    images = torch.cat([b.images.contiguous() for b in batches])
    which = torch.from_numpy(domains.assign(torch.cat([b.labels for b in batches]).numpy()))
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in batches:
        y_org = torch.from_numpy(domains.assign(b.labels.numpy()))
        y_trg = torch.randint(len(domains), (len(y_org),), generator=gen)
        refs = []
        for _ in range(2):
            picks = []
            for k in y_trg.tolist():
                pool = torch.nonzero(which == k).flatten()
                picks.append(int(pool[torch.randint(len(pool), (1,), generator=gen)]))
            refs.append(images[picks].clone())
        out.append((b, b.images.contiguous(), y_org, y_trg, refs[0], refs[1]))
    return out


def official_v2_runner(plan, inputs: list, seed: int):
    """A faithful fp32 eager copy of the official StarGAN v2 iteration (see the docstring)."""
    from starcli.families.stargan_v2.networks import build_v2

    opt, dev = plan.cfg.options, plan.runtime.device
    torch.manual_seed(seed)
    nets = {n: m.to(dev) for n, m in build_v2(plan.model.networks()).items()}
    ema = {n: copy.deepcopy(nets[n]) for n in ("G", "F", "E")}
    optims = {n: torch.optim.Adam(nets[n].parameters(), lr=opt.f_lr if n == "F" else opt.lr,
                                  betas=[opt.beta1, opt.beta2], weight_decay=opt.weight_decay)
              for n in ("G", "F", "E", "D")}
    G, Fm, E, D = (nets[n] for n in ("G", "F", "E", "D"))
    state = {"i": 0, "lambda_ds": opt.lambda_ds}
    inputs = [tuple(t.to(dev) if torch.is_tensor(t) else t for t in item[1:]) for item in inputs]

    def adv_loss(logits, target):
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))

    def r1_reg(d_out, x_in):
        grad = torch.autograd.grad(outputs=d_out.sum(), inputs=x_in, create_graph=True,
                                   retain_graph=True, only_inputs=True)[0]
        return 0.5 * grad.pow(2).view(x_in.size(0), -1).sum(1).mean(0)

    def d_loss(x_real, y_org, y_trg, z_trg=None, x_ref=None):
        x_real.requires_grad_()
        out = D(x_real, y_org)
        loss_real = adv_loss(out, 1)
        loss_reg = r1_reg(out, x_real)
        with torch.no_grad():
            s_trg = Fm(z_trg, y_trg) if z_trg is not None else E(x_ref, y_trg)
            x_fake = G(x_real, s_trg)
        out = D(x_fake, y_trg)
        loss_fake = adv_loss(out, 0)
        return loss_real + loss_fake + opt.lambda_reg * loss_reg

    def g_loss(x_real, y_org, y_trg, z_trgs=None, x_refs=None):
        if z_trgs is not None:
            z_trg, z_trg2 = z_trgs
            s_trg = Fm(z_trg, y_trg)
        else:
            x_ref, x_ref2 = x_refs
            s_trg = E(x_ref, y_trg)
        x_fake = G(x_real, s_trg)
        loss_adv = adv_loss(D(x_fake, y_trg), 1)
        loss_sty = torch.mean(torch.abs(E(x_fake, y_trg) - s_trg))
        s_trg2 = Fm(z_trg2, y_trg) if z_trgs is not None else E(x_ref2, y_trg)
        x_fake2 = G(x_real, s_trg2).detach()
        loss_ds = torch.mean(torch.abs(x_fake - x_fake2))
        x_rec = G(x_fake, E(x_real, y_org))
        loss_cyc = torch.mean(torch.abs(x_rec - x_real))
        return (loss_adv + opt.lambda_sty * loss_sty - state["lambda_ds"] * loss_ds
                + opt.lambda_cyc * loss_cyc)

    def reset_grad():
        for o in optims.values():
            o.zero_grad()

    def step() -> None:
        x_real, y_org, y_trg, x_ref, x_ref2 = inputs[state["i"] % len(inputs)]
        x_real = x_real.clone()  # a fresh batch tensor each iteration, as from the loader
        n = x_real.size(0)
        z_trg, z_trg2 = torch.randn(n, opt.latent_dim, device=dev), \
            torch.randn(n, opt.latent_dim, device=dev)
        for kw in ({"z_trg": z_trg}, {"x_ref": x_ref}):
            loss = d_loss(x_real, y_org, y_trg, **kw)
            reset_grad()
            loss.backward()
            optims["D"].step()
        loss = g_loss(x_real, y_org, y_trg, z_trgs=[z_trg, z_trg2])
        reset_grad()
        loss.backward()
        for n_ in ("G", "F", "E"):
            optims[n_].step()
        loss = g_loss(x_real, y_org, y_trg, x_refs=[x_ref, x_ref2])
        reset_grad()
        loss.backward()
        optims["G"].step()
        for n_ in ("G", "F", "E"):
            for p, p_ema in zip(nets[n_].parameters(), ema[n_].parameters(), strict=True):
                p_ema.data = torch.lerp(p.data, p_ema.data, opt.ema)
        if state["lambda_ds"] > 0:
            state["lambda_ds"] -= opt.lambda_ds / opt.ds_iter
        state["i"] += 1

    return step


def starcli_v2_runner(plan, inputs: list):
    """The engine's own StarGAN v2 step, as `starcli train` builds it."""
    step_fn = attach_step(plan, build_parts(plan))
    state = {"i": 0}

    def step() -> None:
        batch = inputs[state["i"] % len(inputs)][0]
        state["i"] += 1
        step_fn(state["i"], batch)

    return step


def bench_v2(args: argparse.Namespace, home: Path) -> dict:
    plan = describe_run(v2_config(args, home))
    rt = plan.runtime
    cuda = rt.device.type == "cuda"
    inputs = v2_batches(plan, 4, seed=0)
    steps = {"official_fp32": official_v2_runner(plan, inputs, 0),
             "starcli": starcli_v2_runner(plan, inputs)}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(rt.device)

    for name in V2_SIDES:  # warm-up: oneDNN/cuDNN kernel choice, allocator caches
        for _ in range(args.warmup if args.warmup is not None else 2):
            steps[name]()
        sync()
    results: dict[str, list[dict]] = {k: [] for k in V2_SIDES}
    for r in range(args.rounds):  # alternate the order so drifting load hits both sides
        for name in (V2_SIDES if r % 2 == 0 else V2_SIDES[::-1]):
            res: dict = {}
            if cuda:
                sync()
                res["resident_gib"] = torch.cuda.memory_allocated(rt.device) / 2**30
                torch.cuda.reset_peak_memory_stats(rt.device)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                steps[name]()
            sync()
            res["s_per_iter"] = (time.perf_counter() - t0) / args.iters
            if cuda:
                res["peak_gib"] = torch.cuda.max_memory_allocated(rt.device) / 2**30
            results[name].append(res)
            mem = (f", peak {res['peak_gib']:.2f} GiB (both sides' weights resident: "
                   f"{res['resident_gib']:.2f})" if cuda else "")
            print(f"  {name:14s} round {r + 1}: {res['s_per_iter']:.3f} s/iter{mem}", flush=True)
    summary: dict = {"settings": {
        "device": str(rt.device), "precision": rt.precision, "channels_last": rt.channels_last,
        "image_size": plan.cfg.image_size, "batch": plan.cfg.batch_size,
        "model": plan.model.networks().to_dict(),
        "parameters": plan.family.parameter_counts(plan.model),
        "iters": args.iters, "rounds": args.rounds}}
    for name, runs in results.items():
        summary[name] = {"s_per_iter": statistics.median(x["s_per_iter"] for x in runs),
                         "rounds": [round(x["s_per_iter"], 4) for x in runs]}
        if cuda:
            summary[name]["peak_gib"] = max(x["peak_gib"] for x in runs)
            summary[name]["peak_above_resident_gib"] = max(
                x["peak_gib"] - x["resident_gib"] for x in runs)
    summary["ratio"] = summary["official_fp32"]["s_per_iter"] / summary["starcli"]["s_per_iter"]
    return summary


def main_v2(args: argparse.Namespace) -> None:
    home = make_data(args.workdir, args.images, [args.image_size])
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "load_avg_start": os.getloadavg()}
    print(f"stargan-v2: {args.image_size}px, batch {args.batch}, dim_in {args.dim_in}, "
          f"max_conv_dim {args.max_conv_dim}, {args.iters} iters x {args.rounds} rounds, "
          f"device {args.device}", flush=True)
    res = bench_v2(args, home)
    report["stargan_v2"] = res
    st = res["settings"]
    for name in V2_SIDES:
        r = res[name]
        label = "official fp32" if name == "official_fp32" else \
            f"starcli {st['precision']}{' channels_last' if st['channels_last'] else ''}"
        mem = f"  peak {r['peak_gib']:.2f} GiB" if "peak_gib" in r else ""
        print(f"  => {label:28s} {r['s_per_iter']:.3f} s/iter{mem}", flush=True)
    print(f"  => ratio official/starcli {res['ratio']:.2f}x (> 1: starcli faster)", flush=True)
    report["load_avg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench_train")
    ap.add_argument("--images", type=int, default=800, help="synthetic faces to generate")
    ap.add_argument("--only", choices=sorted(CASES), action="append")
    ap.add_argument("--cycles", type=int, default=None,
                    help="timed n_critic cycles (5 iterations each); default 1 paper, 4 small")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed iterations per side (default 1 paper, 5 small)")
    ap.add_argument("--workers", type=int, default=0, help="TrainStream workers (ours)")
    ap.add_argument("--learning", type=int, default=0,
                    help="also train fp32 vs bf16 for this many iterations and compare")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads for both sides (default: torch's choice)")
    ap.add_argument("--json", type=Path, help="write the results here")
    v2 = ap.add_argument_group("--family stargan-v2")
    v2.add_argument("--family", choices=("stargan-v1", "stargan-v2"), default="stargan-v1",
                    help="which family's iteration to time (default: StarGAN v1, the cases)")
    v2.add_argument("--image-size", type=int, default=64)
    v2.add_argument("--batch", type=int, default=8)
    v2.add_argument("--iters", type=int, default=4, help="timed iterations per side per round")
    v2.add_argument("--dim-in", type=int, default=32,
                    help="network width at full resolution (official: 2**14 / image size)")
    v2.add_argument("--max-conv-dim", type=int, default=128, help="channel cap (official 512)")
    v2.add_argument("--device", default="cpu")
    v2.add_argument("--precision", default="auto", help="starcli's side (auto: bf16 where "
                    "the hardware has it)")
    v2.add_argument("--channels-last", choices=("on", "off", "auto"), default="on",
                    help="starcli's side (auto: the engine's default, off on a CPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.family == "stargan-v2":
        main_v2(args)
        return

    cases = args.only or ["paper", "small"]
    sizes = sorted({CASES[c].image_size for c in cases} | ({64} if args.learning else set()))
    home = make_data(args.workdir, args.images, sizes)
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "load_avg_start": os.getloadavg(), "cases": {}}
    for name in cases:
        case = CASES[name]
        cycles = args.cycles or (1 if name == "paper" else 4)
        # Warm-up lets oneDNN build its kernels; at 128px one iteration is enough for that.
        warmup = args.warmup if args.warmup is not None else (1 if name == "paper" else 5)
        print(f"{case.name}: {cycles} n_critic cycle(s) x {args.rounds} rounds", flush=True)
        res = bench_case(case, home, cycles, args.rounds, args.workers, warmup)
        res["timed_iters"], res["warmup_iters"] = 5 * cycles, warmup
        report["cases"][name] = res
        for side, r in res.items():
            if not isinstance(r, dict):
                continue
            print(f"  => {side:14s} {r['s_per_iter']:.3f} s/iter  x{r['speedup_vs_official']:.2f}"
                  f"  data wait {r['data_wait_fraction']:.1%}", flush=True)
    if args.learning:
        print(f"learning check: demo preset, {args.learning} iterations, fp32 vs bf16", flush=True)
        report["learning"] = learning_check(home, args.learning, list(range(args.seeds)),
                                            args.workdir)
    report["load_avg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
