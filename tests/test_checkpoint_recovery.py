"""Leftovers of a writer that died in save_checkpoint: `.tmp-` and `.old-` folders."""

from __future__ import annotations

import os
import shutil
import subprocess

import torch

from starcli.checkpoint import list_checkpoints, resolve_checkpoint, save_checkpoint
from starcli.data.labels import LabelLayout, LabelSpace
from starcli.families.stargan_v1.networks import Discriminator, Generator, ModelConfig

SPACE = LabelSpace("demo-celeba", "celeba", "multilabel", ("Black_Hair", "Blond_Hair", "Male"),
                   (("Black_Hair", "Blond_Hair"),))
MODEL = ModelConfig(image_size=16, c_dim=3, g_conv_dim=4, d_conv_dim=4, g_repeat_num=1,
                    d_repeat_num=2)
META = {"model": MODEL.to_dict(), "labels": LabelLayout((SPACE,)).to_dict(), "train": {},
        "datasets": []}


def _save(run, step, keep_last=5):
    torch.manual_seed(step)
    return save_checkpoint(run, step, {"G": Generator(MODEL), "D": Discriminator(MODEL)}, META,
                           {"step": step}, keep_last)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _crash_mid_swap(root, step, pid):
    """What a writer re-saving `step` leaves when it dies between its two renames: the old
    checkpoint moved aside, the new one still under its temporary name."""
    name = f"step-{step:08d}"
    os.replace(root / name, root / f".old-{name}-{pid}")
    shutil.copytree(root / f".old-{name}-{pid}", root / f".tmp-{name}-{pid}")


def test_a_dead_writers_moved_aside_checkpoint_is_restored(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2):
        _save(run, step)
    root = run / "checkpoints"
    kept = _files(root / "step-00000002")
    pid = _dead_pid()
    _crash_mid_swap(root, 2, pid)
    # A swap that finished but died before deleting the old copy: the final dir is there.
    shutil.copytree(root / "step-00000001", root / f".old-step-00000001-{pid}")
    assert [p.name for p in list_checkpoints(run)] == ["step-00000001"]

    _save(run, 3)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000001", "step-00000002",
                                                       "step-00000003"]
    assert _files(root / "step-00000002") == kept
    assert not list(root.glob(".old-*")) and not list(root.glob(".tmp-*"))


def test_a_live_writers_folders_are_left_alone(tmp_path):
    run = tmp_path / "run"
    _save(run, 1)
    root = run / "checkpoints"
    alive = os.getppid()  # our parent: a writer that is still running
    shutil.copytree(root / "step-00000001", root / f".old-step-00000001-{alive}")
    (root / f".tmp-step-00000002-{alive}").mkdir()
    _save(run, 2)
    assert (root / f".old-step-00000001-{alive}").is_dir()
    assert (root / f".tmp-step-00000002-{alive}").is_dir()


def test_resolving_a_run_to_resume_recovers_first(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2):
        _save(run, step)
    root = run / "checkpoints"
    _crash_mid_swap(root, 2, _dead_pid())
    # Readers (translate, eval) change nothing; the writer about to resume recovers.
    assert resolve_checkpoint(run).name == "step-00000001"
    assert len(list(root.glob(".old-*"))) == 1
    assert resolve_checkpoint(run, recover=True) == root / "step-00000002"
    assert not list(root.glob(".old-*")) and not list(root.glob(".tmp-*"))
