"""StarGAN v2 sample grids: a few test faces, each translated into every domain with a few
latent styles (the moving averages; fixed z, so grids of one run compare across steps)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from starcli.data.dataset import PreparedDataset, iterate_split, to_tensor
from starcli.runtime import Runtime

__all__ = ["Sampler", "FACES", "STYLES"]

FACES = 4  # test faces (rows: one per face and target domain)
STYLES = 3  # latent styles per domain (columns after the input)
SEED = 1234


class Sampler:
    """Rows: face × target domain; columns: the input, then STYLES latent styles F(z_j, k).

    The engine builds the sampler from the datasets alone, so the number of domains comes from
    the mapping network at grid time; the same z_j serve every face and domain."""

    def __init__(self, datasets: tuple[PreparedDataset, ...], device: torch.device) -> None:
        ds = datasets[0]
        split = next((s for s in ("test", "valid", "train") if ds.splits.get(s)), "train")
        images, _, _ = next(iterate_split(ds, split, batch_size=FACES, limit=FACES))
        self.inputs = to_tensor(images).to(device)
        self.columns = ["input"] + [f"style {j + 1}" for j in range(STYLES)]

    @torch.no_grad()
    def grid(self, modules: dict[str, nn.Module], rt: Runtime) -> np.ndarray:
        G, F = modules["G"], modules["F"]
        k, latent = F.cfg.num_domains, F.cfg.latent_dim
        x = self.inputs
        n, device = x.shape[0], x.device
        z = torch.randn(STYLES, latent, generator=torch.Generator().manual_seed(SEED))
        # every (face, domain, style) in one batch: face-major, then domain, then style
        faces = x.repeat_interleave(k * STYLES, 0)
        y = torch.arange(k).repeat_interleave(STYLES).repeat(n).to(device)
        zz = z.repeat(n * k, 1).to(device)
        with rt.autocast():
            out = G(faces, F(zz, y)).float()
        out = out.view(n, k, STYLES, *x.shape[1:])
        rows = []
        for i in range(n):
            for d in range(k):
                rows.append(torch.cat([x[i:i + 1].float(), out[i, d]]))
        tiles = torch.stack(rows).cpu()  # (rows, 1 + STYLES, 3, S, S)
        r, c, _, s, _ = tiles.shape
        pad = 2
        canvas = torch.ones(3, r * (s + pad) + pad, c * (s + pad) + pad)
        for i in range(r):
            for j in range(c):
                y0, x0 = pad + i * (s + pad), pad + j * (s + pad)
                canvas[:, y0:y0 + s, x0:x0 + s] = tiles[i, j]
        img = ((canvas.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return img.permute(1, 2, 0).numpy()
