"""What a model family gives the engine, checkpoints, translate and eval.

The engine (`starcli.engine`) runs the loop, the run folder, resume, DDP, logging and
checkpoints for every family. It never branches on a family name; it asks the family:

- `model_config(options, image_size, layout)` and `model_from_dict(meta["model"])`: the
  architecture a checkpoint carries (a frozen dataclass with `to_dict`).
- `build(model)`: the trainable modules by name (e.g. {"G": …, "D": …}), constructed in a fixed
  order so a seed gives the same weights every time.
- `optimizers(options)`: one `OptimizerSpec` per optimiser name; the engine builds them, sets
  each group's learning rate from the schedule every step and saves them as `opt_<name>`.
- `ema(options)`: module name → decay for the moving averages kept as `<name>_ema`.
- `make_step(ctx)`: the training step (its phases and losses); `ctx` is a `StepContext`.
- `loss_keys`, `per_dataset_keys`, `log_keys`: the metric names it reports, which of them stop
  the run when non-finite, which are also logged per dataset, and which the log line shows.
- `sampler(datasets, layout, device)`: the sample grid written during training.
- `compile_probe(modules, model, rt)`: one forward/backward through compiled modules, so a
  missing compiler shows up as a warning before the first step.
- `load_inference(ckpt_dir, meta, model, device, …)`: the modules translate and eval need.
- `translator(ckpt, device, precision)`: the inference forward used by translate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from starcli.runtime import Runtime

__all__ = ["Family", "OptimizerSpec", "StepContext", "Optimizers", "Ema", "Step", "PixelIO"]


class PixelIO:
    """uint8 images in and out of a translator (it sets `device`, `dtype`, `channels_last`)."""

    device: torch.device
    dtype: torch.dtype
    channels_last: bool

    def to_input(self, images) -> torch.Tensor:
        """(N, S, S, 3) uint8 → (N, 3, S, S) in [-1, 1] on the device (channels-last memory
        unless the translator runs NCHW)."""
        x = torch.from_numpy(images).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        x = x.to(self.dtype).mul_(1 / 127.5).sub_(1.0)
        return x if self.channels_last else x.contiguous()

    @staticmethod
    def to_uint8(y: torch.Tensor):
        """(N, 3, S, S) in [-1, 1] → (N, S, S, 3) uint8 numpy on the CPU (works on inference
        tensors outside inference mode too)."""
        y = y.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
        return y.permute(0, 2, 3, 1).contiguous().cpu().numpy()


@dataclass(frozen=True)
class OptimizerSpec:
    """One Adam optimiser over some modules' parameters."""

    modules: tuple[str, ...]
    lr: float
    betas: tuple[float, float]
    weight_decay: float = 0.0


class Optimizers:
    """The run's optimisers by name, with their base learning rates and (fp16) scalers."""

    def __init__(self, opts: dict[str, torch.optim.Optimizer], base_lr: dict[str, float],
                 scalers: dict[str, Any] | None = None) -> None:
        self.opts = opts
        self.base_lr = base_lr
        self.scalers = scalers or {}

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self.opts[name]

    def set_lr(self, name: str, lr: float) -> None:
        for group in self.opts[name].param_groups:
            group["lr"] = lr

    def step(self, name: str, loss: torch.Tensor) -> None:
        """zero_grad, backward and step (through the gradient scaler under fp16)."""
        opt = self.opts[name]
        opt.zero_grad(set_to_none=True)
        scaler = self.scalers.get(name)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()


class Ema:
    """A moving average of one module's parameters: avg ← avg + (1 − decay)(src − avg)."""

    def __init__(self, average: nn.Module, source: nn.Module, decay: float) -> None:
        self.average = average
        self.decay = decay
        self._pair = (list(average.parameters()), list(source.parameters()))

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(*self._pair, 1.0 - self.decay)


@dataclass
class StepContext:
    """What a family's training step may use."""

    cfg: Any  # TrainConfig (family options in cfg.options)
    rt: Runtime
    layout: Any  # LabelLayout
    modules: dict[str, nn.Module]  # the plain modules (eager, unwrapped)
    train: dict[str, nn.Module]  # as the step calls them to train: DDP- and/or compile-wrapped
    nosync: dict[str, nn.Module]  # compiled but never DDP-wrapped (forward-only use under DDP)
    optimizers: Optimizers
    ema: dict[str, Ema]  # module name -> its moving average
    gen: torch.Generator  # the step's own random draws (saved and restored on resume)
    warn: Callable[[str], None] = field(default=lambda message: None)


class Step(Protocol):
    def __call__(self, step: int, batch: Any) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Sampler(Protocol):
    columns: list[str]

    def grid(self, modules: dict[str, nn.Module], rt: Runtime) -> Any: ...


class Family(Protocol):
    name: str
    loss_keys: tuple[str, ...]
    per_dataset_keys: tuple[str, ...]
    log_keys: tuple[str, ...]

    def model_config(self, options: Any, image_size: int, layout: Any) -> Any: ...

    def model_from_dict(self, data: dict[str, Any]) -> Any: ...

    def build(self, model: Any) -> dict[str, nn.Module]: ...

    def parameter_counts(self, model: Any) -> dict[str, int]: ...

    def optimizers(self, options: Any) -> dict[str, OptimizerSpec]: ...

    def ema(self, options: Any) -> dict[str, float]: ...

    def make_step(self, ctx: StepContext) -> Step: ...

    def sampler(self, datasets: Any, layout: Any, device: torch.device) -> Sampler: ...

    def compile_probe(self, modules: dict[str, nn.Module], model: Any,
                      rt: Runtime) -> torch.Tensor: ...

    def load_inference(self, ckpt_dir: Any, meta: dict[str, Any], model: Any, *,
                       device: Any, with_discriminator: bool, ema: bool
                       ) -> tuple[dict[str, nn.Module], bool]: ...

    def translator(self, ckpt: Any, device: torch.device, precision: str) -> Any: ...
