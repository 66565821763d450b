"""Official StarGAN v1 weights → starcli checkpoints, and `starcli fetch pretrained-celeba-*`.

The official `*-G.ckpt` / `*-D.ckpt` files are bare state_dicts with no metadata, so the
caller names the attributes (in training order) and the image size; both are checked against
the weight shapes and mismatches come back as a readable key/shape diff (`CheckpointError`).
The files are read with `torch.load(..., weights_only=True)`: a file whose pickle would build
arbitrary Python objects is refused and nothing in it runs.

    ckpt_dir = import_stargan_v1(Path("200000-G.ckpt"), Path("200000-D.ckpt"),
                                 ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"),
                                 128, Path("runs/stargan-v1-128"))
"""

from __future__ import annotations

import hashlib
import pickle
import re
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from starcli.data.labels import LabelLayout, LabelSpace, did_you_mean
from starcli.errors import (
    ArchiveError,
    CheckpointError,
    ConfigError,
    DatasetNotFoundError,
    StarcliError,
)
from starcli.families.stargan_v1.networks import Discriminator, Generator
from starcli.families.stargan_v1.official import (
    convert_official_discriminator,
    convert_official_generator,
    official_model_config,
)
from starcli.progress import Progress, log

if TYPE_CHECKING:
    from starcli.data.fetch import FetchConfig
    from starcli.data.registry import DatasetSpec, FileSpec

__all__ = ["OFFICIAL_ATTRS", "import_stargan_v1", "fetch_pretrained", "load_official_state",
           "official_layout"]

# The attributes of the released CelebA checkpoints, in their training order.
OFFICIAL_ATTRS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
_STEP_RE = re.compile(r"^(\d+)-[GD]\.ckpt$")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def load_official_state(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from an official .ckpt (or a .safetensors file), loaded safely.

    Raises CheckpointError for missing, unreadable or unsafe files; never runs code from them.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; pass the official *-G.ckpt file.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file "
                                  f"({_first_line(exc)}).") from None
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip (torch >= 1.6) or a raw pickle (older: protocol opcode 0x80).
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (unrecognised bytes at the "
                              "start; a web page saved under that name?). Download it again.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()
                       if "GLOBAL" in line or "global" in line.lower()), "")
        raise CheckpointError(
            f"refusing to load {path}: it contains Python objects beyond plain tensors (unsafe "
            f"pickle{': ' + detail[:160] if detail else ''}); only tensors are accepted, and "
            "nothing in the file was run.") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint "
                              f"({_first_line(exc)}); download it again.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"],
                                                                         dict):
        state = state["state_dict"]  # a common wrapper around the bare state_dict
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict.")
    return state


def official_layout(attrs: Sequence[str], home: Path | None = None) -> LabelLayout:
    """The one-space label table of an official checkpoint: CelebA attributes (multi-label,
    hair colours exclusive as in the registry) or RaFD expressions (one-hot)."""
    from starcli.data.registry import load_registry

    attrs = tuple(a.strip() for a in attrs if a.strip())
    if not attrs:
        raise ConfigError("--attrs is empty; pass the attribute names the model was trained "
                          "with, e.g. --attrs " + ",".join(OFFICIAL_ATTRS) + ".")
    dupes = sorted({a for a in attrs if attrs.count(a) > 1})
    if dupes:
        raise ConfigError(f"--attrs lists {', '.join(dupes)} more than once.")
    registry = load_registry(home)
    celeba = registry.get("celeba")
    rafd = registry.get("rafd")
    if all(a in celeba.attributes for a in attrs):
        groups = tuple(g2 for g in celeba.exclusive_groups
                       if len(g2 := tuple(a for a in attrs if a in g)) >= 2)
        space = LabelSpace(dataset="celeba", format="celeba", kind="multilabel", names=attrs,
                           exclusive_groups=groups)
    elif all(a in rafd.expressions for a in attrs):
        space = LabelSpace(dataset="rafd", format="rafd", kind="onehot", names=attrs)
    else:
        known = list(celeba.attributes) + list(rafd.expressions)
        bad = next(a for a in attrs if a not in celeba.attributes and a not in rafd.expressions)
        raise ConfigError(
            f"--attrs: '{bad}' is not a CelebA attribute or RaFD expression."
            f"{did_you_mean(bad, known)} CelebA attributes: {', '.join(celeba.attributes)}; "
            f"RaFD expressions: {', '.join(rafd.expressions)}.")
    return LabelLayout(spaces=(space,))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _refuse_occupied(out: Path) -> None:
    """ConfigError when `out` holds checkpoints or another run: the import keeps one
    checkpoint, so writing there would prune that run or replace a same-step checkpoint."""
    from starcli.checkpoint import list_checkpoints

    found = list_checkpoints(out)
    if found:
        held = f"{len(found)} checkpoint(s), the newest {found[-1].name}"
    else:
        held = " and ".join(p.name for p in (out / "config.json", out / "checkpoints")
                            if p.exists())
    if held:
        raise ConfigError(f"--out {out} already holds {held} (another run); the import would "
                          "delete or replace them. Choose a new --out folder, or pass --force "
                          "to write into it anyway.")


def import_stargan_v1(g_path: Path, d_path: Path | None, attrs: Sequence[str],
                      image_size: int, out: Path, progress: Progress | None = None,
                      home: Path | None = None, force: bool = False) -> Path:
    """Convert official G (and D) weights into a starcli checkpoint under run dir `out`.

    Returns the checkpoint directory (`out/checkpoints/step-<N>/`, N from names like
    `200000-G.ckpt`, else 0). Without D the checkpoint can translate but not estimate the
    inputs' own labels (translate then needs --labels, or specs that name every label).
    A folder that already holds checkpoints or a run is refused (ConfigError) unless `force`:
    the import then replaces every checkpoint in it.
    """
    from starcli import __version__
    from starcli.checkpoint import save_checkpoint
    from starcli.imaging import Framing

    if not force:
        _refuse_occupied(Path(out))
    g_path = Path(g_path)
    layout = official_layout(attrs, home)
    names = layout.spaces[0].names
    g_state = load_official_state(g_path)
    d_state = load_official_state(Path(d_path)) if d_path is not None else None
    model_cfg = official_model_config(g_state, d_state, c_dim=len(names),
                                      image_size=image_size, g_source=str(g_path),
                                      d_source=str(d_path))
    G = Generator(model_cfg)
    G.load_state_dict(convert_official_generator(g_state, c_dim=len(names),
                                                 image_size=image_size,
                                                 source=str(g_path)))
    modules: dict[str, nn.Module] = {"G": G}
    if d_state is not None:  # without D, meta says there is no discriminator
        D = Discriminator(model_cfg)
        D.load_state_dict(convert_official_discriminator(d_state, c_dim=model_cfg.cls_dim,
                                                         image_size=image_size,
                                                         source=str(d_path)))
        modules["D"] = D
    match = _STEP_RE.match(g_path.name)
    step = int(match.group(1)) if match else 0
    imported: dict[str, Any] = {"from": "stargan-v1", "G": g_path.name,
                                "G_sha256": _sha256(g_path)}
    if d_path is not None:
        imported.update(D=Path(d_path).name, D_sha256=_sha256(Path(d_path)))
    meta = {"family": "stargan-v1", "model": model_cfg.to_dict(), "labels": layout.to_dict(),
            "train": {},
            # The official recipe: centre 178x178 square of the 178x218 aligned CelebA files.
            "datasets": [{"name": "celeba", "image_size": image_size, "content": None,
                          "framing": Framing(dataset="celeba", format="celeba",
                                             source=(178, 218), crop=178,
                                             size=image_size).to_dict()}],
            "has_discriminator": d_state is not None, "imported": imported,
            "starcli": __version__}
    path = save_checkpoint(Path(out), step, modules, meta, state=None, keep_last=1)
    log(progress, f"imported {g_path.name}{' + ' + Path(d_path).name if d_path else ''} "
                  f"({', '.join(names)}; {image_size}px) → {path}")
    return path


# --------------------------------------------------------------------------- fetch


def _find(root: Path, name: str) -> Path | None:
    hits = sorted(p for p in root.rglob(name) if p.is_file())
    return hits[0] if hits else None


def fetch_pretrained(spec: DatasetSpec, cfg: FetchConfig,
                     progress: Progress | None = None) -> dict[str, Any]:
    """`starcli fetch pretrained-celeba-128`: download the official zip (mirrors first), check
    it, extract it safely and import the weights into <home>/pretrained/<name>/.

    `spec` is the registry entry (format "stargan-v1-checkpoint"), `cfg` the FetchConfig.
    `--from PATH` imports a local zip or folder instead of downloading.
    """
    from starcli.checkpoint import list_checkpoints
    from starcli.paths import raw_dir

    home = Path(cfg.home)
    target = home / "pretrained" / spec.name
    done = list_checkpoints(target)
    if done and not cfg.force and cfg.source is None:
        log(progress, f"{spec.name}: already imported in {done[-1]} (use --force to redo)")
        return {"dataset": spec.name, "path": str(done[-1]), "skipped": True}
    if not spec.attrs or not spec.image_size or not spec.checkpoint_files:
        raise StarcliError(f"registry entry {spec.name} needs attrs, image_size and "
                           "checkpoint_files to import official weights.")
    raw = raw_dir(home, spec.name)
    raw.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, Any]] = []
    try:
        ckpt = _fetch_and_import(spec, cfg, raw, target, files, progress)
    except (CheckpointError, DatasetNotFoundError, ArchiveError):
        if cfg.source is None:
            # A bad archive must not be reused as "present" by the next attempt.
            for f in spec.files:
                (raw / f.name).unlink(missing_ok=True)
        raise
    return {"dataset": spec.name, "path": str(ckpt), "files": files,
            "attrs": list(spec.attrs), "image_size": int(spec.image_size[0])}


def _fetch_and_import(spec: DatasetSpec, cfg: FetchConfig, raw: Path, target: Path,
                      files: list[dict[str, Any]], progress: Progress | None) -> Path:
    from starcli.data.archive import safe_extract

    with tempfile.TemporaryDirectory(dir=raw, prefix=".extract-") as tmp:
        folder = Path(tmp) / "unpacked"
        if cfg.source is not None:
            source = Path(cfg.source)
            if not source.exists():
                raise DatasetNotFoundError(f"--from {source}: no such file or folder.")
            if source.is_dir():
                folder = source
            else:
                safe_extract(source, folder, progress=progress)
            files.append({"file": str(source), "status": "imported"})
        else:
            for f in spec.files:
                files.append(_download(spec, f, cfg, raw, progress))
                if f.kind == "archive":
                    safe_extract(raw / f.name, folder, progress=progress)
        found = {name: _find(folder, name) for name in spec.checkpoint_files}
        g_file = next((p for n, p in found.items() if n.endswith("-G.ckpt") and p), None)
        d_file = next((p for n, p in found.items() if n.endswith("-D.ckpt") and p), None)
        if g_file is None:
            raise DatasetNotFoundError(
                f"{spec.name}: {' / '.join(spec.checkpoint_files)} not found in the "
                "archive, so it is not the official one; fetch again (another --mirror), or "
                "pass --from PATH to a copy you trust.")
        # The target is fetch's own folder (skipped above unless --force or --from).
        return import_stargan_v1(g_file, d_file, spec.attrs, int(spec.image_size[0]),
                                 target, progress=progress, home=Path(cfg.home), force=True)


def _download(spec: DatasetSpec, f: FileSpec, cfg: FetchConfig, raw: Path,
              progress: Progress | None) -> dict[str, Any]:
    from starcli.data.download import download
    from starcli.data.fetch import sources_for

    dest = raw / f.name
    if dest.is_file() and not cfg.force:
        # Only files that passed the checks are ever renamed to their final name.
        return {"file": f.name, "status": "present"}
    sources = sources_for(spec, f, cfg)
    if not sources:
        raise StarcliError(f"{f.name}: no source known. Pass --mirror BASE_URL, or import a "
                           "local copy with --from PATH.")
    expect = "zip" if f.name.endswith(".zip") else None
    used = download(sources, dest, size=f.size, md5=f.md5, sha256=f.sha256, expect=expect,
                    progress=progress)
    return {"file": f.name, "status": "downloaded", "source": used}
