"""The facial-landmark network (FAN) of the StarGAN v2 CelebA-HQ model and its face masks.

G's high-pass skips (w_hpf > 0) are gated by two masks made from 98 WFLW landmark heatmaps
(reference/stargan-v2.md §1.6). `FAN` is Bulat & Tzimiropoulos' stacked-hourglass network with
one hourglass, as adapted by AdaptiveWing (CoordConv inputs), under the official state_dict
names, so an official ``wing.ckpt`` or the ``fan`` entry of a ``*_nets_ema.ckpt`` loads
strictly (`load_fan`):

- stem: CoordConv 7x7/2 (3 + x, y, r channels → 64), BN, ReLU, ConvBlock 64→128, avgpool 2,
  ConvBlock 128→128, ConvBlock 128→256;
- ``m0``: an hourglass of depth 4 over 256 channels at 64 px, after its own CoordConv 1x1
  (256 + x, y, r → 256); then ``top_m_0``, ``conv_last0`` (1x1), ``bn_end0``, ReLU and ``l0``
  (1x1 → 99 maps: 98 landmarks and a boundary map).

A ConvBlock is three 3x3 convs without bias (widths out/2, out/4, out/4), each after BN and
ReLU, whose outputs are concatenated and added to the input (through BN, ReLU, conv1x1 when
the widths differ). Counted (tests/families/test_stargan_v2_fan.py): 336 state_dict entries,
6,333,603 parameters and 15,031 buffer elements, where the buffers are BatchNorm's
running_mean and running_var (7,488 channels x 2 = 14,976) plus one num_batches_tracked per BN
layer (55): the reference's closed numbers. The coordinate channels are non-persistent
buffers, so they follow `.to(device)` (the official grids are plain tensors fixed at
construction, a known quirk) and are not in the state_dict. The input side is fixed at 256.

`face_masks(fan, x)` turns images into the (whole-face, eyes/nose) masks. What follows the
reference: x resized bilinearly to 256 and mapped to [0, 1]; the boundary map dropped; the 98
maps upsampled x4 bilinearly with align_corners=True; values below 0.1 zeroed; per-map min-max
normalisation; per-part circular vertical shifts (torch.roll) and powers with the reference's
examples (eyebrows −7 / power 2, nostrils +8 / power 4, lips ±8 / power 4, chin power 3); most
jaw-line maps zeroed; an extra eye term; mask 0 the sum of every kept map, mask 1 the same
without chin, lips and eyebrows; both in [0, 1]. Our own reading (so the masks are NOT claimed
bit-compatible with the official ones): which WFLW indices form each part (`PARTS`), the lip
split (upper lip −8, lower lip +8), which jaw points are kept as the chin (13–19) and which
edges are zeroed (the outer eyebrow ends 33 and 46, the mouth corners 76 and 82), the min-max
epsilon (1e-6, so an empty map stays 0 instead of NaN), the extra eye term (the eye and pupil
maps counted a second time), the clamp of both sums to [0, 1], and the order of the coordinate
channels (x varying along the width, then y, then r = sqrt(x² + y²) / max).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from starcli.errors import CheckpointError

__all__ = ["FAN", "face_masks", "load_fan", "read_fan_state", "FAN_SIZE", "PARTS"]

FAN_SIZE = 256  # the input side the coordinate grids are built for
NUM_LANDMARKS = 98  # WFLW


class AddCoords(nn.Module):
    """Appends x, y (in [-1, 1]) and r = sqrt(x² + y²) / max to an (N, C, size, size) input."""

    def __init__(self, size: int) -> None:
        super().__init__()
        ramp = torch.linspace(-1.0, 1.0, size)
        xx = ramp.view(1, size).expand(size, size)
        yy = ramp.view(size, 1).expand(size, size)
        rr = (xx.pow(2) + yy.pow(2)).sqrt()
        grid = torch.stack([xx, yy, rr / rr.max()])[None]
        self.register_buffer("grid", grid, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.grid.to(x.dtype).expand(x.shape[0], -1, -1, -1)
        return torch.cat([x, grid], 1)


class CoordConv(nn.Module):
    """AddCoords then a conv (``.conv``) over the 3 extra channels too."""

    def __init__(self, size: int, in_ch: int, out_ch: int, kernel: int, stride: int,
                 padding: int) -> None:
        super().__init__()
        self.addcoords = AddCoords(size)
        self.conv = nn.Conv2d(in_ch + 3, out_ch, kernel, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.addcoords(x))


def _conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)


class ConvBlock(nn.Module):
    """Three pre-activated 3x3 convs (out/2, out/4, out/4) concatenated, plus the input."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = _conv3x3(c_in, c_out // 2)
        self.bn2 = nn.BatchNorm2d(c_out // 2)
        self.conv2 = _conv3x3(c_out // 2, c_out // 4)
        self.bn3 = nn.BatchNorm2d(c_out // 4)
        self.conv3 = _conv3x3(c_out // 4, c_out // 4)
        self.downsample = None
        if c_in != c_out:
            self.downsample = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(),
                                            nn.Conv2d(c_in, c_out, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        skip = x if self.downsample is None else self.downsample(x)
        return torch.cat([out1, out2, out3], 1) + skip


class HourGlass(nn.Module):
    """A CoordConv 1x1, then an hourglass of `depth` levels (b1_L, b2_L, b3_L; b2_plus_1 at
    the bottom): up = b1(x); low = b3(inner(b2(avgpool(x)))); out = up + nearest x2(low)."""

    def __init__(self, depth: int = 4, features: int = 256, size: int = 64) -> None:
        super().__init__()
        self.depth = depth
        self.coordconv = CoordConv(size, features, features, 1, 1, 0)
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", ConvBlock(features, features))
            self.add_module(f"b2_{level}", ConvBlock(features, features))
            if level == 1:
                self.add_module("b2_plus_1", ConvBlock(features, features))
            self.add_module(f"b3_{level}", ConvBlock(features, features))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        up = self._modules[f"b1_{level}"](x)
        low = self._modules[f"b2_{level}"](F.avg_pool2d(x, 2))
        low = self._level(level - 1, low) if level > 1 else self.b2_plus_1(low)
        low = self._modules[f"b3_{level}"](low)
        return up + F.interpolate(low, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, self.coordconv(x))


class FAN(nn.Module):
    """FAN(x): x (N, 3, 256, 256) in [0, 1] → (N, 99, 64, 64) heatmaps (98 landmarks, then the
    boundary map). Always in eval mode: it is never trained, and its BatchNorm uses the
    stored statistics even inside a training run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = CoordConv(FAN_SIZE, 3, 64, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, 256)
        self.m0 = HourGlass(4, 256, FAN_SIZE // 4)
        self.top_m_0 = ConvBlock(256, 256)
        self.conv_last0 = nn.Conv2d(256, 256, 1, 1, 0)
        self.bn_end0 = nn.BatchNorm2d(256)
        self.l0 = nn.Conv2d(256, NUM_LANDMARKS + 1, 1, 1, 0)
        self.train(False)

    def train(self, mode: bool = True) -> FAN:  # noqa: ARG002 - frozen: always eval
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != (FAN_SIZE, FAN_SIZE):
            raise ValueError(f"FAN takes {FAN_SIZE}x{FAN_SIZE} inputs, got "
                             f"{tuple(x.shape[2:])}")
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.avg_pool2d(self.conv2(x), 2)
        x = self.conv4(self.conv3(x))
        x = self.top_m_0(self.m0(x))
        x = F.relu(self.bn_end0(self.conv_last0(x)))
        return self.l0(x)


# --------------------------------------------------------------------------- masks

# WFLW landmark indices per facial part (our reading of the 98-point layout).
PARTS: dict[str, tuple[int, ...]] = {
    "chin": tuple(range(13, 20)),
    "eyebrows": tuple(range(33, 51)),
    "nose": tuple(range(51, 55)),
    "nostrils": tuple(range(55, 60)),
    "eyes": tuple(range(60, 76)) + (96, 97),
    "upper_lip": tuple(range(76, 83)) + tuple(range(88, 93)),
    "lower_lip": tuple(range(83, 88)) + tuple(range(93, 96)),
}
ZEROED = tuple(i for i in range(33) if i not in PARTS["chin"]) + (33, 46, 76, 82)
SHIFT_POWER = {"eyebrows": (-7, 2), "nostrils": (8, 4), "upper_lip": (-8, 4),
               "lower_lip": (8, 4), "chin": (0, 3), "nose": (0, 1), "eyes": (0, 1)}
THRESHOLD = 0.1
EPS = 1e-6


def _preprocess(heat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 98, S, S) heatmaps → (whole-face, eyes/nose) masks (N, 1, S, S) in [0, 1]."""
    heat = torch.nan_to_num(heat, nan=0.0)
    heat = torch.where(heat < THRESHOLD, torch.zeros_like(heat), heat)
    lo = heat.amin((2, 3), keepdim=True)
    hi = heat.amax((2, 3), keepdim=True)
    heat = (heat - lo) / (hi - lo + EPS)
    parts = {}
    for name, idx in PARTS.items():
        shift, power = SHIFT_POWER[name]
        keep = [i for i in idx if i not in ZEROED]
        maps = heat[:, keep]
        if shift:
            maps = torch.roll(maps, shift, dims=2)
        parts[name] = maps.pow(power).sum(1, keepdim=True)
    extra_eyes = parts["eyes"]
    whole = sum(parts.values()) + extra_eyes
    inner = parts["eyes"] + parts["nose"] + parts["nostrils"] + extra_eyes
    return whole.clamp(0, 1), inner.clamp(0, 1)


@torch.no_grad()
def face_masks(fan: FAN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(whole-face, eyes/nose) masks of images x (N, 3, H, W) in [-1, 1]: each (N, 1, 256, 256)
    float32 in [0, 1] on x's device. G resizes them bilinearly to each skip's size, so they
    serve any image size. Run in float32 without autocast, whatever the caller's precision."""
    device = x.device
    with torch.autocast(device.type, enabled=False):
        x = x.detach().float().contiguous()
        if tuple(x.shape[2:]) != (FAN_SIZE, FAN_SIZE):
            x = F.interpolate(x, size=(FAN_SIZE, FAN_SIZE), mode="bilinear",
                              align_corners=False)
        param = next(fan.parameters())
        heat = fan(((x + 1) / 2).to(param.device, param.dtype)).float()[:, :NUM_LANDMARKS]
        heat = F.interpolate(heat, scale_factor=4, mode="bilinear", align_corners=True)
        masks = _preprocess(heat)
    return masks[0].to(device), masks[1].to(device)


# --------------------------------------------------------------------------- loading

def read_fan_state(path_or_state: str | Path | Mapping[str, Any],
                   source: str | None = None) -> tuple[dict[str, Any], str]:
    """The FAN state_dict in a wing.ckpt (key 'state_dict' or a bare state_dict), in an
    official nets_ema dict (key 'fan'), or given directly; returns it and its source name."""
    if isinstance(path_or_state, (str, Path)):
        path = Path(path_or_state)
        source = str(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such FAN weights file (wing.ckpt).")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle, zip and weights_only refusals
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise CheckpointError(f"{path}: cannot be read as FAN weights with "
                                  f"torch.load(weights_only=True) ({first}).") from None
    else:
        data, source = path_or_state, source or "FAN weights"
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{source}: expected a dict of FAN weights, got "
                              f"{type(data).__name__}.")
    for key in ("state_dict", "fan"):
        if isinstance(data.get(key), Mapping):
            data = data[key]
            break
    sd = {str(k): v for k, v in data.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, source


def check_fan_state(sd: Mapping[str, Any], source: str, fan: FAN | None = None) -> None:
    """CheckpointError naming `source` and the first keys unless `sd` fits the FAN exactly."""
    with torch.device("meta"):
        expected = (fan or FAN()).state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    bad = [k for k in expected if k in sd and (not isinstance(sd[k], torch.Tensor)
                                               or sd[k].shape != expected[k].shape)]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", bad)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{what} {', '.join(keys[:3])}{more}")
    if problems:
        raise CheckpointError(f"{source}: not the FAN's weights (wing.ckpt): "
                              f"{'; '.join(problems)}.")


def load_fan(path_or_state: str | Path | Mapping[str, Any], *,
             device: str | torch.device = "cpu", source: str | None = None) -> FAN:
    """A frozen FAN (eval mode, no gradients) with the weights of a wing.ckpt, an official
    nets_ema file's 'fan' entry or a state_dict, loaded strictly."""
    sd, source = read_fan_state(path_or_state, source)
    check_fan_state(sd, source)
    with torch.random.fork_rng(devices=[]):
        fan = FAN()
    fan.load_state_dict(sd, strict=True)
    return fan.requires_grad_(False).to(device)
