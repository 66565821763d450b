"""LPIPS v0.1 (AlexNet), the StarGAN v2 diversity metric, from local weight files only.

    net = load_lpips(lpips_weights=None, alexnet_weights=None)   # None: a file is missing
    d = net(a, b)                      # (N,) distances of images in [-1, 1], any size >= 32

The distance (Zhang et al. 2018, v0.1, as StarGAN v2's metrics/lpips.py computes it): scale the
input by the fixed shift/scale, take the five ReLU outputs of torchvision AlexNet `features`,
unit-normalise each along channels (eps 1e-10 inside the square root, as StarGAN v2 puts it;
the `lpips` package adds it outside, a difference far below 1e-6), square the difference,
apply the 1x1 linear weights (no dropout), average over space and sum over the layers.

Weights are never downloaded (no torch hub call is made):
- linear weights: `--lpips-weights FILE`, else the `lpips` package's `weights/v0.1/alex.pth`
  (bit-identical to StarGAN v2's `lpips_weights.ckpt`, whose keys are read too);
- AlexNet trunk: `--alexnet-weights FILE`, else torchvision's `alexnet-owt-*.pth` in the torch
  hub cache (`torch.hub.get_dir()/checkpoints/`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from starcli.errors import StarcliError

__all__ = ["LPIPS", "SHIFT", "SCALE", "ALEX_CHANNELS", "ALEX_TAPS", "alexnet_trunk",
           "find_lpips_weights", "find_alexnet_weights", "load_lpips", "how_to_provide",
           "normalize_channels"]

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
ALEX_CHANNELS = (64, 192, 384, 256, 256)
ALEX_TAPS = (1, 4, 7, 9, 11)  # the ReLUs of torchvision AlexNet `features`
ALEX_HUB_PATTERN = "alexnet-owt-*.pth"
ALEX_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's current AlexNet ImageNet weights
EPS = 1e-10


def normalize_channels(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """x / sqrt(sum_c x² + eps): every spatial position a unit vector over channels."""
    return x * torch.rsqrt(x.pow(2).sum(1, keepdim=True) + eps)


class LPIPS(nn.Module):
    """d(a, b) = Σ_l mean_hw( w_l · (n(f_l(a)) − n(f_l(b)))² ), f_l the trunk's tapped outputs."""

    def __init__(self, trunk: nn.Sequential, taps: tuple[int, ...],
                 linear: list[torch.Tensor]) -> None:
        super().__init__()
        if len(taps) != len(linear):
            raise ValueError(f"{len(taps)} tapped layers but {len(linear)} linear weights")
        self.trunk = trunk
        self.taps = tuple(taps)
        for k, w in enumerate(linear):
            self.register_buffer(f"lin{k}", w.detach().float().reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.trunk):
            h = layer(h)
            if i in self.taps:
                out.append(h)
            if i >= self.taps[-1]:
                break
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N,) distances between images a and b (N, 3, H, W) in [-1, 1]."""
        total = torch.zeros(a.shape[0], device=a.device)
        for k, (fa, fb) in enumerate(zip(self.layers(a.float()), self.layers(b.float()),
                                         strict=True)):
            d = (normalize_channels(fa) - normalize_channels(fb)).pow(2)
            w = getattr(self, f"lin{k}")
            total = total + (d * w).sum(1).mean((1, 2))
        return total


def alexnet_trunk(state: dict[str, torch.Tensor] | None = None) -> nn.Sequential:
    """torchvision AlexNet `features` (ReLUs not in place, so tapped outputs stay intact),
    loaded from a torchvision state_dict (`features.*` keys) when given."""
    from torchvision.models import alexnet

    net = alexnet(weights=None)
    if state is not None:
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        net.features.load_state_dict(feats, strict=True)
    for m in net.features:
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return net.features


# --- Weight files -------------------------------------------------------------------------------

def _package_weights() -> Path | None:
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "weights" / "v0.1" / "alex.pth"
    return path if path.is_file() else None


def _hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _explicit(path: Path, flag: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise StarcliError(f"{flag} {path} is not a file.")
    return path


def find_lpips_weights(explicit: Path | None = None) -> Path | None:
    """`explicit` (StarcliError if not a file), else the lpips package's v0.1 alex.pth."""
    return _explicit(explicit, "--lpips-weights") if explicit is not None else \
        _package_weights()


def find_alexnet_weights(explicit: Path | None = None) -> Path | None:
    """`explicit` (StarcliError if not a file), else alexnet-owt-*.pth in the hub cache."""
    if explicit is not None:
        return _explicit(explicit, "--alexnet-weights")
    folder = _hub_dir()
    hits = sorted(folder.glob(ALEX_HUB_PATTERN)) if folder.is_dir() else []
    return hits[-1] if hits else None


def how_to_provide(missing: str) -> str:
    """The one line printed when LPIPS is skipped; `missing` is "alexnet" or "linear"."""
    if missing == "linear":
        return ("LPIPS skipped: no LPIPS v0.1 linear weights; `pip install lpips` (its "
                "weights/v0.1/alex.pth) or pass --lpips-weights FILE.")
    return (f"LPIPS skipped: no AlexNet weights; pass --alexnet-weights FILE (torchvision "
            f"{ALEX_FILE}) or copy it into {_hub_dir()}/.")


def _load(path: Path, flag: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        reason = " ".join(str(exc).split())[:200]
        raise StarcliError(f"{flag} {path} cannot be read ({reason}).") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise StarcliError(f"{flag} {path} is not a state_dict.")
    return state


def read_linear(path: Path) -> list[torch.Tensor]:
    """The five 1x1 weights of an lpips (`lin{k}.model.1.weight`) or StarGAN v2
    (`lpips_weights.{k}.main.1.weight`) file, in layer order."""
    state = _load(path, "--lpips-weights")
    out = []
    for k, channels in enumerate(ALEX_CHANNELS):
        w = next((state[key] for key in (f"lin{k}.model.1.weight",
                                         f"lpips_weights.{k}.main.1.weight", f"{k}.main.1.weight")
                  if key in state), None)
        if w is None or w.numel() != channels:
            raise StarcliError(f"--lpips-weights {path} has no {channels}-channel linear weights "
                               f"for AlexNet layer {k} (expected lpips v0.1 alex.pth).")
        out.append(w.float())
    return out


def load_lpips(lpips_weights: Path | None = None, alexnet_weights: Path | None = None,
               device: str | torch.device = "cpu") -> tuple[LPIPS | None, str | None]:
    """(the metric, None), or (None, the one line naming the missing file)."""
    linear = find_lpips_weights(lpips_weights)
    if linear is None:
        return None, how_to_provide("linear")
    trunk = find_alexnet_weights(alexnet_weights)
    if trunk is None:
        return None, how_to_provide("alexnet")
    try:
        features = alexnet_trunk(_load(trunk, "--alexnet-weights"))
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise StarcliError(f"--alexnet-weights {trunk} is not torchvision AlexNet ({first}).") \
            from exc
    net = LPIPS(features, ALEX_TAPS, read_linear(linear)).to(device)
    net.weights = {"linear": str(linear), "alexnet": str(trunk)}
    return net, None
