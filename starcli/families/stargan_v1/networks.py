"""StarGAN v1 generator and discriminator (Choi et al., CVPR 2018, arXiv 1711.09020).

G(x, c) tiles the target label vector `c` over the image and maps the (3 + c_dim)-channel stack
to an RGB image in [-1, 1]. D(x) returns a PatchGAN map of real/fake scores and a vector of
domain-classification logits. At the paper configuration (128 px, 5 labels, width 64, 6 residual
blocks, 6 strided convs) G has 8,430,528 parameters and D 44,762,048.

Both networks work on channels_last tensors and under `torch.autocast` (bf16 or fp16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from starcli.errors import ConfigError
from starcli.families.stargan_v1.config import check_image_size
from starcli.validate import flag

__all__ = ["ModelConfig", "Generator", "Discriminator", "ResidualBlock", "count_parameters"]

# D's LeakyReLU slope, from the paper.
LEAKY_SLOPE = 0.01


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of a StarGAN v1 generator/discriminator pair.

    `c_dim` is every label channel G receives (for a joint CelebA+RaFD model that includes the
    two mask channels); `cls_dim` is the number of D classifier outputs and defaults to `c_dim`
    (a joint model uses `c_dim - 2`).
    """

    image_size: int = 128  # G is fully convolutional; D's classifier kernel depends on it
    c_dim: int = 5  # label channels tiled onto G's input
    cls_dim: int | None = None  # D classifier outputs; None means the same as c_dim
    g_conv_dim: int = 64  # width of G's first conv (doubled twice by the down-sampling)
    d_conv_dim: int = 64  # width of D's first conv (doubled by every strided conv)
    g_repeat_num: int = 6  # residual blocks in G
    g_down_num: int = 2  # stride-2 convs in G before the residual blocks (paper: 2)
    d_repeat_num: int = 6  # stride-2 convs in D (the final map is image_size / 2**d_repeat_num)
    # G predicts a colour image C and an attention mask A and returns A·C + (1 − A)·x
    # (GANimation), so what the mask leaves closed is the input itself. Off in the paper.
    g_blend: bool = False
    # D also has a class-conditional realism head: for every label and each of its values a
    # real/fake score, judged at the image's own labels (reals) or its targets (fakes), as
    # StarGAN v2's multi-task D does per domain. Off in the paper.
    d_cond: bool = False

    def __post_init__(self) -> None:
        for name in ("g_blend", "d_cond"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{flag(name)} must be true or false, got "
                                  f"{getattr(self, name)!r}.")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("g_blend", "d_cond") or (f.name == "cls_dim" and value is None):
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{flag(f.name)} must be an integer, got {value!r}.")
        if self.cls_dim is None:
            # frozen dataclass: resolve the default once so to_dict() is always explicit
            object.__setattr__(self, "cls_dim", self.c_dim)

        for name in ("c_dim", "cls_dim", "g_conv_dim", "d_conv_dim", "d_repeat_num",
                     "g_down_num"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag(name)} must be at least 1, got {getattr(self, name)}.")
        if self.g_repeat_num < 0:
            raise ConfigError(f"--g-repeat-num must be 0 or more, got {self.g_repeat_num}.")
        if self.cls_dim > self.c_dim:
            raise ConfigError(
                f"cls_dim ({self.cls_dim}) cannot exceed c_dim ({self.c_dim}): D classifies "
                "at most the labels G receives."
            )
        check_image_size(self.image_size, self.g_down_num, self.d_repeat_num)

    @property
    def cls_kernel(self) -> int:
        """Side of D's final feature map, which is also the classifier head's kernel size."""
        return self.image_size // 2**self.d_repeat_num

    def to_dict(self) -> dict[str, int | bool]:
        """A JSON-ready dict with every field explicit."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from `to_dict()` output; missing fields take their defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"model config has unknown fields {unknown}; expected some of {sorted(known)}."
            )
        return cls(**data)



def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (works on meta-device modules too)."""
    return sum(p.numel() for p in module.parameters())


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    # Running statistics are never used by StarGAN (normalisation always uses the input's own
    # statistics), so they are not tracked and do not appear in the state_dict.
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


class _ConvNormReLU(nn.Module):
    """conv (no bias; IN's shift makes one redundant) -> InstanceNorm(affine) -> ReLU."""

    def __init__(self, conv: nn.Module, channels: int) -> None:
        super().__init__()
        self.conv = conv
        self.norm = _instance_norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    """x + IN(conv(ReLU(IN(conv(x))))), 3x3 convs, channel count preserved."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm1 = _instance_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = _instance_norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return x + self.norm2(self.conv2(h))


class Generator(nn.Module):
    """G(x, c): x (N, 3, H, W) in [-1, 1], c (N, c_dim) target labels -> (N, 3, H, W) in [-1, 1].

    H and W must be multiples of 2**g_down_num. Zero padding throughout: with reflection padding
    the tiled (constant) label planes would be erased by the first instance norm.

    With `g_blend` a second head predicts an attention mask A = sigmoid(conv) and the output
    is A·tanh(conv) + (1 − A)·x; `G(x, c, with_mask=True)` returns (output, A), A of shape
    (N, 1, H, W), for the mask penalties.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.g_conv_dim
        self.stem = _ConvNormReLU(nn.Conv2d(3 + cfg.c_dim, w, 7, 1, 3, bias=False), w)
        mults = [2**i for i in range(cfg.g_down_num)]  # paper: 1, 2 (widths w -> 2w -> 4w)
        self.down = nn.ModuleList(
            _ConvNormReLU(nn.Conv2d(w * m, w * m * 2, 4, 2, 1, bias=False), w * m * 2)
            for m in mults
        )
        deep = w * 2**cfg.g_down_num
        self.blocks = nn.Sequential(*(ResidualBlock(deep) for _ in range(cfg.g_repeat_num)))
        self.up = nn.ModuleList(
            _ConvNormReLU(nn.ConvTranspose2d(w * m * 2, w * m, 4, 2, 1, bias=False), w * m)
            for m in reversed(mults)
        )
        self.to_rgb = nn.Conv2d(w, 3, 7, 1, 3, bias=False)
        # A bias, started open a little (sigmoid(-2) = 0.12), lets the mask learn where to open
        # instead of starting half open everywhere.
        self.to_mask = nn.Conv2d(w, 1, 7, 1, 3, bias=True) if cfg.g_blend else None
        if self.to_mask is not None:
            nn.init.constant_(self.to_mask.bias, -2.0)

    def forward(self, x: torch.Tensor, c: torch.Tensor, with_mask: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        n, _, h, w = x.shape
        if c.shape != (n, self.cfg.c_dim):
            raise ValueError(
                f"Generator expects labels of shape ({n}, {self.cfg.c_dim}), got {tuple(c.shape)}"
            )
        planes = c.to(x.dtype)[:, :, None, None].expand(n, self.cfg.c_dim, h, w)
        h_ = torch.cat([x, planes], dim=1)
        if x.is_contiguous(memory_format=torch.channels_last):
            h_ = h_.contiguous(memory_format=torch.channels_last)
        h_ = self.stem(h_)
        for layer in self.down:
            h_ = layer(h_)
        h_ = self.blocks(h_)
        for layer in self.up:
            h_ = layer(h_)
        colour = torch.tanh(self.to_rgb(h_))
        if self.to_mask is None:
            return (colour, None) if with_mask else colour
        mask = torch.sigmoid(self.to_mask(h_))
        out = x + mask * (colour - x.to(colour.dtype))
        return (out, mask) if with_mask else out


class Discriminator(nn.Module):
    """D(x) -> (src, cls): src (N, 1, k, k) real/fake patch scores, cls (N, cls_dim) logits,
    with k = image_size / 2**d_repeat_num. The input must be image_size x image_size.

    With `d_cond`, `D(x, with_cond=True)` -> (src, cls, cond): cond (N, cls_dim, 2) holds, for
    every label, a real/fake score for each of its two values (off, on); see
    `losses.conditional_scores` for which of them an image is judged by."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [3] + [cfg.d_conv_dim * 2**i for i in range(cfg.d_repeat_num)]
        self.convs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1, bias=True)
            for i in range(cfg.d_repeat_num)
        )
        self.src_head = nn.Conv2d(widths[-1], 1, 3, 1, 1, bias=False)
        self.cls_head = nn.Conv2d(widths[-1], cfg.cls_dim, cfg.cls_kernel, 1, 0, bias=False)
        self.cond_head = nn.Conv2d(widths[-1], 2 * cfg.cls_dim, cfg.cls_kernel, 1, 0,
                                   bias=True) if cfg.d_cond else None

    def forward(self, x: torch.Tensor, with_cond: bool = False
                ) -> tuple[torch.Tensor, ...]:
        h = x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), LEAKY_SLOPE)
        src, cls = self.src_head(h), self.cls_head(h).flatten(1)
        if not with_cond:
            return src, cls
        if self.cond_head is None:
            raise ValueError("this discriminator has no conditional head (d_cond is off)")
        return src, cls, self.cond_head(h).flatten(1).view(-1, self.cfg.cls_dim, 2)
