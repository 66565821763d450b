"""The run folder: config, environment, metrics, TensorBoard, samples and checkpoints.

Only rank 0 writes (`RunIO(enabled=False)` on the other ranks writes nothing).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from starcli import __version__
from starcli.checkpoint import list_checkpoints, save_checkpoint
from starcli.config import TrainConfig
from starcli.errors import ConfigError
from starcli.runtime import Runtime
from starcli.utils import atomic_write_bytes, atomic_write_text

__all__ = ["RunIO", "new_run_dir", "point_latest", "environment", "runs_root", "start_branch"]


class RunIO:
    """Every file the run writes. With `enabled=False` (ranks other than 0) it writes nothing."""

    def __init__(self, run_dir: Path, enabled: bool, warn: Callable[[str], None]) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.warn = warn
        self._metrics = None
        self._tb = None

    def start(self, cfg: TrainConfig, env: dict[str, Any], start_step: int,
              columns: list[str]) -> None:
        if not self.enabled:
            return
        for sub in ("checkpoints", "samples", "tb"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.json",
                      cfg.replace(resume=None, run_dir=str(self.run_dir)).to_json() + "\n")
        env_path = self.run_dir / "environment.json"
        if start_step and env_path.is_file():
            try:
                previous = json.loads(env_path.read_text())
            except ValueError:
                previous = {}
            previous.setdefault("resumes", []).append({"step": start_step, **env})
            env = previous
        atomic_write_text(env_path, json.dumps(env, indent=2, default=str) + "\n")
        atomic_write_text(self.run_dir / "samples" / "columns.json", json.dumps(columns) + "\n")
        metrics_path = self.run_dir / "metrics.jsonl"
        if start_step:
            truncate_metrics(metrics_path, start_step)
        self._metrics = open(metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run logged after its last checkpoint.
            self._tb = SummaryWriter(str(self.run_dir / "tb"),
                                     purge_step=start_step + 1 if start_step else None)
        except Exception as exc:  # noqa: BLE001 - TensorBoard is optional
            self.warn(f"TensorBoard logging is off ({exc}); metrics.jsonl is still written.")
        point_latest(self.run_dir)

    def metrics(self, record: dict[str, Any]) -> None:
        if not self.enabled or self._metrics is None:
            return
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def samples(self, step: int, grid: np.ndarray) -> Path | None:
        if not self.enabled:
            return None
        from PIL import Image

        path = self.run_dir / "samples" / f"step-{step:08d}.png"
        buf = io.BytesIO()
        Image.fromarray(grid).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
        if self._tb is not None:
            self._tb.add_image("samples", grid, step, dataformats="HWC")
            self._tb.flush()
        return path

    def checkpoint(self, step: int, modules: dict[str, nn.Module], meta: dict[str, Any],
                   state: dict[str, Any], keep_last: int) -> Path | None:
        if not self.enabled:
            return None
        return save_checkpoint(self.run_dir, step, modules, meta, state, keep_last)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def truncate_metrics(path: Path, start_step: int) -> None:
    """Drop lines a killed run logged after the checkpoint we resume from."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= start_step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def runs_root() -> Path:
    return Path("runs").resolve()


def point_latest(run_dir: Path) -> None:
    """runs/latest → the newest run (a relative symlink; a LATEST text file where symlinks
    are not possible). Only for runs directly under ./runs."""
    root = runs_root()
    if run_dir.resolve().parent != root:
        return
    link = root / "latest"
    tmp = root / f".latest.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, link)
    except OSError:
        atomic_write_text(root / "LATEST", run_dir.name + "\n")


def new_run_dir(cfg: TrainConfig) -> Path:
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir).resolve()
        if list_checkpoints(run_dir):
            raise ConfigError(f"--run-dir {run_dir} already holds checkpoints; pass --resume "
                              f"{run_dir} to continue it, or choose another --run-dir.")
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = runs_root()
    root.mkdir(parents=True, exist_ok=True)
    base = root / f"{cfg.name}-{stamp}"
    run_dir, k = base, 1
    while True:
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            k += 1
            run_dir = base.with_name(f"{base.name}-{k}")


def start_branch(ckpt: Path, step: int) -> Path:
    """A new run folder continuing `ckpt`, an older checkpoint of its run: `<run>-from-<step>`
    (then `-2`, `-3`, …) next to the run, holding a copy of the checkpoint (hard links: saved
    files are never changed in place), the run's metrics up to `step` and its environment
    with `parent` (run dir, checkpoint, step) added. The old run is only read."""
    ckpt = Path(ckpt).resolve()
    parent = ckpt.parent.parent
    run_dir = _unique_dir(parent.parent / f"{parent.name}-from-{step}")
    _link_checkpoint(ckpt, run_dir / "checkpoints")
    metrics = parent / "metrics.jsonl"
    if metrics.is_file():
        atomic_write_text(run_dir / "metrics.jsonl", "".join(
            line + "\n" for line in metrics.read_text(encoding="utf-8").splitlines()
            if _step_of(line) is not None and _step_of(line) <= step))
    try:
        env = json.loads((parent / "environment.json").read_text())
    except (OSError, ValueError):
        env = {}
    env = env if isinstance(env, dict) else {}
    # Resumes at or after the branch point belong to the abandoned line.
    env["resumes"] = [r for r in env.get("resumes", []) if isinstance(r, dict)
                      and isinstance(r.get("step"), int) and r["step"] < step]
    env["parent"] = {"run_dir": str(parent), "checkpoint": str(ckpt), "step": int(step)}
    atomic_write_text(run_dir / "environment.json", json.dumps(env, indent=2, default=str) + "\n")
    return run_dir


def _unique_dir(base: Path) -> Path:
    run_dir, k = base, 1
    while True:
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            k += 1
            run_dir = base.with_name(f"{base.name}-{k}")


def _link_checkpoint(ckpt: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{ckpt.name}-{os.getpid()}"
    tmp.mkdir()
    for f in ckpt.iterdir():
        try:
            os.link(f, tmp / f.name)
        except OSError:  # no hard links here (another file system, FAT): copy
            shutil.copy2(f, tmp / f.name)
    os.replace(tmp, root / ckpt.name)


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError, TypeError):
        return None


def environment(cfg: TrainConfig, rt: Runtime) -> dict[str, Any]:
    env: dict[str, Any] = {
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "starcli": __version__, "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__,
        "platform": platform.platform(), "hostname": socket.gethostname(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": str(rt.device),
        "precision": rt.precision, "channels_last": rt.channels_last, "seed": cfg.seed,
        "argv": sys.argv, "git": git_hash(), "world_size": rt.world_size,
    }
    if rt.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(rt.device)
        env["cuda"] = torch.version.cuda
    return env


def git_hash() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
