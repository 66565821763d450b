"""Batch translation of image files and folders with a trained (or imported) generator.

    result = translate(TranslateConfig(inputs=(Path("photos"),), targets=("Blond_Hair",),
                                       checkpoint=Path("runs/latest")))

Every input image is decoded robustly (see `starcli.imaging`), cropped to the model's square
(centre crop, or with `align=True` a face crop framed like CelebA's aligned images), and
translated to every target. Outputs land in `<out>/<target slug>/<input path relative to its
root>.png`; a manifest maps each input to its outputs and lists every skipped file with its
reason. Outputs that already exist are kept (re-running resumes) unless `overwrite=True`.

Speed: images are decoded and outputs encoded in a thread pool while the model runs on the
previous batch; the model runs under `torch.inference_mode`, channels-last, and in bfloat16
where the hardware does it natively (`precision="auto"`). Instance norm runs as a group norm
with one channel per group: the same function, and much faster on CPU in channels-last.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from starcli.align import Alignment, FaceAligner, celeba_eyes, paste_back
from starcli.checkpoint import LoadedCheckpoint, load_checkpoint, read_meta, resolve_checkpoint
from starcli.config import PRECISIONS
from starcli.data.labels import LabelLayout
from starcli.errors import CheckpointError, ConfigError, StarcliError, UsageError
from starcli.families import get_family
from starcli.imaging import (
    DEFAULT_MAX_PIXELS,
    Framings,
    ImageSkipped,
    InputFile,
    load_image,
    walk_inputs,
)
from starcli.progress import Progress, log, progress_task
from starcli.runtime import resolve_device, resolve_precision
from starcli.targets import Target, parse_targets, read_labels_csv
from starcli.utils import atomic_write_bytes

__all__ = ["TranslateConfig", "TranslateResult", "translate", "GRID_DIR", "GRID_MIN_TILE",
           "enlarge"]

FORMATS = ("png", "jpg")
MANIFESTS = ("jsonl", "csv")
GRID_DIR = "_grid"
# Grid tiles smaller than this are enlarged by a whole factor, nearest neighbour (a 32 px model
# gives 128 px tiles): big enough to see, and every model pixel stays one visible block.
GRID_MIN_TILE = 128
# G call size cap, in pixels: 64 images at 128 px (16 at 256 px).
_G_PIXELS_PER_CALL = 64 * 128 * 128


@dataclass(frozen=True)
class TranslateConfig:
    """Everything `translate` needs; the CLI builds one from its options."""

    inputs: tuple[Path, ...]  # image files and folders (walked recursively)
    targets: tuple[str, ...]  # --to specs
    checkpoint: Path | None = None  # run dir, checkpoint dir or pretrained name; None: latest
    out: Path = Path("translated")
    batch_size: int = 16
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    precision: str = "auto"  # auto: bf16 where the hardware runs it natively, else fp32
    format: str = "png"  # png (lossless, the default: JPEG artefacts change metrics) or jpg
    jpeg_quality: int = 95
    grid: bool = False  # also write <out>/_grid/<name>: input + every target side by side,
    # enlarged (nearest neighbour) to tiles of at least GRID_MIN_TILE pixels
    overwrite: bool = False  # rewrite outputs that already exist
    html: bool = False  # also write <out>/index.html: inputs beside their outputs, skips
    manifest: str = "jsonl"  # jsonl or csv
    labels: Path | None = None  # CSV of the inputs' own labels (file + one 0/1 column each)
    mix_label_spaces: bool = False  # allow one spec to set labels of two datasets
    align: bool = False  # detect and crop the face like CelebA's aligned images
    crop: int | None = None  # centre square N px wide instead of the model's recipe
    # Style-based families (StarGAN v2): K latent styles per input and target, seeded by
    # `seed` (style k is the same z for every input), truncated toward the domain's mean by
    # psi; or the style of each reference image (`refs`, files or folders), its domain from
    # its folder name, `ref_domain`, or D.
    styles: int = 1
    seed: int | None = None
    psi: float = 1.0
    refs: tuple[Path, ...] = ()
    ref_domain: str | None = None
    paste_back: bool = False  # blend the translated face into the original photo (needs align)
    workers: int = 0  # decode/encode threads; 0: automatic
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped (decompression bombs)
    home: Path | None = None  # data root, for pretrained names as the checkpoint

    def __post_init__(self) -> None:
        if not self.inputs:
            raise UsageError("Pass at least one INPUT image file or folder.")
        if not self.targets and not self.refs:
            raise UsageError("Pass at least one --to SPEC, e.g. --to Blond_Hair (or --ref "
                             "IMAGES with a StarGAN v2 checkpoint).")
        if self.targets and self.refs:
            raise UsageError("--ref takes each output's domain from its reference; drop --to "
                             "(or use --ref-domain to name it).")
        if not 1 <= self.styles <= 100:
            raise ConfigError(f"--styles must be 1-100, got {self.styles}.")
        if not 0.0 <= self.psi <= 1.0:
            raise ConfigError(f"--psi must be in [0, 1] (1: no truncation), got {self.psi}.")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be png or jpg, not '{self.format}'.")
        if self.manifest not in MANIFESTS:
            raise ConfigError(f"--manifest must be jsonl or csv, not '{self.manifest}'.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not "
                              f"'{self.precision}'.")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"--jpeg-quality must be 1-100, got {self.jpeg_quality}.")
        if self.paste_back and not self.align:
            raise ConfigError("--paste-back needs --align (only an aligned face crop can be "
                              "put back where it came from).")
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 (automatic) or more, got {self.workers}.")
        if self.crop is not None and self.crop < 1:
            raise ConfigError(f"--crop must be a positive number of pixels, got {self.crop}.")
        if self.max_pixels < 1:
            raise ConfigError("the pixel limit must be positive.")

    @property
    def styled(self) -> bool:
        """True when a style option is set (they need a style-based family)."""
        return self.styles > 1 or self.seed is not None or self.psi != 1.0 or bool(self.refs)


@dataclass
class TranslateResult:
    out: Path
    manifest: Path
    checkpoint: Path
    device: str
    precision: str
    targets: list[dict[str, Any]]  # {"spec", "slug", "notes"}
    inputs: int  # image candidates found
    translated: int  # images translated in this run
    existing: int  # images whose outputs were all there already
    written: int  # files written in this run
    skipped: list[dict[str, str]]  # {"input", "reason"}
    seconds: float
    images_per_s: float  # translated images per second of this run
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "manifest": str(self.manifest),
                "checkpoint": str(self.checkpoint), "device": self.device,
                "precision": self.precision, "targets": self.targets, "inputs": self.inputs,
                "translated": self.translated, "existing": self.existing,
                "written": self.written, "skipped": self.skipped,
                "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images_per_s, 3), "notes": self.notes}


# --------------------------------------------------------------------------- image helpers


def enlarge(rgb: np.ndarray, minimum: int = GRID_MIN_TILE) -> np.ndarray:
    """`rgb` enlarged by the smallest whole factor that makes its height at least `minimum`
    (nearest neighbour: no blur, each pixel a square block); unchanged when tall enough."""
    k = max(1, -(-minimum // max(1, rgb.shape[0])))
    return rgb if k == 1 else np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)


_JPEG_MAX_SIDE = 65500  # libjpeg's limit


def _encode(rgb: np.ndarray, fmt: str, quality: int) -> bytes:
    """PNG or JPEG bytes; ValueError (a per-file failure) when the format cannot hold it."""
    h, w = rgb.shape[:2]
    if fmt == "jpg" and max(h, w) > _JPEG_MAX_SIDE:
        # Checked here: OpenCV only returns False (and prints to stderr) for these.
        raise ValueError(f"a {w}x{h} image is too large for JPEG (at most {_JPEG_MAX_SIDE} "
                         "pixels a side); use --format png")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if fmt == "jpg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {w}x{h} image as {fmt}")
    return buf.tobytes()


def _write_atomic(path: Path, data: bytes) -> None:
    """A name under <out> is always complete. (No fsync per image: a crash loses at most the
    newest files, and a re-run redoes them.)"""
    atomic_write_bytes(path, data, durable=False)


# --------------------------------------------------------------------------- planning


@dataclass
class _Job:
    item: InputFile
    row: dict[str, Any]  # its manifest row, filled in as it goes
    outputs: dict[str, Path]  # slug -> output path
    grid: Path | None
    todo: list[str]  # slugs to write (missing, or all with overwrite)
    grid_todo: bool
    csv_labels: np.ndarray | None  # (cls_dim,) with NaN where unknown


@dataclass
class _Loaded:
    crop: np.ndarray  # (S, S, 3) uint8
    original: np.ndarray | None  # the full photo, for paste-back
    alignment: Alignment | None
    framing: str = ""  # how the model input was cut from the file (manifest "framing")


def _check_out_dir(out: Path, inputs: Sequence[Path]) -> None:
    out_real = out.resolve()
    for inp in inputs:
        if not inp.is_dir():
            continue
        in_real = inp.resolve()
        if out_real == in_real or in_real in out_real.parents:
            raise UsageError(
                f"--out {out} is inside the input folder {inp}: the next run would read the "
                "translations as inputs. Choose an --out outside it (default ./translated).")


def _output_stems(items: Sequence[InputFile]) -> list[Path | None]:
    """A unique output stem (relative path without extension) per input, or None."""
    taken: set[str] = set()
    stems: list[Path | None] = []
    for item in items:
        rel = item.relative
        choices = [rel.with_suffix(""), rel.parent / rel.name,
                   Path(item.root.name or "input") / rel.with_suffix("")]
        chosen = None
        for stem in choices:
            key = stem.as_posix().lower()
            if key not in taken:
                taken.add(key)
                chosen = stem
                break
        stems.append(chosen)
    return stems


def _lookup_csv(table: dict[str, np.ndarray], item: InputFile) -> np.ndarray | None:
    for key in (item.relative.as_posix(), item.path.as_posix(), item.path.name):
        if key in table:
            return table[key]
    return None


def _needed_positions(targets: Sequence[Target], layout: LabelLayout) -> list[int]:
    """Layout positions of the inputs' own labels that some target carries through."""
    needed: set[int] = set()
    for t in targets:
        for s in t.spaces:
            space = layout.spaces[s]
            if space.kind == "onehot":
                continue
            fixed = t.fixed_columns(layout, s)
            offset = layout.blocks[s].offset
            needed.update(offset + j for j in range(space.width) if j not in fixed)
    return sorted(needed)


def _resolve_checkpoint_arg(checkpoint: Path | None, home: Path | None) -> Path | None:
    """A registry name of pretrained weights (`pretrained-celeba-128`) → where `starcli fetch`
    imported it; anything else is passed on unchanged."""
    if checkpoint is None or checkpoint.exists() or len(checkpoint.parts) != 1:
        return checkpoint
    from starcli.data.fetch import MODEL_FORMATS
    from starcli.data.registry import load_registry
    from starcli.paths import resolve_home

    name = str(checkpoint)
    registry = load_registry(resolve_home(home))
    spec = registry.datasets.get(name)
    if spec is None or spec.format not in MODEL_FORMATS:
        return checkpoint
    target = resolve_home(home) / "pretrained" / name
    if not target.exists():
        raise CheckpointError(f"--checkpoint {name}: the pretrained weights are not fetched "
                              f"yet; run `starcli fetch {name}` first.")
    return target


def _domain_specs(specs: Sequence[str], checkpoint: Path | None,
                  home: Path | None) -> tuple[str, ...]:
    """--to specs with a two-domain model's domain names spelled as labels: `female` on a
    model over the domains female/male of `Male` is `Male=0` (`male` already reads as Male).
    Other specs are left as they are."""
    try:
        meta = read_meta(resolve_checkpoint(_resolve_checkpoint_arg(checkpoint, home)))
        domains = (meta.get("model") or {}).get("domains") or {}
    except (CheckpointError, OSError, ValueError, TypeError):
        return tuple(specs)
    if domains.get("kind") != "binary" or not domains.get("labels"):
        return tuple(specs)
    label, names = domains["labels"][0], [n.lower() for n in domains["names"]]
    return tuple(f"{label}={names.index(s.strip().lower())}"
                 if s.strip().lower() in names and s.strip().lower() != label.lower() else s
                 for s in specs)


def _load_model(cfg: TranslateConfig, targets_need_d: Callable[[LabelLayout], bool],
                device: torch.device) -> LoadedCheckpoint:
    """The checkpoint, with D only when it exists and some target needs the inputs' own
    labels (the targets are parsed from meta.json first, so a bad --to fails before any
    weights are read)."""
    path = resolve_checkpoint(_resolve_checkpoint_arg(cfg.checkpoint, cfg.home))
    meta = read_meta(path)
    try:
        layout = LabelLayout.from_dict(meta["labels"]) if meta.get("labels") else None
    except Exception:  # noqa: BLE001 - load_checkpoint reports it properly below
        layout = None
    has_d = bool(meta.get("has_discriminator", True)) and (path / "D.safetensors").is_file()
    want_d = has_d and (layout is None or targets_need_d(layout))
    return load_checkpoint(path, device=device, with_discriminator=want_d)


# --------------------------------------------------------------------------- the engine


def translate(cfg: TranslateConfig, progress: Progress | None = None) -> TranslateResult:
    """Translate every image of `cfg.inputs` to every target; see the module docstring.

    Raises UsageError/ConfigError (exit 2) for bad requests (unknown labels, --out inside an
    input folder, missing inputs), CheckpointError for a bad checkpoint and StarcliError
    when not a single input could be read. Unreadable files are skipped, not fatal.
    """
    start = time.perf_counter()
    inputs = tuple(Path(p).expanduser() for p in cfg.inputs)
    missing = [str(p) for p in inputs if not p.exists() and not p.is_symlink()]
    if missing:
        raise UsageError(f"INPUT {missing[0]} does not exist; pass image files or folders.")
    out = Path(cfg.out).expanduser()
    _check_out_dir(out, inputs)
    device = resolve_device(cfg.device, auto_mps=True)
    precision = resolve_precision(cfg.precision, device, inference=True)

    from starcli.data.registry import load_registry
    from starcli.paths import resolve_home

    registry_aliases = load_registry(resolve_home(cfg.home)).aliases
    parsed: dict[str, list[Target]] = {}

    def parse(layout: LabelLayout) -> list[Target]:
        if "t" not in parsed:
            parsed["t"] = [] if cfg.refs else parse_targets(
                _domain_specs(cfg.targets, cfg.checkpoint, cfg.home), layout,
                aliases=registry_aliases, mix_label_spaces=cfg.mix_label_spaces)
        return parsed["t"]

    ckpt = _load_model(cfg, lambda lay: bool(cfg.refs and cfg.ref_domain is None) or
                       any(t.needs_source(lay) for t in parse(lay)), device)
    layout = ckpt.layout
    targets = parse(layout)
    notes = [n for t in targets for n in t.notes]
    for note in notes:
        log(progress, f"note: {note}")
    size = ckpt.model.image_size

    needed = _needed_positions(targets, layout)
    csv_table: dict[str, np.ndarray] = {}
    if cfg.labels is not None:
        csv_table, _covered = read_labels_csv(cfg.labels, layout)
    # A family whose translator ignores the labels a target keeps (CycleGAN: the target's
    # domain picks the generator) needs neither D nor --labels for them.
    keeps_labels = getattr(get_family(ckpt.family), "needs_source_labels", True)
    if needed and ckpt.D is None and cfg.labels is None and keeps_labels:
        names = [f"{b.space.dataset}:{b.space.names[p - b.offset]}" if layout.use_mask
                 else b.space.names[p - b.offset]
                 for p in needed for b in layout.blocks if b.offset <= p < b.stop]
        raise UsageError(
            f"{ckpt.path} has no discriminator to estimate the inputs' own labels, which "
            f"these targets keep ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}); "
            "pass --labels FILE.csv, or name every label in --to.")

    model = get_family(ckpt.family).translator(ckpt, device, precision)
    if cfg.styled and not getattr(model, "has_styles", False):
        raise UsageError(f"--styles, --seed, --psi and --ref need a style-based checkpoint "
                         f"(StarGAN v2); {ckpt.path} is {ckpt.family}.")
    framings = Framings.from_meta(ckpt.meta.get("datasets"), size, cfg.crop)
    aligner = _aligner(framings, size, cfg.crop) if cfg.align else None
    refs = _load_references(cfg, model, framings) if cfg.refs else []
    variants = _variants(targets, refs, cfg.styles, seeded=cfg.seed is not None)

    # Plan: every candidate gets a manifest row; work only where outputs are missing.
    items, walk_skipped = walk_inputs(inputs)
    input_files = {p.resolve() for p in (i.path for i in items)}
    ext = "." + cfg.format
    rows: list[dict[str, Any]] = []
    jobs: list[_Job] = []
    existing = 0
    ckpt_info = {"checkpoint": str(ckpt.path), "step": ckpt.step}
    for item, stem in zip(items, _output_stems(items), strict=True):
        row: dict[str, Any] = {"input": str(item.path), "relative": item.relative.as_posix()}
        rows.append(row)
        if stem is None:
            row.update(status="skipped", reason="another input already has this output name "
                                                "(translate it separately)")
            continue
        outputs = {v.key: out / v.folder / (stem.as_posix() + v.suffix + ext)
                   for v in variants}
        grid = out / GRID_DIR / (stem.as_posix() + ext) if cfg.grid else None
        clash = [p for p in [*outputs.values(), grid] if p is not None and
                 p.resolve() in input_files]
        if clash:
            row.update(status="skipped", reason=f"its output {clash[0]} would overwrite an "
                                                "input file; choose another --out")
            continue
        todo = [s for s, p in outputs.items() if cfg.overwrite or not p.exists()]
        grid_todo = grid is not None and (cfg.overwrite or not grid.exists())
        labels = _lookup_csv(csv_table, item) if csv_table else None
        if (todo or grid_todo) and ckpt.D is None and needed and keeps_labels and (
                labels is None or np.isnan(labels[needed]).any()):
            row.update(status="skipped",
                       reason=f"no own labels: not (fully) in --labels {cfg.labels} and the "
                              "checkpoint has no discriminator to estimate them")
            continue
        row["outputs"] = {slug: p.relative_to(out).as_posix() for slug, p in outputs.items()}
        if grid is not None:
            row["grid"] = grid.relative_to(out).as_posix()
        row.update(ckpt_info)
        if not todo and not grid_todo:
            row["status"] = "exists"
            existing += 1
            continue
        jobs.append(_Job(item=item, row=row, outputs=outputs, grid=grid, todo=todo,
                         grid_todo=grid_todo, csv_labels=labels))
    for s in walk_skipped:
        rows.append({"input": str(s.path), "status": "skipped", "reason": s.reason})

    if not items and not walk_skipped:
        raise StarcliError(f"No files found in {', '.join(map(str, inputs))}; pass image "
                           "files or folders that contain some.")
    for job in jobs:
        job.row["status"] = "pending"

    translated = written = 0
    manifest = out / f"manifest.{cfg.manifest}"
    n_workers = cfg.workers or min(8, max(2, os.cpu_count() or 2))
    try:
        if jobs:
            translated, written = _run(jobs, cfg, model, layout, targets, needed, framings,
                                       aligner, n_workers, progress, variants, refs)
    except BaseException:
        try:
            _finish_manifest(manifest, rows, jobs, targets, cfg.manifest, variants)
        except StarcliError:
            pass  # the error that stopped the run is the one to report
        raise
    _finish_manifest(manifest, rows, jobs, targets, cfg.manifest, variants)
    if cfg.grid and refs:
        _reference_matrix(rows, out, framings, refs, variants, cfg)
    if cfg.html:
        _write_html(out, rows, variants, ckpt_info, cfg, framings, aligner, device, precision)

    skipped = _skipped(rows)
    for s in skipped[:20]:
        log(progress, f"skipped {s['input']}: {s['reason']}")
    if len(skipped) > 20:
        log(progress, f"... and {len(skipped) - 20} more skipped (see {manifest})")
    seconds = time.perf_counter() - start
    if translated == 0 and existing == 0:
        raise StarcliError(f"None of the {len(items) + len(walk_skipped)} input files could be "
                           f"translated (every one was skipped); see the reasons in {manifest}.")
    return TranslateResult(
        out=out, manifest=manifest, checkpoint=ckpt.path, device=str(device),
        precision=precision,
        targets=[{"spec": v.spec, "slug": v.key, "notes": list(v.notes)} for v in variants],
        inputs=len(items), translated=translated, existing=existing, written=written,
        skipped=skipped, seconds=seconds,
        images_per_s=translated / seconds if seconds > 0 else 0.0, notes=notes)


def _aligner(framings: Framings, size: int, crop: int | None) -> FaceAligner:
    """A face aligner that cuts CelebA's framing (the centre 178 square of the 178x218
    aligned files), then the model's CelebA-format recipe within it (`--crop N`: N of those
    178 pixels)."""
    recipe = framings.celeba()
    fraction = (min(1.0, crop / 178) if crop else
                recipe.fraction if recipe is not None and recipe.fraction else 1.0)
    return FaceAligner(size, eyes=celeba_eyes(fraction))


def _prepare(job: _Job, framings: Framings, aligner: FaceAligner | None,
             keep_original: bool, max_pixels: int) -> _Loaded | str:
    """Decode and crop one input (runs in a worker thread); a string is a skip reason."""
    try:
        if aligner is None:
            crop, how = framings.load(job.item.path, max_pixels, loader=load_image)
            return _Loaded(crop, None, None, how)
        rgb = load_image(job.item.path, max_pixels=max_pixels)
        found = aligner.align(rgb)
    except ImageSkipped as exc:
        return exc.reason
    except Exception as exc:  # noqa: BLE001 - one odd file must not end a long run
        return _failure("could not process it", exc)
    if found is None:
        return "no face found (run without --align to translate the whole image)"
    crop, where = found
    return _Loaded(crop, rgb if keep_original else None, where, "aligned face, CelebA framing")


def _failure(what: str, exc: BaseException) -> str:
    """A skip reason that names the exception, so that a bug shows as itself in the manifest
    (and in tests) instead of disappearing into a vague "could not read"."""
    text = str(exc).strip()
    last = text.splitlines()[-1] if text else ""  # OpenCV puts the useful part last
    return f"{what} ({type(exc).__name__}{': ' + last[:200] if last else ''})"


def _stops_the_run(exc: OSError) -> bool:
    """Write errors that every later file would hit as well (full disk, quota, read-only
    file system): they end the run; any other error skips one input."""
    import errno

    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _save(job: _Job, loaded: _Loaded, results: dict[str, np.ndarray], keys: Sequence[str],
          cfg: TranslateConfig) -> tuple[list[str], str | None]:
    """Write one input's outputs (runs in a worker thread): (what was written, the reason
    the rest could not be, or None). Raises only the OSErrors that `_stops_the_run`."""
    done: list[str] = []
    try:
        for slug in job.todo:
            image = results[slug]
            if cfg.paste_back and loaded.original is not None and loaded.alignment is not None:
                image = paste_back(loaded.original, image, loaded.alignment)
            _write_atomic(job.outputs[slug], _encode(image, cfg.format, cfg.jpeg_quality))
            done.append(slug)
        if job.grid_todo and job.grid is not None:
            strip = enlarge(np.concatenate([loaded.crop] + [results[k] for k in keys],
                                           axis=1))
            _write_atomic(job.grid, _encode(strip, cfg.format, cfg.jpeg_quality))
            done.append(GRID_DIR)
    except OSError as exc:
        if _stops_the_run(exc):
            raise
        return done, _failure("could not write it", exc)
    except Exception as exc:  # noqa: BLE001 - encoder limits, paste-back on odd shapes
        return done, _failure("could not save it", exc)
    return done, None


def _run(jobs: list[_Job], cfg: TranslateConfig, model: Any, layout: LabelLayout,
         targets: Sequence[Target], needed: Sequence[int], framings: Framings,
         aligner: FaceAligner | None, n_workers: int,
         progress: Progress | None, variants: Sequence[_Variant],
         refs: Sequence[_Reference]) -> tuple[int, int]:
    translated = written = 0
    use_d = model.can_estimate_labels and bool(needed)
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="starcli-io") as pool, \
            progress_task(progress, "translate", total=len(jobs), unit="images") as task:
        loads: deque[tuple[_Job, Future]] = deque()
        saves: deque[tuple[_Job, Future]] = deque()
        queue = iter(jobs)
        prefetch = cfg.batch_size * 2 + n_workers

        def refill() -> None:
            while len(loads) < prefetch:
                job = next(queue, None)
                if job is None:
                    return
                loads.append((job, pool.submit(_prepare, job, framings, aligner,
                                               cfg.paste_back, cfg.max_pixels)))

        def drain(block: bool, limit: int = 0) -> None:
            nonlocal written, translated
            while saves and (saves[0][1].done() or (block and len(saves) > limit)):
                job, fut = saves.popleft()
                try:
                    done, reason = fut.result()
                except OSError as exc:  # only what every later file would hit too
                    raise StarcliError(
                        f"{exc.strerror or exc} writing to {cfg.out}: stopped after "
                        f"{translated} images. Free some space (or choose another --out) and "
                        "rerun the same command: finished outputs are kept and the rest "
                        "resume.") from exc
                written += len(done)
                job.row["written"] = done
                if reason is not None:
                    _skip(job, reason)
                else:
                    job.row["status"] = "translated"
                    translated += 1
                task.advance(1)

        def run_batch(part: list[tuple[_Job, _Loaded]]) -> None:
            try:
                with torch.inference_mode():
                    _translate_batch(part, model, layout, targets, use_d, cfg, variants, refs, pool,
                                     saves)
            except Exception as exc:  # noqa: BLE001 - out of memory, one input G chokes on
                if len(part) == 1:
                    _skip(part[0][0], _failure("could not translate it", exc))
                    task.advance(1)
                    return
                for one in part:  # find the input that failed its batch-mates
                    run_batch([one])

        batch: list[tuple[_Job, _Loaded]] = []
        refill()
        while loads or batch:
            if loads:
                job, fut = loads.popleft()
                refill()
                loaded = fut.result()
                if isinstance(loaded, str):
                    _skip(job, loaded)
                    task.advance(1)
                else:
                    batch.append((job, loaded))
            if batch and (len(batch) == cfg.batch_size or not loads):
                run_batch(batch)
                batch = []
                # Keep at most about two batches of encodes in flight.
                drain(block=True, limit=2 * cfg.batch_size)
            drain(block=False)
        drain(block=True, limit=0)
    return translated, written


def _skip(job: _Job, reason: str) -> None:
    """Mark a job skipped; the outputs it would have had are not listed."""
    for key in ("outputs", "grid", "checkpoint", "step"):
        job.row.pop(key, None)
    job.row.update(status="skipped", reason=reason)


def _translate_batch(batch: list[tuple[_Job, _Loaded]], model: Any,
                     layout: LabelLayout, targets: Sequence[Target], use_d: bool,
                     cfg: TranslateConfig, variants: Sequence[_Variant],
                     refs: Sequence[_Reference], pool: ThreadPoolExecutor,
                     saves: deque) -> None:
    crops = np.stack([loaded.crop for _, loaded in batch])
    x = model.to_input(crops)
    n = len(batch)
    source = np.full((n, layout.cls_dim), np.nan, dtype=np.float32)
    if use_d:
        source = model.own_labels(x, layout)
    for i, (job, _) in enumerate(batch):
        if job.csv_labels is not None:
            known = ~np.isnan(job.csv_labels)
            source[i, known] = job.csv_labels[known]
    if cfg.styled:
        outputs = _styled(model, x, source, layout, targets, variants, refs,
                          cfg.seed or 0, cfg.psi)
    else:
        outputs = _by_labels(model, x, source, layout, targets, cfg.batch_size)
    slugs = [v.key for v in variants]
    results = []
    for i, (job, loaded) in enumerate(batch):
        job.row["source_labels"] = _label_dict(layout, targets, source[i])
        if loaded.framing:
            job.row["framing"] = loaded.framing
        if loaded.alignment is not None:
            job.row["face"] = loaded.alignment.face.to_dict()
        results.append({slug: outputs[slug][i] for slug in slugs})
    # Saves start only once the whole batch worked: a batch that fails is retried one input
    # at a time, and no input may be saved twice.
    for (job, loaded), result in zip(batch, results, strict=True):
        saves.append((job, pool.submit(_save, job, loaded, result, slugs, cfg)))


def _by_labels(model: Any, x: torch.Tensor, source: np.ndarray, layout: LabelLayout,
               targets: Sequence[Target], batch_size: int) -> dict[str, np.ndarray]:
    """uint8 outputs per target slug: G(x, target labels) for label-conditioned families."""
    n = len(x)
    # All targets of the batch go through G together, in chunks: bigger calls run faster
    # on CPU (about +35% at 32-64 images vs 16), and the cap bounds memory at large sizes.
    size = x.shape[-1]
    labels = np.concatenate([t.encode(layout, source) for t in targets])
    cap = max(batch_size, int(_G_PIXELS_PER_CALL // (size * size)))
    chunk = math.ceil(len(labels) / math.ceil(len(labels) / cap))  # equal-sized calls
    pieces = []
    for start in range(0, len(labels), chunk):
        rows = np.arange(start, min(start + chunk, len(labels))) % n
        pieces.append(model.to_uint8(model.generate(x[rows], labels[start:start + chunk])))
    every = np.concatenate(pieces)
    return {t.slug: every[k * n:(k + 1) * n] for k, t in enumerate(targets)}


# --------------------------------------------------------------------------- styles (v2)


@dataclass(frozen=True)
class _Variant:
    """One output per input: a target (with latent style k), or a reference's style."""

    key: str  # manifest "outputs" key and grid column
    spec: str  # what the user asked for (the --to spec, or ref:<file>)
    folder: str  # output sub-folder of --out
    suffix: str = ""  # appended to the input's stem ("-s03" for style 3 of several)
    target: int | None = None  # index into the parsed targets
    style: int | None = None  # latent style number (seeded by --seed)
    ref: int | None = None  # index into the references
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Reference:
    path: Path
    crop: np.ndarray  # (S, S, 3) uint8, framed like the inputs
    domain: int
    domain_from: str  # "folder", "--ref-domain" or "discriminator"
    stem: str  # output folder name under ref/


def _variants(targets: Sequence[Target], refs: Sequence[_Reference],
              styles: int, seeded: bool = False) -> list[_Variant]:
    if refs:
        return [_Variant(key=f"ref/{r.stem}", spec=f"ref:{r.path}", folder=f"ref/{r.stem}",
                         ref=j) for j, r in enumerate(refs)]
    out = []
    for i, t in enumerate(targets):
        if styles <= 1:
            out.append(_Variant(key=t.slug, spec=t.text, folder=t.slug, target=i,
                                style=0 if seeded else None, notes=tuple(t.notes)))
            continue
        for k in range(styles):
            out.append(_Variant(key=f"{t.slug}/s{k:02d}", spec=t.text, folder=t.slug,
                                suffix=f"-s{k:02d}", target=i, style=k,
                                notes=tuple(t.notes)))
    return out


def _style_z(seed: int, k: int, latent_dim: int) -> torch.Tensor:
    """Latent style k of run seed `seed`: the same z for every input, so style 3 of one
    face and of another share a style code."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + k) % (2 ** 63))
    return torch.randn(latent_dim, generator=gen)


def _load_references(cfg: TranslateConfig, model: Any,
                     framings: Framings) -> list[_Reference]:
    """Every readable image of --ref, framed like the inputs, with the domain whose style it
    gives: its folder's name when that is a domain, else --ref-domain, else D's guess."""
    names = [n.lower() for n in model.domain_names()]
    fixed = None
    if cfg.ref_domain is not None:
        if cfg.ref_domain.lower() not in names:
            raise UsageError(f"--ref-domain {cfg.ref_domain!r} is not a domain of this model; "
                             f"choose from {', '.join(model.domain_names())}.")
        fixed = names.index(cfg.ref_domain.lower())
    missing = [str(p) for p in cfg.refs if not Path(p).exists()]
    if missing:
        raise UsageError(f"--ref {missing[0]} does not exist; pass reference image files or "
                         "folders.")
    items, _ = walk_inputs(tuple(Path(p).expanduser() for p in cfg.refs))
    refs: list[_Reference] = []
    guess: list[int] = []
    stems: set[str] = set()
    for item in items:
        try:
            crop, _how = framings.load(item.path, cfg.max_pixels, loader=load_image)
        except ImageSkipped:
            continue
        folder = item.path.parent.name.lower()
        if fixed is not None:
            domain, source = fixed, "--ref-domain"
        elif folder in names:
            domain, source = names.index(folder), "folder"
        else:
            domain, source = -1, "discriminator"
            guess.append(len(refs))
        stem = item.relative.with_suffix("").as_posix().replace("/", "_") or "ref"
        while stem in stems:
            stem += "_"
        stems.add(stem)
        refs.append(_Reference(item.path, crop, domain, source, stem))
    if not refs:
        raise UsageError(f"--ref {', '.join(map(str, cfg.refs))}: no readable reference "
                         "images.")
    if guess:
        if getattr(model, "D", None) is None:
            raise UsageError(
                f"{refs[guess[0]].path}: its folder name is not a domain "
                f"({', '.join(model.domain_names())}) and the checkpoint has no discriminator "
                "to tell; pass --ref-domain NAME or put references in folders named by domain.")
        x = model.to_input(np.stack([refs[j].crop for j in guess]))
        found = model.domain_of(x).cpu().numpy()
        for j, d in zip(guess, found, strict=True):
            refs[j] = _Reference(refs[j].path, refs[j].crop, int(d), "discriminator",
                                 refs[j].stem)
    return refs


def _styled(model: Any, x: torch.Tensor, source: np.ndarray, layout: LabelLayout,
            targets: Sequence[Target], variants: Sequence[_Variant],
            refs: Sequence[_Reference], seed: int, psi: float) -> dict[str, np.ndarray]:
    """uint8 outputs per variant key for a style-based family: latent styles (one z per
    style number) or each reference's style, every input of the batch in one G call each."""
    n = len(x)
    out: dict[str, np.ndarray] = {}
    for v in variants:
        if v.ref is not None:
            r = refs[v.ref]
            ref = model.to_input(r.crop[None])
            s = model.reference_style(ref, torch.tensor([r.domain])).expand(n, -1)
            out[v.key] = model.to_uint8(model.generate_styled(x, s))
            continue
        t = targets[v.target]
        y = model.target_domains(t.encode(layout, source))
        keep = y < 0  # a target in none of the model's domains: the input as it is
        yt = torch.from_numpy(np.where(keep, 0, y))
        if v.style is None:  # the single style per input, seeded by its own pixels
            z = model.seeded_z(x)
        else:
            z = _style_z(seed, v.style, model.latent_dim).expand(n, -1)
        images = model.to_uint8(model.generate_styled(x, model.latent_style(z, yt, psi)))
        if keep.any():
            images[keep] = model.to_uint8(x[torch.from_numpy(np.flatnonzero(keep)).to(x.device)])
        out[v.key] = images
    return out


def _reference_matrix(rows: list[dict[str, Any]], out: Path, framings: Framings,
                      refs: Sequence[_Reference], variants: Sequence[_Variant],
                      cfg: TranslateConfig, most: int = 8) -> Path | None:
    """The StarGAN v2 paper's reference figure: up to `most` sources across the top, up to
    `most` references down the left, each cell the source in that reference's style."""
    done = [r for r in rows if r.get("status") in ("translated", "exists") and r.get("outputs")]
    done = done[:most]
    if not done:
        return None
    keys = [v.key for v in variants][:most]
    size = refs[0].crop.shape[0]
    blank = np.full((size, size, 3), 255, np.uint8)
    header = [blank]
    for r in done:
        try:
            header.append(framings.load(Path(r["input"]), cfg.max_pixels)[0])
        except ImageSkipped:
            header.append(blank)
    lines = [np.concatenate(header, axis=1)]
    for j, key in enumerate(keys):
        cells = [refs[j].crop]
        for r in done:
            rel = r["outputs"].get(key)
            try:
                cells.append(load_image(out / rel) if rel else blank)
            except ImageSkipped:
                cells.append(blank)
        lines.append(np.concatenate(cells, axis=1))
    path = out / GRID_DIR / f"reference-matrix.{cfg.format}"
    path.parent.mkdir(parents=True, exist_ok=True)
    k = max(1, -(-GRID_MIN_TILE // size))  # tiles of at least GRID_MIN_TILE, nearest
    matrix = np.concatenate(lines, axis=0)
    _write_atomic(path, _encode(enlarge(matrix, matrix.shape[0] * k), cfg.format,
                                cfg.jpeg_quality))
    return path


def _write_html(out: Path, rows: list[dict[str, Any]], variants: Sequence[_Variant],
                ckpt_info: dict[str, Any], cfg: TranslateConfig, framings: Framings,
                aligner: FaceAligner | None, device: torch.device, precision: str) -> Path:
    """<out>/index.html (`starcli.html`): each input as the model saw it (framed or aligned
    again from its file), beside its outputs; skipped files with their reasons."""
    from starcli.html import write_translate_index

    def crop(path: Path) -> np.ndarray | None:
        if aligner is None:
            return framings.load(path, cfg.max_pixels, loader=load_image)[0]
        found = aligner.align(load_image(path, max_pixels=cfg.max_pixels))
        return None if found is None else found[0]

    manifest = f"manifest.{cfg.manifest}"
    done = sum(r.get("status") in ("translated", "exists") for r in rows)
    info = [("checkpoint", ckpt_info["checkpoint"]), ("step", ckpt_info["step"]),
            ("targets", ", ".join(dict.fromkeys(v.spec for v in variants))),
            ("device", f"{device} ({precision})"),
            ("inputs", f"{done} translated or already there, "
                       f"{sum(r.get('status') == 'skipped' for r in rows)} skipped"),
            ("manifest", manifest)]
    return write_translate_index(out, rows, [(v.key, v.spec) for v in variants], info, crop)


def _label_dict(layout: LabelLayout, targets: Sequence[Target], row: np.ndarray
                ) -> dict[str, int]:
    """The multi-label values the targets started from, for the manifest."""
    spaces = sorted({s for t in targets for s in t.spaces})
    out = {}
    for s in spaces:
        block = layout.blocks[s]
        if block.space.kind == "onehot":
            continue
        for j, name in enumerate(block.space.names):
            value = row[block.offset + j]
            if not math.isnan(value):
                key = f"{block.space.dataset}:{name}" if layout.use_mask else name
                out[key] = int(value)
    return out


# --------------------------------------------------------------------------- manifest


def _finish_manifest(path: Path, rows: list[dict[str, Any]], jobs: Sequence[_Job],
                     targets: Sequence[Target], kind: str,
                     variants: Sequence[_Variant] = ()) -> None:
    for job in jobs:
        if job.row.get("status") == "pending":
            job.row.update(status="not done", reason="the run stopped before this input")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_manifest(path, rows, targets, kind, variants)
    except OSError as exc:
        raise StarcliError(f"Could not write the manifest {path}: {exc.strerror or exc}. "
                           "Check free space and permissions, then rerun (finished outputs "
                           "are kept).") from exc


def _skipped(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    from starcli.imaging import printable_path

    return [{"input": printable_path(r["input"]), "reason": printable_path(r.get("reason", ""))}
            for r in rows if r.get("status") == "skipped"]


def _printable(value: Any) -> Any:
    """`value` with every string made valid UTF-8 (file names that are not: see
    `printable_path`), so both manifests write the same escape and strict parsers read it."""
    from starcli.imaging import printable_path

    if isinstance(value, str):
        return printable_path(value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


# A spreadsheet runs a cell that starts with one of these as a formula (`=HYPERLINK(...)`
# as a file name); a leading single quote makes it text, as OWASP recommends.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _write_manifest(path: Path, rows: list[dict[str, Any]], targets: Sequence[Target],
                    kind: str, variants: Sequence[_Variant] = ()) -> None:
    from starcli.utils import atomic_write_text

    rows = [_printable(r) for r in rows]
    if kind == "jsonl":
        text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows)
        atomic_write_text(path, text)
        return
    buf = io.StringIO()
    fields = ["input", "relative", "status", "reason", "target", "spec", "output", "grid",
              "checkpoint", "step"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    spec_of = {t.slug: t.text for t in targets} | {v.key: v.spec for v in variants}
    for r in rows:
        base = {k: r.get(k, "") for k in ("input", "relative", "status", "reason", "grid",
                                          "checkpoint", "step")}
        outs = r.get("outputs") or {}
        lines = [{**base, "target": slug, "spec": spec_of.get(slug, ""), "output": rel}
                 for slug, rel in outs.items()] or [base]
        for line in lines:
            writer.writerow({k: _csv_cell(v) for k, v in line.items()})
    atomic_write_text(path, buf.getvalue())


