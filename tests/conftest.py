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
