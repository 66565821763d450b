"""The training engine: learning, checkpoints, exact resume, NaN guard, signals, config."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from starcli.checkpoint import list_checkpoints, load_checkpoint, load_training_state
from starcli.config import TrainConfig
from starcli.errors import (
    ConfigError,
    DatasetNotFoundError,
    TrainingError,
    UnknownDatasetError,
)

SIZE = 32
# The 40 CelebA columns (only the positions of the ones used here matter).
ATTRS = [f"Attr_{i:02d}" for i in range(40)]
ATTRS[8], ATTRS[9], ATTRS[20], ATTRS[31], ATTRS[39] = (
    "Black_Hair", "Blond_Hair", "Male", "Smiling", "Young")
CELEBA_NAMES = ["Black_Hair", "Blond_Hair", "Male"]
EXPRESSIONS = ["angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad",
               "surprised"]
HUES = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40], [230, 40, 230],
                 [40, 230, 230], [250, 250, 250], [10, 10, 10]], np.uint8)


# ---------------------------------------------------------------------------------------------
# Synthetic prepared datasets whose labels are visible in the pixels (so D can learn them).


def _celeba_rows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    attrs = (rng.random((n, 40)) < 0.5).astype(np.uint8)
    blond = rng.random(n) < 0.5  # exclusive hair group: exactly one of black/blond
    attrs[:, 8], attrs[:, 9] = ~blond, blond
    images = rng.integers(90, 140, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    images[blond, : SIZE // 4] = (220, 200, 60)  # hair band at the top
    images[~blond, : SIZE // 4] = (20, 20, 20)
    male = attrs[:, 20].astype(bool)
    images[male, SIZE // 2:, SIZE // 3: 2 * SIZE // 3] = (60, 30, 20)  # a dark "beard" block
    return images, attrs


def _rafd_rows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    expr = rng.integers(0, 8, size=n).astype(np.uint8)
    images = rng.integers(90, 140, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, e in enumerate(expr):
        images[i, SIZE // 4: 3 * SIZE // 4, SIZE // 4: 3 * SIZE // 4] = HUES[e]
    return images, expr


def make_dataset(home: Path, name: str = "demo-celeba", fmt: str = "celeba",
                 splits: dict[str, int] | None = None, seed: int = 0, size: int = SIZE) -> Path:
    """A prepared dataset per the shard contract, written directly with h5py."""
    assert size == SIZE or fmt == "celeba"
    splits = splits or {"train": 128, "test": 16}
    rng = np.random.default_rng(seed)
    root = home / "prepared" / name / str(size)
    root.mkdir(parents=True)
    if fmt == "celeba":
        space = {"dataset": name, "format": "celeba", "kind": "multilabel",
                 "names": CELEBA_NAMES, "exclusive_groups": [["Black_Hair", "Blond_Hair"]]}
        table = {"columns": {"attributes": ATTRS}, "space": space,
                 "source_column": "attributes",
                 "selected_columns": [ATTRS.index(n) for n in CELEBA_NAMES], "aliases": []}
    else:
        space = {"dataset": name, "format": "rafd", "kind": "onehot", "names": EXPRESSIONS,
                 "exclusive_groups": []}
        table = {"columns": {"expression": EXPRESSIONS}, "space": space,
                 "source_column": "expression", "selected_columns": None, "aliases": []}
    shards = []
    for split, count in splits.items():
        if fmt == "celeba":
            images, values = _celeba_rows(count, rng)
            labels = {"attributes": values}
        else:
            images, values = _rafd_rows(count, rng)
            labels = {"expression": values}
        if size != SIZE:
            reps = size // SIZE
            images = images.repeat(reps, axis=1).repeat(reps, axis=2) if reps else \
                images[:, ::SIZE // size, ::SIZE // size]
        path = root / f"{split}-00000.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=images, chunks=(1, size, size, 3), fletcher32=True)
            for key, value in labels.items():
                f.create_dataset(f"labels/{key}", data=value)
            f.attrs.update({"starcli_schema": 1, "dataset": name, "split": split,
                            "shard_index": 0, "count": count, "image_size": size,
                            "label_table": json.dumps(table)})
        digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
        for key in sorted(labels):
            digest.update(labels[key].tobytes())
        shards.append({"path": path.name, "split": split, "index": 0, "count": count,
                       "bytes": path.stat().st_size, "content_sha256": digest.hexdigest()})
    manifest = {"schema": 1, "dataset": name, "format": fmt, "created_by": "test",
                "image_size": size, "compression": None, "rows_per_shard": 4096,
                "label_table": table, "splits": splits, "shards": shards}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def tiny(home: Path, tmp_path: Path, **overrides) -> TrainConfig:
    """The tiny preset on CPU fp32, writing under tmp_path."""
    values = dict(datasets=("demo-celeba",), home=str(home), device="cpu", precision="fp32",
                  run_dir=str(tmp_path / "run"), iters=6, save_every=3, sample_every=3,
                  log_every=2)
    values.update(overrides)
    return TrainConfig.from_preset("tiny", **values)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny models gain nothing from more, and on a busy 2-core machine
    OpenMP's spinning threads make them 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def celeba_home(home):
    make_dataset(home)
    return home


@pytest.fixture
def joint_home(home):
    make_dataset(home, "demo-celeba", "celeba", seed=1)
    make_dataset(home, "demo-rafd", "rafd", seed=2)
    return home


# ---------------------------------------------------------------------------------------------
# Config


def test_presets_and_overrides():
    paper = TrainConfig.from_preset("paper", datasets=("celeba",))
    assert (paper.batch_size, paper.iters, paper.g_lr, paper.n_critic, paper.lambda_rec,
            paper.lr_decay_iters, paper.image_size, paper.beta1) == \
        (16, 200_000, 1e-4, 5, 10.0, 100_000, 128, 0.5)
    cfg = TrainConfig.from_preset("demo", datasets=("demo-celeba",), iters=7, n_critic=None)
    assert cfg.iters == 7 and cfg.n_critic == TrainConfig.from_preset(
        "demo", datasets=("x",)).n_critic
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    joint = TrainConfig.from_preset("tiny", joint=True)
    assert joint.datasets == ("celeba", "rafd")


@pytest.mark.parametrize("overrides, flag", [
    ({"g_ema": 1.0}, "--g-ema"),
    ({"g_ema": -0.1}, "--g-ema"),
    (dict(image_size=48, d_repeat_num=6), "too deep"),
    (dict(adv_loss="wasserstein"), "--adv-loss"),
    (dict(datasets=("a", "b")), "--joint"),
    (dict(batch_size=0), "--batch-size"),
    (dict(device="gpu"), "--device"),
    (dict(precision="fp16", device="cpu"), "fp16"),
    (dict(joint=True, datasets=("a", "b"), mix=(1.0,)), "--mix"),
    (dict(g_lr=-1.0), "--g-lr"),
])
def test_bad_config_names_the_flag(overrides, flag):
    values = dict(datasets=("demo-celeba",))
    values.update(overrides)
    with pytest.raises(ConfigError, match=flag):
        TrainConfig.from_preset("tiny", **values)


def test_linear_lr_decay_steps_every_update_step():
    cfg = TrainConfig.from_preset("paper", datasets=("celeba",))
    assert cfg.lr_at(1, 1e-4) == 1e-4
    assert cfg.lr_at(100_000, 1e-4) == 1e-4
    assert cfg.lr_at(101_000, 1e-4) == 1e-4  # 999 iterations into the window: not yet
    assert cfg.lr_at(101_001, 1e-4) == pytest.approx(0.99e-4)
    assert cfg.lr_at(150_001, 1e-4) == pytest.approx(0.5e-4)
    assert cfg.lr_at(200_000, 1e-4) == pytest.approx(0.01e-4)
    per_step = cfg.replace(iters=10, lr_decay_iters=4, lr_update_step=1)
    assert [round(per_step.lr_at(s, 1.0), 3) for s in range(1, 11)] == \
        [1, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]


# ---------------------------------------------------------------------------------------------
# Errors before any work


def test_unknown_dataset_and_wrong_size_fail_before_work(home, tmp_path):
    from starcli.engine import train

    with pytest.raises(UnknownDatasetError):
        train(tiny(home, tmp_path, datasets=("no-such-set",)))
    make_dataset(home, size=64)
    with pytest.raises(ConfigError, match="prepared at 64px"):
        train(tiny(home, tmp_path))
    with pytest.raises(DatasetNotFoundError, match="starcli prepare demo-rafd"):
        train(tiny(home, tmp_path, datasets=("demo-celeba", "demo-rafd"), joint=True,
                   image_size=64))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Learning


def test_short_run_lowers_classification_loss(celeba_home, tmp_path):
    from starcli.engine import train

    records = []
    cfg = tiny(celeba_home, tmp_path, iters=40, log_every=10, save_every=0, sample_every=0,
               adv_loss="lsgan", n_critic=1, lr_decay_iters=0)
    result = train(cfg, on_log=records.append)
    first, last = records[0], records[-1]
    assert last["D/cls"] < 0.5 * first["D/cls"], (first["D/cls"], last["D/cls"])
    assert last["D/acc_real"] > 0.9
    assert "D/cls/demo-celeba" in last and "G/rec/demo-celeba" in last
    assert result["step"] == 40 and not result["interrupted"]

    run = Path(result["run_dir"])
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [10, 20, 30, 40]
    assert {"lr_g", "lr_d", "images_per_s", "data_wait_fraction"} <= set(lines[-1])
    config = json.loads((run / "config.json").read_text())
    assert config["iters"] == 40 and config["datasets"] == ["demo-celeba"]
    env = json.loads((run / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["seed"] == 0
    assert any((run / "tb").iterdir())
    # The end of the run always saves and samples.
    assert list_checkpoints(run)[-1].name == "step-00000040"
    grid = run / "samples" / "step-00000040.png"
    columns = json.loads((run / "samples" / "columns.json").read_text())
    assert columns == ["input", "demo-celeba:Black_Hair", "demo-celeba:Blond_Hair",
                       "demo-celeba:Male"]
    from PIL import Image

    w, h = Image.open(grid).size
    k = -(-128 // SIZE)  # small tiles are enlarged, nearest neighbour, to >= 128 px
    assert (w, h) == (k * (4 * (SIZE + 2) + 2), k * (8 * (SIZE + 2) + 2))  # 4 x 8 inputs


def test_joint_run_uses_both_label_spaces(joint_home, tmp_path):
    from starcli.engine import train

    records = []
    cfg = tiny(joint_home, tmp_path, datasets=("demo-celeba", "demo-rafd"), joint=True,
               iters=4, log_every=4, save_every=0, sample_every=0)
    result = train(cfg, on_log=records.append)
    rec = records[-1]
    assert {"D/cls/demo-celeba", "D/cls/demo-rafd", "G/cls/demo-celeba",
            "G/cls/demo-rafd"} <= set(rec)
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt.model.c_dim == 3 + 8 + 2 and ckpt.model.cls_dim == 11
    assert [b["dataset"] for b in ckpt.meta["labels"]["blocks"]] == ["demo-celeba", "demo-rafd"]
    columns = json.loads((Path(result["run_dir"]) / "samples" / "columns.json").read_text())
    assert len(columns) == 1 + 3 + 8


def test_sample_targets_keep_groups_exclusive():
    from starcli.data.labels import LabelLayout, LabelSpace
    from starcli.families.stargan_v1.samples import sample_targets

    space = LabelSpace("c", "celeba", "multilabel", ("Black_Hair", "Blond_Hair", "Male"),
                       (("Black_Hair", "Blond_Hair"),))
    targets = sample_targets(LabelLayout((space,)))
    lab = torch.tensor([[1.0, 0, 1]])
    assert [t.make(lab).tolist() for t in targets] == [[[1, 0, 1]], [[0, 1, 1]], [[1, 0, 0]]]
    assert targets[2].make(None).tolist() == [[0, 0, 1]]


# ---------------------------------------------------------------------------------------------
# Checkpoints, resume, NaN guard, signals


def test_checkpoint_round_trip_and_keep_last(celeba_home, tmp_path):
    from starcli.engine import train

    result = train(tiny(celeba_home, tmp_path, iters=8, save_every=2, keep_last=2))
    run = Path(result["run_dir"])
    assert [p.name for p in list_checkpoints(run)] == ["step-00000006", "step-00000008"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    ckpt = load_checkpoint(run, with_state=True)
    assert ckpt.step == 8 and ckpt.layout.spaces[0].names == tuple(CELEBA_NAMES)
    assert ckpt.meta["train"]["iters"] == 8 and ckpt.meta["datasets"][0]["name"] == "demo-celeba"
    assert ckpt.state["stream"]["step"] == 8 and ckpt.state["step"] == 8
    x = torch.zeros(2, 3, SIZE, SIZE)
    c = ckpt.layout.encode(0, torch.tensor([[1.0, 0, 1], [0, 1, 0]]))
    assert ckpt.G(x, c).shape == (2, 3, SIZE, SIZE)


def test_g_ema_is_an_average_of_g_and_what_inference_loads(celeba_home, tmp_path):
    from safetensors.torch import load_file

    from starcli.engine import train

    # a G step and a save every step: G_ema(t) = d * G_ema(t-1) + (1 - d) * G(t)
    decay = 0.75
    run = Path(train(tiny(celeba_home, tmp_path, iters=4, save_every=1, keep_last=4,
                          sample_every=0, g_ema=decay, n_critic=1))["run_dir"])
    ckpts = list_checkpoints(run)
    g = [load_file(str(c / "G.safetensors")) for c in ckpts]
    ema = [load_file(str(c / "G_ema.safetensors")) for c in ckpts]
    moved = False
    for t in range(1, 4):
        for k in g[t]:
            expected = decay * ema[t - 1][k] + (1 - decay) * g[t][k]
            assert torch.allclose(ema[t][k], expected, atol=1e-6), (t, k)
            moved |= not torch.equal(ema[t][k], g[t][k])
    assert moved, "the average should lag behind G"
    ck = load_checkpoint(run, with_discriminator=False)
    raw = load_checkpoint(run, with_discriminator=False, ema=False)
    assert ck.ema and not raw.ema
    for k, v in ck.G.state_dict().items():
        assert torch.equal(v, ema[-1][k]) and torch.equal(raw.G.state_dict()[k], g[-1][k])
    # without --g-ema there is no average, and inference uses G
    plain = Path(train(tiny(celeba_home, tmp_path / "plain", iters=2, sample_every=0))["run_dir"])
    assert not list(plain.glob("checkpoints/*/G_ema.safetensors"))
    assert not load_checkpoint(plain, with_discriminator=False).ema


_SUBPROCESS = textwrap.dedent("""
    import json, os, sys, torch
    torch.set_num_threads(1)
    from starcli.config import TrainConfig
    from starcli.engine import train, resume_config
    args = json.loads(sys.argv[1])
    if args.get("resume"):
        cfg = resume_config(args["resume"])
    else:
        cfg = TrainConfig.from_preset("tiny", **args["cfg"])
    if args.get("stall_after"):
        # Stand-in for a slow step: hold still after a checkpoint so the parent can kill us.
        import starcli.engine.rundir as t
        real = t.save_checkpoint
        def save_then_stall(*a, **k):
            out = real(*a, **k)
            print("SAVED", out, flush=True)
            if a[1] == args["stall_after"]:
                import time; time.sleep(600)
            return out
        t.save_checkpoint = save_then_stall
    result = train(cfg)
    print("RESULT", json.dumps(result), flush=True)
""")


def _python(args: dict, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-c", _SUBPROCESS, json.dumps(args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            **kw)


def _weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"{m}.{k}": v for m in ("G", "G_ema", "D")
            if (ckpt_dir / f"{m}.safetensors").is_file()
            for k, v in load_file(str(ckpt_dir / f"{m}.safetensors")).items()}


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical(celeba_home, tmp_path):
    base = dict(datasets=["demo-celeba"], home=str(celeba_home), device="cpu", precision="fp32",
                iters=8, save_every=4, sample_every=0, log_every=2, workers=0, g_ema=0.5)
    straight = _python({"cfg": {**base, "run_dir": str(tmp_path / "straight")}})
    killed = _python({"cfg": {**base, "run_dir": str(tmp_path / "killed")}, "stall_after": 4})
    out, err = straight.communicate(timeout=120)
    assert straight.returncode == 0, err
    for line in killed.stdout:  # wait for the step-4 checkpoint, then kill -9
        if line.startswith("SAVED"):
            break
    else:
        pytest.fail(killed.stderr.read())
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    killed_run = tmp_path / "killed"
    assert [p.name for p in list_checkpoints(killed_run)] == ["step-00000004"]

    resumed = _python({"resume": str(killed_run)})
    out2, err2 = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err2
    result = json.loads(out2.split("RESULT", 1)[1])
    assert result["resumed_from"] == 4 and result["step"] == 8

    a = _weights(tmp_path / "straight" / "checkpoints" / "step-00000008")
    b = _weights(killed_run / "checkpoints" / "step-00000008")
    assert a.keys() == b.keys() and any(k.startswith("G_ema.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    sa = load_training_state(tmp_path / "straight" / "checkpoints" / "step-00000008")
    sb = load_training_state(killed_run / "checkpoints" / "step-00000008")
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
    assert sa["stream"] == sb["stream"]
    steps = [json.loads(x)["step"] for x in (killed_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(celeba_home, tmp_path,
                                                              monkeypatch):
    import starcli.engine as training
    import starcli.families.stargan_v1.step as step_module

    real = step_module.reconstruction_loss
    calls = {"n": 0}

    def poisoned(x, x_rec):
        calls["n"] += 1
        loss = real(x, x_rec)
        return loss * float("nan") if calls["n"] >= 4 else loss

    monkeypatch.setattr(step_module, "reconstruction_loss", poisoned)
    cfg = tiny(celeba_home, tmp_path, iters=12, n_critic=1, save_every=3)
    with pytest.raises(TrainingError, match=r"step 4: G/rec = nan.*step-00000003"):
        training.train(cfg)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000003"]


def test_stop_event_saves_and_reports_interrupted(celeba_home, tmp_path):
    from starcli.engine import train

    stop = threading.Event()
    seen = []

    def on_log(record):
        seen.append(record["step"])
        stop.set()  # as a signal handler would

    result = train(tiny(celeba_home, tmp_path, iters=50, save_every=0, log_every=3),
                   on_log=on_log, stop_event=stop)
    assert result["interrupted"] and result["step"] == 3 and seen == [3]
    assert Path(result["checkpoint"]).name == "step-00000003"
    assert "--resume" in result["resume_command"]


def test_compile_failure_falls_back_to_eager(celeba_home, tmp_path, monkeypatch):
    from starcli.engine import train

    def broken(module, **kw):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    messages = []

    class Sink:
        def start_task(self, *a, **k):
            from starcli.progress import _NullTask

            return _NullTask()

        def stop_task(self, task):
            pass

        def log(self, message):
            messages.append(message)

    result = train(tiny(celeba_home, tmp_path, iters=2, compile=True), progress=Sink())
    assert result["step"] == 2 and result["compiled"] is False
    assert any("--compile failed (no C++ compiler)" in m for m in messages)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(celeba_home, tmp_path):
    run = tmp_path / "run"
    proc = _python({"cfg": dict(datasets=["demo-celeba"], home=str(celeba_home), device="cpu",
                                precision="fp32", iters=100_000, save_every=0, sample_every=0,
                                log_every=1, run_dir=str(run))})
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.1)  # wait until at least one step is done
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out.split("RESULT", 1)[1])
    assert result["interrupted"] and 0 < result["step"] < 100_000
    assert "SIGTERM received" in err  # logging's last-resort handler prints the warning
    assert list_checkpoints(run)[-1].name == f"step-{result['step']:08d}"
