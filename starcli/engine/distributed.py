"""Several training processes: joining torchrun's process group, agreeing on stops, sharing
the run folder and RNG states, and launching N local processes (`starcli train --gpus N`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from starcli.config import TrainConfig
from starcli.engine.rundir import new_run_dir
from starcli.engine.state import rng_state
from starcli.errors import ConfigError, StarcliError, TrainingError
from starcli.runtime import Runtime

__all__ = ["process_group", "agree", "shared_run_dir", "gather_rng", "launch_command",
           "check_launch", "launch_local", "first_line"]


@contextlib.contextmanager
def process_group(cfg: TrainConfig, rt: Runtime) -> Iterator[None]:
    """Join torchrun's process group for the run (unless the caller already did) and leave it
    afterwards, also on errors, so a failing rank closes its connections and the others fail
    fast instead of waiting for `dist_timeout`."""
    if not rt.distributed:
        yield
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        if rt.device.type == "cuda":
            torch.cuda.set_device(rt.device)
        backend = "nccl" if rt.device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=_dt.timedelta(seconds=cfg.dist_timeout))
        except (RuntimeError, ValueError) as exc:
            raise TrainingError(
                f"rank {rt.rank}: could not join the {rt.world_size} training processes "
                f"({first_line(exc)}); start them with torchrun (check --rdzv-endpoint or "
                "MASTER_ADDR/MASTER_PORT) or raise --dist-timeout.") from None
    elif dist.get_world_size() != rt.world_size:
        raise ConfigError(f"the process group has {dist.get_world_size()} ranks but WORLD_SIZE "
                          f"is {rt.world_size}.")
    ok = False
    try:
        yield
        ok = True
    except RuntimeError as exc:
        if isinstance(exc, StarcliError) or not is_comm_failure(exc):
            raise
        raise TrainingError(
            f"rank {rt.rank}: lost contact with the other training processes "
            f"({first_line(exc)[:200]}); another rank probably failed first (see its error), "
            f"or one was slower than --dist-timeout {cfg.dist_timeout}s.") from None
    finally:
        # Free the DDP wrappers (their reducers hold the group) before the group goes, and
        # after a clean run let every rank arrive first, so no rank tears its connections
        # down while another still uses them (seen as "terminate called" aborts at exit).
        gc.collect()
        if owned and dist.is_initialized():
            with contextlib.suppress(Exception):
                if ok:
                    dist.barrier()
                dist.destroy_process_group()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_comm_failure(exc: RuntimeError) -> bool:
    dist_error = getattr(torch.distributed, "DistError", ())
    if dist_error and isinstance(exc, dist_error):
        return True
    text = str(exc)
    return any(w in text for w in ("Gloo", "gloo", "NCCL", "nccl", "Connection", "connection",
                                   "timed out", "Timed out", "peer"))


def agree(flag: bool, rt: Runtime) -> bool:
    """True on every rank when `flag` is true on any (a collective under DDP)."""
    if not rt.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=rt.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def shared_run_dir(cfg: TrainConfig, rt: Runtime,
                   make: Callable[[], Path] | None = None) -> Path:
    """Rank 0 creates the run dir (`make()`, default `new_run_dir(cfg)`) and tells the
    others (or all raise its error)."""
    make = make or (lambda: new_run_dir(cfg))
    if not rt.distributed:
        return make()
    box: list[Any] = [None, None]
    if rt.is_main:
        try:
            box[0] = str(make())
        except ConfigError as exc:
            box[1] = ("config", str(exc))
        except (StarcliError, OSError) as exc:  # the other ranks must not wait for it
            box[1] = ("runtime", str(exc))
    torch.distributed.broadcast_object_list(box, src=0)
    if box[1] is not None:
        kind, message = box[1]
        raise (ConfigError if kind == "config" else StarcliError)(message)
    return Path(box[0])


def gather_rng(gen: torch.Generator, rt: Runtime) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (complete on rank 0; a collective under DDP)."""
    mine = rng_state(gen, rt.device)
    if not rt.distributed:
        return [mine]
    out: list[Any] | None = [None] * rt.world_size if rt.is_main else None
    torch.distributed.gather_object(mine, out, dst=0)
    return out if out is not None else [mine]


# ---------------------------------------------------------------------------------------------
# Launching several processes on this machine (`starcli train --gpus N`)


def launch_command(nproc: int, train_args: list[str]) -> list[str]:
    """The torchrun command line that runs `starcli train <train_args>` in `nproc` processes
    on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(nproc), "-m", "starcli", "train", *train_args]


def check_launch(nproc: int, cfg: TrainConfig) -> None:
    """ConfigError unless `cfg` can run in `nproc` local processes: the global --batch-size
    must split evenly, and unless --device cpu (gloo processes, for testing) this machine
    needs `nproc` CUDA devices."""
    if nproc < 1:
        raise ConfigError(f"--gpus must be at least 1, got {nproc}.")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        raise ConfigError("--gpus cannot be used inside torchrun (this process is already one "
                          "rank); drop --gpus.")
    if cfg.batch_size % nproc:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and must split "
                          f"evenly over --gpus {nproc}; use a multiple of {nproc}.")
    if cfg.device != "cpu":
        if cfg.device.startswith("cuda:") or cfg.device == "mps":
            raise ConfigError(f"--gpus {nproc} uses cuda:0..{nproc - 1}; drop --device "
                              f"{cfg.device} (or pass --device cuda).")
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if found < nproc:
            hint = (f"use --gpus {found}" if found else
                    "add --device cpu to run the processes on the CPU (gloo), e.g. for testing")
            raise ConfigError(f"--gpus {nproc}: this machine has {found} CUDA device(s); "
                              f"{hint}.")


def launch_local(nproc: int, cfg: TrainConfig, train_args: list[str]) -> int:
    """Run `starcli train <train_args>` in `nproc` processes through torch.distributed.run and
    return its exit code (non-zero when any rank failed). `cfg` is the resolved config,
    checked first (`check_launch`) so that nothing starts for a request that cannot work."""
    check_launch(nproc, cfg)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.Popen(launch_command(nproc, train_args), env=env)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # The ranks got the Ctrl-C too and are saving a checkpoint: wait for them (a
            # second Ctrl-C reaches them as well and aborts without saving).
            continue
