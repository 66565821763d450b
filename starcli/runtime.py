"""Where and how tensors run: device, precision, autocast, optimisers, the distributed
environment. The one place for these choices; training, translate, eval and the classifier
all ask here.

    rt = make_runtime(device="auto", precision="auto", channels_last=None, batch_size=16)
    with rt.autocast():
        y = G(x, c)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from starcli.config import ADAM_IMPLS
from starcli.errors import ConfigError

__all__ = ["Runtime", "make_runtime", "resolve_device", "resolve_precision", "cpu_has_bf16",
           "dist_env", "adam", "AMP_DTYPES"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def resolve_device(name: str | torch.device | None, *, auto_mps: bool = False) -> torch.device:
    """`auto` (or None) → cuda if available, else (with `auto_mps`) mps, else cpu. A named
    device is checked: an unavailable one is a ConfigError naming --device.

    Training keeps `auto_mps` off (its fused optimisers and gradient scaler are CUDA/CPU
    paths); inference turns it on."""
    if name is None or str(name) in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if auto_mps and _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device '{name}' is not a device; use auto, cpu, cuda, cuda:N or "
                          "mps.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                              "device(s) here.")
    if dev.type == "mps" and not _mps_available():
        raise ConfigError(f"--device {name}: MPS is not available; use --device cpu.")
    return dev


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 is faster
    than fp32 (measured 2-3.6x on StarGAN's G+D); elsewhere it is emulated and slower."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    if {"avx512_bf16", "amx_bf16"} & set(flags.split()):
        return True
    if text:
        return False
    try:  # non-Linux: ask oneDNN
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and \
            torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX")
    except Exception:  # noqa: BLE001 - a missing probe means "no"
        return False


def resolve_precision(precision: str, device: torch.device, *, inference: bool = False) -> str:
    """fp32 | bf16 | fp16 for this device. `auto`: bf16 where the hardware has it; on a CUDA
    device without bf16, fp16 for inference (no gradients, so no scaler needed) but fp32 for
    training (fp16 training needs loss scaling, which is opt-in with --precision fp16)."""
    if precision == "auto":
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                return "bf16"
            return "fp16" if inference else "fp32"
        if device.type == "cpu":
            return "bf16" if cpu_has_bf16() else "fp32"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device; use --precision bf16 or fp32 "
                          "on a CPU.")
    return precision


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as torchrun sets them; (0, 1, 0) in a plain process."""
    try:
        return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; start several "
                          "processes with torchrun or `starcli train --gpus N`.") from None


@dataclass(frozen=True)
class Runtime:
    """The resolved device, precision and process layout of one run."""

    device: torch.device
    precision: str  # resolved: fp32 | bf16 | fp16
    channels_last: bool
    rank: int = 0
    world_size: int = 1
    batch: int = 0  # rows per rank and step (the global batch / world_size)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def make_runtime(device: str, precision: str, channels_last: bool | None,
                 batch_size: int, cpu_channels_last: bool = False) -> Runtime:
    """The runtime of a training process: under torchrun each rank takes cuda:LOCAL_RANK (or
    the CPU) and `batch_size` (the global batch) is split evenly over the ranks.
    `cpu_channels_last` is a family's own default for CPUs (StarGAN v2 with bf16: faster)."""
    rank, world, local_rank = dist_env()
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is outside WORLD_SIZE {world}; start several processes "
                          "with torchrun or `starcli train --gpus N`.")
    if batch_size % world:
        raise ConfigError(f"--batch-size {batch_size} is the global batch and must split "
                          f"evenly over {world} processes; use a multiple of {world}.")
    if world > 1:
        if device.startswith("cuda:") or device == "mps":
            raise ConfigError(f"--device {device} cannot be shared by {world} processes; "
                              "use --device cuda (each rank takes cuda:LOCAL_RANK) or cpu.")
        want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if want_cuda:
            dev = resolve_device(f"cuda:{local_rank}") if torch.cuda.is_available() \
                else resolve_device("cuda")
        else:
            dev = torch.device("cpu")
    else:
        dev = resolve_device(device)
    resolved = resolve_precision(precision, dev)
    # Measured on this project's CPU: channels_last is 5-15% slower there for StarGAN v1
    # (oneDNN picks its own blocked layout) but about 28% faster for StarGAN v2 in bf16
    # (benchmarks/bench_train.py --family stargan-v2); on CUDA tensor cores want NHWC.
    cl = channels_last if channels_last is not None else (
        dev.type == "cuda" or (cpu_channels_last and resolved == "bf16"))
    return Runtime(device=dev, precision=resolved, channels_last=cl, rank=rank,
                   world_size=world, batch=batch_size // world)


def adam(params: Iterable[Any], lr: float, betas: tuple[float, float], device: torch.device,
         impl: str = "auto", weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam over `params` (tensors or param-group dicts). `impl` auto: fused where torch has
    real single-pass kernels (CUDA and CPU; measured 4-5x faster than foreach on this
    project's CPU for the paper model's 53M parameters: 0.07 s vs 0.3 s), else foreach."""
    if impl not in ADAM_IMPLS:
        raise ConfigError(f"adam_impl {impl!r} is not known; choose one of "
                          f"{', '.join(ADAM_IMPLS)}.")
    params = list(params)
    chosen = impl
    if chosen == "auto":
        chosen = "fused" if device.type in ("cuda", "cpu") else "foreach"
    kwargs: dict[str, Any] = {"lr": lr, "betas": betas}
    if weight_decay:
        kwargs["weight_decay"] = weight_decay
    if chosen == "fused":
        try:
            return torch.optim.Adam(params, fused=True, **kwargs)
        except (RuntimeError, ValueError):
            if impl == "fused":
                raise ConfigError(f"fused Adam is not available for {device} in this torch; "
                                  "use adam_impl foreach.") from None
            chosen = "foreach"
    return torch.optim.Adam(params, foreach=chosen == "foreach", **kwargs)
