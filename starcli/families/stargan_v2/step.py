"""One StarGAN v2 training iteration on one batch (reference/stargan-v2.md §2.2-2.3).

The engine's batch holds faces of the whole dataset; each row's domain comes from its labels
(`starcli.data.domains`) and rows in none of the domains are not used. Target domains are drawn
class-balanced (uniform over the K domains, independent of the source's: a target may equal the
source domain, as in the official code). The two references of each row, x_ref and x_ref2, are
images of its target domain drawn from a per-domain pool of training images: pre-filled with
the split's first images of each domain, then refreshed ring-wise with every batch's real rows
(after the draw, so a row is never its own reference in that step). The pools and their write
positions are part of the step's state, so a resumed run draws the same references.

The four phases, each with its own optimiser step:

1. D latent: real (BCE → 1, domain y) + fake from F(z, ỹ) (BCE → 0, domain ỹ) + λreg·R1.
2. D reference: the same with the style E(x_ref, ỹ).
3. G latent: adv + λsty·sty − λds·ds + λcyc·cyc with styles F(z, ỹ), F(z2, ỹ); steps G, F and E.
4. G reference: the same with E(x_ref, ỹ), E(x_ref2, ỹ); steps G only (F unused, E frozen: the
   official code discards E's gradients here, on purpose, see §6.5).

With w_hpf > 0 the model has a FAN: face masks of x_real serve both D steps and the G steps'
first pass (and their diversity image); the cycle's are recomputed from the fake (§1.6).

Then the moving averages of G, F and E. Fakes only D sees, and the second image of the
diversity term (detached in the official code), are made without a graph; the styles of the
reference step are made without a graph too (their gradient would only reach E).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from starcli.families.base import StepContext
from starcli.families.stargan_v2.fan import face_masks
from starcli.models.augment import total_variation

__all__ = ["StarGANv2Step", "lambda_ds_at", "r1_penalty", "LOSS_KEYS", "PER_DATASET_KEYS",
           "LOG_KEYS", "POOL_SIZE"]

LOSS_KEYS = ("D/latent", "D/ref", "D/real", "D/fake", "D/r1", "G/latent", "G/ref", "G/adv",
             "G/sty", "G/ds", "G/cyc", "G/id", "G/mask", "lambda_ds")
PER_DATASET_KEYS: tuple[str, ...] = ()
LOG_KEYS = ("D/latent", "D/ref", "D/r1", "G/adv", "G/sty", "G/ds", "G/cyc")

POOL_SIZE = 64  # reference images kept per domain


def lambda_ds_at(lambda_ds: float, ds_iter: int, done: int) -> float:
    """The diversity weight after `done` iterations: λds·max(0, 1 − done/ds_iter).

    Computed from the iteration count rather than decremented in place: the official code
    re-reads the initial value when it resumes and so restarts the decay (a known bug, issue
    #98), and its float decrement overshoots below 0 after ds_iter; here a resumed run uses
    exactly the weight the uninterrupted run would.
    """
    return lambda_ds * max(0.0, 1.0 - done / ds_iter)


def r1_penalty(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """R1: 0.5 · mean over the batch of ||∂ΣD(x)/∂x||², with the graph kept for D's update."""
    (grad,) = torch.autograd.grad(out.float().sum(), x, create_graph=True)
    return 0.5 * grad.float().pow(2).flatten(1).sum(1).mean()


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).abs().mean()


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """No parameter gradients for `modules` (gradients still flow through them)."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Inverse of the loader's x / 127.5 − 1 (exact for loader images): (N,3,S,S) uint8 CPU."""
    return x.detach().float().cpu().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def from_uint8(u: torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,S,S) → float32 in [-1, 1] with the loader's exact values."""
    return u.float().mul(1.0 / 127.5).sub(1.0)


class ReferencePools:
    """Per domain, up to `size` uint8 training images (N,3,S,S) and a ring write position."""

    def __init__(self, images: list[torch.Tensor], size: int = POOL_SIZE) -> None:
        self.size = size
        self.images = [im[:size].clone() for im in images]
        self.cursor = [0] * len(images)

    def draw(self, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One uint8 image of domain y[i] for each i, uniformly from that domain's pool."""
        counts = torch.tensor([len(p) for p in self.images], dtype=torch.float64)
        u = torch.rand(len(y), generator=gen, dtype=torch.float64)
        idx = (u * counts[y]).long().minimum(counts[y].long() - 1)
        return torch.stack([self.images[int(k)][int(i)] for k, i in zip(y, idx, strict=True)])

    def add(self, images: torch.Tensor, y: torch.Tensor) -> None:
        """Put real images (uint8) into their domains' pools (oldest replaced first)."""
        for k in range(len(self.images)):
            for img in images[y == k]:
                pool = self.images[k]
                if len(pool) < self.size:
                    self.images[k] = torch.cat([pool, img[None]])
                else:
                    pool[self.cursor[k]] = img
                    self.cursor[k] = (self.cursor[k] + 1) % self.size

    def state_dict(self) -> dict[str, Any]:
        return {"images": [p.clone() for p in self.images], "cursor": list(self.cursor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        images = [torch.as_tensor(p).to(torch.uint8).clone() for p in state["images"]]
        if len(images) != len(self.images):
            raise ValueError(f"reference pools for {len(images)} domains, the model has "
                             f"{len(self.images)}")
        self.images = images
        self.cursor = [int(c) for c in state["cursor"]]


class StarGANv2Step:
    """Returns detached 0-d tensors. G, F and E train through `ctx.train` (DDP/compile
    wrapped); forwards without a graph use `ctx.nosync`. The real-image D forward and R1 use
    the plain D (double backward does not go through DDP's reducer); its parameter gradients
    join the fake forward's in one backward, so DDP still averages the whole gradient. In the G
    steps D is frozen and called unwrapped, as in the other families."""

    def __init__(self, ctx: StepContext, domains, pools: ReferencePools) -> None:
        self.ctx = ctx
        self.domains = domains
        self.pools = pools
        self.G, self.F, self.E, self.D = (ctx.train[n] for n in ("G", "F", "E", "D"))
        self.G_ng, self.F_ng, self.E_ng, self.D_g = (ctx.nosync[n] for n in ("G", "F", "E", "D"))
        self.D_eager = ctx.modules["D"]
        self.fan = ctx.modules.get("FAN")  # w_hpf > 0: G's face masks

    # -- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"stargan_v2": {"pools": self.pools.state_dict()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pools.load_state_dict(state["stargan_v2"]["pools"])

    # -- helpers ------------------------------------------------------------------------

    def _fmt(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.ctx.rt.channels_last else torch.contiguous_format
        return x.to(self.ctx.rt.device).contiguous(memory_format=fmt)

    def _optimise(self, names: tuple[str, ...], loss: torch.Tensor) -> None:
        """One backward, then a step of each named optimiser (one scaler under fp16)."""
        opts = self.ctx.optimizers
        for n in names:
            opts[n].zero_grad(set_to_none=True)
        scaler = opts.scalers.get(names[0])
        if scaler is None:
            loss.backward()
            for n in names:
                opts[n].step()
        else:
            scaler.scale(loss).backward()
            for n in names:
                scaler.step(opts[n])
            scaler.update()

    def sources(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's rows in a domain and their domains (y on the device). A batch with no
        such row draws its sources from the pools (class-balanced)."""
        ctx = self.ctx
        which = torch.from_numpy(self.domains.assign(batch.labels.numpy()))
        keep = torch.nonzero(which >= 0).flatten()
        if len(keep):
            x = batch.model_input(ctx.rt.device, ctx.rt.channels_last)
            x = x[keep.to(x.device)]
            y = which[keep]
        else:
            y = torch.randint(len(self.domains), (batch.labels.shape[0],), generator=ctx.gen)
            x = self._fmt(from_uint8(self.pools.draw(y, ctx.gen)))
        return x, y.to(ctx.rt.device)

    # -- phases -------------------------------------------------------------------------

    def masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Face masks of x (no graph) when the model has a FAN, else None."""
        return None if self.fan is None else face_masks(self.fan, x)

    def d_phase(self, x_real: torch.Tensor, y_org: torch.Tensor, y_trg: torch.Tensor, *,
                z: torch.Tensor | None = None, x_ref: torch.Tensor | None = None,
                masks: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
        """One D update against fakes styled by F(z, ỹ) (latent) or E(x_ref, ỹ) (reference)."""
        rt, opt = self.ctx.rt, self.ctx.cfg.options
        with torch.no_grad(), rt.autocast():
            s_trg = self.F_ng(z, y_trg) if z is not None else self.E_ng(x_ref, y_trg)
            x_fake = self.G_ng(x_real, s_trg, masks=masks)
        # fp16 gradients of gradients underflow without their own scaling: real path in fp32.
        real_ctx = rt.autocast() if rt.precision != "fp16" else contextlib.nullcontext()
        x_in = x_real.detach().requires_grad_(True)
        with real_ctx:
            out_real = self.D_eager(x_in, y_org)
            r1 = r1_penalty(out_real, x_in)
        with rt.autocast():
            out_fake = self.D(x_fake.to(x_real.dtype), y_trg)
        real, fake = _bce(out_real, 1.0), _bce(out_fake, 0.0)
        loss = real + fake + opt.lambda_reg * r1
        self._optimise(("D",), loss)
        return {"loss": loss.detach(), "real": real.detach(), "fake": fake.detach(),
                "r1": r1.detach()}

    def g_phase(self, x_real: torch.Tensor, y_org: torch.Tensor, y_trg: torch.Tensor,
                lambda_ds: float, *, z: tuple[torch.Tensor, torch.Tensor] | None = None,
                x_ref: tuple[torch.Tensor, torch.Tensor] | None = None,
                masks: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
        """One G update with styles from F(z1/z2, ỹ) (latent: steps G, F, E) or E(x_ref1/2, ỹ)
        (reference: steps G only)."""
        rt, opt = self.ctx.rt, self.ctx.cfg.options
        latent = z is not None
        modules = self.ctx.modules
        # The reference step leaves F and E alone: E is frozen (G still gets the gradient
        # through E of the style-reconstruction loss), F is not called.
        fixed = (modules["D"],) if latent else (modules["D"], modules["E"])
        E = self.E if latent else self.E_ng
        with frozen(*fixed), rt.autocast():
            if latent:
                s_trg = self.F(z[0], y_trg)
                with torch.no_grad():
                    s_trg2 = self.F_ng(z[1], y_trg)
            else:
                with torch.no_grad():
                    s_trg = self.E_ng(x_ref[0], y_trg)
                    s_trg2 = self.E_ng(x_ref[1], y_trg)
            x_fake, attention = self.G(x_real, s_trg, masks=masks, with_mask=True)
            adv = _bce(self.D_g(x_fake, y_trg), 1.0)
            sty = _l1(E(x_fake, y_trg), s_trg)
            with torch.no_grad():  # detached in the official code: only x_fake's branch learns
                x_fake2 = self.G_ng(x_real, s_trg2, masks=masks)
            ds = _l1(x_fake, x_fake2)
            if latent:
                s_org = E(x_real, y_org)
            else:
                with torch.no_grad():
                    s_org = self.E_ng(x_real, y_org)
            # the cycle's masks come from the fake, as in the official code
            cyc = _l1(self.G(x_fake, s_org, masks=self.masks(x_fake)), x_real)
            loss = adv + opt.lambda_sty * sty - lambda_ds * ds + opt.lambda_cyc * cyc
            extra: dict[str, torch.Tensor] = {}
            if opt.lambda_id > 0:  # its own style leaves an image as it is
                extra["id"] = _l1(self.G(x_real, s_org, masks=masks), x_real)
                loss = loss + opt.lambda_id * extra["id"]
            if attention is not None and (opt.lambda_mask > 0 or opt.lambda_mask_tv > 0):
                extra["mask"] = attention.float().mean()
                loss = loss + opt.lambda_mask * extra["mask"] + \
                    opt.lambda_mask_tv * total_variation(attention)
        self._optimise(("G", "F", "E") if latent else ("G",), loss)
        return {"loss": loss.detach(), "adv": adv.detach(), "sty": sty.detach(),
                "ds": ds.detach(), "cyc": cyc.detach(),
                **{k: v.detach() for k, v in extra.items()}}

    # -- the iteration ------------------------------------------------------------------

    def __call__(self, step: int, batch: Any) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        opt, rt, gen = ctx.cfg.options, ctx.rt, ctx.gen
        x_real, y_org = self.sources(batch)
        n = x_real.shape[0]
        y_cpu = torch.randint(len(self.domains), (n,), generator=gen)
        y_trg = y_cpu.to(rt.device)
        refs = []
        for _ in range(2):
            ref = from_uint8(self.pools.draw(y_cpu, gen))
            if ctx.cfg.augment:  # each reference flipped on its own, like the official loader
                flip = torch.rand(n, generator=gen) < 0.5
                ref[flip] = ref[flip].flip(-1)
            refs.append(self._fmt(ref).to(x_real.dtype))
        z1 = torch.randn(n, opt.latent_dim, generator=gen).to(rt.device)
        z2 = torch.randn(n, opt.latent_dim, generator=gen).to(rt.device)
        self.pools.add(to_uint8(x_real), y_org.cpu())
        lam = lambda_ds_at(opt.lambda_ds, opt.ds_iter, step - 1)  # engine steps count from 1

        masks = self.masks(x_real)  # one set for both D steps and the G steps' first pass
        d_lat = self.d_phase(x_real, y_org, y_trg, z=z1, masks=masks)
        d_ref = self.d_phase(x_real, y_org, y_trg, x_ref=refs[0], masks=masks)
        g_lat = self.g_phase(x_real, y_org, y_trg, lam, z=(z1, z2), masks=masks)
        g_ref = self.g_phase(x_real, y_org, y_trg, lam, x_ref=(refs[0], refs[1]), masks=masks)
        for name in ("G", "F", "E"):
            if name in ctx.ema:
                ctx.ema[name].update()

        def mean(key: str, a: dict, b: dict) -> torch.Tensor:
            return (a[key] + b[key]) / 2

        return {"D/latent": d_lat["loss"], "D/ref": d_ref["loss"],
                "D/real": mean("real", d_lat, d_ref), "D/fake": mean("fake", d_lat, d_ref),
                "D/r1": mean("r1", d_lat, d_ref),
                "G/latent": g_lat["loss"], "G/ref": g_ref["loss"],
                "G/adv": mean("adv", g_lat, g_ref), "G/sty": mean("sty", g_lat, g_ref),
                "G/ds": mean("ds", g_lat, g_ref), "G/cyc": mean("cyc", g_lat, g_ref),
                **{f"G/{k}": mean(k, g_lat, g_ref) for k in ("id", "mask") if k in g_lat},
                "lambda_ds": torch.tensor(lam, dtype=torch.float32)}


def first_images(ds, domains, split: str, per_domain: int) -> list[torch.Tensor]:
    """The first `per_domain` images of each domain in `split` as uint8 (N,3,S,S) tensors."""
    from starcli.families.cyclegan.samples import domain_rows

    rows = domain_rows(ds, domains, split, per_domain, scan=max(4096, 64 * per_domain))
    return [torch.from_numpy(np.ascontiguousarray(r.transpose(0, 3, 1, 2))) for r in rows]
