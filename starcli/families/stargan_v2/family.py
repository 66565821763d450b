"""StarGAN v2 as a model family: G, F, E and D over K domains of one dataset.

The checkpoint holds G, F, E, D and the moving averages G_ema, F_ema, E_ema (what samples,
translate and eval use). The model config is `V2Model`: the networks' `V2ModelConfig` plus the
domains it was trained on, so translate and eval map a target label row to its domain.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from starcli.checkpoint import check_weights, load_weights
from starcli.data.domains import Domains, resolve_domains
from starcli.errors import ConfigError
from starcli.families.base import OptimizerSpec, StepContext
from starcli.families.stargan_v2.config import StarGANv2Options
from starcli.families.stargan_v2.fan import FAN, check_fan_state, read_fan_state
from starcli.families.stargan_v2.networks import V2ModelConfig, build_v2, count_parameters
from starcli.families.stargan_v2.samples import Sampler
from starcli.families.stargan_v2.step import (
    LOG_KEYS,
    LOSS_KEYS,
    PER_DATASET_KEYS,
    POOL_SIZE,
    ReferencePools,
    StarGANv2Step,
    first_images,
)
from starcli.families.stargan_v2.translator import Translator
from starcli.runtime import Runtime

__all__ = ["FAMILY", "StarGANv2", "V2Model"]

NETWORKS = ("G", "F", "E", "D")
AVERAGED = ("G", "F", "E")


@dataclass(frozen=True)
class V2Model(V2ModelConfig):
    """The networks' architecture plus the domains they translate between (saved as
    meta["model"]); `num_domains` equals `len(domains)`."""

    domains: Domains | None = None
    masks: bool = False  # G gets face masks from a FAN kept in the checkpoint (w_hpf > 0)

    def __post_init__(self) -> None:
        if isinstance(self.domains, dict):
            object.__setattr__(self, "domains", Domains.from_dict(self.domains))
        super().__post_init__()
        if self.domains is not None and len(self.domains) != self.num_domains:
            raise ConfigError(f"StarGAN v2 model config has {self.num_domains} domains but "
                              f"names {len(self.domains)}.")

    def networks(self) -> V2ModelConfig:
        """The plain architecture (what official.py reads and writes)."""
        return V2ModelConfig(**{f.name: getattr(self, f.name)
                                for f in fields(V2ModelConfig)})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = self.networks().to_dict()
        out["domains"] = self.domains.to_dict() if self.domains is not None else None
        out["masks"] = self.masks
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> V2Model:
        data = dict(data)
        domains = data.pop("domains", None)
        masks = bool(data.pop("masks", False))
        base = V2ModelConfig.from_dict(data)
        return cls(**{f.name: getattr(base, f.name) for f in fields(V2ModelConfig)},
                   domains=domains, masks=masks)


def _domains(options: StarGANv2Options, layout) -> Domains:
    if len(layout.spaces) != 1:
        raise ConfigError("--family stargan-v2 trains on one dataset (K domains of its "
                          "labels); drop --joint.")
    domains = resolve_domains(layout.spaces[0], options.domains)
    if len(domains) < 2:
        raise ConfigError(f"--domains {options.domains or '(all)'} gives one domain "
                          f"({domains.names[0]}); stargan-v2 needs at least 2.")
    return domains


class StarGANv2:
    name = "stargan-v2"
    loss_keys = LOSS_KEYS
    per_dataset_keys = PER_DATASET_KEYS
    log_keys = LOG_KEYS
    # translate: a target's domain and a style code drive G; the other labels a target keeps
    # are not inputs of StarGAN v2, so no D and no --labels are needed for them.
    needs_source_labels = False
    # bf16 on a CPU: NHWC measured about 28% faster per step than the default layout
    # (benchmarks/bench_train.py --family stargan-v2); runtime.make_runtime reads this.
    cpu_channels_last = True

    def balance(self, model: V2Model):
        """The engine's stream draws sources class-balanced over the domains (the official
        source loader's weighted sampler); rows in no domain are never drawn."""
        domains = model.domains
        return None if domains is None else domains.assign

    def model_config(self, options: StarGANv2Options, image_size: int, layout) -> V2Model:
        options.check_trainable()
        domains = _domains(options, layout)
        return V2Model(image_size=image_size, num_domains=len(domains),
                       latent_dim=options.latent_dim, style_dim=options.style_dim,
                       w_hpf=options.w_hpf, max_conv_dim=options.max_conv_dim,
                       dim_in=options.dim_in or None, mapping_hidden=options.mapping_hidden,
                       g_blend=options.g_blend, domains=domains, masks=options.w_hpf > 0)

    def model_from_dict(self, data: dict[str, Any]) -> V2Model:
        return V2Model.from_dict(data)

    def build(self, model: V2Model) -> dict[str, nn.Module]:
        # He init here; the engine copies the averages afterwards, so they start from the
        # same weights (the official code copies before its He init, a known quirk).
        modules: dict[str, nn.Module] = build_v2(model.networks())
        if model.masks:
            # The FAN is saved and resumed with the run, so its checkpoints translate alone;
            # make_step loads --wing into it. No optimiser holds it and face_masks runs it
            # without a graph; its parameters keep requires_grad only because DDP refuses a
            # module with none.
            with torch.random.fork_rng(devices=[]):
                modules["FAN"] = FAN()
        return modules

    def parameter_counts(self, model: V2Model) -> dict[str, int]:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return {n: count_parameters(m) for n, m in build_v2(model.networks()).items()}

    def optimizers(self, options: StarGANv2Options) -> dict[str, OptimizerSpec]:
        betas = (options.beta1, options.beta2)
        wd = options.weight_decay
        return {"G": OptimizerSpec(("G",), options.lr, betas, wd),
                "F": OptimizerSpec(("F",), options.f_lr, betas, wd),
                "E": OptimizerSpec(("E",), options.lr, betas, wd),
                "D": OptimizerSpec(("D",), options.lr, betas, wd)}

    def ema(self, options: StarGANv2Options) -> dict[str, float]:
        return {n: options.ema for n in AVERAGED}

    def make_step(self, ctx: StepContext) -> StarGANv2Step:
        from starcli.data.dataset import open_prepared
        from starcli.paths import resolve_home

        options = ctx.cfg.options
        options.check_trainable()
        domains = _domains(options, ctx.layout)
        if "FAN" in ctx.modules:
            sd, source = read_fan_state(Path(options.wing).expanduser())
            check_fan_state(sd, source)
            ctx.modules["FAN"].load_state_dict(sd, strict=True)
        ds = open_prepared(resolve_home(ctx.cfg.home), ctx.cfg.datasets[0], ctx.cfg.image_size)
        pools = first_images(ds, domains, "train", POOL_SIZE)
        for name, images in zip(domains.names, pools, strict=True):
            if not len(images):
                raise ConfigError(f"--domains {options.domains or '(all)'}: {ds.name} has no "
                                  f"training image of domain {name}; choose other domains.")
        return StarGANv2Step(ctx, domains, ReferencePools(pools))

    def sampler(self, datasets, layout, device: torch.device) -> Sampler:
        return Sampler(datasets, device)

    def compile_probe(self, modules: dict[str, nn.Module], model: V2Model,
                      rt: Runtime) -> torch.Tensor:
        n = 2
        x = torch.zeros(n, 3, model.image_size, model.image_size, device=rt.device)
        y = torch.zeros(n, dtype=torch.long, device=rt.device)
        z = torch.zeros(n, model.latent_dim, device=rt.device)
        with rt.autocast():
            s = modules["F"](z, y) + modules["E"](x, y)
            return modules["D"](modules["G"](x, s), y).float().mean()

    def load_inference(self, ckpt_dir: Path, meta: dict[str, Any], model: V2Model, *,
                       device: str | torch.device, with_discriminator: bool, ema: bool
                       ) -> tuple[dict[str, nn.Module], bool]:
        """G, F, E (their moving averages when the checkpoint has them and `ema`), when asked
        for, D, and the FAN when meta["masks"] (w_hpf > 0 with face masks)."""
        ckpt_dir = Path(ckpt_dir)
        use_ema = ema and all((ckpt_dir / f"{n}_ema.safetensors").is_file() for n in AVERAGED)
        files = {n: ckpt_dir / (f"{n}_ema.safetensors" if use_ema else f"{n}.safetensors")
                 for n in AVERAGED}
        if with_discriminator and (ckpt_dir / "D.safetensors").is_file():
            files["D"] = ckpt_dir / "D.safetensors"
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            shapes = build_v2(model.networks())
        check_weights({f: shapes[n] for n, f in files.items()}, ckpt_dir / "meta.json",
                      meta.get("model"))
        with torch.random.fork_rng(devices=[]):
            fresh = build_v2(model.networks())
        modules = {}
        for n, f in files.items():
            load_weights(fresh[n], f)
            modules[n] = fresh[n].to(device).eval()
        if meta.get("masks") or model.masks:  # the FAN of G's face masks is in the checkpoint
            with torch.random.fork_rng(devices=[]):
                fan = FAN()
            load_weights(fan, ckpt_dir / "FAN.safetensors")
            modules["FAN"] = fan.requires_grad_(False).to(device)
        return modules, use_ema

    def translator(self, ckpt, device: torch.device, precision: str,
                   fast: bool = True) -> Translator:
        return Translator.from_checkpoint(ckpt, device, precision, fast)


FAMILY = StarGANv2()
