"""Checkpoints: one directory per saved step, complete or absent.

    runs/<name>/checkpoints/step-00001000/
        <module>.safetensors           one per named module (StarGAN v1: G, D, G_ema), no
                                       `module.`/`_orig_mod.` prefixes
        meta.json                      family, format version, model config, label table,
                                       train config, datasets, module names
        state.pt                       optimisers, RNG states, schedule and loader position

A checkpoint names its model family (`meta["family"]`) and loading dispatches on it; one
written before families existed (format version 1, no `family`) is StarGAN v1.

A checkpoint is written as `checkpoints/.tmp-step-…-<pid>/` and renamed into place, so a
directory under its final name is always complete. `state.pt` holds plain tensors and
containers only and is read with `torch.load(weights_only=True)`: a file carrying any other
Python object is refused, never executed.

    ckpt = load_checkpoint(resolve_checkpoint(Path("runs/latest")))
    fake = ckpt.G(x, ckpt.layout.encode(0, labels))   # ckpt.modules["G"]
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from starcli import __version__
from starcli.data.labels import LabelLayout
from starcli.errors import CheckpointError, ConfigError
from starcli.families import LEGACY_FAMILY, get_family
from starcli.utils import fsync_path

__all__ = ["FORMAT", "VERSION", "LoadedCheckpoint", "resolve_checkpoint", "load_checkpoint",
           "save_checkpoint", "load_training_state", "list_checkpoints", "clean_state_dict",
           "load_weights", "read_meta", "step_dir_name", "EMA_FILE", "family_of",
           "check_weights", "header_shapes", "MAX_PARAMETERS", "recover_checkpoints"]

FORMAT = "starcli-checkpoint"
# Version 1 is what starcli before model families wrote and still reads: a StarGAN v1
# checkpoint keeps that version (the added `family`/`modules` keys are ignored by old
# readers). A family whose checkpoints older starcli cannot load raises it, so they refuse.
VERSION = 1
EMA_FILE = "G_ema.safetensors"  # moving average of G's weights (StarGAN v1 runs with --g-ema)
_STEP_RE = re.compile(r"^step-(\d{8,})$")
_LEFTOVER_RE = re.compile(r"^\.(tmp|old)-(step-\d{8,})-(\d+)$")  # save_checkpoint's names
_MODULE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_PREFIXES = ("module.", "_orig_mod.")
# Values per module a checkpoint may hold: far above any model starcli trains (the paper's G
# has 8.4M), so a meta.json asking for more is damaged rather than big.
MAX_PARAMETERS = 2**31


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready for inference: its family's modules (eval mode) and what they mean.

    `modules` holds what inference uses under the training names: for StarGAN v1 "G" (the
    moving average when the run kept one) and, when loaded, "D"."""

    family: str
    modules: dict[str, nn.Module]
    model: Any  # the family's model config (StarGAN v1: ModelConfig)
    layout: LabelLayout
    meta: dict[str, Any]
    path: Path  # the checkpoint directory
    state: dict[str, Any] | None = None  # training state, only with with_state=True
    ema: bool = False  # the modules hold moving-average weights (e.g. G_ema.safetensors)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def G(self) -> nn.Module | None:  # noqa: N802 - the paper's name
        return self.modules.get("G")

    @property
    def D(self) -> nn.Module | None:  # noqa: N802 - the paper's name
        return self.modules.get("D")


def family_of(meta: dict[str, Any]) -> str:
    """The model family a checkpoint's meta names (pre-family checkpoints are StarGAN v1)."""
    return meta.get("family") or LEGACY_FAMILY


def _clean_key(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
        key = key.replace("._orig_mod.", ".")
    return key


def clean_state_dict(module: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors keyed without DDP/compile wrapper prefixes."""
    sd = module.state_dict() if isinstance(module, nn.Module) else module
    return {_clean_key(key): value.detach().to("cpu").contiguous() for key, value in sd.items()}


def header_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a safetensors file declares, read from its header alone (no tensor
    data is loaded); keys without wrapper prefixes. CheckpointError for a missing or damaged
    file."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return {_clean_key(k): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing; the checkpoint is incomplete.") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is not a readable safetensors file ({exc}).") from None


def check_weights(expected: Mapping[Path, nn.Module], meta_file: Path,
                  model: dict[str, Any] | None = None) -> None:
    """Refuse weights files whose header shapes differ from the modules `meta_file` describes,
    before those modules exist: build `expected` (file -> module) on the meta device
    (`with torch.device("meta"): Generator(cfg)`), which costs no memory whatever the sizes.
    A module over MAX_PARAMETERS is refused as well (`model`, meta's model table, is named
    in that message). One-line CheckpointError naming the file and the key or field."""
    for file, module in expected.items():
        want = {_clean_key(k): tuple(v.shape) for k, v in module.state_dict().items()}
        total = sum(math.prod(shape) for shape in want.values())
        if total > MAX_PARAMETERS:
            table = f" ({json.dumps(model, sort_keys=True)})" if model else ""
            raise CheckpointError(
                f"{meta_file}: its model{table} implies {total:,} parameters in "
                f"{Path(file).stem}, more than the {MAX_PARAMETERS:,} starcli accepts; the "
                "meta.json is damaged or not from starcli. Use another checkpoint.")
        problem = _shape_difference(want, header_shapes(Path(file)))
        if problem:
            raise CheckpointError(f"{file} does not match the model in meta.json ({problem}).")


def _shape_difference(want: dict[str, tuple[int, ...]],
                      have: dict[str, tuple[int, ...]]) -> str | None:
    for key, shape in want.items():
        if key not in have:
            return f"{key} is missing from the file"
        if have[key] != shape:
            return (f"{key}: meta.json's model gives shape {list(shape)}, the file holds "
                    f"{list(have[key])}")
    extra = sorted(set(have) - set(want))
    return f"the file has {extra[0]}, which the model does not" if extra else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / "meta.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: Path, step: int, modules: Mapping[str, nn.Module],
                    meta: dict[str, Any], state: dict[str, Any] | None,
                    keep_last: int) -> Path:
    """Write checkpoints/step-<step>/ atomically, then keep only the newest `keep_last`.

    `modules` maps names to modules, each saved as <name>.safetensors (StarGAN v1: G, D and,
    with a moving average, G_ema, which `load_checkpoint` prefers for inference). `meta` is
    completed with format, version, step, starcli version, the module names and the family
    (StarGAN v1 unless meta names one). Returns the checkpoint directory.
    """
    for name in modules:
        if not _MODULE_RE.match(name):
            raise ValueError(f"module name {name!r} cannot be a checkpoint file name")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    recover_checkpoints(run_dir)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, module in modules.items():
            save_file(clean_state_dict(module), str(tmp / f"{name}.safetensors"),
                      metadata={"format": "pt"})
        if state is not None:
            torch.save(state, tmp / "state.pt")
        full_meta = {"format": FORMAT, "version": VERSION, "step": int(step),
                     "starcli": __version__, "family": family_of(meta),
                     "modules": list(modules),
                     **{k: v for k, v in meta.items()
                        if k not in ("format", "version", "step", "family", "modules")}}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        for f in tmp.iterdir():
            fsync_path(f)
        if final.exists():  # saving the same step again (e.g. interrupted right after a save)
            old = root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep_last, keep=final)
    return final




def _prune(root: Path, keep_last: int, keep: Path) -> None:
    complete = list_checkpoints(root.parent)
    for old in complete[:max(0, len(complete) - max(1, keep_last))]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def recover_checkpoints(run_dir: Path) -> list[Path]:
    """Clear what writers that died inside `save_checkpoint` left in run_dir/checkpoints.

    A `.tmp-step-N-<pid>` is an unfinished save: deleted. A `.old-step-N-<pid>` is a complete
    checkpoint moved aside while step N was saved again: deleted when step-N is in place,
    and renamed back to step-N when the writer died before its replacement got there. Only
    leftovers of processes that are gone are touched (a live writer may still need them).
    Returns the checkpoints restored.
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    restored = []
    for p in sorted(root.iterdir()):
        m = _LEFTOVER_RE.match(p.name)
        if not m or not _writer_gone(int(m.group(3))):
            continue
        final = root / m.group(2)
        if m.group(1) == "old" and not final.exists() and _complete(p):
            os.replace(p, final)
            restored.append(final)
        else:
            shutil.rmtree(p, ignore_errors=True)
    if restored:
        fsync_path(root)
    return restored


def _complete(ckpt_dir: Path) -> bool:
    try:
        meta = json.loads((ckpt_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict):
        return False
    modules = meta.get("modules", ["G"])  # written before module names: G at least
    return isinstance(modules, list) and all(
        isinstance(m, str) and (ckpt_dir / f"{m}.safetensors").is_file() for m in modules)


def _writer_gone(pid: int) -> bool:
    return pid != os.getpid() and not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _latest_link(runs: Path) -> Path | None:
    link = runs / "latest"
    if link.exists():
        return link.resolve()
    marker = runs / "LATEST"
    if marker.is_file():
        name = marker.read_text().strip()
        if name:
            return runs / name
    return None


def resolve_checkpoint(path: Path | str | None, recover: bool = False) -> Path:
    """The checkpoint directory meant by `path`.

    None → ./runs/latest; a run directory → its newest complete checkpoint; a checkpoint
    directory; or a file inside one (<module>.safetensors, meta.json, state.pt). `recover`
    (for a writer about to continue the run): first clear a run directory of what dead
    writers left, restoring a checkpoint moved aside (`recover_checkpoints`).
    """
    if path is None or str(path) == "latest":
        latest = _latest_link(Path("runs"))
        if latest is None:
            raise CheckpointError("no runs/latest in this folder; pass the run directory or "
                                  "checkpoint to use (e.g. runs/demo-celeba-20240101-120000).")
        path = latest
    path = Path(path)
    if path.is_file():
        if (path.suffix == ".safetensors" or path.name in ("meta.json", "state.pt")) and \
                (path.parent / "meta.json").is_file():
            path = path.parent
        else:
            raise CheckpointError(f"{path} is not part of a starcli checkpoint; pass a run "
                                  "directory or a checkpoints/step-… directory (official "
                                  ".ckpt files: `starcli import stargan-v1`).")
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run directory or a checkpoint "
                              "directory written by `starcli train`.")
    if (path / "meta.json").is_file():
        return path
    run_dir = path.parent if path.name == "checkpoints" else path
    if recover:
        recover_checkpoints(run_dir)
    found = list_checkpoints(run_dir)
    if found:
        return found[-1]
    raise CheckpointError(f"{path} holds no complete checkpoint (checkpoints/step-…/meta.json); "
                          "pass a run directory that has saved at least once, or a checkpoint "
                          "directory.")


def read_meta(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete. Pass the run "
                              "directory to pick its newest complete checkpoint.") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); use another checkpoint.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a starcli checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r}); "
                              "import official weights with `starcli import stargan-v1`.")
    if int(meta.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta['version']}; this "
                              f"starcli reads up to {VERSION}. Upgrade starcli.")
    return meta


def load_weights(module: nn.Module, file: Path) -> None:
    """Load a safetensors state_dict into `module` (strict); CheckpointError on mismatch."""
    try:
        tensors = load_file(str(file))
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing; the checkpoint is incomplete.") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is not a readable safetensors file ({exc}).") from None
    try:
        module.load_state_dict(clean_state_dict(tensors), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{file} does not match the model in meta.json ({first}).") from None


def load_training_state(ckpt_dir: Path, map_location: str | torch.device = "cpu"
                        ) -> dict[str, Any]:
    """state.pt of a checkpoint, read with weights_only=True (unsafe pickles are refused)."""
    file = Path(ckpt_dir) / "state.pt"
    if not file.is_file():
        raise CheckpointError(f"{file} is missing; this checkpoint holds weights only and "
                              "cannot resume training (translate and eval still work).")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"refusing to load {file}: it contains Python objects beyond plain tensors (unsafe "
            f"pickle{': ' + first[:120] if first else ''}); only use checkpoints you trust and "
            "that starcli wrote.") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise CheckpointError(f"{file} is unreadable ({first}); resume from an older "
                              "checkpoint.") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} does not hold a training-state dict.")
    return state


def load_checkpoint(path: Path | str | None, device: str | torch.device = "cpu",
                    with_discriminator: bool = True, with_state: bool = False,
                    ema: bool = True) -> LoadedCheckpoint:
    """Load a checkpoint (anything `resolve_checkpoint` accepts) for inference.

    The modules come back in eval mode on `device`, built by the family the checkpoint names.
    They hold the moving-average weights when the run kept them (`ema=False`: the raw training
    weights). `with_discriminator=False` skips the discriminator; `with_state=True` also reads
    the training state (optimisers, RNGs), refusing unsafe pickles.
    """
    ckpt_dir = resolve_checkpoint(path)
    meta = read_meta(ckpt_dir)
    if not meta.get("labels"):
        raise CheckpointError(f"{ckpt_dir} has no label table; it was not written by starcli "
                              "train (import official weights with `starcli import stargan-v1`).")
    try:
        family = get_family(family_of(meta))
    except ConfigError:
        raise CheckpointError(f"{ckpt_dir / 'meta.json'} names the model family "
                              f"{meta.get('family')!r}, which this starcli does not know; "
                              "upgrade starcli.") from None
    try:
        layout = LabelLayout.from_dict(meta["labels"])
        model = family.model_from_dict(meta["model"])
    except Exception as exc:  # noqa: BLE001 - any malformed table is the same user problem
        raise CheckpointError(f"{ckpt_dir / 'meta.json'} has a malformed model or label table "
                              f"({exc}).") from None
    state = load_training_state(ckpt_dir) if with_state else None
    modules, used_ema = family.load_inference(ckpt_dir, meta, model, device=device,
                                              with_discriminator=with_discriminator, ema=ema)
    return LoadedCheckpoint(family=family.name, modules=modules, model=model, layout=layout,
                            meta=meta, path=ckpt_dir, state=state, ema=used_ema)
