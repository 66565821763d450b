"""Shared fixtures: an isolated STARCLI_HOME and a quiet, deterministic environment."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh data root; STARCLI_HOME points at it and no mirror leaks in from the shell."""
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("STARCLI_HOME", str(root))
    monkeypatch.delenv("STARCLI_MIRROR", raising=False)
    monkeypatch.delenv("STARCLI_DEBUG", raising=False)
    return root


@pytest.fixture(scope="session")
def make_dataset():
    """tests/test_training.py's synthetic prepared-dataset writer (loaded by path: the suite
    runs with --import-mode=importlib, so test modules cannot import each other)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent / "test_training.py"
    spec = importlib.util.spec_from_file_location("_starcli_training_tests_shared", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_dataset


@pytest.fixture
def one_thread():
    """One torch thread for the test (restored after): training tests compare numbers."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_v2(tmp_path_factory, make_dataset):
    """(home, checkpoint dir): a 2-iteration tiny StarGAN v2 run over a synthetic
    demo-celeba's female/male, shared by the tests that translate or evaluate one."""
    from pathlib import Path

    import torch

    from starcli.config import TrainConfig
    from starcli.engine import train

    root = tmp_path_factory.mktemp("tiny-v2")
    home = root / "home"
    home.mkdir()
    make_dataset(home, "demo-celeba", "celeba", seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(TrainConfig.from_preset(
            "tiny", family="stargan-v2", datasets=("demo-celeba",), home=str(home),
            device="cpu", precision="fp32", run_dir=str(root / "run"), iters=2, save_every=2,
            sample_every=0, log_every=1))
    finally:
        torch.set_num_threads(threads)
    return home, Path(result["checkpoint"])
