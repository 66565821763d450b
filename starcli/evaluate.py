"""`starcli eval`: how well a checkpoint translates, measured on held-out real images.

For every label space of the checkpoint (one per dataset; a joint model has several) the test
images of that space's prepared dataset are translated to every target domain:

- accuracy (StarGAN's classification metric): a separately trained classifier
  (`starcli.classifier`) judges whether each translated image carries its target. `accuracy` is
  the share over all test images; `success` the share over the images that did not carry the
  target before (Male=1 counted on faces that are not male), which is the harder number. The
  classifier's accuracy on the real test images is the ceiling. One-hot spaces also get the
  paper's classification error of translated images (RaFD: StarGAN 2.12%, real 0.45%).
- attribute retention (with accuracy): the share of faces whose every label that was NOT
  targeted reads the same to the classifier after translation as it read on the input
  (decisions against decisions, not against ground truth). The classifier learns every label
  the images hold (`classifier.judge_view`: on the synthetic sets also the rendered columns the
  model does not condition on, e.g. Eyeglasses, Bangs, Pale_Skin). For a one-hot space the
  labels left alone are its dataset's other label groups of the photo (RaFD: gaze and angle;
  `classifier.group_view`), read by a second classifier; a one-hot space with no
  other groups (a folder dataset) has nothing left to retain: its retention is None.
- identity L1 (always): mean |x - G(x, c_trg)| (pixels in [-1, 1], at the model's size) over
  the whole image and over the outer frame (the outer eighth of each side), where nothing
  should change for hair, age, smile or expression. Male flips may reach the frame (long
  hair), so the summary also gives the means with and without them.
- cycle L1 (reconstruction): mean |x - G(G(x, c_trg), c_org)|, c_org being the image's own
  labels (`cycle_l1`; `reconstruction_l1` is the same number under its old name). A low cycle
  L1 alone proves little: G can hide its input in its output.
- transfer (accuracy, joint models): test faces of each multi-label space (CelebA format)
  translated to every class of each one-hot space (RaFD expressions) and judged by that
  space's classifier: the StarGAN paper's cross-dataset result.
- fid: Fréchet Inception Distance between the real test images of the target domain and the
  translations (skipped, with one line saying how to get weights, when none are available).
- fid_v2, lpips (opt-in; style-based checkpoints, StarGAN v2): the StarGAN v2 paper's protocol
  (`starcli.eval_v2`): per ordered pair of domains, 10 latent- and 10 reference-guided outputs
  per test image; FID against the target's train images (`--fid-backbone`), LPIPS diversity;
  `--seeds N` gives mean ± std. In report.json under "v2_protocol".

Targets, per multi-label space: each exclusive-group member switched on (the rest of its group
off), and every other label both ways (`Male=1`, `Male=0`); per one-hot space: each class.

    report = evaluate(EvalConfig(checkpoint=Path("runs/latest")))
    report["summary"]["success"], report["summary"]["cycle_l1"]
    report["summary"]["figures"]   # the headline numbers: success, identity L1, retention, transfer
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from starcli.checkpoint import LoadedCheckpoint, load_checkpoint
from starcli.classifier import (
    TrainedClassifier,
    accuracy_table,
    decide,
    group_view,
    judge_view,
    load_classifier,
    rendered_columns,
    train_classifier,
)
from starcli.data.dataset import PreparedDataset, iterate_split, open_prepared, to_tensor
from starcli.data.labels import LabelSpace
from starcli.errors import ConfigError, StarcliError
from starcli.families import get_family
from starcli.fid import FeatureStats, fid_between, how_to_provide, load_inception
from starcli.paths import resolve_home
from starcli.progress import Progress, log, progress_task
from starcli.runtime import resolve_device

__all__ = ["METRICS", "DEFAULT_METRICS", "METRIC_REGISTRY", "MetricSpec", "applicable_metrics",
           "PAPER_RAFD_ERROR", "FRAME_REACHING", "EvalConfig", "EvalTarget",
           "evaluate", "reachable_targets", "targets_for", "default_out_dir", "frame_mask",
           "identity_l1"]

# What runs without --metrics: the StarGAN v2 protocol (fid_v2, lpips) is opt-in (it makes
# 2 x 10 outputs per test image and task).
DEFAULT_METRICS = ("accuracy", "reconstruction", "fid")
WORST_CASES = 6  # failed faces per target kept for report.html


@dataclass(frozen=True)
class MetricSpec:
    """One eval metric and what it needs; `evaluate` runs the ones a checkpoint allows and
    names the others with the reason (report["skipped_metrics"])."""

    name: str
    needs: tuple[str, ...]  # "classifier", "labels", "styles", "inception", "alexnet"
    what: str


# The metric registry: each metric declares what it needs. "labels": a label-conditioned
# generator (the cycle goes back through the input's own labels); "styles": a style-based
# family (StarGAN v2: latent codes and references); the weights are checked by the metrics.
METRIC_REGISTRY = {
    "accuracy": MetricSpec("accuracy", ("classifier",),
                           "success, retention, identity L1 and transfer by a classifier; "
                           "for style-based families also latent/reference guidance"),
    "reconstruction": MetricSpec("reconstruction", ("labels",),
                                 "cycle L1 |x - G(G(x, c_trg), c_org)|"),
    "fid": MetricSpec("fid", ("inception",), "FID per target against real test images"),
    "fid_v2": MetricSpec("fid_v2", ("styles", "inception"),
                         "StarGAN v2 protocol FID, latent and reference"),
    "lpips": MetricSpec("lpips", ("styles", "alexnet"),
                        "StarGAN v2 protocol LPIPS diversity, latent and reference"),
}


METRICS = tuple(METRIC_REGISTRY)


def applicable_metrics(metrics: Sequence[str], has_styles: bool
                       ) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the metrics a checkpoint can run, {skipped metric: why}) from the registry."""
    run, skipped = [], {}
    for name in metrics:
        needs = METRIC_REGISTRY[name].needs
        if "styles" in needs and not has_styles:
            skipped[name] = "applies to style-based checkpoints (StarGAN v2)"
        elif "labels" in needs and has_styles:
            skipped[name] = ("a style-based generator's cycle goes through the style encoder, "
                             "not the input's labels; the v2 protocol's fid_v2 and lpips apply")
        else:
            run.append(name)
    return tuple(run), skipped
V2_METRICS = ("fid_v2", "lpips")
# StarGAN (CVPR 2018), RaFD expression classification error: translated images and real ones.
PAPER_RAFD_ERROR = {"stargan": 0.0212, "real": 0.0045}
REPORT_FORMAT = "starcli-eval"
# Labels whose flips may change the outer frame (long hair reaches it): their identity L1 is
# reported apart in the summary.
FRAME_REACHING = ("Male",)
# Row keys averaged into each section's "mean" and into the summary.
_MEAN_KEYS = ("accuracy", "success", "ceiling", "retention", "identity_l1",
              "identity_l1_frame", "cycle_l1", "reconstruction_l1", "fid")


@dataclass(frozen=True)
class EvalConfig:
    """What `starcli eval` measures, on which data, and where the report goes."""

    checkpoint: Path | None = None  # run/checkpoint dir, file in one, or a fetched pretrained
    #                                 name; None: runs/latest
    home: Path | None = None  # data root (None: $STARCLI_HOME or ~/.cache/starcli)
    datasets: tuple[str, ...] = ()  # prepared datasets to evaluate; () = the checkpoint's own
    split: str = "test"
    metrics: tuple[str, ...] = DEFAULT_METRICS
    num_images: int | None = None  # cap on images per dataset (None: the whole split)
    out: Path | None = None  # report folder (None: <run dir>/eval)
    inception_weights: Path | None = None  # FID weights (None: look in the torch hub cache)
    batch_size: int = 32
    seed: int = 0  # classifier training; everything else is deterministic already
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: str = "fp32"  # fp32, or bf16 autocast for G (faster, numbers shift slightly)
    classifier_epochs: int | None = None  # None: the classifier's automatic choice
    grid_images: int = 6  # input faces per sample grid
    styles: int = 10  # style-based families: latent outputs per face (the v2 protocol's 10)
    command: tuple[str, ...] = ()  # the command line that made the report (shown in it)
    # The StarGAN v2 protocol (fid_v2, lpips).
    fid_backbone: str = "torchvision"  # torchvision (the protocol's) or tf-inception
    lpips_weights: Path | None = None  # None: the lpips package's weights/v0.1/alex.pth
    alexnet_weights: Path | None = None  # None: alexnet-owt-*.pth in the torch hub cache
    seeds: int = 1  # repeats of the generation, reported as mean ± std
    outputs_per_input: int = 10

    def __post_init__(self) -> None:
        metrics = tuple(dict.fromkeys(m.strip().lower() for m in self.metrics if m.strip()))
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise ConfigError(f"--metrics {','.join(self.metrics)}: choose from "
                              f"{','.join(METRICS)}.")
        object.__setattr__(self, "metrics", metrics)
        object.__setattr__(self, "datasets", tuple(self.datasets))
        if self.num_images is not None and self.num_images < 1:
            raise ConfigError(f"--num-images must be at least 1 (got {self.num_images}).")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1 (got {self.batch_size}).")
        if self.styles < 1:
            raise ConfigError(f"--styles must be at least 1 (got {self.styles}).")
        if self.fid_backbone not in ("torchvision", "tf-inception"):
            raise ConfigError(f"--fid-backbone must be torchvision or tf-inception "
                              f"(got {self.fid_backbone!r}).")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1 (got {self.seeds}).")
        if self.outputs_per_input < 2 and "lpips" in metrics:
            raise ConfigError(f"--outputs-per-input must be at least 2 for LPIPS (got "
                              f"{self.outputs_per_input}).")
        if self.outputs_per_input < 1:
            raise ConfigError(f"--outputs-per-input must be at least 1 "
                              f"(got {self.outputs_per_input}).")
        if self.grid_images < 0:
            raise ConfigError(f"grid_images must be 0 or more (got {self.grid_images}).")
        if self.classifier_epochs is not None and self.classifier_epochs < 1:
            raise ConfigError(f"--classifier-epochs must be at least 1 "
                              f"(got {self.classifier_epochs}).")
        if not self.split:
            raise ConfigError("--split must name a split (train, valid or test).")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"--precision must be fp32 or bf16 (got {self.precision!r}).")


@dataclass(frozen=True)
class EvalTarget:
    """One target domain of one label space."""

    name: str  # as `translate --to` spells it: "Blond_Hair", "Male=0", "happy"
    column: int  # the judged label's column in the space
    value: int  # 1: the label must be on after translation; 0: off
    off: tuple[int, ...] = ()  # columns switched off with it (its exclusive group)
    onehot: bool = False

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Target labels for images whose own labels are `labels` (N, width)."""
        out = np.zeros_like(labels) if self.onehot else labels.copy()
        out[:, list(self.off)] = 0
        out[:, self.column] = self.value
        return out

    def carried(self, labels: np.ndarray) -> np.ndarray:
        """(N,) bool: which rows (0/1 labels or bool decisions) carry this target."""
        return (np.asarray(labels)[:, self.column] > 0.5) == bool(self.value)


def reachable_targets(ckpt: LoadedCheckpoint, space: LabelSpace,
                      labels: np.ndarray) -> list[EvalTarget]:
    """`targets_for(space)`, less those the model cannot reach. A model over named domains
    (CycleGAN: `ckpt.model.domains`) reaches a target only where it moves some test face
    from one of its domains to the other (Blond_Hair for a Black/Blond pair, not Gray_Hair or
    Male=1, which it returns unchanged); every other family reaches every target."""
    targets = targets_for(space)
    domains = getattr(ckpt.model, "domains", None)
    if domains is None or not len(labels):
        return targets
    own = domains.assign(labels)
    kept = []
    for t in targets:
        moved = domains.assign(t.apply(labels))
        if ((moved >= 0) & (moved != own) & (own >= 0)).any():
            kept.append(t)
    return kept


def targets_for(space: LabelSpace) -> list[EvalTarget]:
    """The paper's protocol: group members on, other labels both ways; every one-hot class."""
    if space.kind == "onehot":
        return [EvalTarget(name, j, 1, onehot=True) for j, name in enumerate(space.names)]
    out = []
    for j, name in enumerate(space.names):
        group = space.group_of(name)
        if group and len(group) > 1:
            off = tuple(space.names.index(g) for g in group if g != name and g in space.names)
            out.append(EvalTarget(name, j, 1, off))
        else:
            out.append(EvalTarget(f"{name}=1", j, 1))
            out.append(EvalTarget(f"{name}=0", j, 0))
    return out


def default_out_dir(checkpoint_dir: Path) -> Path:
    """<run dir>/eval for a checkpoint at <run dir>/checkpoints/step-…; else <ckpt>/eval."""
    checkpoint_dir = Path(checkpoint_dir)
    if checkpoint_dir.parent.name == "checkpoints":
        return checkpoint_dir.parent.parent / "eval"
    return checkpoint_dir / "eval"


def _checkpoint_arg(path: Path | None, home: Path) -> Path | None:
    """A bare pretrained name (`pretrained-celeba-128`) → where `starcli fetch` put it."""
    if path is None or Path(path).exists() or len(Path(path).parts) != 1:
        return path
    fetched = home / "pretrained" / Path(path).name
    return fetched if fetched.exists() else path


# --- Which prepared dataset evaluates which label space ---------------------------------------

@dataclass(frozen=True)
class _Pairing:
    space_index: int
    dataset: PreparedDataset
    columns: tuple[int, ...]  # dataset label column for each of the space's names


def _describe(space: LabelSpace) -> str:
    return f"{space.dataset} [{', '.join(space.names)}]"


def _columns(space: LabelSpace, data: LabelSpace) -> tuple[int, ...] | None:
    if space.kind != data.kind or sorted(space.names) != sorted(data.names):
        return None
    return tuple(data.names.index(n) for n in space.names)


def _pair(ckpt: LoadedCheckpoint, home: Path, names: Sequence[str]) -> list[_Pairing]:
    layout, size = ckpt.layout, ckpt.model.image_size
    spaces = layout.spaces
    listing = "; ".join(_describe(s) for s in spaces)
    if not names:
        pairs = []
        for i, space in enumerate(spaces):
            ds = open_prepared(home, space.dataset, size)
            cols = _columns(space, ds.space)
            if cols is None:
                raise StarcliError(
                    f"{ds.name} is now prepared with labels {_describe(ds.space)[len(ds.name):]}"
                    f" but the checkpoint was trained on {_describe(space)}; re-prepare it "
                    f"with those labels or pass --dataset NAME of a matching dataset.")
            pairs.append(_Pairing(i, ds, cols))
        return pairs
    pairs, used = [], {}
    for name in dict.fromkeys(names):
        ds = open_prepared(home, name, size)
        fits = [i for i, s in enumerate(spaces) if _columns(s, ds.space) is not None]
        if not fits:
            raise StarcliError(f"--dataset {name} has labels {_describe(ds.space)[len(name):]},"
                               f" which match none of the checkpoint's label spaces ({listing}); "
                               f"pass a dataset prepared with the same labels.")
        # Prefer the space of the same name, then any matching space not yet taken.
        order = sorted(fits, key=lambda i: spaces[i].dataset != name)
        free = [i for i in order if i not in used]
        if not free:
            raise StarcliError(f"--dataset {name} and --dataset {used[order[0]]} both match "
                               f"the label space of {spaces[order[0]].dataset}; pass only one.")
        i = free[0]
        used[i] = name
        pairs.append(_Pairing(i, ds, _columns(spaces[i], ds.space)))
    return sorted(pairs, key=lambda p: p.space_index)


# --- Accumulators -------------------------------------------------------------------------------

@dataclass
class _TargetTally:
    target: EvalTarget
    images: int = 0
    hits: int = 0
    eligible: int = 0  # images that did not carry the target before
    eligible_hits: int = 0
    l1_sum: float = 0.0
    l1_count: int = 0
    id_sum: float = 0.0  # identity L1, whole image
    id_frame_sum: float = 0.0  # identity L1, outer frame
    id_count: int = 0
    kept: int = 0  # faces whose every non-targeted label reads the same after translation
    kept_count: int = 0
    kept_by: Any = None  # per retained label: faces whose reading of it did not change
    real: FeatureStats = field(default_factory=FeatureStats)  # real images of the domain
    fake: FeatureStats = field(default_factory=FeatureStats)
    samples: list[np.ndarray] = field(default_factory=list)  # uint8 (k, S, S, 3) parts
    # The first faces of the split that lacked the target and still lack it after
    # translation: (input, translation) uint8 pairs for report.html's worst cases.
    failures: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, S, S) in [-1, 1] → (N, S, S, 3) uint8."""
    u8 = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).contiguous().numpy()


def frame_mask(size: int) -> torch.Tensor:
    """(size, size) bool: the outer eighth of each side (at least one pixel)."""
    b = max(1, size // 8)
    mask = torch.ones(size, size, dtype=torch.bool)
    mask[b:size - b, b:size - b] = False
    return mask


def identity_l1(x: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (float64, on the CPU): mean |x - fake| over the whole image and over the
    outer frame (`frame_mask`), pixels in [-1, 1]."""
    diff = (fake.float() - x.float()).abs().double().cpu()
    frame = frame_mask(diff.shape[-1])
    return diff.flatten(1).mean(1), diff[:, :, frame].flatten(1).mean(1)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / den if den else None


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


# --- Evaluation -------------------------------------------------------------------------------

def _non_targeted(t: EvalTarget, space: LabelSpace, judge: LabelSpace) -> list[int]:
    """Judge columns of the labels `t` leaves alone (its label and group are targeted)."""
    targeted = {space.names[t.column], *(space.names[o] for o in t.off)}
    if t.onehot:  # a class switched on switches every other class of its space off
        targeted |= set(space.names)
    return [k for k, n in enumerate(judge.names) if n not in targeted]


@torch.no_grad()
def _evaluate_space(ckpt: LoadedCheckpoint, pair: _Pairing, cfg: EvalConfig, home: Path,
                    device: torch.device, inception, progress: Progress | None
                    ) -> dict[str, Any]:
    layout = ckpt.layout
    si, ds = pair.space_index, pair.dataset
    space = layout.spaces[si]
    available = int(ds.splits.get(cfg.split, 0))
    if cfg.split not in ds.splits:
        raise StarcliError(f"{ds.name} has no {cfg.split!r} split (it has "
                           f"{', '.join(sorted(ds.splits))}); pass --split.")
    total = available if cfg.num_images is None else min(available, cfg.num_images)
    if total < 1:
        raise StarcliError(f"{ds.name} has no {cfg.split} images to evaluate; re-run "
                           f"`starcli prepare {ds.name}`.")
    targets = reachable_targets(ckpt, space, ds.labels(cfg.split)[:total][:, list(pair.columns)])
    if not targets:
        raise StarcliError(f"the checkpoint can reach none of {ds.name}'s targets; evaluate "
                           "it on the dataset it was trained on.")
    tallies = [_TargetTally(t) for t in targets]
    want_acc = "accuracy" in cfg.metrics
    want_rec = "reconstruction" in cfg.metrics
    want_fid = "fid" in cfg.metrics and inception is not None

    # The judge reads the same shards with every label they hold (see classifier.judge_view);
    # the model's labels are a subset of its columns.
    judge = judge_view(ds, rendered_columns(ds, home)) if want_acc else ds
    columns = [judge.space.names.index(n) for n in space.names]
    clf, clf_info = None, None
    if want_acc:
        path = train_classifier(judge, epochs=cfg.classifier_epochs, seed=cfg.seed, home=home,
                                device=device, progress=progress)
        clf = load_classifier(path, device)
        clf_info = {"path": str(path), "epochs": clf.meta.get("epochs"),
                    "train_images": clf.meta.get("train_images"),
                    "labels": list(judge.space.names),
                    "not_conditioned": [n for n in judge.space.names if n not in space.names]}
    # One-hot spaces (RaFD expressions) leave their other label groups alone (gaze, angle,
    # gender): a second judge, trained on those groups of the same shards, reads them.
    groups = group_view(ds) if want_acc and space.kind == "onehot" else None
    keeper = None
    if groups is not None:
        keeper = load_classifier(train_classifier(
            groups, epochs=cfg.classifier_epochs, seed=cfg.seed, home=home, device=device,
            progress=progress), device)
        clf_info["groups"] = {"path": str(keeper.path), "labels": list(groups.space.names),
                              "holdout": keeper.meta.get("holdout")}
        others = [list(range(groups.space.width)) for _ in targets]
        kept_names = list(groups.space.names)
    else:
        others = [_non_targeted(t, space, judge.space) for t in targets]
        kept_names = None

    real_decisions, real_truth, real_labels = [], [], []
    group_probs: list[np.ndarray] = []
    group_truth: list[np.ndarray] = []
    # Sample-grid faces spread over the split (rows are often ordered by subject).
    grid_rows = np.unique(np.linspace(0, total - 1, min(cfg.grid_images, total)).round()
                          .astype(np.int64))
    inputs: list[np.ndarray] = []
    # One translator serves the targets (its autocast forward) and, for style-based
    # families, the style figures (fast=False: its weights stay fp32).
    model = get_family(ckpt.family).translator(ckpt, device, cfg.precision, fast=False)
    translate = model.forward

    with progress_task(progress, f"eval {ds.name}", total=total * len(targets),
                       unit="images") as task:
        for images, judge_labels, rows in iterate_split(judge, cfg.split,
                                                        batch_size=cfg.batch_size, limit=total):
            show = np.isin(rows, grid_rows)
            labels = judge_labels[:, columns]
            x = to_tensor(images).to(device).contiguous(memory_format=torch.channels_last)
            c_org = layout.encode(si, torch.from_numpy(labels)).to(device)
            real_labels.append(labels)
            if show.any():
                inputs.append(images[show])
            read_before = None
            if clf is not None:
                read_before = clf.predict(x).numpy()
                real_decisions.append(read_before)
                real_truth.append(judge_labels > 0.5)
                if keeper is not None:
                    probs = keeper.probabilities(x)
                    read_before = decide(probs, keeper.kind).numpy()
                    group_probs.append(probs.numpy())
                    group_truth.append(groups.labels(cfg.split)[rows])
            real_feats = inception.features(x) if want_fid else None
            for tally, other in zip(tallies, others, strict=True):
                t = tally.target
                c_trg = layout.encode(si, torch.from_numpy(t.apply(labels))).to(device)
                fake = translate(x, c_trg)
                whole, frame = identity_l1(x, fake)
                tally.id_sum += float(whole.sum())
                tally.id_frame_sum += float(frame.sum())
                tally.id_count += len(whole)
                if clf is not None:
                    read_after = clf.predict(fake).numpy()
                    carries = t.carried(read_after[:, columns])
                    if keeper is not None:
                        read_after = keeper.predict(fake).numpy()
                    before = t.carried(labels)
                    tally.images += len(labels)
                    missed = np.flatnonzero(~carries & ~t.carried(labels))
                    if len(missed) and len(tally.failures) < WORST_CASES:
                        fake8 = _to_uint8(fake[torch.from_numpy(missed[:WORST_CASES]).to(
                            device)])
                        tally.failures += list(zip(images[missed[:WORST_CASES]], fake8,
                                                   strict=True))
                        del tally.failures[WORST_CASES:]
                    tally.hits += int(carries.sum())
                    tally.eligible += int((~before).sum())
                    tally.eligible_hits += int((carries & ~before).sum())
                    if other:
                        same_by = read_after[:, other] == read_before[:, other]
                        same = same_by.all(1)
                        by = same_by.sum(0)
                        tally.kept_by = by if tally.kept_by is None else tally.kept_by + by
                        tally.kept += int(same.sum())
                        tally.kept_count += len(same)
                if want_rec:
                    rec = translate(fake, c_org)
                    l1 = (rec - x).abs().flatten(1).mean(1)
                    tally.l1_sum += float(l1.double().sum())
                    tally.l1_count += len(l1)
                if want_fid:
                    tally.real.add(real_feats[tally.target.carried(labels)])
                    tally.fake.add(inception.features(fake))
                if show.any():
                    tally.samples.append(_to_uint8(fake[torch.from_numpy(show).to(device)]))
                task.advance(len(labels))

    truth_all = np.concatenate(real_labels)
    ceiling = None
    if clf is not None:
        ceiling = accuracy_table(np.concatenate(real_decisions), np.concatenate(real_truth),
                                 judge.space)
    rows = []
    for tally, other in zip(tallies, others, strict=True):
        t = tally.target
        cycle = _ratio(tally.l1_sum, tally.l1_count) if want_rec else None
        row: dict[str, Any] = {
            "target": t.name, "label": space.names[t.column], "value": t.value,
            "images": total,
            "eligible": int((~t.carried(truth_all)).sum()),
            "accuracy": _ratio(tally.hits, tally.images) if clf is not None else None,
            "success": _ratio(tally.eligible_hits, tally.eligible) if clf is not None else None,
            "ceiling": ceiling["per_label"][space.names[t.column]] if ceiling else None,
            "retention": _ratio(tally.kept, tally.kept_count) if clf is not None else None,
            "retained_labels": (kept_names if kept_names is not None else
                                [judge.space.names[k] for k in other]),
            "retention_by_label": None,
            "identity_l1": _ratio(tally.id_sum, tally.id_count),
            "identity_l1_frame": _ratio(tally.id_frame_sum, tally.id_count),
            "cycle_l1": cycle,
            "reconstruction_l1": cycle,  # the old name of cycle_l1, kept for old readers
            "fid": None,
        }
        if tally.kept_by is not None and tally.kept_count:
            row["retention_by_label"] = {
                name: round(int(k) / tally.kept_count, 4)
                for name, k in zip(row["retained_labels"], tally.kept_by, strict=True)}
        if want_fid:
            if tally.real.count >= 2 and tally.fake.count >= 2:
                row["fid"] = fid_between(tally.real, tally.fake)
            else:
                row["fid_note"] = (f"{tally.real.count} real {cfg.split} image(s) carry "
                                   f"{t.name}; FID needs at least 2")
        rows.append(row)

    section: dict[str, Any] = {
        "dataset": ds.name, "space": space.dataset, "format": space.format,
        "kind": space.kind, "split": cfg.split, "images": total,
        "classifier": ({**clf_info, "real_accuracy": ceiling} if clf_info else None),
        "targets": rows,
        "mean": {key: _mean([r[key] for r in rows]) for key in _MEAN_KEYS},
    }
    if keeper is not None:
        clf_info["groups"]["real_accuracy"] = _group_accuracy(
            groups, np.concatenate(group_probs), np.concatenate(group_truth))
        section["retention_note"] = (
            f"retention on {ds.name}: an expression change must leave its other label groups "
            f"({', '.join(groups.groups)}) alone; a second classifier trained on them reads "
            f"input and translation")
    elif clf is not None and not any(others):
        section["retention_note"] = (
            f"{ds.name}'s labels are one exclusive group ({space.kind}) and its shards hold "
            f"no other label the classifier reads, so no label is left untargeted: retention "
            f"is not measured (identity L1 shows what else changed)")
    if space.kind == "onehot" and clf is not None:
        translated = _mean([r["accuracy"] for r in rows])
        section["classification_error"] = {
            "translated": None if translated is None else 1.0 - translated,
            "real": None if ceiling["overall"] is None else 1.0 - ceiling["overall"],
            "paper": dict(PAPER_RAFD_ERROR) if space.format == "rafd" else None,
        }
    if clf is not None and getattr(model, "has_styles", False):
        # Style-based families: latent and reference guidance, diversity (eval_styles).
        from starcli.eval_styles import style_metrics, style_pictures

        test = np.concatenate([b[0] for b in iterate_split(judge, cfg.split, batch_size=256,
                                                           limit=total)])
        log(progress, f"eval {ds.name}: latent ({cfg.styles} styles per face) and reference "
                      "guidance")
        section["styles"] = style_metrics(model, judge.space, clf, columns,
                                          ckpt.model.domains, test, styles=cfg.styles,
                                          seed=cfg.seed, batch_size=cfg.batch_size)
        # The paper's figures: latent rows per domain and the reference matrix.
        pick = np.unique(np.linspace(0, len(test) - 1, min(8, len(test))).round()
                         .astype(np.int64))
        read = ckpt.model.domains.assign(
            clf.predict(to_tensor(test[pick]).to(device)).numpy()[:, columns]
            .astype(np.float32))
        section["_style_grids"] = style_pictures(model, test[pick], ckpt.model.domains,
                                                 read, seed=cfg.seed)
    section["_grid"] = (np.concatenate(inputs) if inputs else None,
                        [(t.target.name, np.concatenate(t.samples)) for t in tallies
                         if t.samples])
    section["_judge"] = clf
    if clf is not None:
        section["_worst"] = [{"target": t.target.name, "checked": t.eligible,
                              "failed": t.eligible - t.eligible_hits,
                              "faces": [{"input": a, "output": b, "had": False}
                                        for a, b in t.failures]} for t in tallies]
    return section


def _group_accuracy(view, probs: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """Per label group of `view` (exclusive groups of a GroupView): the share of real faces
    whose most probable value in the group is their true one."""
    out: dict[str, float | None] = {}
    names = list(view.space.names)
    for group, members in zip(view.groups, view.space.exclusive_groups, strict=True):
        cols = [names.index(m) for m in members]
        known = truth[:, cols].sum(1) > 0
        hit = probs[:, cols].argmax(1) == truth[:, cols].argmax(1)
        out[group] = float(hit[known].mean()) if known.any() else None
    return out


@torch.no_grad()
def _transfer(ckpt: LoadedCheckpoint, source: _Pairing, target_index: int,
              judge: TrainedClassifier, cfg: EvalConfig, device: torch.device,
              progress: Progress | None) -> dict[str, Any]:
    """Test faces of `source` translated to every class of the one-hot space `target_index`
    (mask on that space), judged by that space's classifier: per class, the share of faces
    it reads as that class."""
    layout = ckpt.layout
    space = layout.spaces[target_index]
    ds = source.dataset
    total = int(ds.splits.get(cfg.split, 0))
    if cfg.num_images is not None:
        total = min(total, cfg.num_images)
    translate = get_family(ckpt.family).translator(ckpt, device, cfg.precision,
                                                   fast=False).forward
    # The judge's classes in the space's order.
    order = [judge.space.names.index(n) for n in space.names]
    hits = np.zeros(space.width, np.int64)
    counts = np.zeros(space.width, np.int64)
    with progress_task(progress, f"transfer {ds.name} → {space.dataset}",
                       total=total * space.width, unit="images") as task:
        for images, _, _ in iterate_split(ds, cfg.split, batch_size=cfg.batch_size,
                                          limit=total):
            x = to_tensor(images).to(device).contiguous(memory_format=torch.channels_last)
            for j in range(space.width):
                onehot = torch.zeros(len(x), space.width)
                onehot[:, j] = 1
                fake = translate(x, layout.encode(target_index, onehot).to(device))
                read = judge.predict(fake).numpy()[:, order]
                hits[j] += int(read[:, j].sum())
                counts[j] += len(x)
                task.advance(len(x))
    per = [{"target": name, "images": int(counts[j]),
            "success": _ratio(hits[j], counts[j])} for j, name in enumerate(space.names)]
    return {"source": ds.name, "source_space": layout.spaces[source.space_index].dataset,
            "target_space": space.dataset, "judge": str(judge.path), "images": total,
            "targets": per, "mean": _mean([r["success"] for r in per])}


def _summary(sections: list[dict[str, Any]], transfer: list[dict[str, Any]] | None
             ) -> dict[str, Any]:
    every = [r for s in sections for r in s["targets"]]
    summary: dict[str, Any] = {key: _mean([r[key] for r in every]) for key in _MEAN_KEYS}
    apart = [r for r in every if r["label"] in FRAME_REACHING]
    rest = [r for r in every if r["label"] not in FRAME_REACHING]
    for key in ("identity_l1", "identity_l1_frame"):
        summary[f"{key}_male"] = _mean([r[key] for r in apart])
        summary[f"{key}_no_male"] = _mean([r[key] for r in rest])
    summary["transfer"] = (None if not transfer else
                           _mean([r["success"] for t in transfer for r in t["targets"]]))
    summary["targets"] = len(every)
    summary["images"] = sum(s["images"] for s in sections)
    # The headline figures (issue 14's demo table), under the names a closing table prints.
    styled = [s for s in sections if s.get("styles")]
    if styled:
        st = styled[0]["styles"]
        summary["styles"] = {s["dataset"]: s["styles"] for s in styled}
        summary["latent_success"] = st["latent"]["success"]
        summary["reference_success"] = st["reference"]["success"]
        summary["diversity_l1"] = st["latent"]["diversity_l1"]
    summary["figures"] = {
        "success": summary["success"],
        "identity_l1": summary["identity_l1"],
        "identity_l1_frame_no_male": summary["identity_l1_frame_no_male"],
        "identity_l1_frame_male": summary["identity_l1_frame_male"],
        "retention": summary["retention"],
        "transfer": summary["transfer"],
    }
    if styled:
        summary["figures"].update(latent_success=summary["latent_success"],
                                  reference_success=summary["reference_success"],
                                  diversity_l1=summary["diversity_l1"])
    return summary


def evaluate(cfg: EvalConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the metrics of `cfg` and write report.json, report.md and the PNGs to the output
    folder; returns the report (what report.json holds)."""
    from starcli import report as report_mod

    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    home = resolve_home(cfg.home)
    device = resolve_device(cfg.device)
    ckpt = load_checkpoint(_checkpoint_arg(cfg.checkpoint, home), device=device,
                           with_discriminator=False)
    pairs = _pair(ckpt, home, cfg.datasets)
    out = Path(cfg.out) if cfg.out is not None else default_out_dir(ckpt.path)
    has_styles = bool(getattr(get_family(ckpt.family).translator(ckpt, device, "fp32",
                                                                   fast=False),
                              "has_styles", False))
    runnable, skipped_metrics = applicable_metrics(cfg.metrics, has_styles)
    for name, why in skipped_metrics.items():
        log(progress, f"--metrics {name}: skipped, {why}.")
    if not runnable:
        raise ConfigError(f"none of --metrics {','.join(cfg.metrics)} applies to "
                          f"{ckpt.path} ({'; '.join(skipped_metrics.values())}).")
    cfg = replace(cfg, metrics=runnable)

    inception, fid_info = None, None
    if "fid" in cfg.metrics:
        inception = load_inception(cfg.inception_weights, device)
        if inception is None:
            fid_info = {"skipped": how_to_provide()}
            log(progress, fid_info["skipped"])
        else:
            fid_info = {"weights": str(inception.path), "kind": inception.kind}
            if inception.kind != "pytorch-fid":
                log(progress, f"FID with torchvision ImageNet weights ({inception.path.name}): "
                              f"comparable between starcli runs, not with published FIDs.")

    sections = []
    for pair in pairs:
        sections.append(_evaluate_space(ckpt, pair, cfg, home, device, inception, progress))

    transfer = None
    if "accuracy" in cfg.metrics:
        transfer = []
        by_space = {p.space_index: s for p, s in zip(pairs, sections, strict=True)}
        for pair in pairs:
            if ckpt.layout.spaces[pair.space_index].kind != "multilabel":
                continue
            for j, sec in by_space.items():
                if ckpt.layout.spaces[j].kind == "onehot" and sec.get("_judge") is not None:
                    transfer.append(_transfer(ckpt, pair, j, sec["_judge"], cfg, device,
                                              progress))
    summary = _summary(sections, transfer)
    v2 = None
    if any(m in cfg.metrics for m in V2_METRICS):
        from starcli.eval_v2 import evaluate_protocol

        # Style-based checkpoints have one label space; the protocol runs on its dataset.
        pair = pairs[0]
        v2 = evaluate_protocol(ckpt, pair.dataset, pair.columns, cfg, device, progress)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT, "version": 1,
        "checkpoint": str(ckpt.path), "step": ckpt.step, "split": cfg.split,
        "command": " ".join(shlex.quote(a) for a in cfg.command) or None,
        "metrics": list(cfg.metrics), "skipped_metrics": skipped_metrics or None,
        "seed": cfg.seed, "device": str(device),
        "precision": cfg.precision,
        "num_images": cfg.num_images, "fid": fid_info, "summary": summary,
        "datasets": sections, "transfer": transfer or None, "v2_protocol": v2,
        "out": str(out),
        "notes": {"success": "share of images that did not carry the target before and do "
                             "after translation, as judged by the classifier",
                  "accuracy": "share of all translated images judged to carry the target",
                  "ceiling": "the classifier's accuracy on the real images (per label)",
                  "retention": "share of faces whose every label that was not targeted "
                               "reads the same to the classifier after translation",
                  "identity_l1": "mean |x - G(x, c_trg)|, pixels in [-1, 1], whole image",
                  "identity_l1_frame": "the same over the outer eighth of each side",
                  "cycle_l1": "mean |x - G(G(x, c_trg), c_org)|, pixels in [-1, 1]",
                  "reconstruction_l1": "the old name of cycle_l1 (same number)",
                  "transfer": "faces of a multi-label space translated to each class of a "
                              "one-hot space (CelebA to RaFD expressions), share the "
                              "one-hot space's classifier reads as that class"},
    }
    report["files"] = report_mod.write_report(out, report)
    if v2 is not None:
        from starcli.eval_v2 import markdown_lines
        from starcli.utils import atomic_write_text

        md = Path(report["files"]["markdown"])
        head, _, rest = md.read_text().partition("## Summary")
        atomic_write_text(md, head + "\n".join(markdown_lines(v2)) + "\n## Summary" + rest)
    report["seconds"] = round(time.perf_counter() - started, 2)
    for s in sections:
        s.pop("_grid", None)
        s.pop("_judge", None)
        s.pop("_worst", None)
        s.pop("_style_grids", None)
    report_mod.write_json(out, report)
    return report
