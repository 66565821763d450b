"""CycleGAN inference for translate and eval: a target label vector picks the generator.

Targets are label vectors of the dataset's label table, as for every family: a row whose
target lies in domain B goes through G_AB, one in domain A through G_BA (a CycleGAN maps each
image to the other domain whatever its own labels; an image already in the target domain
passes through a generator trained to leave it alone, the identity loss). A target in neither
domain (e.g. Gray_Hair for a Blond/Black pair) returns the input unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from starcli.families.base import PixelIO

__all__ = ["Translator"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Translator(PixelIO):
    can_estimate_labels = False  # no domain classifier: translate reads --labels or --to

    @classmethod
    def from_checkpoint(cls, ckpt, device: torch.device, precision: str,
                        fast: bool = True) -> Translator:
        return cls(ckpt.modules["G_AB"], ckpt.modules["G_BA"], ckpt.model.domains,
                   ckpt.layout, device, precision, fast)

    def __init__(self, G_AB, G_BA, domains, layout, device: torch.device, precision: str,
                 fast: bool = True) -> None:
        self.device, self.precision, self.fast = device, precision, fast
        self.dtype = DTYPES[precision] if fast else torch.float32
        self.channels_last = device.type in ("cpu", "cuda") or not fast
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.G = {1: G_AB.to(device=device, dtype=self.dtype, memory_format=fmt).eval(),
                  0: G_BA.to(device=device, dtype=self.dtype, memory_format=fmt).eval()}
        self.domains = domains
        self.block = layout.blocks[0]
        self.D = None

    def target_domains(self, c: np.ndarray) -> np.ndarray:
        """(N,) the target domain of each encoded label row (-1: neither)."""
        return self.domains.assign(np.asarray(c)[:, self.block.offset:self.block.stop])

    def _run(self, x: torch.Tensor, c: np.ndarray) -> torch.Tensor:
        which = self.target_domains(c)
        out = x.clone()
        for k, G in self.G.items():
            rows = np.flatnonzero(which == k)
            if len(rows):
                idx = torch.from_numpy(rows).to(x.device)
                out[idx] = G(x[idx]).to(out.dtype)
        return out

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The translation of (N, 3, S, S) inputs in [-1, 1] to encoded targets `c`, float32."""
        c = c.detach().float().cpu().numpy()
        with torch.inference_mode():
            if self.fast:
                return self._run(x.to(self.dtype), c).float()
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=self.precision == "bf16"):
                return self._run(x, c).float()

    def generate(self, x: torch.Tensor, c: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self._run(x.to(self.dtype), c)

    def own_labels(self, x: torch.Tensor, layout) -> np.ndarray:
        raise NotImplementedError("a CycleGAN has no classifier; pass --labels")

    def classify(self, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError("a CycleGAN has no classifier")
