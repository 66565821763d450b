"""The StarGAN v2 eval protocol (FID and LPIPS, latent- and reference-guided) for style-based
checkpoints (`translator.has_styles`).

For every ordered pair of domains (source s, target t, s != t: K(K-1) tasks), every split image
of s (default: test) gets `outputs` translations to t (10 in the paper):

- latent: a fresh z ~ N(0, I) per output and per image, style F(z, t) (no truncation);
- reference: style E(x_ref, t), x_ref from a loader over t's split images as the official
  code pairs them: shuffled batches of `batch_size` with drop_last, truncated to the source
  batch, re-created (reshuffled) when exhausted, shared by all sources of t. Output k of a
  batch pairs source k with reference k. The official loader is empty when t has fewer images
  than one batch (issue #134, a crash); here that loader keeps its short batch and, when it
  is shorter than the source batch, the next reshuffled batches are appended.

FID per task: t's TRAIN images (all of them) against the task's outputs (clamped and quantised
to uint8, as the saved PNGs are). Backbones (`--fid-backbone`):
- torchvision: the protocol's own, torchvision ImageNet Inception-v3 pool features, images
  resized to 256 then 299 (PIL bilinear) and ImageNet mean/std normalised, transform_input
  bypassed (torchvision `inception_v3_google-*.pth`);
- tf-inception: the literature's TF FID network (pytorch-fid `pt_inception-2015-12-05-*.pth`),
  as starcli's `fid` metric runs it.

LPIPS per task: per source batch the mean over the 45 pairs (i < j) of an input's 10 outputs
(raw outputs, not clamped), each pair averaged over the batch; then the unweighted mean over
batches. A mode's figure is the mean over tasks; with several seeds, mean and std (population,
ddof=0) over seeds.

    plan = plan_tasks(own, K, outputs=10, batch_size=32, rng=np.random.default_rng(0))
    result = run_protocol(model, images, own, names, backbone, lpips_net, reals=..., ...)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from starcli.errors import StarcliError
from starcli.fid import FEATURE_DIM, FeatureStats, fid_between, hub_checkpoint_dir

__all__ = ["BACKBONES", "MODES", "OUTPUTS_PER_INPUT", "Task", "FidBackbone", "RefLoader",
           "plan_tasks", "load_backbone", "torchvision_input", "run_protocol", "summarise",
           "markdown_lines"]

BACKBONES = ("torchvision", "tf-inception")
MODES = ("latent", "reference")
OUTPUTS_PER_INPUT = 10
_HUB = {"torchvision": "inception_v3_google-*.pth",
        "tf-inception": "pt_inception-2015-12-05-*.pth"}
_FILES = {"torchvision": "torchvision inception_v3_google-0cc3c7bd.pth",
          "tf-inception": "pytorch-fid pt_inception-2015-12-05-6726825d.pth"}
_KIND = {"torchvision": "torchvision", "tf-inception": "pytorch-fid"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METRIC_KEYS = ("fid_latent", "fid_reference", "lpips_latent", "lpips_reference")


# --- The generation plan -----------------------------------------------------------------------

class RefLoader:
    """The official reference loader over one target domain's rows: shuffled, drop_last,
    re-created when exhausted; `next(n)` gives the next batch truncated to n rows."""

    def __init__(self, pool: np.ndarray, batch_size: int, rng: np.random.Generator) -> None:
        self.pool = np.asarray(pool, np.int64)
        self.batch_size = batch_size
        self.rng = rng
        # drop_last only where at least one full batch exists (the official loader is empty
        # otherwise and eval crashes).
        self.drop_last = len(self.pool) >= batch_size
        self.epochs = 0  # loaders created so far
        self._batches: list[np.ndarray] = []

    def _batch(self) -> np.ndarray:
        if not self._batches:
            perm = self.rng.permutation(self.pool)
            stop = len(perm) - len(perm) % self.batch_size if self.drop_last else len(perm)
            self._batches = [perm[i:i + self.batch_size] for i in range(0, stop,
                                                                          self.batch_size)]
            self.epochs += 1
        return self._batches.pop(0)

    def next(self, n: int) -> np.ndarray:
        if not len(self.pool):
            raise ValueError("no reference images")
        out = self._batch()
        while len(out) < n:  # only for pools smaller than one batch
            out = np.concatenate([out, self._batch()])
        return out[:n]


@dataclass(frozen=True)
class Task:
    source: int
    target: int
    batches: tuple[np.ndarray, ...]  # source rows of each batch (shuffled)
    # refs[b][k]: the reference rows of output k of batch b (None: t has no images)
    refs: tuple[tuple[np.ndarray, ...], ...] | None

    @property
    def inputs(self) -> int:
        return int(sum(len(b) for b in self.batches))


def plan_tasks(own: np.ndarray, num_domains: int, *, outputs: int = OUTPUTS_PER_INPUT,
               batch_size: int = 32, rng: np.random.Generator) -> list[Task]:
    """The K(K-1) tasks in the official order (targets outer, sources inner), for split rows
    whose domains are `own` (-1: in none, left out)."""
    own = np.asarray(own)
    tasks = []
    for t in range(num_domains):
        pool = np.flatnonzero(own == t)
        loader = RefLoader(pool, batch_size, rng) if len(pool) else None
        for s in range(num_domains):
            if s == t:
                continue
            rows = rng.permutation(np.flatnonzero(own == s))
            batches = tuple(rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
            refs = None if loader is None else tuple(
                tuple(loader.next(len(b)) for _ in range(outputs)) for b in batches)
            tasks.append(Task(s, t, batches, refs))
    return tasks


# --- FID backbones -------------------------------------------------------------------------------

@dataclass
class FidBackbone:
    """Features of uint8 (N, H, W, 3) images for FID; `name` is one of BACKBONES."""

    name: str
    path: Path | None
    features: Callable[[np.ndarray], np.ndarray]
    dim: int = FEATURE_DIM


def torchvision_input(images: np.ndarray) -> torch.Tensor:
    """The protocol's Inception input: uint8 (N, H, W, 3) → resize to 256, then 299 (PIL
    bilinear), [0, 1], ImageNet mean/std → float32 (N, 3, 299, 299)."""
    from PIL import Image

    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    out = []
    for im in images:
        pil = Image.fromarray(np.ascontiguousarray(im)).resize((256, 256), Image.BILINEAR)
        pil = pil.resize((299, 299), Image.BILINEAR)
        out.append((np.asarray(pil, np.float32) / 255.0 - mean) / std)
    if not out:
        return torch.zeros(0, 3, 299, 299)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def how_to_provide(backbone: str) -> str:
    return (f"FID ({backbone} backbone) skipped: no weights; pass --inception-weights FILE "
            f"({_FILES[backbone]}) or copy it into {hub_checkpoint_dir()}/.")


def load_backbone(backbone: str, weights: Path | None, device: torch.device
                  ) -> tuple[FidBackbone | None, str | None]:
    """(the backbone, None) or (None, the one line naming the file to get). Only local files:
    `weights`, else the backbone's file in the torch hub cache."""
    from starcli.fid import _build, _read_state_dict, find_weights

    if backbone not in BACKBONES:
        raise StarcliError(f"--fid-backbone {backbone}: choose {' or '.join(BACKBONES)}.")
    if weights is not None:
        path = find_weights(weights)
    else:
        folder = hub_checkpoint_dir()
        hits = sorted(folder.glob(_HUB[backbone])) if folder.is_dir() else []
        path = hits[0] if hits else None
    if path is None:
        return None, how_to_provide(backbone)
    net = _build(_read_state_dict(path), path, device)
    if net.kind != _KIND[backbone]:
        other = next(b for b in BACKBONES if _KIND[b] == net.kind)
        raise StarcliError(f"--inception-weights {path} holds the {other} network but "
                           f"--fid-backbone is {backbone}; pass {_FILES[backbone]} or "
                           f"--fid-backbone {other}.")
    if backbone == "torchvision":
        @torch.no_grad()
        def features(images: np.ndarray, batch: int = 32) -> np.ndarray:
            out = [net.net(torchvision_input(images[i:i + batch]).to(device)).double().cpu()
                   .numpy() for i in range(0, len(images), batch)]
            return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))
    else:
        from starcli.data.dataset import to_tensor

        def features(images: np.ndarray) -> np.ndarray:
            return net.features(to_tensor(np.ascontiguousarray(images)))
    return FidBackbone(backbone, path, features), None


# --- Running the protocol ----------------------------------------------------------------------

def _uint8(fake: torch.Tensor) -> np.ndarray:
    """Raw outputs → what the saved PNG holds: clamped, quantised uint8 (N, H, W, 3)."""
    u8 = fake.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _diversity(lpips_net, outs: Sequence[torch.Tensor]) -> float:
    """Mean over the pairs i < j of the batch-mean LPIPS between outputs i and j."""
    vals = [float(lpips_net(outs[i], outs[j]).mean()) for i in range(len(outs))
            for j in range(i + 1, len(outs))]
    return float(np.mean(vals)) if vals else float("nan")


def _mean(values: Iterable[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return float(np.mean(got)) if got else None


def real_stats(backbone: FidBackbone, reals: Iterable[tuple[np.ndarray, np.ndarray]],
               num_domains: int) -> list[FeatureStats]:
    """Per domain, the FID statistics of the (uint8 images, domain per image) batches."""
    stats = [FeatureStats(backbone.dim) for _ in range(num_domains)]
    for images, own in reals:
        for d in range(num_domains):
            keep = np.asarray(own) == d
            if keep.any():
                stats[d].add(backbone.features(images[keep]))
    return stats


@torch.no_grad()
def run_seed(model: Any, images: np.ndarray, own: np.ndarray, names: Sequence[str], *,
             seed: int, outputs: int, batch_size: int, backbone: FidBackbone | None,
             reals: list[FeatureStats] | None, lpips_net=None,
             on_batch: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """One seed of the protocol: the per-task rows (FID against `reals[t]`, LPIPS)."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    device = getattr(model, "device", torch.device("cpu"))
    rows = []
    for task in plan_tasks(own, len(names), outputs=outputs, batch_size=batch_size, rng=rng):
        row: dict[str, Any] = {"source": names[task.source], "target": names[task.target],
                               "inputs": task.inputs, "outputs": task.inputs * outputs}
        for mode in MODES:
            fid_key, lp_key = f"fid_{mode}", f"lpips_{mode}"
            row[fid_key] = row[lp_key] = None
            if not task.inputs or (mode == "reference" and task.refs is None):
                continue
            fakes = FeatureStats(backbone.dim) if backbone is not None else None
            per_batch = []
            for b, part in enumerate(task.batches):
                x = model.to_input(images[part]).float()
                y = torch.full((len(part),), task.target, dtype=torch.long, device=device)
                outs = []
                for k in range(outputs):
                    if mode == "latent":
                        z = torch.randn(len(part), model.latent_dim, generator=gen)
                        s = model.latent_style(z, y)
                    else:
                        ref = model.to_input(images[task.refs[b][k]]).float()
                        s = model.reference_style(ref, y)
                    fake = model.generate_styled(x, s).float()
                    if fakes is not None:
                        fakes.add(backbone.features(_uint8(fake)))
                    if lpips_net is not None:
                        outs.append(fake)
                if lpips_net is not None:
                    per_batch.append(_diversity(lpips_net, outs))
                if on_batch is not None:
                    on_batch(len(part) * outputs)
            if fakes is not None and reals is not None:
                real = reals[task.target]
                row[f"{fid_key}_reals"] = real.count
                if real.count >= 2 and fakes.count >= 2:
                    row[fid_key] = fid_between(real, fakes)
            if lpips_net is not None:
                row[lp_key] = _mean(per_batch)
        rows.append(row)
    return rows


def summarise(per_seed: list[list[dict[str, Any]]], seeds: Sequence[int]) -> dict[str, Any]:
    """Per task the mean over seeds; per metric the mean over tasks, then mean and std over
    seeds (ddof=0)."""
    task_means = []
    for i, first in enumerate(per_seed[0]):
        row = {k: first[k] for k in ("source", "target", "inputs", "outputs")}
        for key in METRIC_KEYS:
            row[key] = _mean(run[i][key] for run in per_seed)
        for key in ("fid_latent_reals", "fid_reference_reals"):
            if key in first:
                row[key] = first[key]
        task_means.append(row)
    seed_rows = []
    for seed, rows in zip(seeds, per_seed, strict=True):
        seed_rows.append({"seed": seed, "mean": {k: _mean(r[k] for r in rows)
                                                 for k in METRIC_KEYS}, "tasks": rows})
    mean, std = {}, {}
    for key in METRIC_KEYS:
        vals = [s["mean"][key] for s in seed_rows if s["mean"][key] is not None]
        mean[key] = float(np.mean(vals)) if vals else None
        std[key] = float(np.std(vals)) if vals else None
    return {"tasks": task_means, "mean": mean, "std": std, "per_seed": seed_rows}


def run_protocol(model: Any, images: np.ndarray, own: np.ndarray, names: Sequence[str], *,
                 backbone: FidBackbone | None, lpips_net=None,
                 reals: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
                 seeds: Sequence[int] = (0,), outputs: int = OUTPUTS_PER_INPUT,
                 batch_size: int = 32, on_batch: Callable[[int], None] | None = None
                 ) -> dict[str, Any]:
    """The protocol for uint8 split images (N, S, S, 3) with domains `own`; `reals` yields
    (uint8 train images, their domains) batches for FID. Returns summarise()'s dict."""
    real = None
    if backbone is not None and reals is not None:
        real = real_stats(backbone, reals, len(names))
    per_seed = [run_seed(model, images, own, names, seed=s, outputs=outputs,
                         batch_size=batch_size, backbone=backbone, reals=real,
                         lpips_net=lpips_net, on_batch=on_batch) for s in seeds]
    return summarise(per_seed, list(seeds))


def _fmt(mean: float | None, std: float | None, digits: int, seeds: int) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if seeds > 1 else "")


def markdown_lines(v2: dict[str, Any]) -> list[str]:
    """report.md's lines for the protocol (one per figure, plus skips)."""
    if v2.get("skipped_all"):
        return [f"> {v2['skipped_all']}", ""]
    n = len(v2.get("seeds") or [0])
    m, s = v2.get("mean") or {}, v2.get("std") or {}
    lines = ["## StarGAN v2 protocol (mean over the K(K-1) tasks"
             + (f", mean ± std over {n} seeds)" if n > 1 else ")"), ""]
    for note in v2.get("skipped") or []:
        lines.append(f"> {note}")
    backbone = v2.get("backbone")
    for mode in MODES:
        if v2.get("fid"):
            lines.append(f"- FID {mode} ({backbone} backbone): "
                         f"{_fmt(m.get(f'fid_{mode}'), s.get(f'fid_{mode}'), 2, n)}")
        if v2.get("lpips"):
            lines.append(f"- LPIPS {mode}: "
                         f"{_fmt(m.get(f'lpips_{mode}'), s.get(f'lpips_{mode}'), 4, n)}")
    per = "; ".join(f"{t['source']}→{t['target']}: FID {_fmt(t['fid_latent'], None, 2, 1)}/"
                    f"{_fmt(t['fid_reference'], None, 2, 1)}, LPIPS "
                    f"{_fmt(t['lpips_latent'], None, 4, 1)}/"
                    f"{_fmt(t['lpips_reference'], None, 4, 1)}" for t in v2.get("tasks") or [])
    if per:
        lines.append(f"- per task (latent/reference): {per}")
    return lines + [""]


# --- What `starcli eval` calls ------------------------------------------------------------------

def _split_images(dataset, split: str, limit: int | None, columns: Sequence[int], domains
                  ) -> tuple[np.ndarray, np.ndarray]:
    from starcli.data.dataset import iterate_split

    parts, own = [], []
    for images, labels, _ in iterate_split(dataset, split, batch_size=256, limit=limit):
        parts.append(images)
        own.append(domains.assign(labels[:, list(columns)]))
    if not parts:
        return np.zeros((0, dataset.image_size, dataset.image_size, 3), np.uint8), \
            np.zeros(0, np.int64)
    return np.concatenate(parts), np.concatenate(own)


def _train_reals(dataset, columns: Sequence[int], domains, batch_size: int):
    from starcli.data.dataset import iterate_split

    for images, labels, _ in iterate_split(dataset, "train", batch_size=batch_size):
        yield images, domains.assign(labels[:, list(columns)])


def evaluate_protocol(ckpt, dataset, columns: Sequence[int], cfg, device: torch.device,
                      progress=None) -> dict[str, Any]:
    """report.json's "v2_protocol" for one prepared dataset (`cfg` an EvalConfig): the figures
    the requested metrics (fid_v2, lpips) allow, and a one-line note for each one skipped."""
    from starcli.families import get_family
    from starcli.lpips import load_lpips
    from starcli.progress import log, progress_task

    want_fid, want_lpips = "fid_v2" in cfg.metrics, "lpips" in cfg.metrics
    model = get_family(ckpt.family).translator(ckpt, device, "fp32", fast=False)
    if not getattr(model, "has_styles", False):
        note = (f"fid_v2, lpips: applies to StarGAN v2 checkpoints (this one is "
                f"{ckpt.family}); skipped.")
        log(progress, note)
        return {"skipped_all": note}
    skipped = []
    backbone = lpips_net = None
    if want_fid:
        backbone, note = load_backbone(cfg.fid_backbone, cfg.inception_weights, device)
        if note:
            skipped.append(note)
        elif "train" not in dataset.splits:
            skipped.append(f"FID skipped: {dataset.name} has no train split (the real set).")
            backbone = None
    if want_lpips:
        lpips_net, note = load_lpips(cfg.lpips_weights, cfg.alexnet_weights, device)
        if note:
            skipped.append(note)
    for note in skipped:
        log(progress, note)
    domains = ckpt.model.domains
    names = list(domains.names)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    info: dict[str, Any] = {
        "backbone": cfg.fid_backbone, "fid": backbone is not None,
        "lpips": lpips_net is not None, "dataset": dataset.name, "split": cfg.split,
        "fid_reals": "train", "outputs_per_input": cfg.outputs_per_input, "seeds": seeds,
        "fid_weights": str(backbone.path) if backbone is not None else None,
        "lpips_weights": getattr(lpips_net, "weights", None), "skipped": skipped,
    }
    if backbone is None and lpips_net is None:
        return {**info, "tasks": [], "mean": dict.fromkeys(METRIC_KEYS),
                "std": dict.fromkeys(METRIC_KEYS)}
    images, own = _split_images(dataset, cfg.split, cfg.num_images, columns, domains)
    k = len(names)
    inputs = sum(int((own == s).sum()) for t in range(k) for s in range(k) if s != t)
    total = inputs * cfg.outputs_per_input * len(MODES) * len(seeds)
    log(progress, f"eval {dataset.name}: StarGAN v2 protocol, {k * (k - 1)} tasks, "
                  f"{cfg.outputs_per_input} outputs per input, {len(seeds)} seed(s), FID "
                  f"backbone {cfg.fid_backbone}")
    reals = (_train_reals(dataset, columns, domains, cfg.batch_size)
             if backbone is not None else None)
    with progress_task(progress, f"v2 protocol {dataset.name}", total=total,
                       unit="images") as task:
        result = run_protocol(model, images, own, names, backbone=backbone,
                              lpips_net=lpips_net, reals=reals, seeds=seeds,
                              outputs=cfg.outputs_per_input, batch_size=cfg.batch_size,
                              on_batch=task.advance)
    return {**info, **result,
            "notes": {"fid": f"per task: {cfg.fid_backbone} Inception features of all train "
                             f"images of the target domain against the outputs (uint8)",
                      "lpips": "per task: mean over source batches of the mean LPIPS (v0.1, "
                               "AlexNet) over the pairs of one input's outputs",
                      "mean": "mean over tasks (and over seeds); std: over seeds, ddof=0",
                      "references": "shuffled batches of the target's split images, "
                                    "truncated to the source batch; a target with fewer "
                                    "images than one batch keeps its short batch (the "
                                    "official drop_last loader would be empty)"}}
