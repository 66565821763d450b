"""The training loop every model family runs: plan → build → resume → steps → log, samples,
checkpoints, signals and the non-finite stop.

    from starcli.config import TrainConfig
    from starcli.engine import train

    result = train(TrainConfig.from_preset("demo", datasets=("demo-celeba",)))
    print(result["run_dir"], result["checkpoint"])

The loop knows no loss maths: the family (`starcli.families`) builds the named modules,
declares their optimisers and moving averages, and supplies the step, the sample grid and the
metric names. Single-dataset and joint runs differ only in the data (the label layout and the
StarGAN mask vector). On CPU in fp32 a run resumed from a checkpoint is bit-identical to an
uninterrupted one.

Several processes (`torchrun --nproc_per_node N -m starcli train …`, or `launch_local`):
`train` joins the process group torchrun describes in its environment (NCCL on CUDA, gloo on
CPU, with `dist_timeout`), wraps the trainable modules in DistributedDataParallel, gives each
rank a disjoint share of every epoch and `batch_size / world_size` rows per step, averages the
logged losses over ranks, and lets only rank 0 write files (`RunIO`). Checkpoints hold the
unwrapped weights plus every rank's RNG state, so they resume under DDP and load in one
process.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from starcli.checkpoint import (
    check_weights,
    list_checkpoints,
    load_training_state,
    load_weights,
    read_meta,
    resolve_checkpoint,
)
from starcli.config import RESUME_OVERRIDABLE_OPTIONS, TrainConfig
from starcli.data.dataset import TrainStream
from starcli.engine.distributed import agree, gather_rng, process_group, shared_run_dir
from starcli.engine.plan import RunPlan, check_resumable, describe_run
from starcli.engine.rundir import RunIO, environment, start_branch
from starcli.engine.state import (
    Meter,
    NonFinite,
    load_optimizer,
    rank_rng,
    set_rng_state,
)
from starcli.errors import CheckpointError, TrainingError
from starcli.families.base import Ema, Optimizers, StepContext
from starcli.progress import Progress, log, progress_task
from starcli.runtime import Runtime, adam

__all__ = ["train", "wrap_modules", "Wrapped", "TrainingParts", "build_parts", "attach_step"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Model wrapping (the one place for DDP and compile)


@dataclass
class Wrapped:
    """The modules three ways: `train` as the step trains through them (DDP and/or compiled),
    `nosync` compiled but never DDP-wrapped (forward-only use under DDP), and whether
    compilation took."""

    train: dict[str, nn.Module]
    nosync: dict[str, nn.Module]
    compiled: bool


def wrap_modules(modules: dict[str, nn.Module], rt: Runtime, compile_: bool,
                 probe: Callable[[dict[str, nn.Module]], torch.Tensor],
                 warn: Callable[[str], None]) -> Wrapped:
    """DDP-wrap (several processes) and optionally torch.compile the trainable modules.

    With several processes every module is wrapped in DistributedDataParallel, which broadcasts
    rank 0's weights now and averages gradients in every backward that follows a forward
    through the wrapper. Forwards whose parameters get no gradient (a frozen D in a G step),
    double backward (gradient penalties) and sampling use the unwrapped modules. `probe` runs
    one forward through the compiled modules (compilation is lazy): a missing compiler shows
    up as a warning here rather than as a crash in the middle of a step.
    """
    wrapped = dict(modules)
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [rt.device.index] if rt.device.type == "cuda" else None
        wrapped = {name: DDP(m, device_ids=ids) for name, m in modules.items()}
    nosync = dict(modules) if rt.distributed else dict(wrapped)
    if not compile_:
        return Wrapped(train=wrapped, nosync=nosync, compiled=False)
    try:
        compiled = {name: torch.compile(m) for name, m in wrapped.items()}
        probe(compiled).backward()
    except Exception as exc:  # noqa: BLE001 - any compiler failure means "run eager"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        warn(f"--compile failed ({first}); training continues without torch.compile.")
        return Wrapped(train=wrapped, nosync=nosync, compiled=False)
    finally:
        for m in modules.values():
            for p in m.parameters():
                p.grad = None
    return Wrapped(train=compiled, nosync=dict(modules) if rt.distributed else dict(compiled),
                   compiled=True)


# ---------------------------------------------------------------------------------------------
# Signals


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event, warn: Callable[[str], None]) -> Iterator[None]:
    """SIGINT/SIGTERM set `stop` (the loop saves and returns); a second SIGINT aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        warn(f"{signal.Signals(signum).name} received: finishing this step and saving a "
             "checkpoint (Ctrl-C again to abort without saving).")

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig, *, progress: Progress | None = None,
          on_log: Callable[[dict[str, Any]], None] | None = None,
          stop_event: threading.Event | None = None) -> dict[str, Any]:
    """Train the model family `cfg.family` as described by `cfg`.

    Args:
        cfg: the run's configuration (`TrainConfig.from_preset(...)`, or `resume_config(...)`
            to continue a run; `cfg.resume` set means continue from that checkpoint).
        progress: optional progress sink (a bar over iterations plus one log line per
            `log_every` iterations).
        on_log: called with each metrics record (the same dict written to metrics.jsonl).
        stop_event: set it (from another thread) to stop after the current iteration; a
            checkpoint is saved first. SIGINT/SIGTERM do the same while `train` runs in the
            main thread.

    Returns a summary dict: run_dir, checkpoint (the last one saved), step, iters,
    interrupted, resumed_from, branched_from, seconds, images_per_s, data_wait_fraction,
    device, precision, channels_last, compiled, metrics (the last record), samples (the last
    grid), and resume_command.

    Resuming the newest checkpoint of a run continues that run in place. Resuming an older
    one branches: a new run folder `<run>-from-<step>` next to it (runs/latest follows)
    records its parent in environment.json, and the old run is left as it was.

    Raises ConfigError / UnknownDatasetError before any work for a config that cannot run,
    DatasetNotFoundError when a dataset is not prepared, TrainingError on a non-finite loss
    (the last good checkpoint stays), CheckpointError for an unusable --resume.
    """
    # ---- Everything that can be wrong with the request, before any work.
    plan = describe_run(cfg)
    rt = plan.runtime
    if not rt.is_main:  # one progress display and one set of callbacks: rank 0's
        progress, on_log = None, None

    def warn(message: str) -> None:
        if rt.is_main:
            logger.warning(message)
            log(progress, f"Warning: {message}")
        else:
            logger.debug("rank %d: %s", rt.rank, message)

    with process_group(cfg, rt):
        return _train(cfg, plan, progress, on_log, stop_event, warn)


def _train(cfg: TrainConfig, plan: RunPlan, progress: Progress | None,
           on_log: Callable[[dict[str, Any]], None] | None,
           stop_event: threading.Event | None, warn: Callable[[str], None]) -> dict[str, Any]:
    rt = plan.runtime
    resume_dir: Path | None = None
    meta_in: dict[str, Any] | None = None
    if cfg.resume:
        resume_dir = resolve_checkpoint(None if cfg.resume == "latest" else Path(cfg.resume),
                                        recover=rt.is_main)
        meta_in = read_meta(resume_dir)
        check_resumable(meta_in, resume_dir, plan, warn)
        _check_resume_weights(resume_dir, meta_in, plan)
        run_dir = resume_dir.parent.parent.resolve()
        if _is_older(resume_dir, run_dir):
            # New checkpoints here would mix with the abandoned newer ones (and pruning by
            # step would delete the new line): continue in a branch folder instead.
            run_dir = None
    else:
        run_dir = None  # created once the data stream is open (a branch: likewise)
    balance = getattr(plan.family, "balance", None)
    stream = TrainStream(plan.datasets, plan.layout, batch_size=rt.batch, augment=cfg.augment,
                         workers=cfg.workers, seed=cfg.seed, mix=cfg.mix,
                         rank=rt.rank, world_size=rt.world_size,
                         balance=balance(plan.model) if balance is not None else None)
    try:
        return _run(cfg, plan, stream, run_dir, resume_dir, progress, on_log, stop_event, warn)
    finally:
        stream.close()


def _is_older(ckpt: Path, run_dir: Path) -> bool:
    """Whether the run holds a checkpoint newer than `ckpt` (resuming it then branches)."""
    found = list_checkpoints(run_dir)
    return bool(found) and found[-1].resolve() != ckpt.resolve()


def _check_resume_weights(resume_dir: Path, meta: dict[str, Any], plan: RunPlan) -> None:
    """The checkpoint's weight files against the modules this config builds, from their
    headers and before any module exists (modules on the meta device cost no memory)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        shapes = plan.family.build(plan.model)
    files = {resume_dir / f"{name}.safetensors": m for name, m in shapes.items()}
    for name in plan.family.ema(plan.cfg.options):
        average = resume_dir / f"{name}_ema.safetensors"
        if average.is_file():
            files[average] = shapes[name]
    check_weights(files, resume_dir / "meta.json", meta.get("model"))


def _resumed_changes(cfg: TrainConfig, meta: dict[str, Any]) -> dict[str, list[Any]]:
    """Family options this resume changes (RESUME_OVERRIDABLE_OPTIONS), as [saved, now]."""
    train = meta.get("train") or {}
    saved = train.get("options") or train  # checkpoints before families: a flat table
    changed = {}
    for name in RESUME_OVERRIDABLE_OPTIONS:
        now = getattr(cfg.options, name, None)
        if name in saved and now is not None and saved[name] != now:
            changed[name] = [saved[name], now]
    return changed


def _non_finite(bad: NonFinite, cfg: TrainConfig, rt: Runtime,
                last_ckpt: Path | None) -> TrainingError:
    """What works after a non-finite loss: an exact resume would replay it, so resume with
    lower learning rates (or in fp32)."""
    names = [n for n in RESUME_OVERRIDABLE_OPTIONS if hasattr(cfg.options, n)]
    flags = "/".join("--" + n.replace("_", "-") for n in names)
    fp32 = ", or --precision fp32" if rt.precision != "fp32" else ""
    lower = " ".join(f"--{n.replace('_', '-')} {getattr(cfg.options, n) / 2:g}" for n in names)
    if last_ckpt:
        todo = (f"resume from {last_ckpt} with lower {flags}{fp32} (e.g. starcli train "
                f"--resume {last_ckpt} {lower})")
    else:
        todo = f"no checkpoint was saved before it; start again with lower {flags}{fp32}"
    return TrainingError(f"non-finite loss at step {bad.step}: {bad.key} = {bad.value}; "
                         f"{todo}.")


def _build_optimizers(plan: RunPlan, modules: dict[str, nn.Module]) -> Optimizers:
    cfg, rt = plan.cfg, plan.runtime
    opts, base = {}, {}
    for name, spec in plan.family.optimizers(cfg.options).items():
        params = [p for m in spec.modules for p in modules[m].parameters()]
        opts[name] = adam(params, spec.lr, spec.betas, rt.device, cfg.adam_impl,
                          spec.weight_decay)
        base[name] = spec.lr
    scalers = {}
    if rt.precision == "fp16":
        scalers = {name: torch.amp.GradScaler("cuda") for name in opts}
    return Optimizers(opts, base, scalers)


@dataclass
class TrainingParts:
    """Everything one training step needs, built from a plan: the named modules on the
    device, their optimisers, the step's random generator, and (after `attach_step`) the
    moving averages, the DDP/compile wrappers and the family's step."""

    modules: dict[str, nn.Module]
    optimizers: Optimizers
    gen: torch.Generator
    averages: dict[str, nn.Module] = field(default_factory=dict)
    emas: dict[str, Ema] = field(default_factory=dict)
    wrapped: Wrapped | None = None
    step: Any = None


def build_parts(plan: RunPlan) -> TrainingParts:
    """Seed every RNG from the config, build the family's modules on the device and their
    optimisers (the first half of what `train` does before its first step)."""
    cfg, rt = plan.cfg, plan.runtime
    if rt.device.type == "cuda":
        torch.cuda.set_device(rt.device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    modules = {name: m.to(rt.device) for name, m in plan.family.build(plan.model).items()}
    if rt.distributed:
        # Same initial weights everywhere (DDP broadcasts rank 0's anyway), but each rank
        # draws its own random numbers in the step (penalty mixing, target shuffles).
        torch.manual_seed(cfg.seed + rt.rank)
    if rt.channels_last:
        modules = {name: m.to(memory_format=torch.channels_last) for name, m in modules.items()}
    return TrainingParts(modules=modules, optimizers=_build_optimizers(plan, modules),
                         gen=torch.Generator().manual_seed(cfg.seed + rt.rank))


def attach_step(plan: RunPlan, parts: TrainingParts, resume_dir: Path | None = None,
                warn: Callable[[str], None] = logger.warning) -> Any:
    """The second half, once the weights are final (after a resume): moving averages (from the
    checkpoint's when it has them), DDP/compile wrappers and the family's step, which is
    returned and kept in `parts.step`. `parts.step(i, batch)` then trains on one batch."""
    cfg, rt, family = plan.cfg, plan.runtime, plan.family
    for name, decay in family.ema(cfg.options).items():
        avg = copy.deepcopy(parts.modules[name]).eval().requires_grad_(False)
        saved = None if resume_dir is None else resume_dir / f"{name}_ema.safetensors"
        if saved is not None and saved.is_file():
            load_weights(avg, saved)
        parts.averages[name] = avg
        parts.emas[name] = Ema(avg, parts.modules[name], decay)
    parts.wrapped = wrap_modules(parts.modules, rt, cfg.compile,
                                 lambda m: family.compile_probe(m, plan.model, rt), warn)
    parts.step = family.make_step(StepContext(
        cfg=cfg, rt=rt, layout=plan.layout, modules=parts.modules, train=parts.wrapped.train,
        nosync=parts.wrapped.nosync, optimizers=parts.optimizers, ema=parts.emas,
        gen=parts.gen, warn=warn))
    return parts.step


def _resume(resume_dir: Path, modules: dict[str, nn.Module], optimizers: Optimizers,
            stream: TrainStream, rt: Runtime, warn: Callable[[str], None]
            ) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Load weights, optimisers, scalers and the loader position; returns the start step,
    this rank's saved RNG state (restored last, by the caller) and the whole saved state (the
    step restores its own part once it exists)."""
    for name, module in modules.items():
        load_weights(module, resume_dir / f"{name}.safetensors")
    state = load_training_state(resume_dir)
    try:
        for name, opt in optimizers.opts.items():
            load_optimizer(opt, state[f"opt_{name}"])
        stream.load_state_dict(state["stream"])
        for name, scaler in optimizers.scalers.items():
            if state.get(f"scaler_{name}"):
                scaler.load_state_dict(state[f"scaler_{name}"])
        start = int(state["step"])
        rng = rank_rng(state, rt, warn)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise _unfit(resume_dir, exc) from None
    return start, rng, state


def _unfit(resume_dir: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{resume_dir / 'state.pt'} does not fit this run ({exc}); "
                           "resume from another checkpoint.")


def _run(cfg: TrainConfig, plan: RunPlan, stream: TrainStream, run_dir: Path | None,
         resume_dir: Path | None, progress: Progress | None,
         on_log: Callable[[dict[str, Any]], None] | None,
         stop_event: threading.Event | None, warn: Callable[[str], None]) -> dict[str, Any]:
    rt, datasets, layout, family = plan.runtime, plan.datasets, plan.layout, plan.family
    device = rt.device

    # ---- Models, optimisers, RNGs; resume; moving averages, wrapping and the step.
    parts = build_parts(plan)
    start, rng, saved_state = 0, None, None
    if resume_dir is not None:
        start, rng, saved_state = _resume(resume_dir, parts.modules, parts.optimizers, stream,
                                          rt, warn)
        if start >= cfg.iters:
            warn(f"the checkpoint is at step {start}, which reaches --iters {cfg.iters}; "
                 "nothing to train (pass a larger --iters to continue).")
    branched = run_dir is None and resume_dir is not None
    if branched:
        run_dir = shared_run_dir(cfg, rt, make=lambda: start_branch(resume_dir, start))
        log(progress, f"{resume_dir} is older than its run's newest checkpoint: continuing in "
                      f"a new run, {run_dir} (the old run is left as it is)")
    elif run_dir is None:
        run_dir = shared_run_dir(cfg, rt)
    attach_step(plan, parts, resume_dir, warn)
    modules, optimizers, gen, averages = parts.modules, parts.optimizers, parts.gen, parts.averages
    step_fn, wrapped = parts.step, parts.wrapped
    if saved_state is not None:
        try:
            step_fn.load_state_dict(saved_state)
        except (KeyError, ValueError, TypeError) as exc:
            raise _unfit(resume_dir, exc) from None
    sampler = family.sampler(datasets, layout, device) if rt.is_main else None
    io = RunIO(run_dir, rt.is_main, warn)
    env = environment(cfg, rt) if rt.is_main else {}
    if resume_dir is not None and rt.is_main:
        changed = _resumed_changes(cfg, read_meta(resume_dir))
        if changed:
            env["changed"] = changed
    io.start(cfg, env, start, sampler.columns if sampler else [])
    if rng is not None:
        set_rng_state(rng, gen, device, warn)  # last: nothing above may consume randomness after it

    meta = {
        "family": family.name,
        "model": plan.model.to_dict(), "labels": layout.to_dict(),
        "train": cfg.replace(resume=None, run_dir=str(run_dir)).to_dict(),
        "datasets": [{"name": d.name, "image_size": d.image_size,
                      "content": d.content_digest(),
                      # how prepare framed its files: translate repeats it on raw files
                      "framing": d.manifest.get("framing")} for d in datasets],
        "precision": rt.precision,
    }
    inference = {**modules, **averages}  # what samples use: the averages where kept
    saved_modules = {**modules, **{f"{n}_ema": avg for n, avg in averages.items()}}

    def save(step: int) -> Path | None:
        # Called at the same steps on every rank: gathering the RNG states is a collective.
        rngs = gather_rng(gen, rt)
        state: dict[str, Any] = {"step": step}
        state.update({f"opt_{n}": opt.state_dict() for n, opt in optimizers.opts.items()})
        state.update({"rng": rngs[0], "rng_ranks": rngs, "world_size": rt.world_size,
                      "stream": stream.state_dict()})
        state.update(step_fn.state_dict())
        state["lr"] = {n: cfg.lr_at(step, lr) for n, lr in optimizers.base_lr.items()}
        state.update({f"scaler_{n}": optimizers.scalers[n].state_dict()
                      if n in optimizers.scalers else None for n in optimizers.opts})
        return io.checkpoint(step, saved_modules, meta, state, cfg.keep_last)

    names = tuple(d.name for d in datasets)
    meter = Meter(names=names, loss_keys=family.loss_keys,
                  per_dataset_keys=family.per_dataset_keys, world_size=rt.world_size)
    sync_every = 1 if device.type == "cpu" else 10  # a host sync costs nothing on a CPU
    stop = stop_event or threading.Event()
    last_ckpt = resume_dir if resume_dir is not None else None
    if branched:  # the branch holds a copy of its starting checkpoint
        last_ckpt = run_dir / "checkpoints" / resume_dir.name
    last_saved_step = start if resume_dir is not None else -1
    last_sample: Path | None = None
    last_record: dict[str, Any] = {}
    interrupted = False
    step = start
    t_start = time.perf_counter()
    t_window, wait_window, steps_window = t_start, 0.0, 0
    total_wait = 0.0
    iterator = iter(stream)

    try:
        with _stop_on_signals(stop, warn), \
                progress_task(progress, f"train {cfg.name}", total=cfg.iters,
                              unit="it") as task:
            task.update(completed=start)
            while step < cfg.iters:
                # Under DDP all ranks must stop at the same step (a signal reaches them at
                # different times), so they agree every sync_every steps.
                check = not rt.distributed or step % sync_every == 0
                if check and agree(stop.is_set(), rt):
                    interrupted = True
                    break
                step += 1
                t0 = time.perf_counter()
                # Starting a DataLoader iterator draws a seed from the global RNG; keep that
                # out of the training RNG so a resumed run draws the same numbers.
                with torch.random.fork_rng(devices=[]):
                    batch = next(iterator)
                waited = time.perf_counter() - t0
                wait_window += waited
                total_wait += waited
                for name, lr in optimizers.base_lr.items():
                    optimizers.set_lr(name, cfg.lr_at(step, lr))
                values = step_fn(step, batch)
                meter.add(step, batch.space_index, values)
                steps_window += 1
                task.advance(1)

                last = step == cfg.iters
                do_log = step % cfg.log_every == 0 or last
                do_save = (cfg.save_every and step % cfg.save_every == 0) or last
                do_sample = (cfg.sample_every and step % cfg.sample_every == 0) or last
                if do_log or do_save or step % sync_every == 0:
                    meter.sync()
                if do_log:
                    now = time.perf_counter()
                    elapsed = max(now - t_window, 1e-9)
                    record = {"step": step, **meter.means(),
                              **{f"lr_{n}": cfg.lr_at(step, lr)
                                 for n, lr in optimizers.base_lr.items()},
                              "images_per_s": steps_window * cfg.batch_size / elapsed,
                              "data_wait_fraction": min(1.0, wait_window / elapsed),
                              "seconds": now - t_start}
                    t_window, wait_window, steps_window = now, 0.0, 0
                    last_record = record
                    io.metrics(record)
                    log(progress, _log_line(record, cfg.iters, family.log_keys))
                    if on_log is not None:
                        on_log(record)
                if do_sample and sampler is not None:
                    # Small models' grids are enlarged (nearest neighbour) to tiles of at
                    # least 128 px, so a 32 px run's samples can be looked at.
                    k = max(1, -(-128 // cfg.image_size))
                    grid = sampler.grid(inference, rt)
                    if k > 1:
                        grid = np.repeat(np.repeat(grid, k, axis=0), k, axis=1)
                    last_sample = io.samples(step, grid)
                if do_save:
                    last_ckpt = save(step) or last_ckpt
                    last_saved_step = step
            if step < cfg.iters and agree(stop.is_set(), rt):
                interrupted = True
            if interrupted and last_saved_step != step and step > start:
                meter.sync()
                last_ckpt = save(step) or last_ckpt
                last_saved_step = step
    except NonFinite as bad:
        raise _non_finite(bad, cfg, rt, last_ckpt) from None
    finally:
        io.close()

    seconds = time.perf_counter() - t_start
    trained = step - start
    return {
        "run_dir": str(run_dir), "checkpoint": str(last_ckpt) if last_ckpt else None,
        "family": family.name,
        "step": step, "iters": cfg.iters, "interrupted": interrupted,
        "resumed_from": start if resume_dir is not None else None,
        "branched_from": str(resume_dir) if branched else None,
        "seconds": seconds,
        "images_per_s": trained * cfg.batch_size / seconds if seconds else 0.0,
        "data_wait_fraction": total_wait / seconds if seconds else 0.0,
        "device": str(device), "precision": rt.precision, "channels_last": rt.channels_last,
        "compiled": wrapped.compiled, "metrics": last_record,
        "rank": rt.rank, "world_size": rt.world_size,
        "samples": str(last_sample) if last_sample else None,
        "resume_command": f"starcli train --resume {run_dir}",
    }


def _log_line(record: dict[str, Any], iters: int, keys: tuple[str, ...]) -> str:
    parts = [f"step {record['step']}/{iters}"]
    for key in keys:
        if key in record:
            parts.append(f"{key} {record[key]:.3f}")
    parts.append(f"{record['images_per_s']:.1f} img/s")
    return "  ".join(parts)
