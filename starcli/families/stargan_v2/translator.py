"""StarGAN v2 inference with the moving averages: latent- and reference-guided translation.

    tr = get_family("stargan-v2").translator(ckpt, device, "fp32")
    tr.generate_latent(x, y, z, psi=0.7)      # styles F(z, y), truncated toward y's mean
    tr.generate_reference(x, ref, y)          # the style of `ref` read as domain y
    tr.domain_of(ref)                         # D's most real-looking domain (D loaded)

translate and eval hand over label vectors of the dataset's label table: a row's target
domain is the domain its labels fall in (`ckpt.model.domains`), and its style is one latent
style drawn with a seed from the input image itself, so an input gets the same style whatever
the batch it is in. A target in none of the domains returns the input unchanged.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from starcli.families.base import PixelIO
from starcli.families.stargan_v2.fan import face_masks

__all__ = ["Translator", "MEAN_STYLE_SAMPLES"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MEAN_STYLE_SAMPLES = 1000  # z per domain averaged for the truncation trick's mean style
MEAN_STYLE_SEED = 0


class Translator(PixelIO):
    can_estimate_labels = False  # D judges real/fake per domain, not the other labels

    @classmethod
    def from_checkpoint(cls, ckpt, device: torch.device, precision: str,
                        fast: bool = True) -> Translator:
        m = ckpt.modules
        return cls(m["G"], m["F"], m["E"], m.get("D"), ckpt.model.domains, ckpt.layout,
                   device, precision, fast, fan=m.get("FAN"))

    def __init__(self, G, F, E, D, domains, layout, device: torch.device, precision: str,
                 fast: bool = True, fan=None) -> None:
        self.device, self.precision, self.fast = device, precision, fast
        self.dtype = DTYPES[precision] if fast else torch.float32
        self.channels_last = device.type in ("cpu", "cuda") or not fast
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.G = G.to(device=device, dtype=self.dtype, memory_format=fmt).eval()
        self.F = F.to(device=device, dtype=self.dtype).eval()
        self.E = E.to(device=device, dtype=self.dtype, memory_format=fmt).eval()
        self.D = None if D is None else \
            D.to(device=device, dtype=self.dtype, memory_format=fmt).eval()
        # The FAN stays float32 (face_masks runs it without autocast); G gets the masks of
        # each source image, as the official sampler does.
        self.fan = None if fan is None else fan.to(device).eval()
        self._masks_of: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.domains = domains
        self.block = layout.blocks[0]
        self.latent_dim = self.F.cfg.latent_dim
        self._mean_style: torch.Tensor | None = None

    # -- the StarGAN v2 views ------------------------------------------------------------

    def mean_style(self) -> torch.Tensor:
        """(K, style_dim): each domain's mean of F over MEAN_STYLE_SAMPLES fixed z."""
        if self._mean_style is None:
            k = self.F.cfg.num_domains
            gen = torch.Generator().manual_seed(MEAN_STYLE_SEED)
            z = torch.randn(MEAN_STYLE_SAMPLES, self.latent_dim, generator=gen)
            z = z.to(self.device, self.dtype)
            with torch.inference_mode():
                self._mean_style = torch.stack([
                    self.F(z, torch.full((len(z),), d, device=self.device)).float().mean(0)
                    for d in range(k)])
        return self._mean_style

    def generate_latent(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                        psi: float = 1.0) -> torch.Tensor:
        """G(x, s) with s = F(z, y), lerped toward domain y's mean style by 1 − psi."""
        y = torch.as_tensor(y, device=self.device).long()
        with torch.inference_mode():
            s = self.F(z.to(self.device, self.dtype), y)
            if psi != 1.0:
                mean = self.mean_style()[y].to(s.dtype)
                s = torch.lerp(mean, s, psi)
            return self._G(self._input(x), s)

    def generate_reference(self, x: torch.Tensor, ref: torch.Tensor,
                           y: torch.Tensor) -> torch.Tensor:
        """G(x, E(ref, y)): x in the style of the reference, read as domain y."""
        y = torch.as_tensor(y, device=self.device).long()
        with torch.inference_mode():
            return self._G(self._input(x), self.E(self._input(ref), y))

    def domain_of(self, ref: torch.Tensor) -> torch.Tensor:
        """(N,) the domain whose D logit is highest for each image (needs D)."""
        if self.D is None:
            raise ValueError("this checkpoint was loaded without its discriminator")
        with torch.inference_mode():
            return self.D.logits(self._input(ref)).float().argmax(1)

    # -- styles for translate's --styles / --ref -------------------------------------------

    has_styles = True  # translate: --styles, --seed, --psi and --ref apply

    def latent_style(self, z: torch.Tensor, y: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        """(N, style_dim) F(z, y), lerped toward domain y's mean style by 1 − psi."""
        y = torch.as_tensor(y, device=self.device).long()
        with torch.inference_mode():
            s = self.F(z.to(self.device, self.dtype), y)
            if psi != 1.0:
                s = torch.lerp(self.mean_style()[y].to(s.dtype), s, psi)
            return s

    def reference_style(self, ref: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, style_dim) E(ref, y): the style of each reference read as domain y."""
        y = torch.as_tensor(y, device=self.device).long()
        with torch.inference_mode():
            return self.E(self._input(ref), y)

    def generate_styled(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """G(x, s) for inputs in [-1, 1] and one style row per input."""
        with torch.inference_mode():
            return self._G(self._input(x), s.to(self.device, self.dtype))

    def domain_names(self) -> tuple[str, ...]:
        return tuple(self.domains.names)

    # -- what translate and eval call ------------------------------------------------------

    def target_domains(self, c: np.ndarray) -> np.ndarray:
        """(N,) the target domain of each encoded label row (-1: none)."""
        return self.domains.assign(np.asarray(c)[:, self.block.offset:self.block.stop])

    def seeded_z(self, x: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) one z per input, seeded by the input's pixels (as uint8)."""
        pixels = x.detach().float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
        pixels = pixels.cpu().numpy()
        z = [torch.randn(self.latent_dim, generator=torch.Generator().manual_seed(
            zlib.crc32(p.tobytes()))) for p in pixels]
        return torch.stack(z) if z else torch.zeros(0, self.latent_dim)

    def masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The face masks of sources x when the checkpoint has a FAN, else None. The last
        batch's masks are kept: K styles of one batch (--styles, eval's 10 per face) run the
        landmark network once, not K times."""
        if self.fan is None:
            return None
        last = self._masks_of
        if last is not None and last[0].shape == x.shape and last[0].dtype == x.dtype and \
                last[0].device == x.device and torch.equal(last[0], x):
            return last[1]
        masks = face_masks(self.fan, x)
        self._masks_of = (x.detach().clone(), masks)
        return masks

    def _G(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self.G(x, s, masks=self.masks(x))

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(self.device, self.dtype).contiguous(memory_format=fmt)

    def _run(self, x: torch.Tensor, c: np.ndarray) -> torch.Tensor:
        which = self.target_domains(c)
        out = x.clone()
        rows = np.flatnonzero(which >= 0)
        if len(rows):
            idx = torch.from_numpy(rows).to(x.device)
            part = x[idx]
            y = torch.from_numpy(which[rows]).to(self.device)
            z = self.seeded_z(part).to(self.device, self.dtype)
            out[idx] = self._G(part, self.F(z, y)).to(out.dtype)
        return out

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The translation of (N, 3, S, S) inputs in [-1, 1] to encoded targets `c`, float32."""
        c = c.detach().float().cpu().numpy()
        with torch.inference_mode():
            if self.fast:
                return self._run(self._input(x), c).float()
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=self.precision == "bf16"):
                return self._run(x, c).float()

    def generate(self, x: torch.Tensor, c: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self._run(self._input(x), c)

    def own_labels(self, x: torch.Tensor, layout) -> np.ndarray:
        raise NotImplementedError("StarGAN v2 has no label classifier; pass --labels")

    def classify(self, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError("StarGAN v2 has no label classifier")
