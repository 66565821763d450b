"""Training configuration: one frozen dataclass and its presets.

    cfg = TrainConfig.from_preset("demo", datasets=("demo-celeba",), iters=500)

A preset fills every field; explicit keyword arguments override it. `__post_init__` rejects
configurations that can never work, naming the command-line flag, so `starcli train` fails
with exit 2 before any data is read.

Presets:

- ``paper``: the official StarGAN v1 hyper-parameters (batch 16, 200k iterations, Adam lr 1e-4,
  betas (0.5, 0.999), n_critic 5, lambda_cls 1, lambda_rec 10, lambda_gp 10, linear decay to 0
  over the last 100k iterations updated every 1,000, 128 px, widths 64, 6 residual blocks in G,
  6 strided convs in D). For real data on a GPU.
- ``demo``: a recipe for the built-in synthetic faces that learns in minutes on a CPU.
- ``tiny``: a few-thousand-parameter model at 32 px for tests and smoke runs.

Learning-rate schedule: constant, then a linear decay to 0 over the last `lr_decay_iters`
iterations (the whole run when that is longer than `iters`). Like the paper the rate changes in
steps every `lr_update_step` iterations (1,000 in `paper`); `lr_update_step = 1` decays every
iteration.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from starcli.errors import ConfigError

__all__ = ["TrainConfig", "check_image_size", "PRESETS", "ADV_LOSSES", "PRECISIONS", "ADAM_IMPLS",
           "DEFAULT_JOINT_DATASETS", "load_run_config", "RESUME_OVERRIDABLE"]

ADV_LOSSES = ("wgan-gp", "lsgan", "vanilla", "hinge")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
ADAM_IMPLS = ("auto", "foreach", "fused", "for-loop")
DEFAULT_JOINT_DATASETS = ("celeba", "rafd")

# Fields a resumed run may change: they do not alter the model, the data or the optimiser maths
# (changing `iters` extends or shortens the run and moves the decay window with it).
RESUME_OVERRIDABLE = ("iters", "device", "workers", "compile", "channels_last", "precision",
                      "sample_every", "save_every", "log_every", "keep_last", "home", "resume",
                      "dist_timeout")

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Paths are kept as strings so the config is JSON."""

    # Data
    datasets: tuple[str, ...] = ()  # prepared dataset names; several need joint=True
    joint: bool = False  # one model over several datasets with StarGAN mask vectors
    home: str | None = None  # data root (None: $STARCLI_HOME or ~/.cache/starcli)
    mix: tuple[float, ...] | None = None  # joint sampling weights; None alternates 1:1 (paper)
    augment: bool = True  # random horizontal flips, as the paper
    workers: int = 0  # loader processes; 0 reads in the training process

    # Schedule
    preset: str = "paper"
    iters: int = 200_000
    batch_size: int = 16
    image_size: int = 128  # must equal the prepared data's size
    adv_loss: str = "wgan-gp"
    n_critic: int = 5  # D steps per G step
    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    lambda_gp: float = 10.0  # used only with wgan-gp
    g_lr: float = 1e-4
    d_lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay_iters: int = 100_000  # linear decay to 0 over the last N iterations
    lr_update_step: int = 1_000  # the decayed rate changes every this many iterations

    # Model
    g_conv_dim: int = 64
    d_conv_dim: int = 64
    g_repeat_num: int = 6  # residual blocks in G
    g_down_num: int = 2  # stride-2 convs in G before its residual blocks; image_size must be
    #                     a multiple of 2**this
    d_repeat_num: int = 6  # strided convs in D; image_size must be a multiple of 2**this
    # Exponential moving average of G's weights (as StarGAN v2), kept beside G and used by
    # samples, translate and eval; 0 = off (the paper), e.g. 0.999 = a ~1,000-step horizon.
    g_ema: float = 0.0

    # Speed (never change the maths beyond rounding)
    precision: str = "auto"  # fp32 | bf16 | fp16 (CUDA) | auto (bf16 where the hardware has it)
    channels_last: bool | None = None  # None: on for CUDA, off on CPU (measured slower there)
    compile: bool = False  # torch.compile G and D; falls back to eager with a warning
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    adam_impl: str = "auto"  # auto (fused where available, else foreach) | foreach | fused |
    #                          for-loop
    # Several processes (torchrun): `batch_size` is the global batch, split evenly over ranks.
    dist_timeout: int = 600  # seconds a rank waits for the others before the job fails

    # Run bookkeeping
    seed: int = 0
    run_dir: str | None = None  # None: runs/<dataset>-<YYYYmmdd-HHMMSS>
    resume: str | None = None  # a run dir, a checkpoint dir or "latest"
    sample_every: int = 1_000  # 0 = only at the end
    save_every: int = 10_000  # 0 = only at the end (and on interrupt)
    log_every: int = 100
    keep_last: int = 3  # checkpoints kept in the run dir

    def __post_init__(self) -> None:
        # Normalise containers so JSON round trips and CLI lists compare equal.
        object.__setattr__(self, "datasets", tuple(self.datasets))
        if self.mix is not None:
            object.__setattr__(self, "mix", tuple(float(m) for m in self.mix))
        if self.joint and not self.datasets:
            object.__setattr__(self, "datasets", DEFAULT_JOINT_DATASETS)
        self._validate()

    # -- validation ---------------------------------------------------------------------

    def _validate(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"--preset {self.preset!r} is not known; choose one of "
                              f"{', '.join(PRESETS)}.")
        if not self.datasets:
            raise ConfigError("no dataset given; pass --dataset NAME (or --joint for "
                              "celeba+rafd).")
        if len(set(self.datasets)) != len(self.datasets):
            raise ConfigError(f"--dataset lists a dataset twice: {', '.join(self.datasets)}.")
        if len(self.datasets) > 1 and not self.joint:
            raise ConfigError(f"--dataset was given {len(self.datasets)} datasets "
                              f"({', '.join(self.datasets)}); add --joint to train one model on "
                              "several datasets.")
        if self.mix is not None:
            if not self.joint:
                raise ConfigError("--mix only applies to --joint runs.")
            if len(self.mix) != len(self.datasets):
                raise ConfigError(f"--mix has {len(self.mix)} weights for {len(self.datasets)} "
                                  f"datasets ({', '.join(self.datasets)}); give one each.")
            if any(m < 0 for m in self.mix) or sum(self.mix) <= 0:
                raise ConfigError("--mix weights must be non-negative with a positive sum.")
        positive = ("iters", "batch_size", "n_critic", "lr_update_step", "g_conv_dim",
                    "d_conv_dim", "d_repeat_num", "g_down_num", "keep_last", "log_every")
        for name in positive:
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("dist_timeout", self.dist_timeout, minimum=1)
        for name in ("lr_decay_iters", "g_repeat_num", "workers", "sample_every", "save_every",
                     "seed"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.adv_loss not in ADV_LOSSES:
            raise ConfigError(f"--adv-loss {self.adv_loss!r} is not known; choose one of "
                              f"{', '.join(ADV_LOSSES)}.")
        for name in ("lambda_cls", "lambda_rec", "lambda_gp"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"{_flag(name)} must be a number >= 0, got {value!r}.")
        for name in ("g_lr", "d_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{_flag(name)} must be a number > 0, got {value!r}.")
        if isinstance(self.g_ema, bool) or not isinstance(self.g_ema, (int, float)) or \
                not 0 <= self.g_ema < 1:
            raise ConfigError(f"--g-ema must be a number in [0, 1) (0 turns it off), got "
                              f"{self.g_ema!r}.")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r} is not known; choose one of "
                              f"{', '.join(PRECISIONS)}.")
        if self.adam_impl not in ADAM_IMPLS:
            raise ConfigError(f"adam_impl {self.adam_impl!r} is not known; choose one of "
                              f"{', '.join(ADAM_IMPLS)}.")
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise ConfigError(f"--device {self.device!r} is not understood; use auto, cpu, cuda "
                              "or cuda:N.")
        if self.precision == "fp16" and self.device in ("cpu", "mps"):
            raise ConfigError("--precision fp16 needs a CUDA device (it uses a gradient scaler); "
                              "use --precision bf16 on a CPU.")
        _check_int("image_size", self.image_size, minimum=4)
        check_image_size(self.image_size, self.g_down_num, self.d_repeat_num)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset: str = "paper", **overrides: Any) -> TrainConfig:
        """The preset's values with `overrides` on top (None values are ignored, so CLI options
        left unset fall through to the preset)."""
        if preset not in PRESETS:
            raise ConfigError(f"--preset {preset!r} is not known; choose one of "
                              f"{', '.join(PRESETS)}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}.")
        values = dict(PRESETS[preset])
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["preset"] = preset
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def name(self) -> str:
        """Short run name: the dataset, or the joined dataset names."""
        return "+".join(self.datasets)

    @property
    def decay_iters(self) -> int:
        """The length of the decay window actually used (never longer than the run)."""
        return min(self.lr_decay_iters, self.iters)

    def lr_at(self, step: int, base_lr: float) -> float:
        """Learning rate for iteration `step` (1-based): constant, then linear to 0 over the
        last `decay_iters`, changing every `lr_update_step` iterations."""
        decay = self.decay_iters
        if decay <= 0:
            return base_lr
        elapsed = (step - 1) - (self.iters - decay)
        if elapsed <= 0:
            return base_lr
        elapsed -= elapsed % self.lr_update_step
        return base_lr * max(0.0, 1.0 - elapsed / decay)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["datasets"] = list(self.datasets)
        d["mix"] = list(self.mix) if self.mix is not None else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["datasets"] = tuple(values.get("datasets", ()))
        if values.get("mix") is not None:
            values["mix"] = tuple(values["mix"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config a run was started with (its `config.json`)."""
    path = Path(run_dir) / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; pass --resume a run directory written by "
                          "`starcli train`.") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc}); pass another run to --resume."
                          ) from None
    return TrainConfig.from_dict(data)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{_flag(name)} must be an integer, got {value!r}.")
    if value < minimum:
        raise ConfigError(f"{_flag(name)} must be at least {minimum}, got {value}.")


def check_image_size(image_size: int, g_down_num: int, d_repeat_num: int) -> None:
    """ConfigError unless G's and D's stride-2 convs divide `image_size` evenly (shared by
    TrainConfig and the model config that checkpoints carry)."""
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


# Every field a preset sets; anything not listed keeps the dataclass default.
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
