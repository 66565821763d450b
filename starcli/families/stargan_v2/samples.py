"""StarGAN v2 sample grids: a few test faces, each translated into every domain with a few
latent styles (the moving averages; fixed z, so grids of one run compare across steps), and
beside them the paper's reference matrix: the same faces across the top, other test faces
down the left as references, each cell a face in a reference's style (the reference's
domain read by D)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from starcli.data.dataset import PreparedDataset, iterate_split, to_tensor
from starcli.families.stargan_v2.fan import face_masks
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
        images, _, _ = next(iterate_split(ds, split, batch_size=2 * FACES, limit=2 * FACES))
        self.inputs = to_tensor(images[:FACES]).to(device)
        self.refs = to_tensor(images[FACES:]).to(device)  # may be empty for tiny splits
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
        fan = modules.get("FAN")
        masks = None if fan is None else face_masks(fan, faces)
        with rt.autocast():
            out = G(faces, F(zz, y), masks=masks).float()
        out = out.view(n, k, STYLES, *x.shape[1:])
        rows = []
        for i in range(n):
            for d in range(k):
                rows.append(torch.cat([x[i:i + 1].float(), out[i, d]]))
        canvas = _canvas(torch.stack(rows).cpu())  # (rows, 1 + STYLES, 3, S, S)
        E, D = modules.get("E"), modules.get("D")
        if E is not None and D is not None and len(self.refs):
            refs = self.refs
            with rt.autocast():
                y_ref = D.logits(refs).float().argmax(1)
                styles = E(refs, y_ref)  # (R, style_dim)
                r = len(refs)
                sources = x.repeat(r, 1, 1, 1)
                masks = None if fan is None else face_masks(fan, sources)
                cells = G(sources, styles.repeat_interleave(n, 0), masks=masks).float()
            cells = cells.view(r, n, *x.shape[1:])
            blank = torch.ones_like(x[:1]).float()
            matrix = [torch.cat([blank, x.float()])]
            matrix += [torch.cat([refs[j:j + 1].float(), cells[j]]) for j in range(r)]
            right = _canvas(torch.stack(matrix).cpu())
            h = max(canvas.shape[1], right.shape[1])
            canvas = torch.cat([_pad_to(canvas, h), torch.ones(3, h, 8), _pad_to(right, h)], 2)
        img = ((canvas.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return img.permute(1, 2, 0).numpy()


def _canvas(tiles: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """(3, H, W) in [-1, 1]: (rows, cols, 3, S, S) tiles on white with `pad` gaps."""
    r, c, _, s, _ = tiles.shape
    canvas = torch.ones(3, r * (s + pad) + pad, c * (s + pad) + pad)
    for i in range(r):
        for j in range(c):
            y0, x0 = pad + i * (s + pad), pad + j * (s + pad)
            canvas[:, y0:y0 + s, x0:x0 + s] = tiles[i, j]
    return canvas


def _pad_to(canvas: torch.Tensor, height: int) -> torch.Tensor:
    """`canvas` with white rows below it up to `height`."""
    extra = height - canvas.shape[1]
    return canvas if extra <= 0 else torch.cat([canvas, torch.ones(3, extra, canvas.shape[2])], 1)
