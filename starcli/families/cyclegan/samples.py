"""CycleGAN sample grids, and the first images of each domain of a split."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from starcli.data.dataset import PreparedDataset, iterate_split, to_tensor
from starcli.data.domains import Domains
from starcli.runtime import Runtime

__all__ = ["Sampler", "domain_rows"]

PER_DOMAIN = 4


def domain_rows(ds: PreparedDataset, domains: Domains, split: str, per_domain: int,
                scan: int = 4096) -> list[np.ndarray]:
    """The first `per_domain` uint8 images of each domain in `split` (row order)."""
    found: list[list[np.ndarray]] = [[] for _ in range(len(domains))]
    for images, labels, _ in iterate_split(ds, split, batch_size=256, limit=scan):
        which = domains.assign(labels)
        for k in range(len(domains)):
            need = per_domain - len(found[k])
            if need > 0:
                found[k].extend(images[which == k][:need])
        if all(len(f) >= per_domain for f in found):
            break
    return [np.stack(f) if f else np.zeros((0, ds.image_size, ds.image_size, 3), np.uint8)
            for f in found]


class Sampler:
    """The first test faces (rows) through both generators (columns: input, G_AB, G_BA).

    The engine builds the sampler from the datasets and the label layout only, so the grid
    does not pick faces by domain: each face is shown through both directions (the one that
    matches its domain is the translation, the other shows what G leaves alone)."""

    def __init__(self, datasets: tuple[PreparedDataset, ...], device: torch.device) -> None:
        ds = datasets[0]
        split = next((s for s in ("test", "valid", "train") if ds.splits.get(s)), "train")
        n = 2 * PER_DOMAIN
        images, _, _ = next(iterate_split(ds, split, batch_size=n, limit=n))
        self.inputs = to_tensor(images).to(device)
        self.columns = ["input", "G_AB", "G_BA"]

    @torch.no_grad()
    def grid(self, modules: dict[str, nn.Module], rt: Runtime) -> np.ndarray:
        x = self.inputs
        with rt.autocast():
            cols = [x.float(), modules["G_AB"](x).float(), modules["G_BA"](x).float()]
        tiles = torch.stack(cols, dim=1).cpu()
        r, k, _, s, _ = tiles.shape
        pad = 2
        canvas = torch.ones(3, r * (s + pad) + pad, k * (s + pad) + pad)
        for i in range(r):
            for j in range(k):
                y0, x0 = pad + i * (s + pad), pad + j * (s + pad)
                canvas[:, y0:y0 + s, x0:x0 + s] = tiles[i, j]
        img = ((canvas.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return img.permute(1, 2, 0).numpy()
