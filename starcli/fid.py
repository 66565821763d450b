"""Fréchet Inception Distance: Inception-v3 pool features and the distance between Gaussians.

    extractor = load_inception(weights)         # None when no weights can be found
    real, fake = FeatureStats(), FeatureStats()
    real.add(extractor.features(images))        # (N, 2048) float64, images in [-1, 1]
    fake.add(extractor.features(translated))
    fid = fid_between(real, fake)

Weights are never downloaded. They come from `--inception-weights FILE` or from the torch hub
cache (`torch.hub.get_dir()/checkpoints/`): the pytorch-fid file
`pt_inception-2015-12-05-*.pth` (the TF FID network; preferred, numbers comparable with
pytorch-fid) or torchvision's `inception_v3_google-*.pth` (ImageNet weights; FID values are
not comparable with published ones). The matrix square root uses a symmetric eigen-
decomposition, so no scipy is needed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from starcli.errors import StarcliError

FEATURE_DIM = 2048
INPUT_SIZE = 299
# File names looked for in the torch hub cache, best first.
HUB_PATTERNS = ("pt_inception-2015-12-05-*.pth", "inception_v3_google-*.pth")
# The TF FID graph has 1008 output classes; torchvision's ImageNet head has 1000.
_FID_CLASSES = 1008


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def how_to_provide() -> str:
    """The one line printed when FID is skipped for lack of weights."""
    return (f"FID skipped: no Inception-v3 weights found. Pass --inception-weights FILE "
            f"(pytorch-fid pt_inception-2015-12-05-6726825d.pth or torchvision "
            f"inception_v3_google-0cc3c7bd.pth) or copy one into {hub_checkpoint_dir()}/.")


def find_weights(explicit: Path | None = None) -> Path | None:
    """`explicit` if given (StarcliError when it is not a file), else the best file in the
    torch hub cache, else None."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise StarcliError(f"--inception-weights {path} is not a file; pass a saved "
                               f"Inception-v3 state_dict (.pth or .safetensors).")
        return path
    folder = hub_checkpoint_dir()
    for pattern in HUB_PATTERNS:
        hits = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if hits:
            return hits[0]
    return None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        reason = " ".join(str(exc).split())[:200]
        raise StarcliError(f"--inception-weights {path} cannot be read ({reason}); pass a "
                           f"state_dict saved with torch.save or safetensors.") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise StarcliError(f"--inception-weights {path} is not a state_dict of tensors.")
    return state


class InceptionFeatures:
    """Inception-v3 2048-d average-pool features of images in [-1, 1] at any size."""

    def __init__(self, net: nn.Module, path: Path, kind: str, device: torch.device) -> None:
        self.net = net
        self.path = path
        self.kind = kind  # "pytorch-fid" or "torchvision"
        self.device = device

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
        """(N, 3, H, W) float in [-1, 1] → (N, 2048) float64."""
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(self.device, torch.float32)
            # Both weight files expect [-1, 1] input at 299 px (the Google port's scaling);
            # bilinear without corner alignment as pytorch-fid resizes.
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                              align_corners=False)
            out.append(self.net(x).double().cpu().numpy())
        if not out:
            return np.zeros((0, FEATURE_DIM))
        return np.concatenate(out)


def load_inception(weights: Path | None = None, device: str | torch.device = "cpu"
                   ) -> InceptionFeatures | None:
    """The feature extractor for `weights` (or the hub cache's file); None when there is none."""
    path = find_weights(weights)
    if path is None:
        return None
    state = _read_state_dict(path)
    return _build(state, path, torch.device(device))


def _build(state: dict[str, torch.Tensor], path: Path, device: torch.device) -> InceptionFeatures:
    from torchvision.models import inception_v3

    fc = state.get("fc.weight")
    if fc is None or fc.ndim != 2 or fc.shape[1] != FEATURE_DIM:
        raise StarcliError(f"--inception-weights {path} is not an Inception-v3 state_dict "
                           f"(no fc.weight of width {FEATURE_DIM}).")
    classes = int(fc.shape[0])
    aux = any(k.startswith("AuxLogits.") for k in state)
    net = inception_v3(weights=None, aux_logits=aux, init_weights=False, num_classes=classes,
                       transform_input=False)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise StarcliError(f"--inception-weights {path} does not fit torchvision's "
                           f"Inception-v3 ({first}).") from exc
    kind = "torchvision"
    if classes == _FID_CLASSES:
        _use_tf_pooling(net)
        kind = "pytorch-fid"
    net.fc = nn.Identity()  # the 2048-d pool features are the FID space
    net.AuxLogits = None
    net.eval().requires_grad_(False).to(device)
    return InceptionFeatures(net, path, kind, device)


# --- The TF FID graph's pooling --------------------------------------------------------------
# The TF Inception used for FID averages the pool branches over the valid pixels only (border
# windows are not diluted by padding zeros) and uses a max pool in the last block. With the
# pytorch-fid weights the mixed blocks are run that way, so features match that network.

def _avg_valid(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _block_a(m: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    b5 = m.branch5x5_2(m.branch5x5_1(x))
    b3 = m.branch3x3dbl_3(m.branch3x3dbl_2(m.branch3x3dbl_1(x)))
    return [m.branch1x1(x), b5, b3, m.branch_pool(_avg_valid(x))]


def _block_c(m: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    b7 = m.branch7x7_3(m.branch7x7_2(m.branch7x7_1(x)))
    d = m.branch7x7dbl_1(x)
    for layer in (m.branch7x7dbl_2, m.branch7x7dbl_3, m.branch7x7dbl_4, m.branch7x7dbl_5):
        d = layer(d)
    return [m.branch1x1(x), b7, d, m.branch_pool(_avg_valid(x))]


def _block_e(m: nn.Module, x: torch.Tensor, use_max: bool) -> list[torch.Tensor]:
    b3 = m.branch3x3_1(x)
    b3 = torch.cat([m.branch3x3_2a(b3), m.branch3x3_2b(b3)], 1)
    d = m.branch3x3dbl_2(m.branch3x3dbl_1(x))
    d = torch.cat([m.branch3x3dbl_3a(d), m.branch3x3dbl_3b(d)], 1)
    pooled = (F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if use_max
              else _avg_valid(x))
    return [m.branch1x1(x), b3, d, m.branch_pool(pooled)]


def _use_tf_pooling(net: nn.Module) -> None:
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        block = getattr(net, name)
        block._forward = functools.partial(_block_a, block)
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        block = getattr(net, name)
        block._forward = functools.partial(_block_c, block)
    net.Mixed_7b._forward = functools.partial(_block_e, net.Mixed_7b, use_max=False)
    net.Mixed_7c._forward = functools.partial(_block_e, net.Mixed_7c, use_max=True)


# --- The distance ------------------------------------------------------------------------------

@dataclass(frozen=True)
class GaussianStats:
    mu: np.ndarray  # (d,)
    sigma: np.ndarray  # (d, d)
    count: int

    @classmethod
    def of(cls, features: np.ndarray) -> GaussianStats:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError("Gaussian statistics need at least 2 feature rows")
        return cls(mu=f.mean(axis=0), sigma=np.cov(f, rowvar=False), count=f.shape[0])


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off → 0)."""
    sym = (matrix + matrix.T) / 2
    values, vectors = np.linalg.eigh(sym)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _trace_sqrt_psd(matrix: np.ndarray) -> float:
    """tr(M^½) for a symmetric PSD matrix: the sum of the roots of its eigenvalues."""
    eig = np.linalg.eigvalsh((matrix + matrix.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """d² between N(mu1, sigma1) and N(mu2, sigma2):
    ‖mu1 − mu2‖² + tr(sigma1) + tr(sigma2) − 2 tr((sigma1 sigma2)^½).

    tr((σ1σ2)^½) equals tr((√σ1 σ2 √σ1)^½), and √σ1 σ2 √σ1 is symmetric PSD, so two symmetric
    eigen-decompositions give it exactly, with no complex round-off to discard."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(
        np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, "
                         f"sigma {s1.shape}/{s2.shape}")
    root1 = _sqrt_psd(s1)
    trace_sqrt = _trace_sqrt_psd(root1 @ s2 @ root1)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


class FeatureStats:
    """Feature rows seen so far, for FID without holding big sets in memory.

    While there are fewer rows than dimensions the rows themselves are kept (the covariance is
    low rank and the distance is cheaper and exact from them); past that only the sum and the
    sum of outer products (d x d) are kept."""

    def __init__(self, dim: int = FEATURE_DIM) -> None:
        self.dim = dim
        self.count = 0
        self._rows: list[np.ndarray] | None = []
        self._sum = np.zeros(dim)
        self._outer: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float64).reshape(-1, self.dim)
        self.count += len(rows)
        self._sum += rows.sum(axis=0)
        if self._rows is not None:
            self._rows.append(rows)
            if self.count >= self.dim:  # switch to running sums
                stacked = np.concatenate(self._rows)
                self._outer, self._rows = stacked.T @ stacked, None
        else:
            self._outer += rows.T @ rows

    @property
    def rows(self) -> np.ndarray | None:
        """All rows while fewer than `dim` were added, else None."""
        if self._rows is None:
            return None
        return np.concatenate(self._rows) if self._rows else np.zeros((0, self.dim))

    def gaussian(self) -> GaussianStats:
        if self.count < 2:
            raise ValueError("Gaussian statistics need at least 2 feature rows")
        mu = self._sum / self.count
        rows = self.rows
        if rows is not None:
            return GaussianStats.of(rows)
        sigma = (self._outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return GaussianStats(mu=mu, sigma=sigma, count=self.count)

    def _centred(self) -> np.ndarray:
        """Rows A with AᵀA equal to the covariance (only while rows are kept)."""
        rows = self.rows
        return (rows - rows.mean(axis=0)) / np.sqrt(len(rows) - 1)


def fid_between(a: FeatureStats, b: FeatureStats) -> float:
    """FID of two feature sets (each ≥ 2 rows).

    When one side still holds its rows, σ = AᵀA with A its centred rows, and
    tr((σ_a σ_b)^½) = tr((A σ_b Aᵀ)^½): an n x n eigenproblem instead of two 2048² ones (with
    both sides small, A σ_b Aᵀ is (A Bᵀ)(A Bᵀ)ᵀ). Exact either way."""
    if a.count < 2 or b.count < 2:
        raise ValueError("FID needs at least 2 images on each side")
    if a.rows is None and b.rows is not None:
        a, b = b, a
    if a.rows is None:
        ga, gb = a.gaussian(), b.gaussian()
        return frechet_distance(ga.mu, ga.sigma, gb.mu, gb.sigma)
    ca = a._centred()
    if b.rows is not None:
        cross = ca @ b._centred().T
        inner = cross @ cross.T
        trace_b = float(np.sum(b._centred() ** 2))
    else:
        gb = b.gaussian()
        inner = ca @ gb.sigma @ ca.T
        trace_b = float(np.trace(gb.sigma))
    mu_a, mu_b = a._sum / a.count, b._sum / b.count
    diff = mu_a - mu_b
    return float(diff @ diff + np.sum(ca * ca) + trace_b - 2.0 * _trace_sqrt_psd(inner))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two (N, d) feature arrays (each ≥ 2 rows)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature shapes differ: {real.shape} vs {fake.shape}")
    a, b = FeatureStats(real.shape[1]), FeatureStats(real.shape[1])
    a.add(real)
    b.add(fake)
    return fid_between(a, b)
