"""StarGAN v1 inference: the forward translate uses, and the inputs' own labels from D.

G and D are prepared once for one device and precision: weights cast to the dtype (bf16 where
the hardware runs it natively), channels-last on CPU and CUDA, `torch.inference_mode`. Instance
norm runs as a group norm with one channel per group: the same function, and much faster on CPU
in channels-last.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from starcli.data.labels import LabelLayout
from starcli.families.base import PixelIO

__all__ = ["Translator", "estimate_labels", "DTYPES"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _instance_norm(h: torch.Tensor, norm: torch.nn.Module, relu: bool) -> torch.Tensor:
    # Instance norm is a group norm with one channel per group; PyTorch's group-norm kernel
    # keeps channels-last tensors in place and is ~3x faster on CPU.
    out = F.group_norm(h, h.shape[1], norm.weight, norm.bias, norm.eps)
    return out.relu_() if relu else out


class Translator(PixelIO):
    """G and (optionally) D prepared for fast inference on one device and precision."""

    @classmethod
    def from_checkpoint(cls, ckpt, device: torch.device, precision: str,
                        fast: bool = True) -> Translator:
        return cls(ckpt.G, ckpt.D, device, precision, fast)

    @property
    def can_estimate_labels(self) -> bool:
        """True when D is loaded, so the inputs' own labels can be estimated."""
        return self.D is not None

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module | None, device: torch.device,
                 precision: str, fast: bool = True) -> None:
        """`fast`: weights cast to the precision's dtype and the group-norm forward (translate).
        Otherwise the modules keep fp32 weights and run under autocast (eval's measurements,
        which must not move when the fast path is tuned)."""
        self.device = device
        self.precision = precision
        self.fast = fast
        self.dtype = DTYPES[precision] if fast else torch.float32
        self.channels_last = device.type in ("cpu", "cuda") or not fast
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.G = G.to(device=device, dtype=self.dtype, memory_format=fmt).eval()
        self.D = D.to(device=device, dtype=self.dtype, memory_format=fmt).eval() if D else None
        self._fast = fast and all(hasattr(self.G, a)
                                  for a in ("stem", "down", "blocks", "up", "to_rgb"))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """G(x, c) as float32 for (N, 3, S, S) inputs in [-1, 1] and encoded labels `c`."""
        if self.fast:
            return self.generate(x, c.detach().cpu().numpy()).float()
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.precision == "bf16"):
            return self.G(x, c).float()

    def generate(self, x: torch.Tensor, c: np.ndarray) -> torch.Tensor:
        labels = torch.from_numpy(c).to(self.device, self.dtype)
        with torch.inference_mode():
            if not self._fast:
                return self.G(x, labels)
            G = self.G
            n, _, h, w = x.shape
            planes = labels[:, :, None, None].expand(n, labels.shape[1], h, w)
            z = torch.cat([x, planes], dim=1)
            if self.channels_last:
                z = z.contiguous(memory_format=torch.channels_last)
            z = _instance_norm(G.stem.conv(z), G.stem.norm, True)
            for layer in G.down:
                z = _instance_norm(layer.conv(z), layer.norm, True)
            for block in G.blocks:
                r = _instance_norm(block.conv1(z), block.norm1, True)
                z = z + _instance_norm(block.conv2(r), block.norm2, False)
            for layer in G.up:
                z = _instance_norm(layer.conv(z), layer.norm, True)
            return torch.tanh(G.to_rgb(z))

    def own_labels(self, x: torch.Tensor, layout: LabelLayout) -> np.ndarray:
        """The inputs' own labels as D reads them, (N, cls_dim) float32 of 0/1."""
        return estimate_labels(self.classify(x), layout)

    def classify(self, x: torch.Tensor) -> np.ndarray:
        """D's classification logits (N, cls_dim) as float32."""
        assert self.D is not None
        with torch.inference_mode():
            _, cls = self.D(x)
        return cls.float().cpu().numpy()


def estimate_labels(logits: np.ndarray, layout: LabelLayout) -> np.ndarray:
    """The inputs' own labels from D's logits: sigmoid > 0.5 (logit > 0) for multi-label
    spaces, argmax for one-hot spaces. (N, cls_dim) float32 of 0/1."""
    out = np.zeros_like(logits, dtype=np.float32)
    for block in layout.blocks:
        part = logits[:, block.offset:block.stop]
        if block.space.kind == "onehot":
            out[np.arange(len(part)), block.offset + part.argmax(axis=1)] = 1.0
        else:
            on = part > 0
            # An exclusive group (hair colours) keeps only its most confident member.
            for group in block.space.exclusive_groups:
                cols = [block.space.names.index(n) for n in group if n in block.space.names]
                if len(cols) < 2:
                    continue
                best = np.array(cols)[part[:, cols].argmax(axis=1)]
                keep = np.zeros_like(on)
                keep[np.arange(len(part)), best] = True
                on[:, cols] &= keep[:, cols]
            out[:, block.offset:block.stop] = on.astype(np.float32)
    return out
