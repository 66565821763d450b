"""StarGAN v1 sample grids: fixed test faces (rows) translated into every target (columns)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from starcli.data.dataset import PreparedDataset, iterate_split, to_tensor
from starcli.data.labels import LabelLayout
from starcli.runtime import Runtime

__all__ = ["Sampler", "sample_targets", "SAMPLES_PER_DATASET"]

SAMPLES_PER_DATASET = 8  # fixed inputs in the sample grid (split across joint datasets)


@dataclass(frozen=True)
class _Target:
    column: str  # "<dataset>:<label>" (the domain shown in this column)
    space: int
    make: Callable[[torch.Tensor | None], torch.Tensor]  # input labels (or None) → target


def sample_targets(layout: LabelLayout) -> list[_Target]:
    """Every target domain of every label space: each class of a one-hot space; for a
    multi-label space each member of an exclusive group (set on, the rest of its group off)
    and every other label flipped. Inputs from another space start from all-off labels."""
    targets: list[_Target] = []
    for si, space in enumerate(layout.spaces):
        width = space.width
        for k, name in enumerate(space.names):
            column = f"{space.dataset}:{name}"
            if space.kind == "onehot":
                def make(lab, k=k, width=width):
                    n = 1 if lab is None else lab.shape[0]
                    out = torch.zeros(n, width)
                    out[:, k] = 1
                    return out
            else:
                group = [space.names.index(g) for g in (space.group_of(name) or ())]

                def make(lab, k=k, width=width, group=tuple(group)):
                    out = torch.zeros(1, width) if lab is None else lab.clone().float()
                    if group:
                        out[:, list(group)] = 0
                        out[:, k] = 1
                    elif lab is None:
                        out[:, k] = 1
                    else:
                        out[:, k] = 1 - out[:, k]
                    return out
            targets.append(_Target(column, si, make))
    return targets


class Sampler:
    """Fixed inputs (the first few images of each dataset's test split) × every target."""

    def __init__(self, datasets: tuple[PreparedDataset, ...], layout: LabelLayout,
                 device: torch.device) -> None:
        per = max(2, SAMPLES_PER_DATASET // len(datasets))
        self.inputs: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        for ds in datasets:
            split = next((s for s in ("test", "valid", "train") if ds.splits.get(s)), None)
            if split is None:
                continue
            images, labels, _ = next(iterate_split(ds, split, batch_size=per, limit=per))
            self.inputs.append((layout.index_of(ds.space.dataset),
                                to_tensor(images).to(device), torch.from_numpy(labels)))
        self.layout = layout
        self.targets = sample_targets(layout)
        self.columns = ["input"] + [t.column for t in self.targets]

    @torch.no_grad()
    def grid(self, modules: dict[str, nn.Module], rt: Runtime) -> np.ndarray:
        """uint8 (H, W, 3): one row per input, its translation into each target per column
        (by modules["G"], the moving average where the run keeps one)."""
        G = modules["G"]
        rows = []
        for space, x, labels in self.inputs:
            cols = [x]
            for t in self.targets:
                lab = t.make(labels if t.space == space else None)
                if lab.shape[0] == 1:
                    lab = lab.expand(x.shape[0], -1)
                c = self.layout.encode(t.space, lab.to(x.device))
                with rt.autocast():
                    cols.append(G(x, c).float())
            rows.append(torch.stack(cols, dim=1))  # (n, cols, 3, S, S)
        if not rows:
            return np.zeros((1, 1, 3), np.uint8)
        tiles = torch.cat(rows)  # (rows, cols, 3, S, S)
        r, k, _, s, _ = tiles.shape
        pad = 2
        canvas = torch.ones(3, r * (s + pad) + pad, k * (s + pad) + pad)
        for i in range(r):
            for j in range(k):
                y, xx = pad + i * (s + pad), pad + j * (s + pad)
                canvas[:, y:y + s, xx:xx + s] = tiles[i, j].cpu()
        img = ((canvas.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return img.permute(1, 2, 0).numpy()

