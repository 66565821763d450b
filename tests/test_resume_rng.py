"""Restoring saved RNG states on a machine with fewer GPUs than the one that saved them."""

from __future__ import annotations

import logging

import torch

from starcli.engine import state as st


def test_cuda_rng_restore_with_fewer_devices_warns_once(monkeypatch, caplog):
    gen = torch.Generator().manual_seed(1)
    saved = st.rng_state(gen, torch.device("cpu"))
    first, second = torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)
    saved["cuda"] = [first, second]  # written on a 2-GPU machine
    restored: dict[int, torch.Tensor] = {}

    def set_rng_state_all(states):
        # As torch does: one state per index, and an index past the last device fails.
        for i, s in enumerate(states):
            if i >= torch.cuda.device_count():
                raise IndexError("list index out of range")
            restored[i] = s

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_rng_state_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda s, device=0: restored.__setitem__(int(device), s))
    with caplog.at_level(logging.WARNING):
        st.set_rng_state(saved, gen, torch.device("cuda"))
    assert list(restored) == [0] and torch.equal(restored[0], first)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 GPU" in warnings[0].getMessage()
    assert "bit-identical" in warnings[0].getMessage()

    # The CPU generators were restored too, and as many devices as states is silent.
    restored.clear()
    caplog.clear()
    saved["cuda"] = [first]
    st.set_rng_state(saved, gen, torch.device("cuda"))
    assert torch.equal(restored[0], first) and not caplog.records
