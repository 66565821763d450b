"""StarGAN v2 networks (Choi et al., CVPR 2020, arXiv 1912.01865): G, F, E and D.

G(x, s) translates an image with a 64-d style code; F(z, y) maps a latent to the style of
domain y; E(x, y) reads the style of domain y from a reference image; D(x, y) is a multi-task
discriminator with one real/fake logit per domain. Attribute names and Sequential indices are
the official ones (clovaai/stargan-v2), so an official ``*_nets_ema.ckpt`` loads strictly; see
`starcli.families.stargan_v2.official`. At 256 px, K=2, w_hpf=1 (the CelebA-HQ model) G has
43,467,395 parameters, F 2,438,272, E 20,916,928 and D 20,852,290.

Written from the description in reference/stargan-v2.md, not from the official code (CC BY-NC).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from starcli.errors import ConfigError
from starcli.validate import check_int

__all__ = [
    "V2ModelConfig",
    "ResBlk",
    "AdaIN",
    "AdainResBlk",
    "HighPass",
    "Generator",
    "MappingNetwork",
    "StyleEncoder",
    "Discriminator",
    "he_init",
    "build_v2",
    "count_parameters",
]

# Every activation but F's is LeakyReLU with this slope.
LEAKY_SLOPE = 0.2
# Feature-map sizes at which G keeps encoder features for the masked high-pass skips. Fixed by
# the official code whatever the image size, so small models only use the ones they reach.
SKIP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class V2ModelConfig:
    """The architecture of a StarGAN v2 model (G, F, E, D).

    `w_hpf` > 0 adds one down/up level to G, removes the decoder's shortcuts and turns on the
    masked high-pass skips (the CelebA-HQ model, w_hpf=1); 0 is the AFHQ model.
    """

    # square input side; a power of two >= 16, which also leaves the w_hpf level room (8x8)
    image_size: int
    num_domains: int  # K: one F head, one E head and one D logit per domain
    latent_dim: int = 16  # z for F
    style_dim: int = 64  # the style code s
    w_hpf: float = 0.0  # high-pass weight; 0 = no skips, no extra level
    max_conv_dim: int = 512  # channel cap
    dim_in: int | None = None  # width at full resolution; None = 2**14 // image_size (official)
    mapping_hidden: int = 512  # F's width (the official code hard-codes 512)
    # not in the official model: G also predicts an attention mask A and returns
    # x + A·(colour − x), so what the mask leaves closed (the background) is the input's
    g_blend: bool = False

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, 16)
        if self.image_size & (self.image_size - 1):
            raise ConfigError(f"--image-size must be a power of 2, got {self.image_size}.")
        check_int("num_domains", self.num_domains, 1)
        for name in ("latent_dim", "style_dim", "max_conv_dim", "mapping_hidden"):
            check_int(name, getattr(self, name), 1)
        if isinstance(self.w_hpf, bool) or not isinstance(self.w_hpf, (int, float)):
            raise ConfigError(f"--w-hpf must be a number, got {self.w_hpf!r}.")
        if not math.isfinite(self.w_hpf) or self.w_hpf < 0:
            raise ConfigError(f"--w-hpf must be 0 or a positive number, got {self.w_hpf}.")
        if not isinstance(self.g_blend, bool):
            raise ConfigError(f"--g-blend must be true or false, got {self.g_blend!r}.")
        object.__setattr__(self, "w_hpf", float(self.w_hpf))
        if self.dim_in is None:
            # frozen dataclass: resolve the default once so to_dict() is always explicit
            object.__setattr__(self, "dim_in", max(1, 2**14 // self.image_size))
        check_int("dim_in", self.dim_in, 1)
    @property
    def encoder_downsamples(self) -> int:
        """G's downsampling ResBlks: log2(image)-4, one more when w_hpf > 0."""
        return int(math.log2(self.image_size)) - 4 + (1 if self.w_hpf > 0 else 0)

    @property
    def trunk_downsamples(self) -> int:
        """E's and D's downsampling ResBlks: log2(image)-2, down to 4x4."""
        return int(math.log2(self.image_size)) - 2

    def to_dict(self) -> dict[str, int | float]:
        """A JSON-ready dict with every field explicit."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> V2ModelConfig:
        """Rebuild from `to_dict()` output; missing optional fields take their defaults."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"StarGAN v2 model config has unknown field {unknown[0]!r}; "
                f"expected some of {known}."
            )
        missing = [k for k in ("image_size", "num_domains") if k not in data]
        if missing:
            raise ConfigError(f"StarGAN v2 model config lacks {missing[0]!r}.")
        return cls(**data)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (works on meta-device modules too)."""
    return sum(p.numel() for p in module.parameters())


# --- blocks -------------------------------------------------------------------------------

class ResBlk(nn.Module):
    """Pre-activation residual block; `(shortcut + residual) / sqrt(2)`.

    Residual: [IN] LReLU conv3x3 din->din [avgpool] [IN(din)] LReLU conv3x3 din->dout.
    Shortcut: [conv1x1 din->dout without bias, when the width changes] [avgpool].
    """

    def __init__(self, dim_in: int, dim_out: int, normalize: bool = False,
                 downsample: bool = False) -> None:
        super().__init__()
        self.normalize = normalize
        self.downsample = downsample
        self.learned_sc = dim_in != dim_out
        self.conv1 = nn.Conv2d(dim_in, dim_in, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        if normalize:
            self.norm1 = nn.InstanceNorm2d(dim_in, affine=True)
            self.norm2 = nn.InstanceNorm2d(dim_in, affine=True)
        if self.learned_sc:
            self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.learned_sc:
            x = self.conv1x1(x)
        return F.avg_pool2d(x, 2) if self.downsample else x

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = self.norm1(x)
        x = self.conv1(F.leaky_relu(x, LEAKY_SLOPE))
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        if self.normalize:
            x = self.norm2(x)
        return self.conv2(F.leaky_relu(x, LEAKY_SLOPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self._shortcut(x) + self._residual(x)) / math.sqrt(2)


class AdaIN(nn.Module):
    """`(1 + gamma) * IN(x) + beta` with (gamma, beta) = fc(s); the `1 +` form (zero-init bias)
    is the paper's "scale bias starts at one" and what official weights expect."""

    def __init__(self, style_dim: int, num_features: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(num_features, affine=False)
        self.fc = nn.Linear(style_dim, num_features * 2)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.fc(s)[:, :, None, None]
        gamma, beta = h.chunk(2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdainResBlk(nn.Module):
    """Decoder block: AdaIN LReLU [up x2] conv3x3 AdaIN LReLU conv3x3.

    With w_hpf = 0 the output is `(residual + shortcut) / sqrt(2)`, shortcut = [up x2]
    [conv1x1]. With w_hpf > 0 the output is the residual alone; `conv1x1` is still created
    (unused) because official state_dicts carry it.
    """

    def __init__(self, dim_in: int, dim_out: int, style_dim: int = 64, w_hpf: float = 0.0,
                 upsample: bool = False) -> None:
        super().__init__()
        self.w_hpf = w_hpf
        self.upsample = upsample
        self.learned_sc = dim_in != dim_out
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1)
        self.norm1 = AdaIN(style_dim, dim_in)
        self.norm2 = AdaIN(style_dim, dim_out)
        if self.learned_sc:
            self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv1x1(x) if self.learned_sc else x

    def _residual(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.norm1(x, s), LEAKY_SLOPE)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv1(x)
        x = F.leaky_relu(self.norm2(x, s), LEAKY_SLOPE)
        return self.conv2(x)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        out = self._residual(x, s)
        if self.w_hpf == 0:
            out = (out + self._shortcut(x)) / math.sqrt(2)
        return out


class HighPass(nn.Module):
    """Depthwise 3x3 Laplacian-like filter `[[-1,-1,-1],[-1,8,-1],[-1,-1,-1]] / w_hpf`.

    The kernel is a non-persistent buffer: the released CelebA-HQ file predates the official
    buffer and has no `hpf.filter`, and it is a function of w_hpf anyway.
    """

    def __init__(self, w_hpf: float) -> None:
        super().__init__()
        kernel = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]])
        self.register_buffer("filter", kernel / w_hpf, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        weight = self.filter.to(x.dtype)[None, None].expand(c, 1, 3, 3)
        return F.conv2d(x, weight, padding=1, groups=c)


# --- networks -----------------------------------------------------------------------------

class Generator(nn.Module):
    """G(x, s, masks=None): x (N, 3, H, W) in [-1, 1], s (N, style_dim) -> (N, 3, H, W).

    No output activation (as official). With w_hpf > 0 and `masks` = (whole-face, eyes/nose)
    maps of shape (N, 1, h, w), decoder features at 32/64/128 px get `hpf(mask * encoder
    feature)` added; masks[0] at 32 px and masks[1] above, resized bilinearly.

    With `g_blend` (not in the official model) a 3x3 conv beside `to_rgb`'s last layer
    predicts an attention mask A = sigmoid(conv) and the output is x + A·(colour − x);
    `G(x, s, with_mask=True)` returns (output, A), A of shape (N, 1, H, W) (None without
    g_blend), for the mask penalties.
    """

    def __init__(self, cfg: V2ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim_in = cfg.dim_in
        self.from_rgb = nn.Conv2d(3, dim_in, 3, 1, 1)
        self.encode = nn.ModuleList()
        self.decode = nn.ModuleList()
        self.to_rgb = nn.Sequential(
            nn.InstanceNorm2d(dim_in, affine=True),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(dim_in, 3, 1, 1, 0),
        )
        dim_out = dim_in
        for _ in range(cfg.encoder_downsamples):
            dim_out = min(dim_in * 2, cfg.max_conv_dim)
            self.encode.append(ResBlk(dim_in, dim_out, normalize=True, downsample=True))
            # decoder mirrors the encoder: the first level down is the last level up
            self.decode.insert(0, AdainResBlk(dim_out, dim_in, cfg.style_dim, cfg.w_hpf,
                                              upsample=True))
            dim_in = dim_out
        for _ in range(2):  # bottleneck
            self.encode.append(ResBlk(dim_out, dim_out, normalize=True))
            self.decode.insert(0, AdainResBlk(dim_out, dim_out, cfg.style_dim, cfg.w_hpf))
        if cfg.w_hpf > 0:
            self.hpf = HighPass(cfg.w_hpf)
        self.to_mask = nn.Conv2d(cfg.dim_in, 1, 3, 1, 1) if cfg.g_blend else None

    def reset_mask(self) -> None:
        """Start the attention mask nearly closed (sigmoid(-2) = 0.12), so it learns where
        to open instead of starting half open everywhere (build_v2 calls it after He init)."""
        if self.to_mask is not None:
            nn.init.zeros_(self.to_mask.weight)
            nn.init.constant_(self.to_mask.bias, -2.0)

    def forward(self, x: torch.Tensor, s: torch.Tensor,
                masks: tuple[torch.Tensor, torch.Tensor] | None = None,
                with_mask: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        if masks is not None and self.cfg.w_hpf == 0:
            raise ValueError("masks need a generator with w_hpf > 0")
        x_in = x
        x = self.from_rgb(x)
        cache: dict[int, torch.Tensor] = {}
        for block in self.encode:
            if masks is not None and x.shape[2] in SKIP_SIZES:
                cache[x.shape[2]] = x
            x = block(x)
        for block in self.decode:
            x = block(x, s)
            size = x.shape[2]
            if masks is not None and size in SKIP_SIZES:
                mask = masks[0] if size == 32 else masks[1]
                mask = F.interpolate(mask.to(x.dtype), size=tuple(x.shape[2:]), mode="bilinear",
                                     align_corners=False)
                x = x + self.hpf(mask * cache[size])
        if self.to_mask is None:
            out = self.to_rgb(x)
            return (out, None) if with_mask else out
        h = self.to_rgb[1](self.to_rgb[0](x))
        colour = self.to_rgb[2](h)
        attention = torch.sigmoid(self.to_mask(h))
        out = x_in.to(colour.dtype) + attention * (colour - x_in.to(colour.dtype))
        return (out, attention) if with_mask else out


class MappingNetwork(nn.Module):
    """F(z, y): z (N, latent_dim), y (N,) domain indices -> s (N, style_dim), head y."""

    def __init__(self, cfg: V2ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.mapping_hidden
        shared: list[nn.Module] = [nn.Linear(cfg.latent_dim, h), nn.ReLU()]
        for _ in range(3):
            shared += [nn.Linear(h, h), nn.ReLU()]
        self.shared = nn.Sequential(*shared)
        self.unshared = nn.ModuleList(
            nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                          nn.Linear(h, h), nn.ReLU(), nn.Linear(h, cfg.style_dim))
            for _ in range(cfg.num_domains)
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.shared(z)
        out = torch.stack([head(h) for head in self.unshared], dim=1)  # (N, K, style_dim)
        return out[torch.arange(len(y), device=y.device), y]


def _trunk(cfg: V2ModelConfig) -> tuple[list[nn.Module], int]:
    """E's and D's shared layers (Sequential indices 0..9) and their output width."""
    dim_in = cfg.dim_in
    layers: list[nn.Module] = [nn.Conv2d(3, dim_in, 3, 1, 1)]
    dim_out = dim_in
    for _ in range(cfg.trunk_downsamples):
        dim_out = min(dim_in * 2, cfg.max_conv_dim)
        layers.append(ResBlk(dim_in, dim_out, downsample=True))
        dim_in = dim_out
    layers += [nn.LeakyReLU(LEAKY_SLOPE), nn.Conv2d(dim_out, dim_out, 4, 1, 0),
               nn.LeakyReLU(LEAKY_SLOPE)]
    return layers, dim_out


class StyleEncoder(nn.Module):
    """E(x, y): x (N, 3, H, W) -> s (N, style_dim), the style of domain y."""

    def __init__(self, cfg: V2ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers, dim_out = _trunk(cfg)
        self.shared = nn.Sequential(*layers)
        self.unshared = nn.ModuleList(
            nn.Linear(dim_out, cfg.style_dim) for _ in range(cfg.num_domains)
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.shared(x).flatten(1)
        out = torch.stack([head(h) for head in self.unshared], dim=1)  # (N, K, style_dim)
        return out[torch.arange(len(y), device=y.device), y]


class Discriminator(nn.Module):
    """D(x, y) -> (N,) real/fake logit of domain y; `logits(x)` -> all K of them (N, K)."""

    def __init__(self, cfg: V2ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers, dim_out = _trunk(cfg)
        layers.append(nn.Conv2d(dim_out, cfg.num_domains, 1, 1, 0))
        self.main = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten(1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.logits(x)
        return out[torch.arange(len(y), device=y.device), y]


# --- construction -------------------------------------------------------------------------

def he_init(module: nn.Module) -> nn.Module:
    """He-normal (fan_in, relu) on every Conv2d/Linear weight inside `module`, zero biases.
    Instance-norm affine parameters keep their defaults (1, 0), as in the official solver."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def build_v2(cfg: V2ModelConfig) -> dict[str, nn.Module]:
    """He-initialised {"G", "F", "E", "D"}, in that order, on the current default device."""
    G = he_init(Generator(cfg))
    G.reset_mask()
    return {
        "G": G,
        "F": he_init(MappingNetwork(cfg)),
        "E": he_init(StyleEncoder(cfg)),
        "D": he_init(Discriminator(cfg)),
    }
