"""`starcli demo`: the whole chain on the built-in synthetic faces, offline, on a CPU.

    result = run_demo(DemoConfig(out=Path("demo-out")))
    result["summary"]["success"], result["report"]["markdown"]

The demo runs, in order, what a user would type by hand (each `DemoStep.command` spells it):

1. ``starcli fetch demo``: draw the synthetic demo-celeba and demo-rafd sets.
2. ``starcli prepare demo-celeba`` (hair colours, Male, Young, Smiling) and
   ``starcli prepare demo-rafd`` at the demo preset's image size.
3. ``starcli train --joint --datasets demo-celeba,demo-rafd --preset demo``.
4. Copy a few held-out (test split) raw files of each dataset to ``<out>/faces/`` (the JPEGs
   as drawn, 178x218 and 256x320), then ``starcli translate <out>/faces`` to several targets,
   ``--to Smiling`` among them; translate frames each file with the recipe the model was
   trained with. ``<out>/translated/grid.png`` shows them all side by side.
5. ``starcli eval``: success per target judged by a separately trained classifier, and the
   cycle-reconstruction error, with report.md and sample grids.

Data goes to the data root (`home`), everything else to `out`: ``run/`` (the training run),
``faces/``, ``translated/`` and ``report/``. Re-running reuses the fetched and prepared data
and the eval classifiers, and replaces the outputs of the previous demo in `out`.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from starcli.errors import StarcliError, UsageError
from starcli.paths import resolve_home
from starcli.progress import Progress, log
from starcli.utils import atomic_write_bytes, atomic_write_json

__all__ = ["DemoConfig", "DemoStep", "run_demo", "DEMO_DATASETS", "CELEBA_ATTRS", "CROPS",
           "MIX", "TRANSLATE_TARGETS"]

DEMO_DATASETS = ("demo-celeba", "demo-rafd")
CELEBA_ATTRS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Male", "Young",
                "Smiling")
# Centre crops tighter than the registry defaults (178 and 256): at the demo's small image size
# the face then fills the frame, so wrinkles, mouths and brows keep a few pixels each (tuned
# together with the demo preset; see PRESETS["demo"] in starcli/config.py).
CROPS = {"demo-celeba": 150, "demo-rafd": 200}
# `Smiling` is a selected demo-celeba attribute, so on the joint model it means CelebA Smiling;
# on a model without that column the registry alias would send it to RaFD `happy`.
# Joint sampling weights (demo-celeba, demo-rafd): RaFD's expressions are small details that
# take more batches to learn than CelebA's hair colours (1:2 gave RaFD 0.76-0.87 and CelebA
# 0.94-0.96; 1:3 gave 0.87 and 0.96). Not in the preset, which must also work for
# single-dataset runs.
MIX = (1.0, 3.0)
TRANSLATE_TARGETS = ("Blond_Hair", "Male=flip", "Smiling", "happy", "surprised")
DEMO_FAMILIES = ("stargan-v1", "stargan-v2")
# StarGAN v2's demo: demo-celeba's female/male, latent styles and references.
V2_DOMAINS = "Male"
V2_STYLES = 3  # latent styles per face and domain in the translated folder
V2_REFS = 3  # references per domain
MARKER = ".starcli-demo.json"  # marks <out> as a demo folder whose outputs a rerun may replace
OUTPUTS = ("run", "faces", "translated", "report")


@dataclass(frozen=True)
class DemoConfig:
    """What `run_demo` does. The defaults are the real demo; `quick()` is a smoke-test budget."""

    home: Path | None = None  # data root (None: $STARCLI_HOME or ~/.cache/starcli)
    out: Path = Path("demo-out")  # run, faces, translations and report
    iters: int | None = None  # training iterations (None: the demo preset's)
    count: int | None = None  # demo-celeba faces to draw (None: the registry's 4,000)
    subjects: int | None = None  # demo-rafd subjects (None: the registry's 24)
    eval_images: int | None = None  # test images per dataset for eval (None: all)
    classifier_epochs: int | None = None  # eval classifier epochs (None: automatic)
    faces: int = 6  # held-out faces per dataset exported and translated
    seed: int = 0  # training and eval-classifier seed (the data is always drawn with seed 0)
    workers: int | None = None  # processes for drawing and preparing (None: up to 4)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    family: str = "stargan-v1"  # stargan-v1 (joint CelebA+RaFD) or stargan-v2 (female/male)

    def __post_init__(self) -> None:
        if self.family not in DEMO_FAMILIES:
            raise UsageError(f"--family {self.family!r}: the demo runs "
                             f"{' or '.join(DEMO_FAMILIES)}.")
        if self.home is not None:
            object.__setattr__(self, "home", Path(self.home))
        object.__setattr__(self, "out", Path(self.out))
        for name in ("iters", "count", "subjects", "eval_images", "classifier_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
        if self.subjects is not None and self.subjects < 2:
            raise UsageError(f"subjects must be at least 2 (one to train, one to test), got "
                             f"{self.subjects}.")
        if self.faces < 1:
            raise UsageError(f"faces must be at least 1, got {self.faces}.")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers must be 0 or more, got {self.workers}.")

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A reduced budget (well under a minute on 2 cores) that runs every step: few faces,
        a few dozen iterations. It shows the chain works, not that the model learns."""
        values: dict[str, Any] = dict(iters=30, count=300, subjects=3, eval_images=24,
                                      classifier_epochs=1, faces=2)
        values.update(overrides)
        return cls(**values)

    @property
    def is_full(self) -> bool:
        """True when nothing is reduced: the budget the demo's promises are about."""
        return all(getattr(self, n) is None for n in ("iters", "count", "subjects",
                                                      "eval_images", "classifier_epochs"))


@dataclass(frozen=True)
class DemoStep:
    """One step as announced to `on_step` before it runs."""

    number: int
    total: int
    title: str
    command: str | None  # the equivalent starcli command line; None for the face export


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, started: float) -> None:
        self.seconds[key] = round(self.seconds.get(key, 0.0) + time.perf_counter() - started, 2)


class _Steps:
    """Announces each step to `on_step` and keeps the equivalent commands, in order."""

    def __init__(self, total: int, on_step: Callable[[DemoStep], None] | None) -> None:
        self.total, self.on_step = total, on_step
        self.commands: list[str] = []

    def __call__(self, number: int, title: str, command: str | None) -> float:
        if command is not None:
            self.commands.append(command)
        if self.on_step is not None:
            self.on_step(DemoStep(number, self.total, title, command))
        return time.perf_counter()


_TRAIN_KEYS = ("run_dir", "checkpoint", "step", "iters", "seconds", "images_per_s", "device",
               "precision", "samples")


def _trained(trained: dict[str, Any], again: str) -> Path:
    """The run folder of a finished training; StarcliError when it was interrupted (Ctrl-C or
    SIGTERM saved a checkpoint and returned: measuring a half-trained model would report
    numbers the demo does not stand for)."""
    if trained.get("interrupted"):
        raise StarcliError(f"the demo stopped during training (step {trained['step']:,} of "
                           f"{trained['iters']:,}); run `{again}` again to start over.")
    return Path(trained["run_dir"])


def _q(value: Any) -> str:
    return shlex.quote(str(value))


def _home_flag(cfg: DemoConfig) -> str:
    return f" --home {_q(cfg.home)}" if cfg.home is not None else ""


def _workers(cfg: DemoConfig) -> int:
    if cfg.workers is not None:
        return cfg.workers
    return max(0, min(4, os.cpu_count() or 1))


def _claim_out(out: Path) -> None:
    """Make `out` ours: refuse a folder with someone else's files, clear a previous demo."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder for the demo's outputs.")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UsageError(f"--out {out} already holds files that starcli demo did not write; "
                         "pass a new or empty folder.")
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:  # only the folders a previous demo wrote
        target = out / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
    atomic_write_json(out / MARKER, {"format": "starcli-demo", "version": 1})


def _export_faces(home: Path, size: int, per_dataset: int, faces_dir: Path,
                  datasets: tuple[str, ...] = DEMO_DATASETS) -> list[Path]:
    """Copies of evenly spaced test-split raw files of each demo dataset (the 178x218 and
    256x320 JPEGs exactly as drawn) under faces/<dataset>/: translate then frames them with
    the recipe the model was trained with, as it would a user's own copy of the data."""
    from starcli.data.dataset import open_prepared
    from starcli.data.registry import load_registry
    from starcli.paths import raw_dir

    registry = load_registry(home)
    written: list[Path] = []
    for name in datasets:
        ds = open_prepared(home, name, size)
        names = ds.source_names("test")
        rows = np.unique(np.linspace(0, len(names) - 1, min(per_dataset, len(names)))
                         .round().astype(int))
        images = raw_dir(home, name) / registry.get(name).image_dir
        folder = faces_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for row in rows:
            source = images / names[row]
            path = folder / Path(names[row]).name
            atomic_write_bytes(path, source.read_bytes(), durable=False)
            written.append(path)
    return written


def _contact_sheet(translated: Path, manifest: Path, specs: tuple[str, ...],
                   path: Path) -> Path | None:
    """One picture of the demo's translations: a row per face with the raw file (scaled to
    the row's height), the model's input and each target, under a header naming them;
    tiles are translate's grid strips (nearest-neighbour enlarged). None when there are none."""
    from PIL import Image, ImageDraw, ImageFont

    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r.get("grid") and (translated / r["grid"]).is_file()]
    if not rows:
        return None
    strips = [Image.open(translated / r["grid"]).convert("RGB") for r in rows]
    tile = strips[0].height
    raws = []
    for r in rows:
        with Image.open(r["input"]) as im:
            im = im.convert("RGB")
            raws.append(im.resize((max(1, round(im.width * tile / im.height)), tile),
                                  Image.LANCZOS))
    raw_w = max(im.width for im in raws)
    font = ImageFont.load_default()
    header, gap = 16, 4
    width = raw_w + gap + max(s.width for s in strips)
    sheet = Image.new("RGB", (width, header + len(rows) * (tile + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, title in enumerate(("raw file", "model input", *specs)):
        x = 2 if i == 0 else raw_w + gap + (i - 1) * tile + 2
        draw.text((x, 2), title, fill="black", font=font)
    for k, (raw, strip) in enumerate(zip(raws, strips, strict=True)):
        y = header + k * (tile + gap)
        sheet.paste(raw, (0, y))
        sheet.paste(strip, (raw_w + gap, y))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue(), durable=False)
    return path


def _resolutions(checkpoint: Path, home: Path, specs: tuple[str, ...]) -> list[dict[str, str]]:
    """What each --to means on the trained model: 'Smiling' → 'demo-celeba:Smiling'."""
    from starcli.checkpoint import read_meta, resolve_checkpoint
    from starcli.data.labels import LabelLayout
    from starcli.data.registry import load_registry
    from starcli.targets import parse_target

    layout = LabelLayout.from_dict(read_meta(resolve_checkpoint(checkpoint))["labels"])
    aliases = load_registry(home).aliases
    out = []
    for spec in specs:
        target = parse_target(spec, layout, aliases=aliases)
        labels = ", ".join(f"{layout.spaces[a.space].dataset}:{a.name}"
                           f"{'' if a.value == 'on' else '=' + a.value}"
                           for a in target.assignments)
        out.append({"spec": spec, "slug": target.slug, "labels": labels,
                    "note": " ".join(target.notes)})
    return out


def run_demo(cfg: DemoConfig, progress: Progress | None = None,
             on_step: Callable[[DemoStep], None] | None = None) -> dict[str, Any]:
    """Run fetch → prepare → train → translate → eval on the demo data; see the module
    docstring. Returns a JSON-able summary: paths, per-step seconds, the commands, and the
    eval numbers (`summary`, `datasets`).

    Raises UsageError for an `out` folder holding someone else's files, and whatever the
    steps raise (their messages name the step's command to retry).
    """
    if cfg.family == "stargan-v2":
        return _run_demo_v2(cfg, progress, on_step)
    from starcli.config import TrainConfig

    started = time.perf_counter()
    home = resolve_home(cfg.home)
    out = cfg.out
    train_cfg = TrainConfig.from_preset(
        "demo", datasets=DEMO_DATASETS, joint=True,
        home=str(cfg.home) if cfg.home is not None else None, run_dir=str(out / "run"),
        mix=MIX, iters=cfg.iters, seed=cfg.seed, device=cfg.device)
    size = train_cfg.image_size
    _claim_out(out)
    workers = _workers(cfg)
    timer = _Timer()
    step = _Steps(7, on_step)
    commands = step.commands

    # 1. Data.
    from starcli.data.fetch import FetchConfig, fetch

    extra = (f" --count {cfg.count}" if cfg.count else "") + \
        (f" --subjects {cfg.subjects}" if cfg.subjects else "")
    t = step(1, "Draw the synthetic demo faces",
             f"starcli fetch demo{extra} --workers {workers}{_home_flag(cfg)}")
    fetched = fetch(FetchConfig(home=home, dataset="demo", count=cfg.count,
                                subjects=cfg.subjects, workers=workers), progress=progress)
    timer.add("fetch", t)

    from starcli.data.prepare import PrepareConfig, prepare

    attrs = ",".join(CELEBA_ATTRS)
    t = step(2, "Prepare demo-celeba (hair colours, Male, Young, Smiling)",
             f"starcli prepare demo-celeba --size {size} --crop {CROPS['demo-celeba']} "
             f"--attrs {attrs} --workers {workers}{_home_flag(cfg)}")
    prepare(PrepareConfig(home=home, dataset="demo-celeba", size=size,
                          crop=CROPS["demo-celeba"], attrs=CELEBA_ATTRS, workers=workers),
            progress=progress)
    timer.add("prepare", t)
    t = step(3, "Prepare demo-rafd (8 expressions)",
             f"starcli prepare demo-rafd --size {size} --crop {CROPS['demo-rafd']} "
             f"--workers {workers}{_home_flag(cfg)}")
    prepare(PrepareConfig(home=home, dataset="demo-rafd", size=size, crop=CROPS["demo-rafd"],
                          workers=workers), progress=progress)
    timer.add("prepare", t)

    # 2. Training.
    from starcli.engine import train

    iters_flag = f" --iters {cfg.iters}" if cfg.iters else ""
    seed_flag = f" --seed {cfg.seed}" if cfg.seed else ""
    device_flag = f" --device {cfg.device}" if cfg.device != "auto" else ""
    t = step(4, f"Train one model on both datasets ({train_cfg.iters:,} iterations)",
             f"starcli train --joint --datasets {','.join(DEMO_DATASETS)} --preset demo "
             f"--mix {','.join(f'{m:g}' for m in MIX)}{iters_flag}{seed_flag}{device_flag} "
             f"--run-dir {_q(out / 'run')}"
             f"{_home_flag(cfg)}")
    trained = train(train_cfg, progress=progress)
    timer.add("train", t)
    run_dir = _trained(trained, "starcli demo")

    # 3. Translate held-out faces.
    t = step(5, f"Copy {cfg.faces} held-out raw test files per dataset to {out / 'faces'}",
             None)
    faces = _export_faces(home, size, cfg.faces, out / "faces")
    timer.add("faces", t)

    from starcli.translate import TranslateConfig, translate

    resolved = _resolutions(run_dir, home, TRANSLATE_TARGETS)
    to_flags = " ".join(f"--to {_q(s)}" for s in TRANSLATE_TARGETS)
    t = step(6, "Translate the held-out faces",
             f"starcli translate {_q(out / 'faces')} {to_flags} --checkpoint {_q(run_dir)} "
             f"--out {_q(out / 'translated')} --grid{device_flag}{_home_flag(cfg)}")
    for r in resolved:
        log(progress, f"  --to {r['spec']} → {r['labels']}" +
            (f" ({r['note']})" if r["note"] else ""))
    translated = translate(TranslateConfig(
        inputs=(out / "faces",), targets=TRANSLATE_TARGETS, checkpoint=run_dir,
        out=out / "translated", grid=True, device=cfg.device, home=cfg.home),
        progress=progress)
    grid = _contact_sheet(translated.out, translated.manifest, TRANSLATE_TARGETS,
                          out / "translated" / "grid.png")
    timer.add("translate", t)

    # 4. Measure.
    from starcli.evaluate import EvalConfig, evaluate

    eval_flags = (f" --num-images {cfg.eval_images}" if cfg.eval_images else "") + \
        (f" --classifier-epochs {cfg.classifier_epochs}" if cfg.classifier_epochs else "") + \
        seed_flag + device_flag
    t = step(7, "Measure: translate every test face to every target, judge with a classifier",
             f"starcli eval --checkpoint {_q(run_dir)} --metrics accuracy,reconstruction"
             f"{eval_flags} --out {_q(out / 'report')}{_home_flag(cfg)}")
    report = evaluate(EvalConfig(
        checkpoint=run_dir, home=cfg.home, metrics=("accuracy", "reconstruction"),
        num_images=cfg.eval_images, out=out / "report", seed=cfg.seed, device=cfg.device,
        classifier_epochs=cfg.classifier_epochs), progress=progress)
    timer.add("eval", t)

    files = report.get("files", {})
    result: dict[str, Any] = {
        "home": str(home), "out": str(out), "full_budget": cfg.is_full,
        "seconds": round(time.perf_counter() - started, 2), "timings": timer.seconds,
        "commands": commands,
        "data": {"fetched": fetched, "image_size": size, "crops": dict(CROPS)},
        "train": {k: trained.get(k) for k in _TRAIN_KEYS},
        "faces": {"dir": str(out / "faces"), "files": [str(p) for p in faces]},
        "translate": {"out": str(translated.out), "grids": str(translated.out / "_grid"),
                      "grid": str(grid) if grid else None,
                      "grid_files": sorted(str(p) for p in
                                           (translated.out / "_grid").rglob("*.png")),
                      "manifest": str(translated.manifest),
                      "translated": translated.translated, "targets": resolved},
        "report": {"dir": str(out / "report"), "markdown": files.get("markdown"),
                   "json": files.get("json"), "samples": files.get("samples", {}),
                   "chart": files.get("chart")},
        "summary": report["summary"],
        "datasets": [{"dataset": s["dataset"], "mean": s["mean"],
                      "targets": [{k: r.get(k) for k in ("target", "success", "accuracy",
                                                         "ceiling", "reconstruction_l1",
                                                         "eligible")}
                                  for r in s["targets"]]}
                     for s in report["datasets"]],
    }
    atomic_write_json(out / "demo.json", result)
    return result


def _export_references(home: Path, size: int, per_domain: int, refs_dir: Path) -> list[Path]:
    """Test-split raw demo-celeba files as references under refs/<female|male>/ (their own
    Male label picks the folder, which translate reads as the reference's domain); taken
    from the end of the split so they are other faces than the translated ones."""
    from starcli.data.dataset import open_prepared
    from starcli.data.registry import load_registry
    from starcli.paths import raw_dir

    ds = open_prepared(home, "demo-celeba", size)
    names = ds.source_names("test")
    male = ds.labels("test")[:, list(ds.space.names).index("Male")] > 0.5
    images = raw_dir(home, "demo-celeba") / load_registry(home).get("demo-celeba").image_dir
    written = []
    for domain, rows in (("female", np.flatnonzero(~male)), ("male", np.flatnonzero(male))):
        folder = refs_dir / domain
        folder.mkdir(parents=True, exist_ok=True)
        for row in rows[::-1][:per_domain]:
            path = folder / Path(names[row]).name
            atomic_write_bytes(path, (images / names[row]).read_bytes(), durable=False)
            written.append(path)
    return written


def _run_demo_v2(cfg: DemoConfig, progress: Progress | None,
                 on_step: Callable[[DemoStep], None] | None) -> dict[str, Any]:
    """`starcli demo --family stargan-v2`: demo-celeba's female/male with StarGAN v2, latent
    styles and references, measured by eval's style figures (`starcli.eval_styles`)."""
    from starcli.config import TrainConfig
    from starcli.data.fetch import FetchConfig, fetch
    from starcli.data.prepare import PrepareConfig, prepare
    from starcli.engine import train
    from starcli.evaluate import EvalConfig, evaluate
    from starcli.translate import TranslateConfig, translate

    started = time.perf_counter()
    home = resolve_home(cfg.home)
    out = cfg.out
    train_cfg = TrainConfig.from_preset(
        "demo", family="stargan-v2", datasets=("demo-celeba",),
        home=str(cfg.home) if cfg.home is not None else None, run_dir=str(out / "run"),
        iters=cfg.iters, seed=cfg.seed, device=cfg.device, domains=V2_DOMAINS)
    size = train_cfg.image_size
    _claim_out(out)
    workers = _workers(cfg)
    timer = _Timer()
    step = _Steps(6, on_step)
    commands = step.commands

    hf = _home_flag(cfg)
    dev = f" --device {cfg.device}" if cfg.device != "auto" else ""
    seed_flag = f" --seed {cfg.seed}" if cfg.seed else ""
    t = step(1, "Draw the synthetic demo-celeba faces",
             f"starcli fetch demo-celeba{f' --count {cfg.count}' if cfg.count else ''} "
             f"--workers {workers}{hf}")
    fetched = fetch(FetchConfig(home=home, dataset="demo-celeba", count=cfg.count,
                                workers=workers), progress=progress)
    timer.add("fetch", t)
    attrs = ",".join(CELEBA_ATTRS)
    t = step(2, "Prepare demo-celeba",
             f"starcli prepare demo-celeba --size {size} --crop {CROPS['demo-celeba']} "
             f"--attrs {attrs} --workers {workers}{hf}")
    prepare(PrepareConfig(home=home, dataset="demo-celeba", size=size,
                          crop=CROPS["demo-celeba"], attrs=CELEBA_ATTRS, workers=workers),
            progress=progress)
    timer.add("prepare", t)
    iters_flag = f" --iters {cfg.iters}" if cfg.iters else ""
    t = step(3, f"Train StarGAN v2 on female/male ({train_cfg.iters:,} iterations)",
             f"starcli train --family stargan-v2 --dataset demo-celeba --domains {V2_DOMAINS} "
             f"--preset demo{iters_flag}{seed_flag}{dev} --run-dir {_q(out / 'run')}{hf}")
    trained = train(train_cfg, progress=progress)
    timer.add("train", t)
    run_dir = _trained(trained, "starcli demo --family stargan-v2")

    t = step(4, f"Copy {cfg.faces} held-out raw test files and {V2_REFS} references per "
                "domain", None)
    faces = _export_faces(home, size, cfg.faces, out / "faces", ("demo-celeba",))
    refs = _export_references(home, size, V2_REFS, out / "refs")
    timer.add("faces", t)
    t = step(5, "Translate: latent styles per domain, then the styles of the references",
             f"starcli translate {_q(out / 'faces')} --to female --to male --styles "
             f"{V2_STYLES} --seed 0 --grid -c {_q(run_dir)} --out {_q(out / 'translated')}"
             f"{dev}{hf}")
    latent = translate(TranslateConfig(
        inputs=(out / "faces",), targets=("female", "male"), styles=V2_STYLES, seed=0,
        checkpoint=run_dir, out=out / "translated", grid=True, device=cfg.device,
        home=cfg.home), progress=progress)
    commands.append(f"starcli translate {_q(out / 'faces')} --ref {_q(out / 'refs')} --grid "
                    f"-c {_q(run_dir)} --out {_q(out / 'referenced')}{dev}{hf}")
    referenced = translate(TranslateConfig(
        inputs=(out / "faces",), targets=(), refs=(out / "refs",), checkpoint=run_dir,
        out=out / "referenced", grid=True, device=cfg.device, home=cfg.home),
        progress=progress)
    keys = [t["slug"] for t in latent.targets]
    grid = _contact_sheet(latent.out, latent.manifest, tuple(keys),
                          out / "translated" / "grid.png")
    timer.add("translate", t)

    eval_flags = (f" --num-images {cfg.eval_images}" if cfg.eval_images else "") + \
        (f" --classifier-epochs {cfg.classifier_epochs}" if cfg.classifier_epochs else "") + \
        seed_flag + dev
    t = step(6, "Measure: latent and reference guidance on every test face, judged by a "
                "classifier", f"starcli eval --checkpoint {_q(run_dir)} --metrics accuracy"
                f"{eval_flags} --out {_q(out / 'report')}{hf}")
    report = evaluate(EvalConfig(
        checkpoint=run_dir, home=cfg.home, metrics=("accuracy",), num_images=cfg.eval_images,
        out=out / "report", seed=cfg.seed, device=cfg.device,
        classifier_epochs=cfg.classifier_epochs), progress=progress)
    timer.add("eval", t)
    files = report.get("files", {})
    matrix = referenced.out / "_grid" / "reference-matrix.png"
    result: dict[str, Any] = {
        "family": "stargan-v2", "home": str(home), "out": str(out),
        "full_budget": cfg.is_full, "seconds": round(time.perf_counter() - started, 2),
        "timings": timer.seconds, "commands": commands,
        "data": {"fetched": fetched, "image_size": size, "crops": dict(CROPS)},
        "train": {k: trained.get(k) for k in _TRAIN_KEYS},
        "faces": {"dir": str(out / "faces"), "files": [str(p) for p in faces],
                  "refs": [str(p) for p in refs]},
        "translate": {"out": str(latent.out), "grids": str(latent.out / "_grid"),
                      "grid": str(grid) if grid else None, "manifest": str(latent.manifest),
                      "translated": latent.translated, "targets": latent.targets,
                      "referenced": str(referenced.out),
                      "reference_matrix": str(matrix) if matrix.is_file() else None},
        "report": {"dir": str(out / "report"), "markdown": files.get("markdown"),
                   "json": files.get("json"), "samples": files.get("samples", {}),
                   "chart": files.get("chart")},
        "summary": report["summary"],
        "styles": report["summary"].get("styles", {}).get("demo-celeba"),
        "datasets": [{"dataset": s["dataset"], "mean": s["mean"],
                      "targets": [{k: r.get(k) for k in ("target", "success", "accuracy",
                                                         "ceiling", "eligible")}
                                  for r in s["targets"]]}
                     for s in report["datasets"]],
    }
    atomic_write_json(out / "demo.json", result)
    return result


def quick_config(cfg: DemoConfig) -> DemoConfig:
    """`cfg` with the `DemoConfig.quick()` budget for every field it leaves unset."""
    quick = DemoConfig.quick()
    changes = {n: getattr(quick, n) for n in ("iters", "count", "subjects", "eval_images",
                                              "classifier_epochs")
               if getattr(cfg, n) is None}
    changes["faces"] = min(cfg.faces, quick.faces)
    return replace(cfg, **changes)


def load_result(out: Path) -> dict[str, Any] | None:
    """The summary a finished demo wrote to <out>/demo.json, or None."""
    try:
        return json.loads((Path(out) / "demo.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
