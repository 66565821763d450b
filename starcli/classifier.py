"""The judge of `starcli eval`: a small ResNet-style CNN trained on a prepared dataset's real
train split to recognise its labels (StarGAN's classification metric).

Multi-label spaces (CelebA attributes) get one sigmoid output per selected name; one-hot spaces
(RaFD expressions, folder domains) one softmax over the classes. A trained classifier is cached
under `<home>/classifiers/` keyed by the prepared data's content checksums and label table, so
eval runs after the first reuse it:

    path = train_classifier(open_prepared(home, "demo-celeba"), epochs=None, seed=0)
    clf = load_classifier(path)
    decisions = clf.predict(images)           # (N, width) bool, images in [-1, 1]

The judge of `starcli eval` may know more labels than the model: `judge_view` widens a
multi-label dataset to every column the images visibly hold (on the synthetic sets, every
rendered column, as `datasets.toml` lists them under `rendered`), read from the same prepared
shards, so the judge sees exactly the framing the model was trained on. Eval uses the extra
columns to check that a translation leaves the labels it did not target alone.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from starcli.data.dataset import PreparedDataset, TrainStream, iterate_split, to_tensor
from starcli.data.labels import LabelLayout, LabelSpace
from starcli.errors import StarcliError
from starcli.progress import Progress, log, progress_task
from starcli.runtime import resolve_device
from starcli.utils import atomic_write_bytes, atomic_write_json

FORMAT = "starcli-classifier"
# Bumped when the architecture or training recipe changes, so stale caches are not reused.
VERSION = 1
# Automatic epoch count: about this many optimiser steps (batch 64), within the bounds below.
# Measured on the demo's synthetic faces (real test-split accuracy, mean over labels / worst):
# demo-celeba at 32 px with every rendered column, 200 steps 0.981 / Bangs 0.939, 400 steps
# 0.995 / 0.972, 800 steps 0.998 / 0.990; at 64 px 200 steps already 0.998. demo-rafd at 32 px,
# 9 epochs 0.972 / sad 0.889, 18 epochs 0.995 / 0.963, 30 (what 800 steps give it, capped)
# 0.991 / neutral 0.926. A judge that misreads 6% of real fringes flips its reading on edits
# that leave the fringe alone, so retention needs the longer schedule; on full CelebA the
# two-epoch minimum decides anyway.
_AUTO_STEPS = 800
_MIN_EPOCHS, _MAX_EPOCHS = 2, 30


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of the judge: a stride-2 stem, then one residual stage per halving down
    to a 4x4 map, global average pooling and a linear head."""

    image_size: int
    outputs: int  # label-space width
    kind: str  # "multilabel" (sigmoid per name) or "onehot" (softmax)
    width: int = 32  # channels after the stem; doubled per stage up to 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Block(nn.Module):
    """A pre-activation-free basic residual block (conv-BN-ReLU-conv-BN + shortcut)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                       nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class AttributeClassifier(nn.Module):
    """Images in [-1, 1] (N, 3, S, S) → logits (N, outputs)."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        # Stride-2 conv then max-pool, as ResNets do: the network works at 1/4 resolution from
        # the start, which keeps CPU training of the demo's judge to seconds.
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU(), nn.MaxPool2d(2))
        stages, size, c = [], cfg.image_size // 4, w
        while size > 4:
            c_next = min(c * 2, 256)
            stages.append(_Block(c, c_next, 2))
            c, size = c_next, size // 2
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c, cfg.outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))
        return self.head(h.mean(dim=(2, 3)))


@dataclass
class TrainedClassifier:
    """A loaded judge: decisions and probabilities for images in [-1, 1]."""

    model: AttributeClassifier
    space: LabelSpace
    meta: dict
    path: Path
    device: torch.device

    @property
    def kind(self) -> str:
        return self.space.kind

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        """(N, width) float32 on the CPU: sigmoid per name, or softmax over the classes."""
        out = []
        for start in range(0, images.shape[0], batch_size):
            logits = self.model(images[start:start + batch_size].to(self.device, torch.float32))
            probs = torch.sigmoid(logits) if self.kind == "multilabel" else logits.softmax(1)
            out.append(probs.float().cpu())
        return torch.cat(out) if out else torch.zeros((0, self.space.width))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(N, width) bool: each name present (p > 0.5), or a one-hot of the argmax class."""
        return decide(self.probabilities(images), self.kind)


def decide(probs: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "multilabel":
        return probs > 0.5
    return F.one_hot(probs.argmax(1), probs.shape[1]).bool()


def rendered_columns(prepared: PreparedDataset, home: Path | None = None) -> tuple[str, ...]:
    """The label columns drawn into the pixels of `prepared`, by its registry entry
    (`rendered`; empty for real data, whose every column is a judgement of its own)."""
    from starcli.data.registry import load_registry

    try:
        spec = load_registry(home).datasets.get(prepared.name)
    except StarcliError:  # a broken user registry must not stop eval; prepare reports it
        spec = None
    return tuple(spec.rendered) if spec is not None else ()


def judge_view(prepared: PreparedDataset, extra: Sequence[str] = ()) -> PreparedDataset:
    """`prepared` with its label space widened by the `extra` names its shards hold (CelebA
    format: all attribute columns are stored, only some selected). Same shards, same pixels:
    only the label table differs, so the cached judge gets its own key. Names the shards do
    not hold, or that are selected already, are left out; one-hot data are returned as
    they are."""
    table = prepared.manifest.get("label_table", {})
    columns = list(table.get("columns", {}).get(table.get("source_column"), []))
    space = prepared.space
    if space.kind != "multilabel" or table.get("selected_columns") is None:
        return prepared
    added = [n for n in dict.fromkeys(extra) if n in columns and n not in space.names]
    if not added:
        return prepared
    names = (*space.names, *added)
    chosen = set(names)
    wide = LabelSpace(dataset=space.dataset, format=space.format, kind=space.kind,
                      names=names,
                      exclusive_groups=tuple(tuple(n for n in g if n in chosen)
                                             for g in space.exclusive_groups))
    manifest = copy.deepcopy(prepared.manifest)
    manifest["label_table"]["space"] = wide.to_dict()
    manifest["label_table"]["selected_columns"] = [columns.index(n) for n in names]
    return dataclasses.replace(prepared, manifest=manifest, space=wide)


@dataclass(frozen=True)
class GroupView(PreparedDataset):
    """A one-hot dataset's OTHER label groups (RaFD: gaze, angle, gender, ethnicity) as a
    multi-label space `<group>=<value>`, read from the same shards: what an expression
    change must leave alone. Built by `group_view`."""

    groups: tuple[str, ...] = ()
    # A mirrored face looks the other way (gaze left <-> right, angle 45 <-> 135): the judge
    # of these labels trains without horizontal flips.
    flip_invariant: bool = False

    def _read_labels(self, split: str) -> np.ndarray:
        columns = self.manifest["label_table"]["columns"]
        parts = []
        for path in self.shards(split):
            with h5py.File(path, "r", locking=False) as f:
                block = []
                for group in self.groups:
                    values = np.asarray(f["labels"][group][()]).astype(np.int64)
                    block.append(_one_hot(values, columns[group], group, path))
                parts.append(np.concatenate(block, 1))
        if not parts:
            return np.zeros((0, self.space.width), np.float32)
        return np.concatenate(parts)


def _one_hot(values: np.ndarray, listed: list, group: str, path: Path) -> np.ndarray:
    """Stored values of one group column → one-hot float32 over its listed values. Index
    columns store positions; value columns (RaFD's angle) store the listed numbers."""
    numeric = all(isinstance(v, int) for v in listed)
    position = (np.searchsorted(np.asarray(listed), values) if numeric else values)
    bad = (position < 0) | (position >= len(listed))
    if not bad.any() and numeric:
        bad = np.asarray(listed)[position] != values
    if bad.any():
        raise StarcliError(f"Shard {path}: /labels/{group} holds values outside its table; "
                           f"re-run `starcli prepare` with --force.")
    out = np.zeros((len(values), len(listed)), np.float32)
    out[np.arange(len(values)), position] = 1.0
    return out


# Label groups of a person rather than of a photo (constant over a subject's images). With
# RaFD's subject-wise split the judge meets too few people to read them: on demo-rafd at
# 32 px, 67% (gender) and 46% (ethnicity) on the test subjects, against 97% (gaze) and 100%
# (angle). They are left out of retention rather than letting the judge's noise count.
SUBJECT_GROUPS = ("gender", "ethnicity", "subject")


def group_view(prepared: PreparedDataset) -> GroupView | None:
    """The other label groups of a one-hot dataset (those with two or more values, not
    SUBJECT_GROUPS), or None when it has none (a folder dataset, or a multi-label one)."""
    table = prepared.manifest.get("label_table", {})
    if prepared.space.kind != "onehot":
        return None
    columns = table.get("columns", {})
    groups = tuple(g for g, listed in columns.items()
                   if g != table.get("source_column") and g not in SUBJECT_GROUPS
                   and isinstance(listed, list) and len(listed) >= 2)
    if not groups:
        return None
    names = tuple(f"{g}={v}" for g in groups for v in columns[g])
    space = LabelSpace(dataset=prepared.space.dataset, format=prepared.space.format,
                       kind="multilabel", names=names,
                       exclusive_groups=tuple(tuple(f"{g}={v}" for v in columns[g])
                                              for g in groups))
    manifest = copy.deepcopy(prepared.manifest)
    manifest["label_table"]["space"] = space.to_dict()
    return GroupView(name=prepared.name, root=prepared.root, manifest=manifest,
                     image_size=prepared.image_size, space=space,
                     splits=dict(prepared.splits), groups=groups)


def cache_key(prepared: PreparedDataset) -> str:
    """What a cached classifier must match: the data, the selected label table, the recipe."""
    blob = json.dumps({"content": prepared.content_digest(), "space": prepared.space.to_dict(),
                       "version": VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def home_of(prepared: PreparedDataset) -> Path:
    """<home> from <home>/prepared/<name>/<size>."""
    return prepared.root.parent.parent.parent


def classifier_path(prepared: PreparedDataset, home: Path | None = None) -> Path:
    root = Path(home) if home is not None else home_of(prepared)
    return (root / "classifiers" /
            f"{prepared.name}-{prepared.image_size}-{cache_key(prepared)[:16]}.safetensors")


def auto_epochs(train_images: int, batch_size: int) -> int:
    steps_per_epoch = max(1, math.ceil(train_images / batch_size))
    return int(min(_MAX_EPOCHS, max(_MIN_EPOCHS, math.ceil(_AUTO_STEPS / steps_per_epoch))))


def _read_meta(path: Path) -> dict | None:
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _resolve(prepared: PreparedDataset, epochs: int | None, batch_size: int
             ) -> tuple[int, int, int]:
    n_train = int(prepared.splits.get("train", 0))
    if n_train < 2:
        raise StarcliError(f"{prepared.name} has {n_train} train images; the eval classifier "
                           f"needs a train split. Re-run `starcli prepare {prepared.name}`.")
    batch_size = max(1, min(batch_size, n_train))
    epochs = auto_epochs(n_train, batch_size) if epochs is None else int(epochs)
    if epochs < 1:
        raise StarcliError(f"--epochs must be at least 1 (got {epochs}).")
    return n_train, batch_size, epochs


def find_cached(prepared: PreparedDataset, *, epochs: int | None = None, seed: int = 0,
                batch_size: int = 64, lr: float = 2e-3, home: Path | None = None
                ) -> Path | None:
    """The cached classifier `train_classifier` would reuse for these arguments, or None."""
    _, batch_size, epochs = _resolve(prepared, epochs, batch_size)
    path = classifier_path(prepared, home)
    meta = _read_meta(path)
    wanted = {"key": cache_key(prepared), "epochs": epochs, "seed": seed,
              "batch_size": batch_size, "lr": lr}
    if meta is not None and all(meta.get(k) == v for k, v in wanted.items()):
        return path
    return None


def train_classifier(prepared: PreparedDataset, *, epochs: int | None = None, seed: int = 0,
                     batch_size: int = 64, lr: float = 2e-3, home: Path | None = None,
                     device: str | torch.device | None = None, force: bool = False,
                     progress: Progress | None = None) -> Path:
    """Train (or reuse) the judge for `prepared`; returns its .safetensors path.

    A cached classifier is reused when its data, label table, epochs, seed and batch size all
    match; `force` retrains. `epochs=None` picks about `_AUTO_STEPS` steps, within
    `_MIN_EPOCHS`..`_MAX_EPOCHS` epochs."""
    n_train, batch_size, epochs = _resolve(prepared, epochs, batch_size)
    path = classifier_path(prepared, home)
    wanted = {"key": cache_key(prepared), "epochs": epochs, "seed": seed,
              "batch_size": batch_size, "lr": lr}
    if not force and find_cached(prepared, epochs=epochs, seed=seed, batch_size=batch_size,
                                 lr=lr, home=home) is not None:
        log(progress, f"Classifier for {prepared.name}: reusing {path}")
        return path

    dev = resolve_device(device)
    cfg = ClassifierConfig(image_size=prepared.image_size, outputs=prepared.space.width,
                           kind=prepared.space.kind)
    torch.manual_seed(seed)
    model = AttributeClassifier(cfg).to(dev)
    steps_per_epoch = math.ceil(n_train / batch_size)
    steps = epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.15)
    layout = LabelLayout(spaces=(prepared.space,))
    augment = getattr(prepared, "flip_invariant", True)
    stream = TrainStream([prepared], layout, batch_size=batch_size, augment=augment, seed=seed)
    log(progress, f"Training the {prepared.name} eval classifier ({epochs} epochs, "
                  f"{n_train:,} images; cached for later runs)")
    started = time.perf_counter()
    model.train()
    try:
        # enable_grad: callers (eval) may run under no_grad.
        with torch.enable_grad(), progress_task(progress, f"classifier {prepared.name}",
                                                total=steps, unit="steps") as task:
            for _ in range(steps):
                batch = next(stream)
                logits = model(batch.model_input(dev))
                target = batch.labels.to(dev)
                if cfg.kind == "multilabel":
                    loss = F.binary_cross_entropy_with_logits(logits, target)
                else:
                    loss = F.cross_entropy(logits, target.argmax(1))
                if not torch.isfinite(loss):
                    raise StarcliError(f"The {prepared.name} eval classifier diverged (loss "
                                       f"{loss.item()}); retry with a lower learning rate.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                task.advance(1)
    finally:
        stream.close()
    model.eval()
    seconds = time.perf_counter() - started

    trained = TrainedClassifier(model, prepared.space, {}, path, dev)
    holdout = "valid" if prepared.splits.get("valid") else "test"
    holdout_acc = (accuracy_on(trained, prepared, holdout)["mean"]
                   if prepared.splits.get(holdout) else None)
    meta = {"format": FORMAT, "version": VERSION, **wanted, "dataset": prepared.name,
            "image_size": prepared.image_size, "content": prepared.content_digest(),
            "space": prepared.space.to_dict(), "arch": cfg.to_dict(), "train_images": n_train,
            "steps": steps, "seconds": round(seconds, 2),
            "holdout": {"split": holdout, "accuracy": holdout_acc}}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # Weights first, meta last: a meta file that matches means its weights are complete.
    atomic_write_bytes(path, save_safetensors(state))
    atomic_write_json(path.with_suffix(".json"), meta)
    acc = f"{holdout_acc:.1%}" if holdout_acc is not None else "n/a"
    log(progress, f"Classifier for {prepared.name}: {holdout} accuracy {acc} "
                  f"({seconds:.0f} s) → {path}")
    return path


def load_classifier(path: Path, device: str | torch.device | None = "cpu") -> TrainedClassifier:
    """A classifier written by `train_classifier`."""
    path = Path(path)
    meta = _read_meta(path)
    if meta is None:
        raise StarcliError(f"{path} is not a starcli eval classifier (missing or unreadable "
                           f"{path.with_suffix('.json').name}); run `starcli eval "
                           f"train-classifier` again.")
    dev = resolve_device(device)
    cfg = ClassifierConfig(**meta["arch"])
    model = AttributeClassifier(cfg)
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as exc:  # safetensors and shape errors
        raise StarcliError(f"{path} cannot be loaded ({' '.join(str(exc).split())[:160]}); "
                           f"delete it and run `starcli eval train-classifier` again.") from exc
    model.eval().requires_grad_(False).to(dev)
    return TrainedClassifier(model, LabelSpace.from_dict(meta["space"]), meta, path, dev)


def accuracy_on(clf: TrainedClassifier, prepared: PreparedDataset, split: str = "test",
                limit: int | None = None, batch_size: int = 128) -> dict[str, Any]:
    """Accuracy on real images: per name (multilabel: per-attribute accuracy; onehot:
    per-class recall), the mean over names, and for onehot the overall accuracy."""
    decisions, truth = [], []
    for images, labels, _ in iterate_split(prepared, split, batch_size=batch_size, limit=limit):
        decisions.append(clf.predict(to_tensor(images)).numpy())
        truth.append(labels > 0.5)
    return accuracy_table(np.concatenate(decisions) if decisions else
                          np.zeros((0, clf.space.width), bool),
                          np.concatenate(truth) if truth else
                          np.zeros((0, clf.space.width), bool), clf.space)


def accuracy_table(decisions: np.ndarray, truth: np.ndarray, space: LabelSpace
                   ) -> dict[str, Any]:
    """Per-name and mean accuracy of bool decisions against bool truth (both (N, width))."""
    n = int(truth.shape[0])
    per: dict[str, float | None] = {}
    if space.kind == "multilabel":
        for j, name in enumerate(space.names):
            per[name] = float((decisions[:, j] == truth[:, j]).mean()) if n else None
        overall = float(np.mean([v for v in per.values() if v is not None])) if n else None
    else:
        pred, true = decisions.argmax(1), truth.argmax(1)
        for j, name in enumerate(space.names):
            rows = true == j
            per[name] = float((pred[rows] == j).mean()) if rows.any() else None
        overall = float((pred == true).mean()) if n else None
    known = [v for v in per.values() if v is not None]
    return {"images": n, "per_label": per, "mean": float(np.mean(known)) if known else None,
            "overall": overall}
