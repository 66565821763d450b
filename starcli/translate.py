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
import threading
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
import torch.nn.functional as F

from starcli.align import Alignment, FaceAligner, paste_back
from starcli.checkpoint import LoadedCheckpoint, load_checkpoint, read_meta, resolve_checkpoint
from starcli.data.labels import LabelLayout
from starcli.errors import CheckpointError, ConfigError, StarcliError, UsageError
from starcli.imaging import (
    DEFAULT_MAX_PIXELS,
    ImageSkipped,
    InputFile,
    centre_square,
    load_image,
    walk_inputs,
)
from starcli.progress import Progress, log, progress_task
from starcli.targets import Target, parse_targets, read_labels_csv

__all__ = ["TranslateConfig", "TranslateResult", "translate", "resolve_device",
           "resolve_precision", "InferenceModel", "resize_square", "GRID_DIR"]

FORMATS = ("png", "jpg")
MANIFESTS = ("jsonl", "csv")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
GRID_DIR = "_grid"
# G call size cap, in pixels: 64 images at 128 px (16 at 256 px).
_G_PIXELS_PER_CALL = 64 * 128 * 128
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    grid: bool = False  # also write <out>/_grid/<name>: input + every target side by side
    overwrite: bool = False  # rewrite outputs that already exist
    manifest: str = "jsonl"  # jsonl or csv
    labels: Path | None = None  # CSV of the inputs' own labels (file + one 0/1 column each)
    mix_label_spaces: bool = False  # allow one spec to set labels of two datasets
    align: bool = False  # detect and crop the face like CelebA's aligned images
    paste_back: bool = False  # blend the translated face into the original photo (needs align)
    workers: int = 0  # decode/encode threads; 0: automatic
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped (decompression bombs)
    home: Path | None = None  # data root, for pretrained names as the checkpoint

    def __post_init__(self) -> None:
        if not self.inputs:
            raise UsageError("Pass at least one INPUT image file or folder.")
        if not self.targets:
            raise UsageError("Pass at least one --to SPEC, e.g. --to Blond_Hair.")
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
        if self.max_pixels < 1:
            raise ConfigError("the pixel limit must be positive.")


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


# --------------------------------------------------------------------------- device & model


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda, else mps, else cpu; anything else checked for availability."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device '{name}' is not a device; use auto, cpu, cuda, cuda:N or "
                          "mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device "
                          "cpu (or auto).")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s).")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                     and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name}: MPS is not available here; use --device cpu.")
    return device


def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 convolutions are then several times faster than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    words = set(flags.split())
    return bool(words & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and _cpu_has_native_bf16():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 is not supported on the CPU; use bf16 or fp32.")
    return precision


def _instance_norm(h: torch.Tensor, norm: torch.nn.Module, relu: bool) -> torch.Tensor:
    # Instance norm is a group norm with one channel per group; PyTorch's group-norm kernel
    # keeps channels-last tensors in place and is ~3x faster on CPU.
    out = F.group_norm(h, h.shape[1], norm.weight, norm.bias, norm.eps)
    return out.relu_() if relu else out


class InferenceModel:
    """G and (optionally) D prepared for fast inference on one device and precision."""

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module | None, device: torch.device,
                 precision: str) -> None:
        self.device = device
        self.dtype = _DTYPES[precision]
        self.channels_last = device.type in ("cpu", "cuda")
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.G = G.to(device=device, dtype=self.dtype, memory_format=fmt).eval()
        self.D = D.to(device=device, dtype=self.dtype, memory_format=fmt).eval() if D else None
        self._fast = all(hasattr(self.G, a) for a in ("stem", "down", "blocks", "up", "to_rgb"))

    def to_input(self, images: np.ndarray) -> torch.Tensor:
        """(N, S, S, 3) uint8 → (N, 3, S, S) in [-1, 1] on the device (channels-last)."""
        x = torch.from_numpy(images).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        x = x.to(self.dtype).mul_(1 / 127.5).sub_(1.0)
        if not self.channels_last:
            x = x.contiguous()
        return x

    @staticmethod
    def to_uint8(y: torch.Tensor) -> np.ndarray:
        """(N, 3, S, S) in [-1, 1] → (N, S, S, 3) uint8 on the CPU."""
        y = y.float().add_(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
        return y.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    def generate(self, x: torch.Tensor, c: np.ndarray) -> torch.Tensor:
        labels = torch.from_numpy(c).to(self.device, self.dtype)
        with torch.inference_mode():
            if not self._fast:
                return self.G(x, labels)
            G = self.G
            n, _, h, w = x.shape
            planes = labels[:, :, None, None].expand(n, labels.shape[1], h, w)
            z = torch.cat([x, planes], dim=1)
            if self.channels_last:
                z = z.contiguous(memory_format=torch.channels_last)
            z = _instance_norm(G.stem.conv(z), G.stem.norm, True)
            for layer in G.down:
                z = _instance_norm(layer.conv(z), layer.norm, True)
            for block in G.blocks:
                r = _instance_norm(block.conv1(z), block.norm1, True)
                z = z + _instance_norm(block.conv2(r), block.norm2, False)
            for layer in G.up:
                z = _instance_norm(layer.conv(z), layer.norm, True)
            return torch.tanh(G.to_rgb(z))

    def classify(self, x: torch.Tensor) -> np.ndarray:
        """D's classification logits (N, cls_dim) as float32."""
        assert self.D is not None
        with torch.inference_mode():
            _, cls = self.D(x)
        return cls.float().cpu().numpy()


def estimate_labels(logits: np.ndarray, layout: LabelLayout) -> np.ndarray:
    """The inputs' own labels from D's logits: sigmoid > 0.5 (logit > 0) for multi-label
    spaces, argmax for one-hot spaces. (N, cls_dim) float32 of 0/1."""
    out = np.zeros_like(logits, dtype=np.float32)
    for block in layout.blocks:
        part = logits[:, block.offset:block.stop]
        if block.space.kind == "onehot":
            out[np.arange(len(part)), block.offset + part.argmax(axis=1)] = 1.0
        else:
            on = part > 0
            # An exclusive group (hair colours) keeps only its most confident member.
            for group in block.space.exclusive_groups:
                cols = [block.space.names.index(n) for n in group if n in block.space.names]
                if len(cols) < 2:
                    continue
                best = np.array(cols)[part[:, cols].argmax(axis=1)]
                keep = np.zeros_like(on)
                keep[np.arange(len(part)), best] = True
                on[:, cols] &= keep[:, cols]
            out[:, block.offset:block.stop] = on.astype(np.float32)
    return out


# --------------------------------------------------------------------------- image helpers


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """A square image resized to size x size (area averaging when shrinking)."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return np.ascontiguousarray(rgb)
    interp = cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(rgb), (size, size), interpolation=interp)


def _encode(rgb: np.ndarray, fmt: str, quality: int) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if fmt == "jpg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise StarcliError(f"could not encode a {rgb.shape[1]}x{rgb.shape[0]} image as {fmt}.")
    return buf.tobytes()


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, then rename: a name under <out> is always complete.
    (No fsync per image: a crash loses at most the newest files, and a re-run redoes them.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    from starcli.data.registry import load_registry
    from starcli.paths import resolve_home

    name = str(checkpoint)
    registry = load_registry(resolve_home(home))
    spec = registry.datasets.get(name)
    if spec is None or spec.format != "stargan-v1-checkpoint":
        return checkpoint
    target = resolve_home(home) / "pretrained" / name
    if not target.exists():
        raise CheckpointError(f"--checkpoint {name}: the pretrained weights are not fetched "
                              f"yet; run `starcli fetch {name}` first.")
    return target


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
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)

    from starcli.data.registry import load_registry
    from starcli.paths import resolve_home

    registry_aliases = load_registry(resolve_home(cfg.home)).aliases
    parsed: dict[str, list[Target]] = {}

    def parse(layout: LabelLayout) -> list[Target]:
        if "t" not in parsed:
            parsed["t"] = parse_targets(cfg.targets, layout, aliases=registry_aliases,
                                        mix_label_spaces=cfg.mix_label_spaces)
        return parsed["t"]

    ckpt = _load_model(cfg, lambda lay: any(t.needs_source(lay) for t in parse(lay)), device)
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
    if needed and ckpt.D is None and cfg.labels is None:
        names = [f"{b.space.dataset}:{b.space.names[p - b.offset]}" if layout.use_mask
                 else b.space.names[p - b.offset]
                 for p in needed for b in layout.blocks if b.offset <= p < b.stop]
        raise UsageError(
            f"{ckpt.path} has no discriminator to estimate the inputs' own labels, which "
            f"these targets keep ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}); "
            "pass --labels FILE.csv, or name every label in --to.")

    model = InferenceModel(ckpt.G, ckpt.D, device, precision)
    aligner = FaceAligner(size) if cfg.align else None

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
        outputs = {t.slug: out / t.slug / (stem.as_posix() + ext) for t in targets}
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
        if (todo or grid_todo) and ckpt.D is None and needed and (
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
            translated, written = _run(jobs, cfg, model, layout, targets, needed, size,
                                       aligner, n_workers, progress)
    finally:
        for job in jobs:
            if job.row.get("status") == "pending":
                job.row.update(status="not done", reason="the run stopped before this input")
        out.mkdir(parents=True, exist_ok=True)
        _write_manifest(manifest, rows, targets, cfg.manifest)

    skipped = [{"input": r["input"], "reason": r.get("reason", "")}
               for r in rows if r.get("status") == "skipped"]
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
        targets=[{"spec": t.text, "slug": t.slug, "notes": list(t.notes)} for t in targets],
        inputs=len(items), translated=translated, existing=existing, written=written,
        skipped=skipped, seconds=seconds,
        images_per_s=translated / seconds if seconds > 0 else 0.0, notes=notes)


def _prepare(job: _Job, size: int, aligner: FaceAligner | None, keep_original: bool,
             max_pixels: int) -> _Loaded | str:
    """Decode and crop one input (runs in a worker thread); a string is a skip reason."""
    try:
        rgb = load_image(job.item.path, max_pixels=max_pixels,
                         draft=None if aligner else 2 * size)
        if aligner is None:
            return _Loaded(resize_square(centre_square(rgb), size), None, None)
        found = aligner.align(rgb)
    except ImageSkipped as exc:
        return exc.reason
    except (MemoryError, cv2.error, ValueError) as exc:
        # One odd file must not end a long run; it is listed with the reason instead.
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        return f"could not process it ({type(exc).__name__}{': ' + first[:200] if first else ''})"
    if found is None:
        return "no face found (run without --align to translate the whole image)"
    crop, where = found
    return _Loaded(crop, rgb if keep_original else None, where)


def _save(job: _Job, loaded: _Loaded, results: dict[str, np.ndarray], slugs: Sequence[str],
          cfg: TranslateConfig) -> int:
    """Write one input's outputs (runs in a worker thread); returns files written."""
    n = 0
    for slug in job.todo:
        image = results[slug]
        if cfg.paste_back and loaded.original is not None and loaded.alignment is not None:
            image = paste_back(loaded.original, image, loaded.alignment)
        _write_atomic(job.outputs[slug], _encode(image, cfg.format, cfg.jpeg_quality))
        n += 1
    if job.grid_todo and job.grid is not None:
        strip = np.concatenate([loaded.crop] + [results[s] for s in slugs], axis=1)
        _write_atomic(job.grid, _encode(strip, cfg.format, cfg.jpeg_quality))
        n += 1
    return n


def _run(jobs: list[_Job], cfg: TranslateConfig, model: InferenceModel, layout: LabelLayout,
         targets: Sequence[Target], needed: Sequence[int], size: int,
         aligner: FaceAligner | None, n_workers: int,
         progress: Progress | None) -> tuple[int, int]:
    slugs = [t.slug for t in targets]
    translated = written = 0
    use_d = model.D is not None and bool(needed)
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
                loads.append((job, pool.submit(_prepare, job, size, aligner, cfg.paste_back,
                                               cfg.max_pixels)))

        def drain(block: bool, limit: int = 0) -> None:
            nonlocal written, translated
            while saves and (saves[0][1].done() or (block and len(saves) > limit)):
                job, fut = saves.popleft()
                written += fut.result()  # re-raises disk errors
                job.row["status"] = "translated"
                job.row["written"] = job.todo + ([GRID_DIR] if job.grid_todo else [])
                translated += 1
                task.advance(1)

        batch: list[tuple[_Job, _Loaded]] = []
        refill()
        while loads or batch:
            if loads:
                job, fut = loads.popleft()
                refill()
                loaded = fut.result()
                if isinstance(loaded, str):
                    for key in ("outputs", "grid", "checkpoint", "step"):
                        job.row.pop(key, None)
                    job.row.update(status="skipped", reason=loaded)
                    task.advance(1)
                else:
                    batch.append((job, loaded))
            if batch and (len(batch) == cfg.batch_size or not loads):
                with torch.inference_mode():
                    _translate_batch(batch, model, layout, targets, use_d, cfg, slugs, pool,
                                     saves)
                batch = []
                # Keep at most about two batches of encodes in flight.
                drain(block=True, limit=2 * cfg.batch_size)
            drain(block=False)
        drain(block=True, limit=0)
    return translated, written


def _translate_batch(batch: list[tuple[_Job, _Loaded]], model: InferenceModel,
                     layout: LabelLayout, targets: Sequence[Target], use_d: bool,
                     cfg: TranslateConfig, slugs: Sequence[str], pool: ThreadPoolExecutor,
                     saves: deque) -> None:
    crops = np.stack([loaded.crop for _, loaded in batch])
    x = model.to_input(crops)
    n = len(batch)
    source = np.full((n, layout.cls_dim), np.nan, dtype=np.float32)
    if use_d:
        source = estimate_labels(model.classify(x), layout)
    for i, (job, _) in enumerate(batch):
        if job.csv_labels is not None:
            known = ~np.isnan(job.csv_labels)
            source[i, known] = job.csv_labels[known]
    # All targets of the batch go through G together, in chunks: bigger calls run faster
    # on CPU (about +35% at 32-64 images vs 16), and the cap bounds memory at large sizes.
    size = crops.shape[1]
    labels = np.concatenate([t.encode(layout, source) for t in targets])
    cap = max(cfg.batch_size, int(_G_PIXELS_PER_CALL // (size * size)))
    chunk = math.ceil(len(labels) / math.ceil(len(labels) / cap))  # equal-sized calls
    pieces = []
    for start in range(0, len(labels), chunk):
        rows = np.arange(start, min(start + chunk, len(labels))) % n
        pieces.append(model.to_uint8(model.generate(x[rows], labels[start:start + chunk])))
    every = np.concatenate(pieces)
    outputs = {t.slug: every[k * n:(k + 1) * n] for k, t in enumerate(targets)}
    for i, (job, loaded) in enumerate(batch):
        job.row["source_labels"] = _label_dict(layout, targets, source[i])
        if loaded.alignment is not None:
            job.row["face"] = loaded.alignment.face.to_dict()
        results = {slug: outputs[slug][i] for slug in slugs}
        saves.append((job, pool.submit(_save, job, loaded, results, slugs, cfg)))


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


def _write_manifest(path: Path, rows: list[dict[str, Any]], targets: Sequence[Target],
                    kind: str) -> None:
    from starcli.utils import atomic_write_text

    if kind == "jsonl":
        text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows)
        atomic_write_text(path, text)
        return
    buf = io.StringIO()
    fields = ["input", "relative", "status", "reason", "target", "spec", "output", "grid",
              "checkpoint", "step"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    spec_of = {t.slug: t.text for t in targets}
    for r in rows:
        base = {k: r.get(k, "") for k in ("input", "relative", "status", "reason", "grid",
                                          "checkpoint", "step")}
        outs = r.get("outputs") or {}
        if not outs:
            writer.writerow(base)
        for slug, rel in outs.items():
            writer.writerow({**base, "target": slug, "spec": spec_of.get(slug, ""),
                             "output": rel})
    atomic_write_text(path, buf.getvalue())


