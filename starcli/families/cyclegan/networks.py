"""CycleGAN networks (Zhu et al., ICCV 2017, arXiv 1703.10593), written from the paper.

- `ResnetGenerator`: c7s1-ngf, two stride-2 convs (2ngf, 4ngf), residual blocks at 4ngf, two
  fractionally-strided convs back, c7s1-3 with tanh. Instance norm and reflection padding.
- `PatchDiscriminator`: the 70x70 PatchGAN: 4x4 convs ndf, 2ndf, 4ndf with stride 2, 8ndf with
  stride 1, then a 1-channel map; instance norm after all but the first, LeakyReLU 0.2.

At the paper's 256 px (ngf = ndf = 64, 9 blocks) G has 11,378,179 parameters and D 2,764,737.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from starcli.data.domains import Domains
from starcli.errors import ConfigError
from starcli.validate import flag

__all__ = ["CycleGANModel", "ResnetGenerator", "PatchDiscriminator", "receptive_field",
           "count_parameters"]


@dataclass(frozen=True)
class CycleGANModel:
    """The architecture of one CycleGAN pair and the two domains it maps between."""

    image_size: int = 256
    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 9
    d_layers: int = 3
    domains: Domains | None = None  # A = domains.names[0], B = domains.names[1]

    def __post_init__(self) -> None:
        for name in ("image_size", "ngf", "ndf", "n_blocks", "d_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{flag(name)} must be a non-negative integer, got "
                                  f"{value!r}.")
        if isinstance(self.domains, dict):
            object.__setattr__(self, "domains", Domains.from_dict(self.domains))

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "ngf": self.ngf, "ndf": self.ndf,
                "n_blocks": self.n_blocks, "d_layers": self.d_layers,
                "domains": self.domains.to_dict() if self.domains else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CycleGANModel:
        known = ("image_size", "ngf", "ndf", "n_blocks", "d_layers", "domains")
        return cls(**{k: d[k] for k in known if k in d})


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels)  # no affine parameters, as the paper's code


class ResidualBlock(nn.Module):
    """x + (pad, conv3, IN, ReLU, pad, conv3, IN)(x)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    def __init__(self, ngf: int = 64, n_blocks: int = 9) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), _norm(ngf),
                                   nn.ReLU(inplace=True)]
        dim = ngf
        for _ in range(2):
            layers += [nn.Conv2d(dim, dim * 2, 3, stride=2, padding=1), _norm(dim * 2),
                       nn.ReLU(inplace=True)]
            dim *= 2
        layers += [ResidualBlock(dim) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(dim, dim // 2, 3, stride=2, padding=1,
                                          output_padding=1), _norm(dim // 2),
                       nn.ReLU(inplace=True)]
            dim //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(dim, 3, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """A map of real/fake scores, each seeing a 70x70 patch with the default 3 layers."""

    def __init__(self, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        dim = ndf
        for i in range(1, n_layers + 1):
            out = ndf * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(dim, out, 4, stride=stride, padding=1), _norm(out),
                       nn.LeakyReLU(0.2, inplace=True)]
            dim = out
        layers.append(nn.Conv2d(dim, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def receptive_field(n_layers: int = 3) -> int:
    """The input patch one output of `PatchDiscriminator(n_layers=...)` sees (70 for 3)."""
    kernels_strides = [(4, 2)] * n_layers + [(4, 1), (4, 1)]
    field_ = 1
    for k, s in reversed(kernels_strides):
        field_ = (field_ - 1) * s + k
    return field_


def build_pair(model: CycleGANModel) -> dict[str, nn.Module]:
    """G_AB, G_BA, D_A, D_B in that order (the order fixes the initial weights for a seed)."""
    return {"G_AB": ResnetGenerator(model.ngf, model.n_blocks),
            "G_BA": ResnetGenerator(model.ngf, model.n_blocks),
            "D_A": PatchDiscriminator(model.ndf, model.d_layers),
            "D_B": PatchDiscriminator(model.ndf, model.d_layers)}
