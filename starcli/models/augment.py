"""Differentiable augmentation of discriminator inputs (in the spirit of DiffAugment, Zhao et
al. 2020: the same random transforms for real and generated images, in D's step and in G's).

    x = augment(x, ("shift", "cutout"), generator)

Each image gets its own draw. Random numbers come from the CPU `generator` the training loop
saves in its checkpoints, so a resumed run draws the same transforms. Gradients flow through
every transform to the images (G learns through them).

- ``shift``: an integer translation of up to 1/8 of each side, the uncovered border zero.
- ``jitter``: an integer translation of up to 1/16 of each side, the border repeating the edge
  pixels (a milder shift: D's classifier still learns through it).
- ``cutout``: one square of a quarter of the side set to zero, anywhere (clipped at edges).
- ``noise``: Gaussian noise of standard deviation 0.1 on every pixel (randomised smoothing:
  a perturbation must be larger than the noise to move D's reading).
- ``colour``: brightness (+U(-0.25, 0.25)), saturation (×U(0.5, 1.5)) and contrast
  (×U(0.75, 1.25)) around each image's mean. Milder than DiffAugment's, since hair colour is
  itself a label here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["augment", "total_variation", "ORDER"]


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float, like: torch.Tensor
             ) -> torch.Tensor:
    u = torch.rand(n, generator=gen)
    return (lo + (hi - lo) * u).to(device=like.device, dtype=like.dtype)


def _colour(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    x = x + _uniform(gen, n, -0.25, 0.25, x)[:, None, None, None]
    grey = x.mean(dim=1, keepdim=True)
    x = grey + (x - grey) * _uniform(gen, n, 0.5, 1.5, x)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * _uniform(gen, n, 0.75, 1.25, x)[:, None, None, None]


def _noise(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)
    return x + 0.1 * noise


def _translate(x: torch.Tensor, gen: torch.Generator, fraction: int, replicate: bool
               ) -> torch.Tensor:
    n, _, h, w = x.shape
    limit_y, limit_x = max(h // fraction, 1), max(w // fraction, 1)
    dy = torch.randint(-limit_y, limit_y + 1, (n,), generator=gen)
    dx = torch.randint(-limit_x, limit_x + 1, (n,), generator=gen)
    # Output pixel (i, j) reads input (i - dy, j - dx): a gather through index grids keeps the
    # shift exact (no interpolation) and differentiable.
    rows = torch.arange(h)[None, :] - dy[:, None]  # (n, h)
    cols = torch.arange(w)[None, :] - dx[:, None]  # (n, w)
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    flat = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]  # (n,h,w)
    index = flat.view(n, 1, h * w).expand(n, x.shape[1], h * w).to(x.device)
    out = torch.gather(x.reshape(n, x.shape[1], h * w), 2, index).view_as(x)
    if replicate:  # the uncovered border repeats the edge pixels
        return out
    return out * valid[:, None].to(device=x.device, dtype=x.dtype)


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return _translate(x, gen, 8, replicate=False)


def _jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return _translate(x, gen, 16, replicate=True)


def _cutout(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    size_y, size_x = max(h // 4, 1), max(w // 4, 1)
    cy = torch.randint(0, h, (n,), generator=gen)
    cx = torch.randint(0, w, (n,), generator=gen)
    ys = torch.arange(h)[None, :] - (cy[:, None] - size_y // 2)
    xs = torch.arange(w)[None, :] - (cx[:, None] - size_x // 2)
    inside = ((ys >= 0) & (ys < size_y))[:, :, None] & ((xs >= 0) & (xs < size_x))[:, None, :]
    return x * (~inside)[:, None].to(device=x.device, dtype=x.dtype)


_OPS = {"colour": _colour, "shift": _shift, "jitter": _jitter, "cutout": _cutout,
        "noise": _noise}
ORDER = ("colour", "shift", "jitter", "cutout", "noise")


def augment(x: torch.Tensor, policy: Sequence[str], gen: torch.Generator) -> torch.Tensor:
    """`x` (N, C, H, W) with every transform named in `policy` applied, in the fixed order
    colour, shift, jitter, cutout, noise (so a policy's order does not change its meaning)."""
    unknown = set(policy) - set(_OPS)
    if unknown:
        raise ValueError(f"unknown augmentations {sorted(unknown)}; known: {', '.join(ORDER)}")
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1
    for name in ORDER:
        if name in policy:
            x = _OPS[name](x, gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring values of `mask` (N, C, H, W) -> 0-d, in
    fp32 (a mask, or the change an edit makes)."""
    m = mask.float()
    return (m[:, :, 1:, :] - m[:, :, :-1, :]).square().mean() + \
        (m[:, :, :, 1:] - m[:, :, :, :-1]).square().mean()

