"""Official StarGAN v2 weights → starcli checkpoints, and `starcli fetch pretrained-v2-*`.

An official ``NNNNNN_nets_ema.ckpt`` (clovaai/stargan-v2) holds the moving averages of G, F
and E as plain state_dicts and no config: the caller names the domains in training order
(the official order is the sorted folder names) and the image size; K, w_hpf and the widths
are read from the weight shapes and checked. The file is read with
``torch.load(weights_only=True)``: a pickle that would build Python objects is refused and
nothing in it runs. The weights become the checkpoint's moving averages (G_ema, F_ema,
E_ema: what translate and eval use); a ``*_nets.ckpt`` given as `discriminator` adds D.

    ckpt_dir = import_stargan_v2(Path("100000_nets_ema.ckpt"), ("cat", "dog", "wild"),
                                 Path("runs/v2-afhq"))

The CelebA-HQ model (w_hpf > 0) needs facial-landmark masks from the FAN (`fan.py`) for its
high-pass skips. Its weights come from the file's own ``fan`` entry (what the official sampler
uses) or else from `wing` (wing.ckpt), loaded strictly, and are saved in the checkpoint as
FAN.safetensors (meta["masks"] True), so translate needs nothing but the checkpoint. With
`no_masks` it imports without them and translates without those skips: the output loses the
source's fine facial detail.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from starcli.data.domains import Domains
from starcli.data.labels import LabelLayout, LabelSpace
from starcli.errors import (
    ArchiveError,
    CheckpointError,
    ConfigError,
    DatasetNotFoundError,
    StarcliError,
)
from starcli.families.stargan_v1.importer import _download, _find, _refuse_occupied, _sha256
from starcli.families.stargan_v2.family import V2Model
from starcli.families.stargan_v2.fan import load_fan, read_fan_state
from starcli.families.stargan_v2.networks import (
    Discriminator,
    Generator,
    MappingNetwork,
    StyleEncoder,
)
from starcli.families.stargan_v2.official import _read, infer_official_v2, load_official_v2
from starcli.progress import Progress, log

if TYPE_CHECKING:
    from starcli.data.fetch import FetchConfig
    from starcli.data.registry import DatasetSpec

__all__ = ["OFFICIAL_FILE", "NO_MASKS_EFFECT", "import_stargan_v2", "fetch_pretrained_v2"]

OFFICIAL_FILE = "100000_nets_ema.ckpt"  # the released files' name
NO_MASKS_EFFECT = ("the high-pass skips are not used, so outputs lose the source's fine "
                   "facial detail and landmark sharpness (eyes, nose) compared with the "
                   "official samples")
_STEP_RE = re.compile(r"^(\d+)_nets(_ema)?\.ckpt$")


def _domain_names(domains: Sequence[str]) -> tuple[str, ...]:
    names = tuple(d.strip() for d in domains if d.strip())
    if len(names) < 2:
        raise ConfigError("--domains needs the model's domain names in training order (the "
                          "sorted folder names), e.g. --domains cat,dog,wild.")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--domains lists {', '.join(dupes)} more than once.")
    return names


def _shape(sd: Any, key: str, dim: int) -> int | None:
    """Dimension `dim` of tensor `key` of state_dict `sd`, None when absent."""
    if not isinstance(sd, Mapping):
        return None
    value = sd.get(key, sd.get(f"module.{key}"))
    if isinstance(value, torch.Tensor) and value.dim() > dim:
        return int(value.shape[dim])
    return None


def _read_official(path: Path, what: str) -> Mapping[str, Any]:
    ckpt = _read(path)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a dict of state_dicts ({what}), got "
                              f"{type(ckpt).__name__}; pass an official *_nets_ema.ckpt file.")
    return ckpt


def _model(ckpt: Mapping[str, Any], path: Path, names: tuple[str, ...], image_size: int,
           w_hpf: float | None) -> V2Model:
    """The V2Model the file's shapes describe, with `names` as its domains."""
    layout = infer_official_v2(ckpt, image_size)
    if layout.num_domains is not None and layout.num_domains != len(names):
        raise ConfigError(f"--domains names {len(names)} domains ({', '.join(names)}) but "
                          f"{path.name} has {layout.num_domains}; pass --domains with "
                          f"{layout.num_domains} names in training order.")
    if w_hpf is None:
        if layout.w_hpf is None:
            raise CheckpointError(f"{path}: cannot tell w_hpf from the generator's depth at "
                                  f"{image_size} px; check --image-size (the released "
                                  "models: 256).")
        w_hpf = layout.w_hpf
    mapping, encoder = ckpt.get("mapping_network"), ckpt.get("style_encoder")
    # The trunk's last width is min(dim_in * 2**depth, max_conv_dim): as the cap it gives the
    # same widths everywhere, whether or not the real cap was reached.
    found = {"latent_dim": _shape(mapping, "shared.0.weight", 1),
             "mapping_hidden": _shape(mapping, "shared.0.weight", 0),
             "style_dim": _shape(mapping, "unshared.0.6.weight", 0),
             "max_conv_dim": _shape(encoder, "unshared.0.weight", 1),
             "dim_in": layout.dim_in}
    return V2Model(image_size=image_size, num_domains=len(names), w_hpf=w_hpf,
                   **{k: v for k, v in found.items() if v is not None},
                   domains=Domains("onehot", names, tuple(range(len(names))),
                                   labels=names))


def import_stargan_v2(path: Path, domains: Sequence[str], out: Path, *, image_size: int = 256,
                      w_hpf: float | None = None, wing: Path | None = None,
                      no_masks: bool = False, masks_if_present: bool = False,
                      discriminator: Path | None = None,
                      dataset: str | None = None, force: bool = False,
                      progress: Progress | None = None) -> Path:
    """Convert an official ``*_nets_ema.ckpt`` (and optionally D from a ``*_nets.ckpt``) into
    a starcli checkpoint under run dir `out`; returns the checkpoint directory
    (`out/checkpoints/step-<N>/`, N from names like `100000_nets_ema.ckpt`, else 0).

    `w_hpf` None reads it from the file. A w_hpf > 0 model (CelebA-HQ) needs FAN weights (the
    file's ``fan`` entry, else `wing`), saved as the checkpoint's FAN (meta["masks"] True), or
    `no_masks` (meta["masks"] False); `masks_if_present` imports without them, instead of
    refusing, when neither is there (fetch). `dataset` names the training set for the framing
    recipe (default "celeba-hq" for w_hpf > 0, else "afhq"). A folder holding checkpoints or
    a run is refused (ConfigError) unless `force`.
    """
    from starcli import __version__
    from starcli.checkpoint import save_checkpoint
    from starcli.imaging import Framing

    path, out = Path(path), Path(out)
    names = _domain_names(domains)
    if not force:
        _refuse_occupied(out)
    ckpt = _read_official(path, "generator, mapping_network, style_encoder")
    missing = [k for k in ("generator", "mapping_network", "style_encoder") if k not in ckpt]
    if missing:
        have = ", ".join(sorted(map(str, ckpt))[:6]) or "nothing"
        raise CheckpointError(f"{path}: has no {missing[0]!r} network (it holds {have}), so "
                              "it is not an official StarGAN v2 file; pass a *_nets_ema.ckpt.")
    model = _model(ckpt, path, names, image_size, w_hpf)
    masked = model.w_hpf > 0
    has_fan = isinstance(ckpt.get("fan"), Mapping)
    if masked and wing is None and not has_fan and masks_if_present:
        no_masks = True
    if masked and wing is None and not has_fan and not no_masks:
        raise ConfigError(
            f"{path.name} is a w_hpf {model.w_hpf:g} model (CelebA-HQ), whose high-pass skips "
            "need FAN landmark masks, and it has no 'fan' entry: pass --wing wing.ckpt (the "
            f"official FAN weights), or --no-masks to import it without them "
            f"({NO_MASKS_EFFECT}).")
    fan = None
    if masked and not no_masks:
        if has_fan:  # the official sampler loads this copy over wing.ckpt's
            fan = load_fan(ckpt["fan"], source=f"{path} ['fan']")
        else:
            fan = load_fan(Path(wing))
    with torch.random.fork_rng(devices=[]):  # the weights are overwritten: leave the RNG be
        net = model.networks()
        modules: dict[str, nn.Module] = {"G": Generator(net), "F": MappingNetwork(net),
                                         "E": StyleEncoder(net)}
        D = Discriminator(net) if discriminator is not None else None
    load_official_v2(ckpt, net, modules)
    imported: dict[str, Any] = {"from": "stargan-v2", "nets_ema": path.name,
                                "nets_ema_sha256": _sha256(path)}
    if D is not None:
        d_path = Path(discriminator)
        d_ckpt = _read_official(d_path, "discriminator")
        if "discriminator" not in d_ckpt:
            have = ", ".join(sorted(map(str, d_ckpt))) or "nothing"
            raise CheckpointError(f"{d_path}: has no 'discriminator' network (it holds {have}); "
                                  "pass the official *_nets.ckpt as --discriminator.")
        load_official_v2(d_ckpt, net, {"D": D})
        imported.update(discriminator=d_path.name, discriminator_sha256=_sha256(d_path))
    if fan is not None:
        if has_fan:
            imported["fan"] = f"{path.name} ['fan']"
            if wing is not None:
                same = _same_state(read_fan_state(Path(wing))[0], fan.state_dict())
                log(progress, f"FAN weights from {path.name}'s 'fan' entry, as the official "
                              f"sampler uses them (--wing {Path(wing).name} "
                              f"{'holds the same weights' if same else 'differs; not used'})")
        else:
            imported.update(fan=Path(wing).name, wing_sha256=_sha256(Path(wing)))
        log(progress, "masks on: the FAN is saved in the checkpoint")
    elif masked:
        log(progress, f"masks off: {NO_MASKS_EFFECT}")
    elif wing is not None:
        log(progress, f"--wing {Path(wing).name} is not used: a w_hpf 0 model has no masks")
    dataset = dataset or ("celeba-hq" if masked else "afhq")
    space = LabelSpace(dataset=dataset, format="folder", kind="onehot", names=names)
    framing = Framing(dataset=dataset, format="domain-folders",
                      source=(image_size, image_size), crop=None, size=image_size)
    match = _STEP_RE.match(path.name)
    meta: dict[str, Any] = {
        "family": "stargan-v2", "model": model.to_dict(),
        "labels": LabelLayout(spaces=(space,)).to_dict(), "train": {},
        "datasets": [{"name": dataset, "image_size": image_size, "content": None,
                      "framing": framing.to_dict()}],
        "has_discriminator": D is not None, "imported": imported, "starcli": __version__}
    if masked:
        meta["masks"] = fan is not None
        meta["model"]["masks"] = fan is not None
    # The file holds the moving averages, which is what inference loads (load_inference).
    saved = {f"{n}_ema": m for n, m in modules.items()}
    if fan is not None:
        saved["FAN"] = fan
    if D is not None:
        saved["D"] = D
    ckpt_dir = save_checkpoint(out, int(match.group(1)) if match else 0, saved, meta,
                               state=None, keep_last=1)
    log(progress, f"imported {path.name}{' + ' + Path(discriminator).name if D else ''} "
                  f"({', '.join(names)}; {image_size}px, w_hpf {model.w_hpf:g}) → {ckpt_dir}")
    return ckpt_dir


def _same_state(a: Mapping[str, Any], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        isinstance(a[k], torch.Tensor) and a[k].shape == b[k].shape and torch.equal(a[k], b[k])
        for k in b)


# --------------------------------------------------------------------------- fetch


def fetch_pretrained_v2(spec: DatasetSpec, cfg: FetchConfig,
                        progress: Progress | None = None) -> dict[str, Any]:
    """`starcli fetch pretrained-v2-afhq`: download the official file (mirrors first), or
    take --from PATH (the file, a folder or an archive holding it), and import it into
    <home>/pretrained/<name>/. A w_hpf > 0 entry (CelebA-HQ) imports with the FAN of the
    file's 'fan' entry (the official release has one), else without masks."""
    from starcli.checkpoint import list_checkpoints, read_meta
    from starcli.paths import raw_dir

    home = Path(cfg.home)
    target = home / "pretrained" / spec.name
    done = list_checkpoints(target)
    if done and not cfg.force and cfg.source is None:
        log(progress, f"{spec.name}: already imported in {done[-1]} (use --force to redo)")
        return {"dataset": spec.name, "path": str(done[-1]), "skipped": True}
    domains = spec.raw.get("domains")
    w_hpf = spec.raw.get("w_hpf")
    if not (isinstance(domains, list) and all(isinstance(d, str) for d in domains)
            and domains and spec.image_size and spec.files
            and isinstance(w_hpf, (int, float)) and not isinstance(w_hpf, bool)):
        raise StarcliError(f"registry entry {spec.name} needs domains (a list of names), "
                           "w_hpf (a number), image_size and files to import official "
                           "StarGAN v2 weights.")
    raw = raw_dir(home, spec.name)
    raw.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, Any]] = []
    try:
        ckpt = _fetch_and_import(spec, cfg, raw, target, files, tuple(domains), float(w_hpf),
                                 progress)
    except (CheckpointError, DatasetNotFoundError, ArchiveError):
        if cfg.source is None:  # a bad download must not count as present next time
            for f in spec.files:
                (raw / f.name).unlink(missing_ok=True)
        raise
    masks = read_meta(ckpt).get("masks")
    return {"dataset": spec.name, "path": str(ckpt), "files": files, "domains": list(domains),
            "w_hpf": float(w_hpf), "masks": bool(masks) if w_hpf > 0 else None,
            "image_size": int(spec.image_size[0])}


def _fetch_and_import(spec: DatasetSpec, cfg: FetchConfig, raw: Path, target: Path,
                      files: list[dict[str, Any]], domains: tuple[str, ...], w_hpf: float,
                      progress: Progress | None) -> Path:
    from starcli.data.archive import safe_extract

    wanted = spec.checkpoint_files or (OFFICIAL_FILE,)
    with tempfile.TemporaryDirectory(dir=raw, prefix=".extract-") as tmp:
        folder = Path(tmp) / "unpacked"
        direct: list[Path] = []  # plain files, fetched or given, that may be the weights
        if cfg.source is not None:
            source = Path(cfg.source)
            if not source.exists():
                raise DatasetNotFoundError(f"--from {source}: no such file or folder.")
            if source.is_dir():
                folder = source
            elif source.suffix == ".ckpt":
                direct.append(source)
            else:
                safe_extract(source, folder, progress=progress)
            files.append({"file": str(source), "status": "imported"})
        else:
            for f in spec.files:
                files.append(_download(spec, f, cfg, raw, progress))
                if f.kind == "archive":
                    safe_extract(raw / f.name, folder, progress=progress)
                elif f.name in wanted:
                    direct.append(raw / f.name)
        found = direct[0] if direct else next(
            (p for name in wanted if folder.is_dir() and (p := _find(folder, name))), None)
        if found is None:
            raise DatasetNotFoundError(
                f"{spec.name}: {' / '.join(wanted)} not found in what was fetched, so it is "
                "not the official file; fetch again (another --mirror), or pass --from PATH "
                "to a copy you trust.")
        if w_hpf > 0:
            log(progress, f"{spec.name}: w_hpf {w_hpf:g} model; masks from the file's 'fan' "
                          "entry when it has one, else importing with --no-masks")
        # The target is fetch's own folder (skipped above unless --force or --from).
        return import_stargan_v2(found, domains, target, image_size=int(spec.image_size[0]),
                                 w_hpf=w_hpf, masks_if_present=True,
                                 dataset=spec.raw.get("dataset"), force=True,
                                 progress=progress)
