"""Images/s translating a folder of 128 px faces on the CPU: starcli vs the official test loop.

Both sides use the same paper-size weights (random init, c_dim 5: Black_Hair, Blond_Hair,
Brown_Hair, Male, Young) and produce the same five translations per image:

- official: a faithful copy of yunjey/stargan's `Solver.test()` for CelebA, written from its
  description: a torch Dataset opening each file with PIL (centre crop, resize, ToTensor,
  Normalize), a DataLoader with batch 16 and one worker, fp32, `torch.no_grad`, the official
  `nn.Sequential` generator left in train mode (instance norm with running statistics, as
  the official code never calls eval()), five target label sets from `create_labels` (hair
  colours exclusive, the rest flipped), and per batch one JPEG grid (input + five outputs)
  saved with torchvision's `save_image`. Labels come from an attribute table.
- starcli: `starcli.translate.translate` on the same folder, writing one PNG per image and
  target plus the manifest, estimating the inputs' own labels with D; the whole call is
  timed, checkpoint loading included.

    python benchmarks/bench_translate.py --images 32

`--family stargan-v2 --styles 10`: N inputs x 10 latent styles each (domain: the other one of
female/male) through the family's Translator (`generate_latent`, batched, its default
precision, channels_last) vs a naive loop: one image and one style at a time, F then G, fp32,
eval mode, `torch.no_grad`. Same random-init networks (v2 layers) and the same z on both sides;
translation only (no file I/O), agreement printed.

    python benchmarks/bench_translate.py --family stargan-v2 --styles 10 --images 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

ATTRS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
HAIR = ATTRS[:3]
SIZE = 128


# --------------------------------------------------------------------------- test data


def make_faces(folder: Path, n: int, seed: int = 0) -> None:
    """n different 128 px cartoon faces saved as JPEG (like pre-cropped face photos)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((SIZE, SIZE, 3), rng.integers(40, 160), np.uint8)
        skin = tuple(int(v) for v in rng.integers(120, 230, 3))
        hair = tuple(int(v) for v in rng.integers(0, 200, 3))
        cx, cy = 64 + int(rng.integers(-4, 5)), 70 + int(rng.integers(-4, 5))
        cv2.ellipse(img, (cx, cy), (34, 45), 0, 0, 360, skin, -1)
        cv2.ellipse(img, (cx, cy - 30), (38, 22), 0, 180, 360, hair, -1)
        for dx in (-14, 14):
            cv2.circle(img, (cx + dx, cy - 8), 4, (30, 30, 30), -1)
        cv2.ellipse(img, (cx, cy + 22), (12, 4), 0, 0, 360, (120, 40, 40), -1)
        noise = rng.normal(0, 6, img.shape)
        img = np.clip(img + noise, 0, 255).astype(np.uint8)
        Image.fromarray(cv2.GaussianBlur(img, (0, 0), 1.0)).save(folder / f"{i:06d}.jpg",
                                                                 quality=95)


# --------------------------------------------------------------------------- official copy


class OfficialResidualBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False),
            nn.InstanceNorm2d(dim, affine=True, track_running_stats=True), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False),
            nn.InstanceNorm2d(dim, affine=True, track_running_stats=True))

    def forward(self, x):
        return x + self.main(x)


class OfficialGenerator(nn.Module):
    """The official layout (keys main.N...), so the same state_dict loads into it."""

    def __init__(self, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> None:
        super().__init__()
        layers = [nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False),
                  nn.InstanceNorm2d(conv_dim, affine=True, track_running_stats=True),
                  nn.ReLU(inplace=True)]
        dim = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(dim, dim * 2, 4, 2, 1, bias=False),
                       nn.InstanceNorm2d(dim * 2, affine=True, track_running_stats=True),
                       nn.ReLU(inplace=True)]
            dim *= 2
        layers += [OfficialResidualBlock(dim) for _ in range(repeat_num)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(dim, dim // 2, 4, 2, 1, bias=False),
                       nn.InstanceNorm2d(dim // 2, affine=True, track_running_stats=True),
                       nn.ReLU(inplace=True)]
            dim //= 2
        layers += [nn.Conv2d(dim, 3, 7, 1, 3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x, c):
        c = c.view(c.size(0), c.size(1), 1, 1).repeat(1, 1, x.size(2), x.size(3))
        return self.main(torch.cat([x, c], dim=1))


class OfficialFolder(torch.utils.data.Dataset):
    def __init__(self, folder: Path, labels: dict[str, list[int]], transform) -> None:
        self.files = sorted(os.listdir(folder))
        self.folder, self.labels, self.transform = folder, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        name = self.files[i]
        image = Image.open(os.path.join(self.folder, name))
        return self.transform(image), torch.FloatTensor(self.labels[name])


def official_create_labels(c_org: torch.Tensor) -> list[torch.Tensor]:
    hair_idx = [ATTRS.index(a) for a in HAIR]
    out = []
    for i in range(len(ATTRS)):
        c_trg = c_org.clone()
        if i in hair_idx:
            c_trg[:, i] = 1
            for j in hair_idx:
                if j != i:
                    c_trg[:, j] = 0
        else:
            c_trg[:, i] = c_trg[:, i] == 0
        out.append(c_trg)
    return out


def run_official(folder: Path, g_state: dict, out: Path, labels: dict) -> float:
    import torchvision.transforms as T
    from torchvision.utils import save_image

    t0 = time.perf_counter()
    G = OfficialGenerator()
    G.load_state_dict(g_state)  # and never G.eval(), like the official test
    transform = T.Compose([T.CenterCrop(SIZE), T.Resize(SIZE), T.ToTensor(),
                           T.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))])
    loader = torch.utils.data.DataLoader(OfficialFolder(folder, labels, transform),
                                         batch_size=16, shuffle=False, num_workers=1)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for i, (x_real, c_org) in enumerate(loader):
            fakes = [x_real] + [G(x_real, c) for c in official_create_labels(c_org)]
            grid = torch.cat(fakes, dim=3)
            save_image(((grid + 1) / 2).clamp_(0, 1), out / f"{i + 1}-images.jpg", nrow=1,
                       padding=0)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- starcli


def run_starcli(folder: Path, run_dir: Path, out: Path, precision: str) -> tuple[float, dict]:
    from starcli.translate import TranslateConfig, translate

    t0 = time.perf_counter()
    result = translate(TranslateConfig(
        inputs=(folder,), targets=("Black_Hair", "Blond_Hair", "Brown_Hair", "Male=flip",
                                   "Young=flip"),
        checkpoint=run_dir, out=out, batch_size=16, precision=precision))
    return time.perf_counter() - t0, result.to_dict()


def check_agreement(G: nn.Module, g_official: dict, precision: str) -> None:
    """Our inference path vs the official module on the same input (values in [-1, 1])."""
    import copy

    from starcli.families.stargan_v1.translator import Translator

    official = OfficialGenerator()
    official.load_state_dict(g_official)
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    c = np.array([[0, 1, 0, 1, 0], [1, 0, 0, 0, 1]], np.float32)
    with torch.no_grad():
        ref = official(x, torch.from_numpy(c))
    for p in sorted({"fp32", precision}):
        model = Translator(copy.deepcopy(G), None, torch.device("cpu"), p)
        with torch.inference_mode():
            y = model.generate(x.to(model.dtype).contiguous(memory_format=torch.channels_last),
                               c).float()
        diff = (y - ref).abs()
        print(f"agreement with the official network ({p}): max |diff| {diff.max():.2e}, "
              f"mean {diff.mean():.2e} (1 uint8 level = {2 / 255:.1e})", flush=True)


# --------------------------------------------------------------------------- StarGAN v2


def main_v2(args: argparse.Namespace) -> int:
    import copy

    from starcli.data.domains import resolve_domains
    from starcli.data.labels import LabelLayout, LabelSpace
    from starcli.families.stargan_v2.networks import V2ModelConfig, build_v2, count_parameters
    from starcli.families.stargan_v2.translator import Translator
    from starcli.runtime import resolve_precision

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cfg = V2ModelConfig(image_size=args.image_size, num_domains=2, dim_in=args.dim_in or None,
                        max_conv_dim=args.max_conv_dim)
    torch.manual_seed(0)
    nets = build_v2(cfg)
    naive_G, naive_F = (copy.deepcopy(nets[n]).to(device).eval() for n in ("G", "F"))
    layout = LabelLayout((LabelSpace("celeba", "celeba", "multilabel", ATTRS, (HAIR,)),))
    domains = resolve_domains(layout.spaces[0], "Male")
    precision = resolve_precision(args.precision, device, inference=True)
    n, k = args.images, args.styles
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1
    y = torch.randint(2, (n,), generator=gen)
    z = torch.randn(n * k, cfg.latent_dim, generator=gen)
    xs, ys = x.repeat_interleave(k, 0), y.repeat_interleave(k, 0)  # row i*k+j: input i, style j
    print(f"stargan-v2: {n} inputs x {k} latent styles, {cfg.image_size} px, dim_in "
          f"{cfg.dim_in}, max_conv_dim {cfg.max_conv_dim} (G {count_parameters(nets['G']):,} "
          f"params), {device}, torch {torch.__version__}, {torch.get_num_threads()} threads",
          flush=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def naive() -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(n):
                xi, yi = x[i:i + 1].to(device), y[i:i + 1].to(device)
                for j in range(k):
                    s = naive_F(z[i * k + j:i * k + j + 1].to(device), yi)
                    out.append(naive_G(xi, s).cpu())
        return torch.cat(out)

    def family(tr: Translator) -> torch.Tensor:
        out = []
        for a in range(0, n * k, args.batch):
            out.append(tr.generate_latent(xs[a:a + args.batch], ys[a:a + args.batch],
                                          z[a:a + args.batch]).float().cpu())
        return torch.cat(out)

    translators = {p: Translator(copy.deepcopy(nets["G"]), copy.deepcopy(nets["F"]),
                                 copy.deepcopy(nets["E"]), None, domains, layout, device, p)
                   for p in sorted({"fp32", precision})}
    reference = naive()
    for p, tr in translators.items():
        diff = (family(tr) - reference).abs()
        print(f"agreement with the naive loop ({p}): max |diff| {diff.max():.2e}, "
              f"mean {diff.mean():.2e}", flush=True)
    sides = {"naive fp32 loop (1 image x 1 style)": naive}
    for p, tr in translators.items():
        sides[f"family Translator ({p}, batch {args.batch})"] = lambda tr=tr: family(tr)
    times: dict[str, list[float]] = {s: [] for s in sides}
    for rep in range(args.repeat):
        order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
        for name in order:
            sync()
            t0 = time.perf_counter()
            sides[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
            print(f"[{rep + 1}/{args.repeat}] {name}: {times[name][-1]:6.2f} s  "
                  f"{n * k / times[name][-1]:7.1f} translations/s", flush=True)
    base = statistics.median(times[next(iter(sides))])
    for name in list(sides)[1:]:
        print(f"ratio {name} / naive: {base / statistics.median(times[name]):.2f}x "
              f"(median of {args.repeat})", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="faces in the folder")
    parser.add_argument("--skip-fp32", action="store_true",
                        help="skip the starcli fp32 run (only the default precision)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="alternating repeats (median ratio reported)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    v2 = parser.add_argument_group("--family stargan-v2")
    v2.add_argument("--family", choices=("stargan-v1", "stargan-v2"), default="stargan-v1")
    v2.add_argument("--styles", type=int, default=10, help="latent styles per input")
    v2.add_argument("--image-size", type=int, default=64)
    v2.add_argument("--dim-in", type=int, default=32, help="0: the official 2**14 / size")
    v2.add_argument("--max-conv-dim", type=int, default=128)
    v2.add_argument("--batch", type=int, default=16, help="translator batch")
    v2.add_argument("--device", default="cpu")
    v2.add_argument("--precision", default="auto", help="the translator's (auto: bf16 where "
                    "the hardware has it)")
    args = parser.parse_args(argv)
    if args.family == "stargan-v2":
        return main_v2(args)

    from starcli.checkpoint import save_checkpoint
    from starcli.data.labels import LabelLayout, LabelSpace
    from starcli.families.stargan_v1.networks import Discriminator, Generator, ModelConfig
    from starcli.families.stargan_v1.official import to_official_generator
    from starcli.runtime import resolve_precision

    work = Path(tempfile.mkdtemp(prefix="bench-translate-"))
    try:
        folder = work / "faces"
        make_faces(folder, args.images)
        rng = np.random.default_rng(1)
        labels = {}
        for name in sorted(os.listdir(folder)):
            row = [0, 0, 0, int(rng.integers(0, 2)), int(rng.integers(0, 2))]
            row[int(rng.integers(0, 3))] = 1
            labels[name] = row
        cfg = ModelConfig(image_size=SIZE, c_dim=5)  # the paper's networks
        torch.manual_seed(0)
        G, D = Generator(cfg), Discriminator(cfg)
        layout = LabelLayout((LabelSpace("celeba", "celeba", "multilabel", ATTRS, (HAIR,)),))
        save_checkpoint(work / "run", 200000, {"G": G, "D": D},
                        {"model": cfg.to_dict(), "labels": layout.to_dict(), "train": {},
                         "datasets": []}, None, keep_last=1)
        g_official = to_official_generator(G.state_dict())
        auto = resolve_precision("auto", torch.device("cpu"), inference=True)
        print(f"{args.images} faces of {SIZE} px, 5 targets each, paper-size G "
              f"({sum(p.numel() for p in G.parameters()):,} params), torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} CPUs", flush=True)

        check_agreement(G, g_official, auto)
        precisions = [auto] if args.skip_fp32 or auto == "fp32" else ["fp32", auto]
        ratios: dict[str, list[float]] = {p: [] for p in precisions}
        for rep in range(args.repeat):
            # Alternate the order between repeats: on a shared machine the load drifts.
            order = ["official", *precisions]
            if rep % 2:
                order.reverse()
            rates = {}
            for what in order:
                if what == "official":
                    t = run_official(folder, g_official, work / f"official-{rep}", labels)
                    label = "official test loop (fp32, PIL, batch 16, JPEG grids)"
                else:
                    t, summary = run_starcli(folder, work / "run", work / f"out-{what}-{rep}",
                                             what)
                    assert summary["translated"] == args.images, summary
                    label = f"starcli translate ({what}, batch 16, PNG per image+target)"
                rates[what] = args.images / t
                print(f"[{rep + 1}/{args.repeat}] {label}: {t:7.1f} s  "
                      f"{rates[what]:6.2f} images/s", flush=True)
            for p in precisions:
                ratios[p].append(rates[p] / rates["official"])
        for p in precisions:
            print(f"ratio starcli ({p}) / official: median {statistics.median(ratios[p]):.2f}x "
                  f"over {args.repeat} run(s) {[round(r, 2) for r in ratios[p]]}")
        print(f"ratio starcli/official (default precision {auto}): "
              f"{statistics.median(ratios[auto]):.2f}x (target >= 3x)")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
