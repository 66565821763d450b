"""Resuming from a checkpoint older than a run's newest branches into a new run folder; the
old run and its abandoned "future" stay untouched, and the two lines never mix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from starcli.checkpoint import list_checkpoints, resolve_checkpoint
from starcli.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"{m}.{k}": v for m in ("G", "D")
            for k, v in load_file(str(ckpt / f"{m}.safetensors")).items()}


def test_resume_from_an_older_checkpoint_branches(home, tmp_path, monkeypatch, make_dataset):
    from starcli.engine import resume_config, train

    make_dataset(home)
    monkeypatch.chdir(tmp_path)
    run = (tmp_path / "runs" / "x").resolve()
    train(TrainConfig.from_preset("tiny", datasets=("demo-celeba",), home=str(home),
                                  device="cpu", precision="fp32", run_dir=str(run), iters=6,
                                  save_every=3, sample_every=0, log_every=2, keep_last=3))
    before = _tree(run)
    older = run / "checkpoints" / "step-00000003"

    result = train(resume_config(older))
    branch = Path(result["run_dir"])
    assert branch == run.parent / "x-from-3"
    assert _tree(run) == before, "the old run was changed"
    assert resolve_checkpoint(branch) == branch / "checkpoints" / "step-00000006"
    assert [p.name for p in list_checkpoints(branch)] == ["step-00000003", "step-00000006"]
    assert result["resume_command"] == f"starcli train --resume {branch}"
    assert result["branched_from"] == str(older)
    assert (tmp_path / "runs" / "latest").resolve() == branch
    env = json.loads((branch / "environment.json").read_text())
    assert env["parent"] == {"run_dir": str(run), "checkpoint": str(older), "step": 3}
    assert [r["step"] for r in env["resumes"]] == [3]
    config = TrainConfig.from_dict(json.loads((branch / "config.json").read_text()))
    assert config.run_dir == str(branch)
    steps = [json.loads(x)["step"] for x in (branch / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]  # the parent's records up to step 3, then the branch's own
    # An exact resume: the branch retrains steps 4-6 to the weights the old line had.
    a, b = _weights(run / "checkpoints" / "step-00000006"), _weights(
        branch / "checkpoints" / "step-00000006")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # The branch's newest checkpoint continues in place, as any latest checkpoint does.
    again = train(resume_config(branch, iters=8))
    assert Path(again["run_dir"]) == branch and again["resumed_from"] == 6
    assert again["branched_from"] is None
    assert resolve_checkpoint(branch).name == "step-00000008"
    assert _tree(run) == before

    # Branching the same step again gets a fresh folder, never the first branch.
    second = train(resume_config(older))
    assert Path(second["run_dir"]) == run.parent / "x-from-3-2"
    assert resolve_checkpoint(branch).name == "step-00000008"
