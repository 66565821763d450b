"""Load and write checkpoints in the official StarGAN v2 layout (clovaai/stargan-v2).

An official ``NNNNNN_nets_ema.ckpt`` is one ``torch.save``d dict of plain state_dicts:
``{"generator", "mapping_network", "style_encoder"}`` plus, depending on the run,
``"discriminator"`` (only in ``*_nets.ckpt``) and ``"fan"`` (the landmark network, ignored
here). Our modules use the official names, so each network loads strictly. Two tolerances:

- ``hpf.filter``: the released CelebA-HQ file predates that buffer and lacks it; later files
  have it. Ours is non-persistent, so both load; a present filter must match our w_hpf.
- a DataParallel ``module.`` prefix is removed (the official saver never writes one).

The files carry no config, so the caller supplies it; on a mismatch the error says which
domain count and w_hpf the file seems to need.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from starcli.errors import CheckpointError
from starcli.families.stargan_v2.networks import V2ModelConfig

__all__ = ["OFFICIAL_NAMES", "OfficialV2Layout", "infer_official_v2", "load_official_v2",
           "to_official_v2"]

# official top-level key -> our module name, in load order
OFFICIAL_NAMES = {
    "generator": "G",
    "mapping_network": "F",
    "style_encoder": "E",
    "discriminator": "D",
}
_REQUIRED = ("generator", "mapping_network", "style_encoder")
_FILTER = "hpf.filter"
_HEAD_RE = re.compile(r"^unshared\.(\d+)\.")
_ENCODE_RE = re.compile(r"^encode\.(\d+)\.")
_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


class OfficialV2Layout(NamedTuple):
    """What an official file's shapes say about the model that wrote it (None: unknown)."""

    image_size: int | None  # the one given, or 2**14 // dim_in, if the depth fits it
    num_domains: int | None  # mapping_network heads
    w_hpf: float | None  # 8 / hpf.filter's centre if stored, else 1 or 0 from the depth
    dim_in: int | None  # generator from_rgb width


def _strip_module(sd: Mapping[str, Any]) -> dict[str, Any]:
    sd = {str(k): v for k, v in sd.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def infer_official_v2(ckpt: Mapping[str, Any], image_size: int | None = None) -> OfficialV2Layout:
    """Read K, w_hpf, dim_in (and an image size guess) from an official checkpoint dict.

    w_hpf > 0 adds one encoder level, so the depth only tells w_hpf apart given the image size:
    pass it when known; otherwise it is guessed as 2**14 // dim_in (the official default).
    """
    mapping = ckpt.get("mapping_network")
    generator = ckpt.get("generator")
    num_domains = dim_in = w_hpf = guess = None
    if isinstance(mapping, Mapping):
        heads = {int(m.group(1)) for k in _strip_module(mapping) if (m := _HEAD_RE.match(k))}
        num_domains = len(heads) or None
    if isinstance(generator, Mapping):
        g = _strip_module(generator)
        rgb = g.get("from_rgb.weight")
        if isinstance(rgb, torch.Tensor) and rgb.dim() == 4:
            dim_in = int(rgb.shape[0])
        blocks = len({int(m.group(1)) for k in g if (m := _ENCODE_RE.match(k))})
        size = image_size or (2**14 // dim_in if dim_in else None)
        if blocks and size and size & (size - 1) == 0:
            extra = blocks - 2 - (int(math.log2(size)) - 4)  # 1 with the w_hpf level, 0 without
            if extra in (0, 1):
                w_hpf, guess = float(extra), size
        filt = g.get(_FILTER)
        if isinstance(filt, torch.Tensor) and filt.shape == (3, 3) and float(filt[1, 1]) != 0:
            w_hpf = 8.0 / float(filt[1, 1])
            if guess is None and blocks:
                guess = 2 ** (blocks - 2 + 4 - 1)  # blocks = log2(size) - 4 + 1 + 2
    return OfficialV2Layout(guess, num_domains, w_hpf, dim_in)


def _read(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only refusals all land here
        text = _ANSI_RE.sub("", str(exc))
        if found := _GLOBAL_RE.search(text):
            why = (f"it pickles a {found.group(1)} object, which weights_only refuses; only "
                   "plain dicts of tensors are accepted")
        else:
            why = f"{type(exc).__name__}: {(text.strip().splitlines() or [''])[0][:200]}"
        raise CheckpointError(
            f"{path}: cannot be read as an official StarGAN v2 checkpoint with "
            f"torch.load(weights_only=True) ({why})."
        ) from None


def _hint(ckpt: Mapping[str, Any], cfg: V2ModelConfig) -> str:
    layout = infer_official_v2(ckpt, cfg.image_size)
    parts = []
    if layout.num_domains is not None:
        parts.append(f"--domains with {layout.num_domains} name"
                     f"{'s' if layout.num_domains != 1 else ''}")
    if layout.w_hpf is not None:
        parts.append(f"w_hpf {layout.w_hpf:g}")
    if layout.dim_in is not None and layout.dim_in != cfg.dim_in:
        parts.append(f"dim_in {layout.dim_in}")
    if not parts:
        return "it does not look like an official StarGAN v2 file"
    return (f"the file seems to need {', '.join(parts)} (this model has {cfg.num_domains} "
            f"domains, w_hpf {cfg.w_hpf:g}, {cfg.image_size} px)")


def _check(name: str, sd: dict[str, Any], module: nn.Module, source: str,
           ckpt: Mapping[str, Any], cfg: V2ModelConfig) -> None:
    """CheckpointError naming the network and its first bad key unless `sd` fits `module`."""
    expected = module.state_dict()
    problem = None
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            problem = f"{key} is a {type(value).__name__}, not a tensor"
        elif key not in expected:
            problem = f"unexpected key {key}"
        elif value.shape != expected[key].shape:
            problem = (f"{key} has shape {tuple(value.shape)}, expected "
                       f"{tuple(expected[key].shape)}")
        if problem:
            break
    if problem is None:
        missing = [k for k in expected if k not in sd]
        if missing:
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            problem = f"missing key {missing[0]}{more}"
    if problem:
        raise CheckpointError(f"{source}: {name} does not fit: {problem}; {_hint(ckpt, cfg)}.")


def load_official_v2(path_or_dict: str | Path | Mapping[str, Any], cfg: V2ModelConfig,
                     modules: Mapping[str, nn.Module]) -> list[str]:
    """Load an official StarGAN v2 checkpoint into `modules` ({"G", "F", "E"[, "D"]}).

    `path_or_dict` is a ``*_nets_ema.ckpt``/``*_nets.ckpt`` path (read with
    ``weights_only=True``) or the dict already loaded. generator, mapping_network and
    style_encoder are required and load strictly; discriminator loads into D when both exist.
    Other top-level keys (``fan``) are ignored. Everything is checked before anything is
    copied, so a failed load leaves the modules untouched. Returns the official names loaded.
    """
    source = str(path_or_dict) if isinstance(path_or_dict, (str, Path)) else "checkpoint"
    ckpt = _read(path_or_dict) if isinstance(path_or_dict, (str, Path)) else path_or_dict
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(
            f"{source}: expected a dict of state_dicts (generator, mapping_network, "
            f"style_encoder), got {type(ckpt).__name__}."
        )
    plan: list[tuple[str, nn.Module, dict[str, Any]]] = []
    for name, ours in OFFICIAL_NAMES.items():
        if ours not in modules:
            continue
        if name not in ckpt:
            if name not in _REQUIRED:
                continue
            have = ", ".join(sorted(map(str, ckpt))) or "nothing"
            raise CheckpointError(
                f"{source}: has no {name!r} network (it holds {have}); pass an official "
                "*_nets_ema.ckpt file."
            )
        if not isinstance(ckpt[name], Mapping):
            raise CheckpointError(
                f"{source}: {name} is a {type(ckpt[name]).__name__}, not a state_dict."
            )
        sd = _strip_module(ckpt[name])
        if name == "generator" and _FILTER in sd:
            stored = sd.pop(_FILTER)
            hpf = getattr(modules[ours], "hpf", None)
            if hpf is not None and isinstance(stored, torch.Tensor) and (
                    stored.shape != hpf.filter.shape
                    or not torch.allclose(stored.float().cpu(), hpf.filter.float().cpu())):
                raise CheckpointError(
                    f"{source}: generator {_FILTER} does not match w_hpf {cfg.w_hpf:g}; "
                    f"{_hint(ckpt, cfg)}."
                )
            if hpf is None:
                sd[_FILTER] = stored  # reported as unexpected: the model has no high-pass
        _check(name, sd, modules[ours], source, ckpt, cfg)
        plan.append((name, modules[ours], sd))
    for _, module, sd in plan:
        module.load_state_dict(sd, strict=True)
    return [name for name, _, _ in plan]


def to_official_v2(modules: Mapping[str, nn.Module], *, hpf_filter: bool = False
                   ) -> dict[str, dict[str, torch.Tensor]]:
    """{"generator", "mapping_network", "style_encoder"[, "discriminator"]} state_dicts from
    {"G", "F", "E"[, "D"]}, as the official CheckpointIO writes them. `hpf_filter` adds
    ``hpf.filter`` to the generator as the post-2021 official code does (the released
    CelebA-HQ file has none)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, ours in OFFICIAL_NAMES.items():
        if ours in modules:
            out[name] = {k: v.detach() for k, v in modules[ours].state_dict().items()}
    hpf = getattr(modules.get("G"), "hpf", None)
    if hpf_filter and hpf is not None:
        out["generator"][_FILTER] = hpf.filter.detach().clone()
    return out
