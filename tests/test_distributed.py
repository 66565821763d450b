"""Training in several processes (DDP over gloo on the CPU, launched through torchrun).

Each torchrun job starts two ranks of the `tiny` preset at 32 px for a few steps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from starcli.checkpoint import load_checkpoint, load_training_state
from starcli.cli import app
from starcli.config import TrainConfig
from starcli.errors import ConfigError

pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

runner = CliRunner()


# A torchrun worker: patches the engine (to watch it, or to make rank 1 fail), then trains.
WORKER = textwrap.dedent('''
    import datetime, json, os, sys
    import torch
    import torch.distributed as dist
    import starcli.engine as T
    import starcli.engine.loop as L
    import starcli.families.stargan_v1.step as S
    from starcli.config import TrainConfig
    from starcli.data.dataset import TrainStream

    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
    mode, out = sys.argv[2], sys.argv[3]
    rank = int(os.environ["RANK"])
    if mode == "fail":
        if rank == 1:
            real, calls = S.reconstruction_loss, [0]

            def boom(x, y):
                calls[0] += 1
                if calls[0] >= 2:
                    raise RuntimeError("injected failure on rank 1")
                return real(x, y)

            S.reconstruction_loss = boom
        T.train(cfg)  # train joins (and leaves) the process group itself
        sys.exit(0)

    models, rows = {}, []
    wrap = L.wrap_modules

    def spy(modules, *a, **k):
        models.update(modules)
        return wrap(modules, *a, **k)

    L.wrap_modules = spy
    nxt = TrainStream.__next__

    def spy_next(self):
        batch = nxt(self)
        rows.append(batch.indices.tolist())
        return batch

    TrainStream.__next__ = spy_next
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    result = T.train(cfg)
    flat = torch.cat([p.detach().flatten() for m in (models["G"], models["D"])
                      for p in m.parameters()])
    every = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(every, flat)
    all_rows = [None, None]
    dist.all_gather_object(all_rows, rows)

    # The engine's D-step pattern: loss through the DDP module, gradient penalty through the
    # unwrapped one, one backward. DDP must average the complete gradient over ranks.
    import copy
    from torch.nn.parallel import DistributedDataParallel as DDP
    from starcli.models.losses import gradient_penalty

    def d_loss(D_main, D_gp, x, fake):
        src, cls = D_main(torch.cat([x, fake]))
        gp = gradient_penalty(lambda z: D_gp(z)[0], x, fake, alpha=torch.full((4,), 0.3))
        return src.mean() + cls.square().mean() + 10 * gp

    g = torch.Generator().manual_seed(100 + rank)
    x, fake = torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g)
    D_ddp = copy.deepcopy(models["D"])
    wrapped = DDP(D_ddp)  # keep a reference: the reducer's hooks die with the wrapper
    d_loss(wrapped, D_ddp, x, fake).backward()
    D_ref = copy.deepcopy(models["D"])
    d_loss(D_ref, D_ref, x, fake).backward()
    gp_ok = True
    for p_ddp, p_ref in zip(D_ddp.parameters(), D_ref.parameters()):
        ref = p_ref.grad.clone()
        dist.all_reduce(ref)
        gp_ok &= torch.allclose(p_ddp.grad, ref / 2, rtol=1e-4, atol=1e-6)
        gp_ok &= not torch.allclose(p_ref.grad, ref / 2, rtol=1e-4, atol=1e-6)
    oks = [None, None]
    dist.all_gather_object(oks, bool(gp_ok))
    del wrapped
    if rank == 0:
        report = {"identical": torch.equal(every[0], every[1]), "rows": all_rows,
                  "gp_grads_averaged": all(oks), "result": result}
        with open(out, "w") as f:
            json.dump(report, f)
    import gc
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
''')


def _torchrun(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _cfg(home: Path, run_dir: Path, **overrides) -> dict:
    values = dict(datasets=("demo-celeba",), home=str(home), device="cpu", precision="fp32",
                  run_dir=str(run_dir), iters=4, save_every=2, sample_every=2, log_every=1,
                  batch_size=8, dist_timeout=60)
    values.update(overrides)
    return TrainConfig.from_preset("tiny", **values).to_dict()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, make_dataset):
    """One 2-rank run of 4 steps (checkpoints at steps 2 and 4), shared by the tests below."""
    root = tmp_path_factory.mktemp("ddp")
    home = root / "home"
    make_dataset(home)
    (root / "worker.py").write_text(WORKER)
    run_dir = root / "run"
    t0 = time.perf_counter()
    proc = _torchrun([str(root / "worker.py"), json.dumps(_cfg(home, run_dir)), "watch",
                      str(root / "report.json")], cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((root / "report.json").read_text())
    return {"root": root, "home": home, "run_dir": run_dir, "report": report,
            "seconds": time.perf_counter() - t0}


def test_ranks_keep_identical_weights_on_disjoint_data(ddp_run):
    report = ddp_run["report"]
    # wgan-gp with n_critic 2: D steps with the gradient penalty and G steps both ran.
    assert report["identical"], "G/D weights differ between ranks after 4 DDP steps"
    assert report["gp_grads_averaged"], "DDP did not average the gradient-penalty gradient"
    rows0, rows1 = report["rows"]
    assert len(rows0) == len(rows1) == 4
    for a, b in zip(rows0, rows1, strict=True):
        assert len(a) == len(b) == 4  # the global batch of 8 split over 2 ranks
        assert not set(a) & set(b)  # each rank reads its own share
    result = report["result"]
    assert result["world_size"] == 2 and result["step"] == 4
    run_dir = ddp_run["run_dir"]
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]  # one writer: rank 0
    assert all("D/gp" in m for m in metrics)


def test_ddp_checkpoint_loads_in_one_process_and_resumes_exactly(ddp_run, monkeypatch):
    run_dir = ddp_run["run_dir"]
    ckpt = run_dir / "checkpoints" / "step-00000004"
    loaded = load_checkpoint(ckpt)  # translate/eval's loader, single process
    assert not any(k.startswith(("module.", "_orig_mod."))
                   for k in list(loaded.G.state_dict()) + list(loaded.D.state_dict()))
    state = load_training_state(ckpt)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["targets"], state["rng_ranks"][1]["targets"])

    # Resume a copy from step 2 through `starcli train --gpus 2 --device cpu` (torchrun).
    copy = ddp_run["root"] / "resumed"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "step-00000004")
    monkeypatch.setenv("STARCLI_HOME", str(ddp_run["home"]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(ddp_run["root"])
    result = runner.invoke(app, ["train", "--gpus", "2", "--device", "cpu", "--resume",
                                 str(copy)])
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file

    for name in ("G", "D"):
        a = load_file(str(ckpt / f"{name}.safetensors"))
        b = load_file(str(copy / "checkpoints" / "step-00000004" / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"resumed {name} differs"


def test_a_failing_rank_ends_the_job_with_an_error(tmp_path, make_dataset):
    home = tmp_path / "home"
    make_dataset(home)
    (tmp_path / "worker.py").write_text(WORKER)
    cfg = _cfg(home, tmp_path / "run", iters=50, save_every=0, sample_every=0)
    t0 = time.perf_counter()
    proc = _torchrun([str(tmp_path / "worker.py"), json.dumps(cfg), "fail", "-"], cwd=tmp_path,
                     timeout=90)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stderr
    assert elapsed < 45, f"the job took {elapsed:.0f}s to fail (dist_timeout is 60s)"


def test_batch_not_divisible_exits_2_before_launching(home, monkeypatch, tmp_path, make_dataset):
    make_dataset(home)
    monkeypatch.chdir(tmp_path)
    import starcli.engine.distributed as training

    def no_launch(*a, **k):
        raise AssertionError("launched despite a bad batch size")

    monkeypatch.setattr(training.subprocess, "Popen", no_launch)
    result = runner.invoke(app, ["train", "-d", "demo-celeba", "--preset", "tiny", "--gpus",
                                 "2", "--device", "cpu", "--batch-size", "7"])
    assert result.exit_code == 2
    assert "--batch-size 7" in result.output and "multiple of 2" in result.output


def test_batch_not_divisible_under_torchrun_env(home, monkeypatch, make_dataset):
    make_dataset(home)
    from starcli.engine import describe_run

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = TrainConfig.from_preset("tiny", datasets=("demo-celeba",), device="cpu")
    with pytest.raises(ConfigError, match="--batch-size 8 .* 3 processes"):
        describe_run(cfg)
    plan = describe_run(cfg.replace(batch_size=9))
    assert plan.runtime.batch == 3 and plan.runtime.world_size == 3


def test_gpus_forwards_the_users_options_to_torchrun(home, monkeypatch, tmp_path, make_dataset):
    make_dataset(home)
    monkeypatch.chdir(tmp_path)
    import starcli.engine.distributed as training

    seen = {}

    class FakePopen:
        def __init__(self, cmd, **kw):
            seen["cmd"] = cmd

        def wait(self):
            return 0

    monkeypatch.setattr(training.subprocess, "Popen", FakePopen)
    result = runner.invoke(app, ["train", "-d", "demo-celeba", "--preset", "tiny", "--gpus",
                                 "2", "--device", "cpu", "--no-compile", "--iters", "3",
                                 "--dist-timeout", "60"])
    assert result.exit_code == 0, result.output
    cmd = seen["cmd"]
    assert cmd[:8] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node", "2", "-m", "starcli"]
    args = cmd[8:]
    assert args[0] == "train" and "--gpus" not in args
    for pair in (["--dataset", "demo-celeba"], ["--preset", "tiny"], ["--device", "cpu"],
                 ["--iters", "3"], ["--dist-timeout", "60"]):
        i = args.index(pair[0])
        assert args[i:i + 2] == pair
    assert "--no-compile" in args and "--batch-size" not in args  # defaults stay implicit


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpus_without_cuda_exits_2_with_a_hint(home, monkeypatch, tmp_path, make_dataset):
    make_dataset(home)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "-d", "demo-celeba", "--preset", "tiny", "--gpus",
                                 "2"])
    assert result.exit_code == 2
    assert "--gpus 2: this machine has 0 CUDA device(s)" in result.output
    assert "--device cpu" in result.output
    dry = runner.invoke(app, ["train", "-d", "demo-celeba", "--preset", "tiny", "--gpus", "2",
                              "--device", "cpu", "--batch-size", "7", "--dry-run"])
    assert dry.exit_code == 2 and "multiple of 2" in dry.output


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_nccl_two_gpus_smoke(home, monkeypatch, tmp_path, make_dataset):
    make_dataset(home)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "-d", "demo-celeba", "--preset", "tiny", "--gpus",
                                 "2", "--device", "cuda", "--iters", "4",
                                 "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "run").G is not None


V2_WORKER = textwrap.dedent('''
    import datetime, json, os, sys
    import torch
    import torch.distributed as dist
    import starcli.engine as T
    import starcli.engine.loop as L
    from starcli.config import TrainConfig

    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
    out = sys.argv[2]
    models = {}
    wrap = L.wrap_modules

    def spy(modules, *a, **k):
        models.update(modules)
        return wrap(modules, *a, **k)

    L.wrap_modules = spy
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    result = T.train(cfg)
    flat = torch.cat([p.detach().flatten() for name in ("G", "F", "E", "D")
                      for p in models[name].parameters()])
    every = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(every, flat)
    if int(os.environ["RANK"]) == 0:
        with open(out, "w") as f:
            json.dump({"identical": torch.equal(every[0], every[1]),
                       "moved": result["step"], "world": result["world_size"]}, f)
    # Free the run's DDP wrappers (reference cycles keep them) before the group goes; a
    # reducer outliving its group aborts the process at exit ("terminate called ...").
    import gc
    models.clear()
    del result
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
''')


def test_stargan_v2_trains_under_ddp_with_identical_ranks(tmp_path, make_dataset):
    """StarGAN v2's four phases (R1 through create_graph included) under DDP over gloo:
    after 3 steps every rank holds the same G, F, E and D."""
    home = tmp_path / "home"
    make_dataset(home)
    (tmp_path / "v2worker.py").write_text(V2_WORKER)
    values = dict(datasets=("demo-celeba",), home=str(home), device="cpu", precision="fp32",
                  run_dir=str(tmp_path / "run"), iters=3, save_every=3, sample_every=0,
                  log_every=1, batch_size=8, dist_timeout=60)
    cfg = TrainConfig.from_preset("tiny", family="stargan-v2", **values).to_dict()
    proc = _torchrun([str(tmp_path / "v2worker.py"), json.dumps(cfg),
                      str(tmp_path / "report.json")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == {"identical": True, "moved": 3, "world": 2}
    ckpt = load_checkpoint(tmp_path / "run", device=torch.device("cpu"))
    assert ckpt.family == "stargan-v2"
