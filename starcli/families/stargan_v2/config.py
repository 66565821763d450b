"""StarGAN v2 training options and presets (torch-free, so the CLI can validate quickly).

The defaults are the official training run's (reference/stargan-v2.md §2.1): R1 weight 1, style
and cycle weights 1, diversity weight 1 decayed linearly to 0 over 100k iterations, Adam with
betas (0, 0.99) and weight decay 1e-4, lr 1e-4 for G, E and D and 1e-6 for F, EMA 0.999 on G,
F and E, no learning-rate schedule, batch 8.

- ``v2-celeba-hq``: the CelebA-HQ model (256 px, female/male, w_hpf 1). Training it needs face
  masks from the landmark network (FAN): pass the official weights as ``--wing wing.ckpt``.
- ``v2-afhq``: the AFHQ model (256 px, every class of the dataset, w_hpf 0, diversity 2).
- ``demo``: the built-in synthetic faces on a CPU (32 px, narrow nets).
- ``tiny``: a small model at 32 px for tests and smoke runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from starcli.errors import ConfigError
from starcli.validate import check_int, flag, mask_penalty_fields

__all__ = ["StarGANv2Options", "PRESETS", "OPTIONS"]


def _number(name: str, value: Any, *, positive: bool = False) -> None:
    """ConfigError naming the flag unless `value` is a finite number >= 0 (> 0 if positive)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and \
        math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        raise ConfigError(f"{flag(name)} must be a number {'>' if positive else '>='} 0, "
                          f"got {value!r}.")


_MASK_FIELDS = mask_penalty_fields()


@dataclass(frozen=True)
class StarGANv2Options:
    """The StarGAN v2 objective and networks (G, F, E, D) over K domains of one dataset."""

    # Issue #101 of the official code: batch 4 is unstable, 8 is recommended.
    WARN_BATCH_BELOW: ClassVar[int] = 8

    domains: str = field(default="Male", metadata={
        "help": "The domains of the dataset: one attribute (Male: female/male), members of an "
                "exclusive group (Blond_Hair,Black_Hair), a group (hair) or one-hot classes "
                "(cat,dog,wild; empty or 'all': every class)."})
    latent_dim: int = field(default=16, metadata={
        "help": "Size of the latent z that F maps to a style.", "min": 1})
    style_dim: int = field(default=64, metadata={"help": "Size of a style code.", "min": 1})
    w_hpf: float = field(default=0.0, metadata={
        "help": "High-pass skip weight (CelebA-HQ: 1; needs face masks, so --wing). 0 is "
                "the AFHQ model.", "min": 0.0})
    wing: str = field(default="", metadata={
        "help": "wing.ckpt, the FAN landmark weights that make the face masks of a w_hpf > 0 "
                "model (copied into every checkpoint)."})
    dim_in: int = field(default=0, metadata={
        "help": "Width of the networks at full resolution (0: 2**14 / image size, "
                "the official).", "min": 0})
    max_conv_dim: int = field(default=512, metadata={
        "help": "Channel cap of G, E and D.", "min": 1})
    mapping_hidden: int = field(default=512, metadata={
        "help": "Width of the mapping network F.", "min": 1})
    lambda_reg: float = field(default=1.0, metadata={
        "help": "Weight of the R1 penalty on real images (gamma).", "min": 0.0})
    lambda_sty: float = field(default=1.0, metadata={
        "help": "Weight of the style-reconstruction loss.", "min": 0.0})
    lambda_ds: float = field(default=1.0, metadata={
        "help": "Initial weight of the diversity-sensitive loss (AFHQ: 2), decayed linearly "
                "to 0 over --ds-iter.", "min": 0.0})
    lambda_cyc: float = field(default=1.0, metadata={
        "help": "Weight of the cycle-consistency loss.", "min": 0.0})
    ds_iter: int = field(default=100_000, metadata={
        "help": "Iterations over which the diversity weight decays to 0.", "min": 1})
    lr: float = field(default=1e-4, metadata={"help": "Learning rate of G, E and D."})
    f_lr: float = field(default=1e-6, metadata={"help": "Learning rate of the mapping net F."})
    beta1: float = 0.0
    beta2: float = 0.99
    weight_decay: float = field(default=1e-4, metadata={
        "help": "Adam's (L2) weight decay of every network.", "min": 0.0})
    ema: float = field(default=0.999, metadata={
        "help": "Decay of the moving averages of G, F and E.", "min": 0.0, "max": 1.0})

    # Keeping what is not the domain or the style (not in the official model; all off in
    # every preset but demo).
    g_blend: bool = field(default=False, metadata={
        "help": "G also predicts an attention mask and returns input + mask·(colour − "
                "input), so what the mask leaves closed (the background) is the input's."})
    lambda_mask: float = _MASK_FIELDS[0]
    lambda_mask_tv: float = _MASK_FIELDS[1]
    lambda_id: float = field(default=0.0, metadata={
        "min": 0.0, "help": "Weight of the identity loss |x − G(x, E(x, own domain))|₁: "
                            "an image's own style leaves it as it is."})

    def __post_init__(self) -> None:
        if not isinstance(self.wing, str):
            raise ConfigError(f"--wing must be a file path, got {self.wing!r}.")
        if not isinstance(self.domains, str):
            raise ConfigError(f"--domains must be text such as Male or Blond_Hair,Black_Hair, "
                              f"got {self.domains!r}.")
        for name in ("latent_dim", "style_dim", "max_conv_dim", "mapping_hidden", "ds_iter"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("dim_in", self.dim_in, minimum=0)
        if not isinstance(self.g_blend, bool):
            raise ConfigError(f"--g-blend must be true or false, got {self.g_blend!r}.")
        for name in ("w_hpf", "lambda_reg", "lambda_sty", "lambda_ds", "lambda_cyc",
                     "weight_decay", "lambda_mask", "lambda_mask_tv", "lambda_id"):
            _number(name, getattr(self, name))
        for name in ("lr", "f_lr"):
            _number(name, getattr(self, name), positive=True)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}.")
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or \
                not 0 <= self.ema <= 1:
            raise ConfigError(f"--ema must be in [0, 1], got {self.ema!r}.")

    def check_image_size(self, image_size: int) -> None:
        # G, E and D halve the image down to 4x4 (E and D end in a 4x4 conv).
        if image_size < 16 or image_size & (image_size - 1):
            raise ConfigError(f"--image-size must be a power of 2 and at least 16 for "
                              f"stargan-v2, got {image_size}.")

    def check_trainable(self) -> None:
        """What the step cannot train (the options stay valid for imported weights)."""
        if self.w_hpf > 0 and not self.wing:
            raise ConfigError(f"--w-hpf {self.w_hpf:g}: training with w_hpf > 0 needs face "
                              "masks from the landmark network (FAN): pass its official "
                              "weights as --wing wing.ckpt, or use --w-hpf 0.")


_RUN = dict(lr_decay_iters=0, lr_update_step=1)  # the official code has no lr schedule

PRESETS: dict[str, dict[str, Any]] = {
    # First: the CLI's default preset for --family stargan-v2 (the first one, as no preset
    # is named *paper), so the default is one that trains.
    # The official AFHQ run (cat/dog/wild: every class of a folder dataset).
    "v2-afhq": dict(
        iters=100_000, batch_size=8, image_size=256, domains="", w_hpf=0.0, lambda_ds=2.0,
        ds_iter=100_000, dim_in=0, max_conv_dim=512, mapping_hidden=512,
        sample_every=5_000, save_every=10_000, log_every=100, keep_last=3, **_RUN,
    ),
    # The official CelebA-HQ run (female/male, masked high-pass skips).
    "v2-celeba-hq": dict(
        iters=100_000, batch_size=8, image_size=256, domains="Male", w_hpf=1.0, lambda_ds=1.0,
        ds_iter=100_000, dim_in=0, max_conv_dim=512, mapping_hidden=512,
        sample_every=5_000, save_every=10_000, log_every=100, keep_last=3, **_RUN,
    ),
    # The built-in synthetic faces on a CPU (`starcli demo --family stargan-v2`): 32 px,
    # narrow nets, lr 3e-4 (3x the paper's; F 3e-6). Measured on demo-celeba female/male,
    # held-out faces, 3,000 iterations: latent success 0.84 (female 0.72, male 0.96),
    # reference success 0.88, 2.1 distinct hair colours among 10 styles of one face, the
    # reference's hair colour kept 34% (chance 25%), frame L1 0.35 (backgrounds are not
    # kept). The same at lr 1e-4 and 2,000 iterations: 0.87 / 0.76, 1.6 colours, 23%; at
    # lr 3e-4 and 5,000 iterations: 0.92 / 0.89, 1.4 colours (λds decays over the run), 27%.
    "demo": dict(
        iters=3_000, batch_size=8, image_size=32, domains="Male", w_hpf=0.0, lambda_ds=1.0,
        ds_iter=3_000, dim_in=16, max_conv_dim=64, mapping_hidden=64, lr=3e-4, f_lr=3e-6,
        sample_every=500, save_every=1_000, log_every=100, keep_last=2, **_RUN,
    ),
    # Tests and smoke runs: seconds on a CPU.
    "tiny": dict(
        iters=4, batch_size=4, image_size=32, domains="Male", w_hpf=0.0, lambda_ds=1.0,
        ds_iter=10, dim_in=8, max_conv_dim=16, mapping_hidden=16, latent_dim=16, style_dim=16,
        sample_every=2, save_every=2, log_every=1, keep_last=3, **_RUN,
    ),
}

OPTIONS = StarGANv2Options
