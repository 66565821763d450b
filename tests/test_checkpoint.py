"""Checkpoint directories: atomic saves, pruning, resolution, safe loading."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from starcli.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_training_state,
    resolve_checkpoint,
    save_checkpoint,
)
from starcli.data.labels import LabelLayout, LabelSpace
from starcli.errors import CheckpointError
from starcli.families.stargan_v1.networks import Discriminator, Generator, ModelConfig

SPACE = LabelSpace("demo-celeba", "celeba", "multilabel", ("Black_Hair", "Blond_Hair", "Male"),
                   (("Black_Hair", "Blond_Hair"),))
LAYOUT = LabelLayout((SPACE,))
MODEL = ModelConfig(image_size=16, c_dim=3, g_conv_dim=4, d_conv_dim=4, g_repeat_num=1,
                    d_repeat_num=2)


def _meta() -> dict:
    return {"model": MODEL.to_dict(), "labels": LAYOUT.to_dict(), "train": {"iters": 10},
            "datasets": [{"name": "demo-celeba", "image_size": 16, "content": "x"}]}


def _save(run, step, keep_last=3, state=None, G=None):
    torch.manual_seed(step)
    G = G or Generator(MODEL)
    return save_checkpoint(run, step, {"G": G, "D": Discriminator(MODEL)}, _meta(),
                           state if state is not None else {"step": step}, keep_last)


def test_save_load_round_trip(tmp_path):
    run = tmp_path / "run"
    G = Generator(MODEL)
    ckpt = _save(run, 5, G=G)
    assert ckpt == run / "checkpoints" / "step-00000005"
    assert sorted(p.name for p in ckpt.iterdir()) == ["D.safetensors", "G.safetensors",
                                                      "meta.json", "state.pt"]
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["format"] == "starcli-checkpoint" and meta["version"] == 1 and meta["step"] == 5
    loaded = load_checkpoint(run, with_state=True)
    assert loaded.path == ckpt and loaded.step == 5 and loaded.state == {"step": 5}
    assert loaded.layout == LAYOUT and loaded.model == MODEL and not loaded.G.training
    for k, v in G.state_dict().items():
        assert torch.equal(loaded.G.state_dict()[k], v)
    assert load_checkpoint(ckpt / "G.safetensors", with_discriminator=False).D is None


def test_wrapper_prefixes_are_stripped(tmp_path):
    class Wrapper(torch.nn.Module):  # stands in for DDP's `module.`
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    G = Generator(MODEL)
    save_checkpoint(tmp_path, 1, {"G": Wrapper(G), "D": Wrapper(Discriminator(MODEL))}, _meta(),
                    None, 1)
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "checkpoints" / "step-00000001" / "G.safetensors"))
    assert set(keys) == set(G.state_dict())
    assert load_checkpoint(tmp_path).G is not None


def test_keep_last_and_incomplete_directories(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2, 3, 4):
        _save(run, step, keep_last=2)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000003", "step-00000004"]
    # A writer killed mid-save leaves a temp dir; a dir without meta.json is not complete.
    (run / "checkpoints" / ".tmp-step-00000009-999999").mkdir()
    (run / "checkpoints" / "step-00000008").mkdir()
    assert resolve_checkpoint(run).name == "step-00000004"
    _save(run, 5, keep_last=2)
    assert not (run / "checkpoints" / ".tmp-step-00000009-999999").exists()  # dead pid: cleaned


def test_resolve_latest_and_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="runs/latest"):
        resolve_checkpoint(None)
    run = tmp_path / "runs" / "demo-1"
    _save(run, 7)
    os.symlink("demo-1", tmp_path / "runs" / "latest")
    assert resolve_checkpoint(None) == (run / "checkpoints" / "step-00000007").resolve()
    assert resolve_checkpoint("latest").name == "step-00000007"
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path / "empty")
    (tmp_path / "200000-G.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="import stargan-v1"):
        resolve_checkpoint(tmp_path / "200000-G.ckpt")


def test_missing_label_table_is_explained(tmp_path):
    ckpt = _save(tmp_path, 1)
    meta = json.loads((ckpt / "meta.json").read_text())
    del meta["labels"]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="no label table.*starcli import stargan-v1"):
        load_checkpoint(ckpt)


def test_mismatched_weights_are_a_checkpoint_error(tmp_path):
    ckpt = _save(tmp_path, 1)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["model"]["g_conv_dim"] = 8
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="G.safetensors does not match"):
        load_checkpoint(ckpt)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unsafe_pickle_is_refused_not_executed(tmp_path):
    ckpt = _save(tmp_path, 1)
    marker = tmp_path / "pwned"
    with open(ckpt / "state.pt", "wb") as f:
        pickle.dump({"step": 1, "evil": _Payload(str(marker))}, f)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing to load .*state.pt.*unsafe pickle"):
        load_checkpoint(ckpt, with_state=True)
    with pytest.raises(CheckpointError, match="unsafe pickle"):
        load_training_state(ckpt)
    assert not marker.exists()
    # The same payload inside torch.save's zip container is refused too.
    torch.save({"evil": _Payload(str(marker))}, ckpt / "state.pt")
    with pytest.raises(CheckpointError, match="unsafe pickle"):
        load_training_state(ckpt)
    assert not marker.exists()


def test_state_with_plain_containers_loads_weights_only(tmp_path):
    import random

    import numpy as np

    state = {"step": 3, "python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np.random.get_state()[1].astype(np.int64))},
             "opt": torch.optim.Adam(Generator(MODEL).parameters()).state_dict(),
             "stream": {"step": 3, "epochs": [0], "positions": [3]}}
    ckpt = _save(tmp_path, 3, state=state)
    back = load_training_state(ckpt)
    assert back["python"] == state["python"] and torch.equal(back["torch"], state["torch"])
