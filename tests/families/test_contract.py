"""Every registered model family honours the same contract with the engine: build, one step,
save, load, translate; and the engine never needs to know which family it runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from starcli.checkpoint import load_checkpoint, read_meta
from starcli.config import TrainConfig
from starcli.families import FAMILY_NAMES, family_info, get_family

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_registry_entry_is_torch_free_and_has_the_tiny_preset(name):
    info = family_info(name)
    assert "tiny" in info.presets
    assert get_family(name).name == name


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_build_step_save_load_translate(name, home, tmp_path, make_dataset):
    from starcli.engine import attach_step, build_parts, describe_run, train

    make_dataset(home, "demo-celeba", "celeba", seed=0)
    cfg = TrainConfig.from_preset("tiny", family=name, datasets=("demo-celeba",),
                                  home=str(home), device="cpu", precision="fp32",
                                  run_dir=str(tmp_path / "run"), iters=2, save_every=2,
                                  sample_every=2, log_every=1)
    plan = describe_run(cfg)
    family = plan.family

    # build: every optimiser and moving average names a module the family built
    parts = build_parts(plan)
    specs = family.optimizers(cfg.options)
    assert set(parts.optimizers.opts) == set(specs)
    assert {m for s in specs.values() for m in s.modules} <= set(parts.modules)
    assert set(family.ema(cfg.options)) <= set(parts.modules)

    # one step: finite values for keys the family declares, and the weights move
    from starcli.data.dataset import TrainStream

    step = attach_step(plan, parts)
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in parts.modules.items()}
    stream = TrainStream(plan.datasets, plan.layout, batch_size=plan.runtime.batch, seed=0)
    try:
        values = {}
        for i, batch in zip(range(1, 3), stream, strict=False):  # G may step every n_critic-th
            values.update(step(i, batch))
    finally:
        stream.close()
    assert values and set(values) <= set(family.loss_keys) | set(family.per_dataset_keys)
    assert all(torch.isfinite(v).all() for v in values.values())
    for n, m in parts.modules.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[n], m.parameters(),
                                                         strict=True)), f"{n} did not train"

    # save and load through the engine: the checkpoint names its family and modules
    result = train(cfg)
    meta = read_meta(Path(result["checkpoint"]))
    assert meta["family"] == name and set(meta["modules"]) >= set(parts.modules)
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt.family == name and ckpt.model == plan.model

    # translate: the family's translator maps images to images of the same size
    translator = family.translator(ckpt, torch.device("cpu"), "fp32")
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    c = np.zeros((2, plan.layout.c_dim), np.float32)
    with torch.inference_mode():
        out = translator.to_uint8(translator.generate(translator.to_input(images), c))
    assert out.shape == images.shape and out.dtype == np.uint8
