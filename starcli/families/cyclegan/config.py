"""CycleGAN training options and presets (torch-free, so the CLI can validate quickly).

The design follows the CycleGAN paper (Zhu et al. 2017): two ResNet generators (9 residual
blocks at 256 px, 6 at 128 px and below; instance norm; reflection padding), two 70x70 PatchGAN
discriminators, the LSGAN loss, cycle weight 10, identity weight 0.5 x the cycle weight, a pool
of 50 past fakes for D, Adam lr 2e-4 with betas (0.5, 0.999), constant then linearly decayed to
0 (100 epochs each in the paper), batch 1.

- ``cyclegan-paper``: those hyper-parameters at 256 px (for real data on a GPU; --domains names
  the pair).
- ``demo``: the built-in synthetic faces on a CPU in minutes (32 px, narrow nets, female/male).
- ``tiny``: a few-thousand-parameter model at 32 px for tests and smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from starcli.errors import ConfigError
from starcli.validate import check_int, flag

__all__ = ["CycleGANOptions", "PRESETS", "OPTIONS", "blocks_for"]


def blocks_for(image_size: int) -> int:
    """The paper's residual blocks: 9 at 256 px and above, 6 at 128 px and below."""
    return 9 if image_size >= 256 else 6


@dataclass(frozen=True)
class CycleGANOptions:
    """The CycleGAN objective and networks for one pair of domains (A, B)."""

    # The paper trains with batch 1: no small-batch warning.
    WARN_BATCH_BELOW: ClassVar[int] = 1

    domains: str = field(default="", metadata={
        "help": "The two domains A,B of the dataset: one attribute (Male: female/male), two "
                "members of an exclusive group (Blond_Hair,Black_Hair) or two one-hot classes "
                "(happy,sad; a two-folder dataset's folders by default)."})
    lambda_cycle: float = field(default=10.0, metadata={
        "help": "Weight of the cycle-consistency L1 loss (paper: 10).", "min": 0.0})
    lambda_identity: float = field(default=0.5, metadata={
        "help": "Identity loss weight as a fraction of --lambda-cycle (paper: 0.5).",
        "min": 0.0})
    pool_size: int = field(default=50, metadata={
        "help": "Past fakes kept per domain for D (paper: 50; 0 turns the pool off).",
        "min": 0})
    g_lr: float = field(default=2e-4, metadata={"help": "Generators' learning rate."})
    d_lr: float = field(default=2e-4, metadata={"help": "Discriminators' learning rate."})
    beta1: float = 0.5
    beta2: float = 0.999
    ngf: int = field(default=64, metadata={"help": "Width of G's first conv.", "min": 1})
    ndf: int = field(default=64, metadata={"help": "Width of D's first conv.", "min": 1})
    n_blocks: int = field(default=0, metadata={
        "help": "Residual blocks in G (0: the paper's 9 at 256 px, 6 at 128 px and below).",
        "min": 0})
    d_layers: int = field(default=3, metadata={
        "help": "Stride-2 convs in D (3: the 70x70 PatchGAN).", "min": 1})

    def __post_init__(self) -> None:
        for name in ("ngf", "ndf", "d_layers"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("n_blocks", "pool_size"):
            check_int(name, getattr(self, name), minimum=0)
        if not isinstance(self.domains, str):
            raise ConfigError(f"--domains must be text such as Male or Blond_Hair,Black_Hair, "
                              f"got {self.domains!r}.")
        for name in ("lambda_cycle", "lambda_identity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not value >= 0:
                raise ConfigError(f"{flag(name)} must be a number >= 0, got {value!r}.")
        for name in ("g_lr", "d_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not value > 0:
                raise ConfigError(f"{flag(name)} must be a number > 0, got {value!r}.")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}.")

    def check_image_size(self, image_size: int) -> None:
        # G down-samples twice (x4); D's strided convs need at least a 2x2 input at its end.
        if image_size < 16 or image_size % 4:
            raise ConfigError(f"--image-size must be a multiple of 4 and at least 16 for "
                              f"cyclegan (G down-samples twice), got {image_size}.")
        if image_size < 2 ** self.d_layers * 4:
            raise ConfigError(f"--d-layers {self.d_layers} is too deep for --image-size "
                              f"{image_size}; use fewer or a larger image.")


PRESETS: dict[str, dict[str, Any]] = {
    # The paper: 200 epochs of ~1,000 images at batch 1, the last half decaying to 0.
    "cyclegan-paper": dict(
        iters=200_000, batch_size=1, image_size=256, lambda_cycle=10.0, lambda_identity=0.5,
        pool_size=50, g_lr=2e-4, d_lr=2e-4, beta1=0.5, beta2=0.999, lr_decay_iters=100_000,
        lr_update_step=1, ngf=64, ndf=64, n_blocks=0, d_layers=3,
        sample_every=1_000, save_every=10_000, log_every=100, keep_last=3,
    ),
    # The built-in synthetic faces on a CPU: 32 px, narrow nets, female <-> male.
    "demo": dict(
        iters=1500, batch_size=8, image_size=32, domains="Male", lambda_cycle=10.0,
        lambda_identity=0.5, pool_size=50, g_lr=2e-4, d_lr=2e-4, beta1=0.5, beta2=0.999,
        lr_decay_iters=750, lr_update_step=1, ngf=16, ndf=16, n_blocks=3, d_layers=3,
        sample_every=500, save_every=500, log_every=100, keep_last=2,
    ),
    # Tests and smoke runs: seconds on a CPU.
    "tiny": dict(
        iters=20, batch_size=8, image_size=32, domains="Male", lambda_cycle=10.0,
        lambda_identity=0.5, pool_size=4, g_lr=1e-3, d_lr=1e-3, beta1=0.5, beta2=0.999,
        lr_decay_iters=10, lr_update_step=1, ngf=8, ndf=8, n_blocks=1, d_layers=3,
        sample_every=10, save_every=10, log_every=5, keep_last=2,
    ),
}

OPTIONS = CycleGANOptions
