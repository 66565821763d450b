"""What a training config resolves to on this machine, before any work: the runtime, the
prepared datasets and their joint label layout, the family and its model config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starcli.checkpoint import read_meta, resolve_checkpoint
from starcli.config import (
    RESUME_OVERRIDABLE,
    RESUME_OVERRIDABLE_OPTIONS,
    TrainConfig,
    load_run_config,
)
from starcli.data.dataset import PreparedDataset, joint_layout, open_prepared, prepared_sizes
from starcli.data.labels import LabelLayout
from starcli.data.registry import load_registry
from starcli.errors import ConfigError
from starcli.families import get_family
from starcli.families.base import Family
from starcli.paths import resolve_home
from starcli.runtime import Runtime, make_runtime

__all__ = ["RunPlan", "describe_run", "resume_config", "check_resumable"]


@dataclass(frozen=True)
class RunPlan:
    """What a config resolves to on this machine, before any training."""

    cfg: TrainConfig
    datasets: tuple[PreparedDataset, ...]
    layout: LabelLayout
    model: Any  # the family's model config
    runtime: Runtime
    family: Family

    def summary(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "family": self.family.name,
            "device": str(self.runtime.device),
            "precision": self.runtime.precision,
            "channels_last": self.runtime.channels_last,
            "world_size": self.runtime.world_size,
            "model": self.model.to_dict(),
            "parameters": self.family.parameter_counts(self.model),
            "labels": {"c_dim": self.layout.c_dim, "cls_dim": self.layout.cls_dim,
                       "spaces": [{"dataset": s.dataset, "kind": s.kind, "names": list(s.names)}
                                  for s in self.layout.spaces]},
            "datasets": [{"name": d.name, "image_size": d.image_size, "root": str(d.root),
                          "splits": d.splits} for d in self.datasets],
        }


def _open_datasets(cfg: TrainConfig) -> tuple[tuple[PreparedDataset, ...], LabelLayout]:
    home = resolve_home(cfg.home)
    registry = load_registry(home)
    opened = []
    for name in cfg.datasets:
        sizes = prepared_sizes(home, name)
        if not sizes:
            registry.get(name)  # UnknownDatasetError (exit 2) for a name nobody knows
        elif cfg.image_size not in sizes:
            listed = ", ".join(f"{s}px" for s in sizes)
            raise ConfigError(
                f"--image-size {cfg.image_size} does not match the prepared data: {name} is "
                f"prepared at {listed}. Pass --image-size {sizes[-1]} or run "
                f"`starcli prepare {name} --size {cfg.image_size}`."
            )
        # Not prepared at all: DatasetNotFoundError (exit 1) naming the prepare command.
        opened.append(open_prepared(home, name, cfg.image_size))
    layout = joint_layout(opened, registry.aliases)
    return tuple(opened), layout


def describe_run(cfg: TrainConfig) -> RunPlan:
    """Resolve a config against this machine and the prepared data without training.

    Raises the same errors `train` would raise before doing any work (unknown dataset,
    image size not prepared, D too deep, unavailable device).
    """
    family = get_family(cfg.family)
    runtime = make_runtime(cfg.device, cfg.precision, cfg.channels_last, cfg.batch_size,
                           cpu_channels_last=getattr(family, "cpu_channels_last", False))
    datasets, layout = _open_datasets(cfg)
    return RunPlan(cfg=cfg, datasets=datasets, layout=layout,
                   model=family.model_config(cfg.options, cfg.image_size, layout),
                   runtime=runtime, family=family)


def resume_config(resume: str | Path, **overrides: Any) -> TrainConfig:
    """The config of the run behind `resume` (a run dir, a checkpoint dir or "latest"), with
    `overrides` applied; only fields in RESUME_OVERRIDABLE and the family options in
    RESUME_OVERRIDABLE_OPTIONS may change (None values ignored)."""
    ckpt = resolve_checkpoint(None if str(resume) == "latest" else Path(resume), recover=True)
    run_dir = ckpt.parent.parent
    try:
        base = load_run_config(run_dir)
    except ConfigError:
        meta = read_meta(ckpt)
        if "train" not in meta:
            raise
        base = TrainConfig.from_dict(meta["train"])
    options = {f.name for f in dataclasses.fields(base.options)}
    allowed = RESUME_OVERRIDABLE + tuple(n for n in RESUME_OVERRIDABLE_OPTIONS if n in options)
    changes = {k: v for k, v in overrides.items() if v is not None}
    for key, value in changes.items():
        if key not in allowed and getattr(base, key) != value:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} cannot change when resuming (the run used "
                              f"{getattr(base, key)!r}); start a new run to change it.")
    changes = {k: v for k, v in changes.items() if k in allowed}
    changes["resume"] = str(ckpt)
    return base.replace(**changes)


def check_resumable(meta: dict[str, Any], ckpt: Path, plan: RunPlan,
                    warn: Callable[[str], None]) -> None:
    """ConfigError unless the checkpoint was written by this family, model and label table;
    a warning when the data was re-prepared since (the run then is not bit-identical)."""
    family = meta.get("family") or "stargan-v1"
    if family != plan.family.name:
        raise ConfigError(f"--resume {ckpt}: the checkpoint is a {family} model, not "
                          f"{plan.family.name}; resume with the run's own settings "
                          "(starcli train --resume RUN_DIR).")
    try:  # through from_dict, so checkpoints written before a field existed get its default
        theirs = plan.family.model_from_dict(meta.get("model") or {})
    except (ConfigError, TypeError):
        theirs = None
    if theirs != plan.model:
        raise ConfigError(f"--resume {ckpt}: the checkpoint's model {meta.get('model')} differs "
                          f"from this config's {plan.model.to_dict()}; resume with the run's own "
                          "settings (starcli train --resume RUN_DIR).")
    if meta.get("labels", {}).get("blocks") != plan.layout.to_dict()["blocks"]:
        raise ConfigError(f"--resume {ckpt}: the prepared data's label table no longer matches "
                          "the checkpoint's (re-prepared with other --attrs?); prepare the same "
                          "labels again or start a new run.")
    saved = {d.get("name"): d.get("content") for d in meta.get("datasets", [])}
    for ds in plan.datasets:
        if saved.get(ds.name) not in (None, ds.content_digest()):
            warn(f"{ds.name} was re-prepared since this checkpoint; training continues on the "
                 "new shards, so the run will not be bit-identical to an uninterrupted one.")
