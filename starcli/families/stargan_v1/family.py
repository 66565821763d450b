"""StarGAN v1 as a model family: what the engine, checkpoints, translate and eval ask of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from starcli.checkpoint import EMA_FILE, check_weights, load_weights
from starcli.families.base import OptimizerSpec, StepContext
from starcli.families.stargan_v1.config import StarGANv1Options
from starcli.families.stargan_v1.networks import (
    Discriminator,
    Generator,
    ModelConfig,
    count_parameters,
)
from starcli.families.stargan_v1.samples import Sampler
from starcli.families.stargan_v1.step import (
    LOG_KEYS,
    LOSS_KEYS,
    PER_DATASET_KEYS,
    StarGANv1Step,
)
from starcli.families.stargan_v1.translator import Translator
from starcli.runtime import Runtime

__all__ = ["FAMILY", "StarGANv1"]


class StarGANv1:
    name = "stargan-v1"
    loss_keys = LOSS_KEYS
    per_dataset_keys = PER_DATASET_KEYS
    log_keys = LOG_KEYS

    # -- architecture ----------------------------------------------------------------------

    def model_config(self, options: StarGANv1Options, image_size: int, layout) -> ModelConfig:
        return ModelConfig(image_size=image_size, c_dim=layout.c_dim, cls_dim=layout.cls_dim,
                           g_conv_dim=options.g_conv_dim, d_conv_dim=options.d_conv_dim,
                           g_repeat_num=options.g_repeat_num, g_down_num=options.g_down_num,
                           d_repeat_num=options.d_repeat_num, g_blend=options.g_blend,
                           d_cond=options.lambda_cond_adv > 0)

    def model_from_dict(self, data: dict[str, Any]) -> ModelConfig:
        return ModelConfig.from_dict(data)

    def build(self, model: ModelConfig) -> dict[str, nn.Module]:
        # G first, then D: the order fixes which random numbers initialise which weights.
        G = Generator(model)
        D = Discriminator(model)
        return {"G": G, "D": D}

    def parameter_counts(self, model: ModelConfig) -> dict[str, int]:
        with torch.device("meta"):
            return {"G": count_parameters(Generator(model)),
                    "D": count_parameters(Discriminator(model))}

    # -- training --------------------------------------------------------------------------

    def optimizers(self, options: StarGANv1Options) -> dict[str, OptimizerSpec]:
        betas = (options.beta1, options.beta2)
        return {"g": OptimizerSpec(("G",), options.g_lr, betas),
                "d": OptimizerSpec(("D",), options.d_lr, betas)}

    def ema(self, options: StarGANv1Options) -> dict[str, float]:
        return {"G": options.g_ema} if options.g_ema > 0 else {}

    def make_step(self, ctx: StepContext) -> StarGANv1Step:
        return StarGANv1Step(ctx)

    def sampler(self, datasets, layout, device: torch.device) -> Sampler:
        return Sampler(datasets, layout, device)

    def compile_probe(self, modules: dict[str, nn.Module], model: ModelConfig,
                      rt: Runtime) -> torch.Tensor:
        n, s = 2, model.image_size
        x = torch.zeros(n, 3, s, s, device=rt.device)
        c = torch.zeros(n, model.c_dim, device=rt.device)
        with rt.autocast():
            out = modules["G"](x, c)
            src, cls = modules["D"](out)
            return src.float().mean() + cls.float().mean()

    # -- inference -------------------------------------------------------------------------

    def load_inference(self, ckpt_dir: Path, meta: dict[str, Any], model: ModelConfig, *,
                       device: str | torch.device, with_discriminator: bool, ema: bool
                       ) -> tuple[dict[str, nn.Module], bool]:
        """G (its moving average when the checkpoint has one and `ema`) and, when asked for
        and the checkpoint has one (imported G-only weights have none), D."""
        ckpt_dir = Path(ckpt_dir)
        use_ema = ema and (ckpt_dir / EMA_FILE).is_file()
        g_file = ckpt_dir / (EMA_FILE if use_ema else "G.safetensors")
        with_d = with_discriminator and meta.get("has_discriminator", True)
        # meta.json's sizes against the files' headers before any memory is spent on them.
        with torch.device("meta"):
            shapes: dict[Path, nn.Module] = {g_file: Generator(model)}
            if with_d:
                shapes[ckpt_dir / "D.safetensors"] = Discriminator(model)
        check_weights(shapes, ckpt_dir / "meta.json", meta.get("model"))
        G = Generator(model)
        load_weights(G, g_file)
        modules: dict[str, nn.Module] = {"G": G.to(device).eval()}
        if with_d:
            D = Discriminator(model)
            load_weights(D, ckpt_dir / "D.safetensors")
            modules["D"] = D.to(device).eval()
        return modules, use_ema

    def translator(self, ckpt, device: torch.device, precision: str,
                   fast: bool = True) -> Translator:
        return Translator.from_checkpoint(ckpt, device, precision, fast)


FAMILY = StarGANv1()
