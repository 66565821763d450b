"""StarGAN v1 training options and presets (torch-free, so the CLI can validate quickly).

Presets fill generic run settings (schedule, sizes, bookkeeping) and these options alike;
`TrainConfig.from_preset` splits them.

- ``paper``: the official StarGAN v1 hyper-parameters (batch 16, 200k iterations, Adam lr 1e-4,
  betas (0.5, 0.999), n_critic 5, lambda_cls 1, lambda_rec 10, lambda_gp 10, linear decay to 0
  over the last 100k iterations updated every 1,000, 128 px, widths 64, 6 residual blocks in G,
  6 strided convs in D). For real data on a GPU.
- ``demo``: a recipe for the built-in synthetic faces that learns in minutes on a CPU.
- ``tiny``: a few-thousand-parameter model at 32 px for tests and smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starcli.errors import ConfigError
from starcli.validate import check_int, flag, mask_penalty_fields

__all__ = ["StarGANv1Options", "PRESETS", "ADV_LOSSES", "check_image_size"]

ADV_LOSSES = ("wgan-gp", "lsgan", "vanilla", "hinge")
# How `--d-adv-eps` bounds the perturbation of D's adversarial reals.
ADV_NORMS = ("linf", "l2")
# What `--d-augment` may apply to every image D sees (reals and fakes alike, in both steps).
D_AUGMENTS = ("shift", "jitter", "cutout", "colour", "noise")





def check_image_size(image_size: int, g_down_num: int, d_repeat_num: int) -> None:
    """ConfigError unless G's and D's stride-2 convs divide `image_size` evenly (shared by
    the training options and the model config that checkpoints carry)."""
    g_stride = 2 ** g_down_num
    if image_size < g_stride or image_size % g_stride:
        raise ConfigError(f"--image-size must be a positive multiple of {g_stride} (G "
                          f"down-samples {g_down_num} times), got {image_size}.")
    stride = 2 ** d_repeat_num
    if image_size % stride:
        deepest = 0
        while image_size % 2 ** (deepest + 1) == 0:
            deepest += 1
        raise ConfigError(
            f"the discriminator is too deep for --image-size {image_size}: --d-repeat-num "
            f"{d_repeat_num} halves it {d_repeat_num} times, which needs a multiple of "
            f"{stride}; use --d-repeat-num <= {deepest} or a larger --image-size."
        )


_MASK_FIELDS = mask_penalty_fields()


@dataclass(frozen=True)
class StarGANv1Options:
    """The StarGAN v1 objective and networks."""

    # Objective
    adv_loss: str = field(default="wgan-gp", metadata={
        "help": "wgan-gp (paper), lsgan, vanilla or hinge.", "choices": ADV_LOSSES})
    n_critic: int = field(default=5, metadata={  # D steps per G step
        "help": "D updates per G update.", "min": 1})
    lambda_cls: float = field(default=1.0, metadata={
        "help": "Weight of the domain-classification loss.", "min": 0.0})
    lambda_rec: float = field(default=10.0, metadata={
        "help": "Weight of the cycle-reconstruction loss.", "min": 0.0})
    lambda_gp: float = field(default=10.0, metadata={  # used only with wgan-gp
        "help": "Weight of the gradient penalty (wgan-gp).", "min": 0.0})
    g_lr: float = field(default=1e-4, metadata={"help": "Generator learning rate."})
    d_lr: float = field(default=1e-4, metadata={"help": "Discriminator learning rate."})
    beta1: float = 0.5
    beta2: float = 0.999

    # Networks
    g_conv_dim: int = field(default=64, metadata={"help": "Width of G's first layer.", "min": 1})
    d_conv_dim: int = field(default=64, metadata={"help": "Width of D's first layer.", "min": 1})
    g_repeat_num: int = field(default=6, metadata={  # residual blocks in G
        "help": "Residual blocks in G.", "min": 0})
    # stride-2 convs in G before its residual blocks; image_size must be a multiple of 2**this
    g_down_num: int = field(default=2, metadata={
        "help": "Stride-2 convs in G before its residual blocks (paper: 2).", "min": 1})
    # strided convs in D; image_size must be a multiple of 2**this
    d_repeat_num: int = field(default=6, metadata={
        "help": "Strided convs in D.", "min": 1})
    # Exponential moving average of G's weights (as StarGAN v2), kept beside G and used by
    # samples, translate and eval; 0 = off (the paper), e.g. 0.999 = a ~1,000-step horizon.
    g_ema: float = field(default=0.0, metadata={
        "help": "Keep a moving average of G's weights with this decay (e.g. 0.999) for "
                "samples, translate and eval; 0 turns it off.", "min": 0.0, "max": 0.9999999})

    # Keeping what is not the target (all off in the paper preset).
    g_blend: bool = field(default=False, metadata={
        "help": "G predicts a colour image and an attention mask and returns "
                "mask·colour + (1 − mask)·input (GANimation), so the background is kept."})
    lambda_id: float = field(default=0.0, metadata={
        "min": 0.0, "help": "Weight of the identity loss |x − G(x, own labels)|₁."})
    lambda_mask: float = _MASK_FIELDS[0]
    lambda_mask_tv: float = _MASK_FIELDS[1]
    lambda_change_tv: float = field(default=0.0, metadata={
        "min": 0.0, "help": "Weight of the total variation of the change G makes, "
                            "G(x, c') − x: edits must be smooth patches, not the "
                            "high-frequency patterns that fool a classifier."})
    lambda_cond_adv: float = field(default=0.0, metadata={
        "min": 0.0, "help": "Weight of a class-conditional adversarial loss: D gets a real/fake "
                            "score per label value and judges each image at its own labels "
                            "(reals) or its targets (fakes), as StarGAN v2's multi-task D, so "
                            "a fake must look like a real face with the target, not just be "
                            "read as one; 0 turns the head off."})
    d_adv_eps: float = field(default=0.0, metadata={
        "min": 0.0, "help": "Adversarial training of D's classifier: it must also read the "
                            "true labels on real images moved by up to this much (per "
                            "pixel, or in L2 with --d-adv-norm l2; pixels in [-1, 1]), so G "
                            "cannot fool it with small perturbations."})
    d_adv_norm: str = field(default="linf", metadata={
        "help": "--d-adv-eps bounds: linf (every pixel moves up to eps: FGSM) or l2 (the "
                "whole change has L2 norm eps, pixels in [-1, 1]; spends it where the "
                "classifier is sensitive, so thin features such as wrinkles stay readable).",
        "choices": ADV_NORMS})
    d_adv_steps: int = field(default=1, metadata={
        "min": 1, "help": "--d-adv-eps: gradient steps that find the perturbation (1: FGSM; "
                          "more: PGD, steps of 2.5·eps/N kept within eps, a stronger "
                          "attack for one more D pass each)."})
    d_warmup: int = field(default=0, metadata={
        "min": 0, "help": "The first N iterations train only D's classifier, on real images "
                          "(G starts against a classifier that already reads the labels)."})
    lambda_cls_gp: float = field(default=0.0, metadata={
        "min": 0.0, "help": "Weight of the squared gradient of D's classification loss with "
                            "respect to real images (a smooth classifier that small "
                            "perturbations cannot flip)."})
    d_augment: str = field(default="", metadata={
        "help": "Comma-separated augmentations of every image D sees, reals and fakes alike "
                "(DiffAugment): shift (up to 1/8 of the side), jitter (1/16, edges repeated), "
                "cutout (a quarter-side square), "
                "colour, noise (Gaussian, std 0.1). Keeps D's classifier from being fooled by "
                "small perturbations."})

    def __post_init__(self) -> None:
        for name in ("n_critic", "g_conv_dim", "d_conv_dim", "d_repeat_num", "g_down_num"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("g_repeat_num", self.g_repeat_num, minimum=0)
        check_int("d_warmup", self.d_warmup, minimum=0)
        check_int("d_adv_steps", self.d_adv_steps, minimum=1)
        if self.adv_loss not in ADV_LOSSES:
            raise ConfigError(f"--adv-loss {self.adv_loss!r} is not known; choose one of "
                              f"{', '.join(ADV_LOSSES)}.")
        if self.d_adv_norm not in ADV_NORMS:
            raise ConfigError(f"--d-adv-norm {self.d_adv_norm!r} is not known; choose one of "
                              f"{', '.join(ADV_NORMS)}.")
        if not isinstance(self.g_blend, bool):
            raise ConfigError(f"--g-blend must be true or false, got {self.g_blend!r}.")
        augments = self.augments
        unknown = [a for a in augments if a not in D_AUGMENTS]
        if unknown:
            raise ConfigError(f"--d-augment {self.d_augment!r}: {', '.join(unknown)} is not "
                              f"known; choose from {', '.join(D_AUGMENTS)}.")
        for name in ("lambda_cls", "lambda_rec", "lambda_gp", "lambda_id", "lambda_mask",
                     "lambda_mask_tv", "lambda_cls_gp", "lambda_change_tv", "d_adv_eps",
                     "lambda_cond_adv"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"{flag(name)} must be a number >= 0, got {value!r}.")
        for name in ("g_lr", "d_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{flag(name)} must be a number > 0, got {value!r}.")
        if isinstance(self.g_ema, bool) or not isinstance(self.g_ema, (int, float)) or \
                not 0 <= self.g_ema < 1:
            raise ConfigError(f"--g-ema must be a number in [0, 1) (0 turns it off), got "
                              f"{self.g_ema!r}.")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}.")

    @property
    def augments(self) -> tuple[str, ...]:
        """The `d_augment` words, in the order given."""
        if not isinstance(self.d_augment, str):
            raise ConfigError(f"--d-augment must be a comma-separated string, got "
                              f"{self.d_augment!r}.")
        return tuple(dict.fromkeys(w.strip().lower() for w in self.d_augment.split(",")
                                   if w.strip()))

    def check_image_size(self, image_size: int) -> None:
        check_image_size(image_size, self.g_down_num, self.d_repeat_num)


# Every field a preset sets (generic run settings and options alike); anything not listed
# keeps its dataclass default.
PRESETS: dict[str, dict[str, Any]] = {
    # The official StarGAN v1 hyper-parameters (stargan-v1.md, "Objective").
    "paper": dict(
        iters=200_000, batch_size=16, image_size=128, adv_loss="wgan-gp", n_critic=5,
        lambda_cls=1.0, lambda_rec=10.0, lambda_gp=10.0, g_lr=1e-4, d_lr=1e-4,
        beta1=0.5, beta2=0.999, lr_decay_iters=100_000, lr_update_step=1_000,
        g_conv_dim=64, d_conv_dim=64, g_repeat_num=6, d_repeat_num=6,
        sample_every=1_000, save_every=10_000, log_every=100, keep_last=3,
    ),
    # ---- DEMO RECIPE: the one place to tune the CPU demo (issue 7) -------------------------
    # Tuned by measurement for `starcli demo` (starcli/demo.py; the table of recipes tried is
    # in the README): 32 px (about 4x cheaper per iteration than 64 px; the demo prepares
    # tight centre crops so the faces fill the frame), narrow nets, LSGAN with one D step per
    # G step, bf16 on CPUs that have it. lambda_rec 30 (not the paper's 10) buys the cycle
    # L1 <= 0.10 bar; 7,000 iterations at about 0.072 s each on 2 idle cores. Measured with
    # the demo's --mix 1,3: success 0.923 (CelebA 0.963, RaFD 0.874), cycle L1 0.097.
    "demo": dict(
        iters=7000, batch_size=16, image_size=32, adv_loss="lsgan", n_critic=1,
        lambda_cls=1.0, lambda_rec=30.0, lambda_gp=10.0, g_lr=2e-4, d_lr=2e-4,
        beta1=0.5, beta2=0.999, lr_decay_iters=3500, lr_update_step=1,
        g_conv_dim=32, d_conv_dim=32, g_repeat_num=3, d_repeat_num=4,
        sample_every=1000, save_every=1000, log_every=250, keep_last=2,
    ),
    # ---- end of the demo recipe ------------------------------------------------------------
    # Tests and smoke runs: seconds on a CPU.
    "tiny": dict(
        iters=20, batch_size=8, image_size=32, adv_loss="wgan-gp", n_critic=2,
        lambda_cls=1.0, lambda_rec=10.0, lambda_gp=10.0, g_lr=1e-3, d_lr=1e-3,
        beta1=0.5, beta2=0.999, lr_decay_iters=10, lr_update_step=1,
        g_conv_dim=8, d_conv_dim=8, g_repeat_num=1, d_repeat_num=3,
        sample_every=10, save_every=10, log_every=5, keep_last=2,
    ),
}

OPTIONS = StarGANv1Options
