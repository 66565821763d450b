"""CycleGAN as a model family: one pair of domains, G_AB/G_BA and D_A/D_B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from starcli.checkpoint import check_weights, load_weights
from starcli.data.domains import Domains, resolve_domains
from starcli.errors import ConfigError
from starcli.families.base import OptimizerSpec, StepContext
from starcli.families.cyclegan.config import CycleGANOptions, blocks_for
from starcli.families.cyclegan.networks import CycleGANModel, build_pair, count_parameters
from starcli.families.cyclegan.samples import Sampler, domain_rows
from starcli.families.cyclegan.step import LOG_KEYS, LOSS_KEYS, PER_DATASET_KEYS, CycleGANStep
from starcli.families.cyclegan.translator import Translator
from starcli.runtime import Runtime

__all__ = ["FAMILY", "CycleGAN"]

GENERATORS = ("G_AB", "G_BA")
DISCRIMINATORS = ("D_A", "D_B")


def _domains(options: CycleGANOptions, layout) -> Domains:
    if len(layout.spaces) != 1:
        raise ConfigError("--family cyclegan trains on one dataset (one pair of its domains); "
                          "drop --joint.")
    return resolve_domains(layout.spaces[0], options.domains, count=2)


class CycleGAN:
    name = "cyclegan"
    loss_keys = LOSS_KEYS
    per_dataset_keys = PER_DATASET_KEYS
    log_keys = LOG_KEYS
    # translate: a target's domain picks the generator; the other labels it keeps are not
    # inputs of a CycleGAN, so no D (it has no classifier) and no --labels are needed.
    needs_source_labels = False

    def model_config(self, options: CycleGANOptions, image_size: int, layout) -> CycleGANModel:
        return CycleGANModel(image_size=image_size, ngf=options.ngf, ndf=options.ndf,
                             n_blocks=options.n_blocks or blocks_for(image_size),
                             d_layers=options.d_layers, domains=_domains(options, layout))

    def model_from_dict(self, data: dict[str, Any]) -> CycleGANModel:
        return CycleGANModel.from_dict(data)

    def build(self, model: CycleGANModel) -> dict[str, nn.Module]:
        return build_pair(model)

    def parameter_counts(self, model: CycleGANModel) -> dict[str, int]:
        with torch.device("meta"):
            return {n: count_parameters(m) for n, m in build_pair(model).items()}

    def optimizers(self, options: CycleGANOptions) -> dict[str, OptimizerSpec]:
        betas = (options.beta1, options.beta2)
        return {"g": OptimizerSpec(GENERATORS, options.g_lr, betas),
                "d": OptimizerSpec(DISCRIMINATORS, options.d_lr, betas)}

    def ema(self, options: CycleGANOptions) -> dict[str, float]:
        return {}

    def make_step(self, ctx: StepContext) -> CycleGANStep:
        from starcli.data.dataset import open_prepared, to_tensor
        from starcli.paths import resolve_home

        domains = _domains(ctx.cfg.options, ctx.layout)
        ds = open_prepared(resolve_home(ctx.cfg.home), ctx.cfg.datasets[0], ctx.cfg.image_size)
        # The latest real images of each side start as the split's first ones, so a step whose
        # batch drew no row of a domain still trains that direction (see step.py).
        per = max(1, min(ctx.rt.batch, 8))
        reserve = domain_rows(ds, domains, "train", per)
        for name, rows in zip(domains.names, reserve, strict=True):
            if not len(rows):
                raise ConfigError(f"--domains {ctx.cfg.options.domains}: {ds.name} has no "
                                  f"training image of domain {name}; choose other domains.")
        return CycleGANStep(ctx, domains, tuple(to_tensor(r) for r in reserve))

    def sampler(self, datasets, layout, device: torch.device) -> Sampler:
        return Sampler(datasets, device)

    def compile_probe(self, modules: dict[str, nn.Module], model: CycleGANModel,
                      rt: Runtime) -> torch.Tensor:
        x = torch.zeros(2, 3, model.image_size, model.image_size, device=rt.device)
        with rt.autocast():
            return modules["D_B"](modules["G_AB"](x)).float().mean()

    def load_inference(self, ckpt_dir: Path, meta: dict[str, Any], model: CycleGANModel, *,
                       device: str | torch.device, with_discriminator: bool, ema: bool
                       ) -> tuple[dict[str, nn.Module], bool]:
        ckpt_dir = Path(ckpt_dir)
        names = GENERATORS + (DISCRIMINATORS if with_discriminator else ())
        with torch.device("meta"):
            built = build_pair(model)
            check_weights({ckpt_dir / f"{n}.safetensors": built[n] for n in names},
                          ckpt_dir / "meta.json", meta.get("model"))
        modules = {}
        fresh = build_pair(model)
        for n in names:
            load_weights(fresh[n], ckpt_dir / f"{n}.safetensors")
            modules[n] = fresh[n].to(device).eval()
        return modules, False

    def translator(self, ckpt, device: torch.device, precision: str,
                   fast: bool = True) -> Translator:
        return Translator.from_checkpoint(ckpt, device, precision, fast)


FAMILY = CycleGAN()
