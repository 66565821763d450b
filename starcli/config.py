"""Training configuration: generic run settings plus the options of one model family.

    cfg = TrainConfig.from_preset("demo", datasets=("demo-celeba",), iters=500)
    cfg.family, cfg.options            # "stargan-v1", StarGANv1Options(...)
    cfg.n_critic                       # family options read through the config too

`TrainConfig` holds what every family shares: data, schedule, runtime and bookkeeping. The
family's own options (objective, networks, learning rates) live in `cfg.options`, a frozen
dataclass of the family (`starcli/families/<name>/config.py`), which also owns the presets.
A preset fills every field; explicit keyword arguments override it, and keyword arguments are
routed by name to the config or to the options. `__post_init__` rejects configurations that can
never work, naming the command-line flag, so `starcli train` fails with exit 2 before any data
is read.

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
from starcli.families import DEFAULT_FAMILY, LEGACY_FAMILY, family_info
from starcli.validate import check_int

__all__ = ["TrainConfig", "PRECISIONS", "ADAM_IMPLS", "DEFAULT_JOINT_DATASETS",
           "load_run_config", "RESUME_OVERRIDABLE", "RESUME_OVERRIDABLE_OPTIONS", "presets_of"]

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
ADAM_IMPLS = ("auto", "foreach", "fused", "for-loop")
DEFAULT_JOINT_DATASETS = ("celeba", "rafd")

# Fields a resumed run may change: they do not alter the model, the data or the optimiser maths
# (changing `iters` extends or shortens the run and moves the decay window with it).
RESUME_OVERRIDABLE = ("iters", "device", "workers", "compile", "channels_last", "precision",
                      "sample_every", "save_every", "log_every", "keep_last", "home", "resume",
                      "dist_timeout")
# Family option fields a resumed run may change: the learning rates (the way out of a
# non-finite loss, which an exact resume would otherwise replay) and where StarGAN v2's FAN
# weights file now lies (the run's checkpoint holds the weights themselves). Recorded in the
# run's environment.json under its resumes.
RESUME_OVERRIDABLE_OPTIONS = ("g_lr", "d_lr", "lr", "f_lr", "wing")

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def presets_of(family: str) -> dict[str, dict[str, Any]]:
    """The presets of a family (ConfigError for an unknown family)."""
    return family_info(family).presets


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

    # Family: its name and its own options (None: the family's defaults)
    family: str = DEFAULT_FAMILY
    options: Any = None

    # Schedule
    preset: str = "paper"
    iters: int = 200_000
    batch_size: int = 16
    image_size: int = 128  # must equal the prepared data's size
    lr_decay_iters: int = 100_000  # linear decay to 0 over the last N iterations
    lr_update_step: int = 1_000  # the decayed rate changes every this many iterations

    # Speed (never change the maths beyond rounding)
    precision: str = "auto"  # fp32 | bf16 | fp16 (CUDA) | auto (bf16 where the hardware has it)
    channels_last: bool | None = None  # None: on for CUDA, off on CPU (measured slower there)
    compile: bool = False  # torch.compile the networks; falls back to eager with a warning
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
        options_cls = family_info(self.family).options
        if self.options is None:
            object.__setattr__(self, "options", options_cls())
        elif isinstance(self.options, dict):
            object.__setattr__(self, "options", _build_options(options_cls, self.options))
        elif not isinstance(self.options, options_cls):
            raise ConfigError(f"the options of --family {self.family} must be "
                              f"{options_cls.__name__}, not {type(self.options).__name__}.")
        self._validate()

    def __getattr__(self, name: str) -> Any:
        # Family options read through the config (cfg.n_critic is cfg.options.n_critic).
        options = self.__dict__.get("options")
        if options is not None and not name.startswith("_") and \
                name in {f.name for f in fields(options)}:
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # -- validation ---------------------------------------------------------------------

    def _validate(self) -> None:
        if self.preset not in presets_of(self.family):
            raise ConfigError(f"--preset {self.preset!r} is not known for --family "
                              f"{self.family}; choose one of "
                              f"{', '.join(presets_of(self.family))}.")
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
        for name in ("iters", "batch_size", "lr_update_step", "keep_last", "log_every",
                     "dist_timeout"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("lr_decay_iters", "workers", "sample_every", "save_every", "seed"):
            check_int(name, getattr(self, name), minimum=0)
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
        check_int("image_size", self.image_size, minimum=4)
        self.options.check_image_size(self.image_size)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset: str = "paper", family: str | None = None,
                    **overrides: Any) -> TrainConfig:
        """The family's preset with `overrides` on top (None values are ignored, so CLI options
        left unset fall through to the preset). Override names are config fields or fields of
        the family's options."""
        family = family or DEFAULT_FAMILY
        presets = presets_of(family)
        if preset not in presets:
            raise ConfigError(f"--preset {preset!r} is not known for --family {family}; "
                              f"choose one of {', '.join(presets)}.")
        values = dict(presets[preset])
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["preset"] = preset
        values["family"] = family
        return cls._from_flat(values)

    @classmethod
    def _from_flat(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from one flat dict: config fields by name, the rest to the family options."""
        family = values.get("family") or LEGACY_FAMILY
        options_cls = family_info(family).options
        own = {f.name for f in fields(cls)}
        option_names = {f.name for f in fields(options_cls)}
        unknown = sorted(set(values) - own - option_names)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown} for --family {family}.")
        given = values.get("options")
        options = dict(dataclasses.asdict(given) if dataclasses.is_dataclass(given)
                       else given or {})
        options.update({k: v for k, v in values.items() if k in option_names})
        top = {k: v for k, v in values.items() if k in own and k != "options"}
        top["family"] = family
        return cls(**top, options=_build_options(options_cls, options))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes` applied (validated again); option names reach the options."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return self._from_flat(values)

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
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["datasets"] = list(self.datasets)
        d["mix"] = list(self.mix) if self.mix is not None else None
        d["options"] = dataclasses.asdict(self.options)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from `to_dict()`, or from a flat dict written before families existed
        (then the family is StarGAN v1 and its option fields sit at the top level)."""
        family = data.get("family") or LEGACY_FAMILY
        own = {f.name for f in fields(cls)}
        option_names = {f.name for f in fields(family_info(family).options)}
        values = {k: v for k, v in data.items() if k in own or k in option_names}
        values["family"] = family
        values["datasets"] = tuple(values.get("datasets", ()))
        if values.get("mix") is not None:
            values["mix"] = tuple(values["mix"])
        return cls._from_flat(values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _build_options(options_cls: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in fields(options_cls)}
    return options_cls(**{k: v for k, v in values.items() if k in known})


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
