"""Resumable state of a run: RNG states, optimiser state, and the loss meter."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from starcli.runtime import Runtime

__all__ = ["Meter", "NonFinite", "rng_state", "set_rng_state", "rank_rng", "load_optimizer"]

logger = logging.getLogger(__name__)


@dataclass
class Meter:
    """Per-step loss tensors kept on the device until a sync point, then averaged."""

    names: tuple[str, ...]  # dataset name per space index
    loss_keys: tuple[str, ...]  # non-finite values of these stop the run
    per_dataset_keys: tuple[str, ...]  # also accumulated as "<key>/<dataset>"
    world_size: int = 1  # >1: values are averaged over ranks (a collective: all ranks sync)
    pending: list[tuple[int, int, dict[str, torch.Tensor]]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, step: int, space: int, values: dict[str, torch.Tensor]) -> None:
        self.pending.append((step, space, values))

    def sync(self) -> None:
        """Move pending values to the host (one transfer); TrainingError on a non-finite loss."""
        if not self.pending:
            return
        flat = torch.stack([v.float() for _, _, vals in self.pending for v in vals.values()])
        if self.world_size > 1:
            # Every rank logs the global mean, and a NaN on any rank stops all of them.
            torch.distributed.all_reduce(flat)
            flat = flat / self.world_size
        numbers = flat.tolist()
        i = 0
        pending, self.pending = self.pending, []
        for step, space, vals in pending:
            row = dict(zip(vals, numbers[i:i + len(vals)], strict=True))
            i += len(vals)
            bad = [k for k, v in row.items() if k in self.loss_keys and not math.isfinite(v)]
            if bad:  # name the term that went bad rather than the total it poisoned
                key = next((k for k in bad if not k.endswith("/loss")), bad[0])
                raise NonFinite(step, key, row[key])
            for key, value in row.items():
                self._accumulate(key, value)
                if key in self.per_dataset_keys:
                    self._accumulate(f"{key}/{self.names[space]}", value)

    def _accumulate(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}
        self.sums, self.counts = {}, {}
        return out


class NonFinite(Exception):
    def __init__(self, step: int, key: str, value: float) -> None:
        super().__init__(step, key, value)
        self.step, self.key, self.value = step, key, value


def rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "targets": gen.get_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator, device: torch.device,
                  warn: Callable[[str], None] | None = None) -> None:
    """Restore what `rng_state` saved. CUDA states of devices this machine does not have
    (fewer visible GPUs than at save time) are dropped, with one warning."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    gen.set_state(state["targets"])
    if device.type == "cuda" and "cuda" in state:
        saved, present = list(state["cuda"]), torch.cuda.device_count()
        if len(saved) > present:
            (warn or logger.warning)(
                f"the checkpoint holds the RNG states of {len(saved)} GPU(s) and "
                f"{present} are visible; the first {present} are restored, so training "
                "continues, but not bit-identically to the original.")
        torch.cuda.set_rng_state_all(saved[:present])


def rank_rng(state: dict[str, Any], rt: Runtime,
              warn: Callable[[str], None]) -> dict[str, Any]:
    """This rank's saved RNG state (every rank saved its own)."""
    saved = state.get("rng_ranks") or [state["rng"]]
    saved_world = int(state.get("world_size", 1))
    if saved_world != rt.world_size:
        warn(f"the checkpoint was written by {saved_world} process(es) and this run has "
             f"{rt.world_size}; training continues, but not bit-identically to the original.")
    return saved[rt.rank % len(saved)]


def load_optimizer(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    # Keep this machine's foreach/fused choice, whatever the saving machine used.
    impl = [{k: g.get(k) for k in ("foreach", "fused")} for g in opt.param_groups]
    opt.load_state_dict(saved)
    for group, flags in zip(opt.param_groups, impl, strict=True):
        group.update(flags)
