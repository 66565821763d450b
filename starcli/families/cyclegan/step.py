"""The CycleGAN objective on one batch (Zhu et al. 2017, eq. 1-3, with LSGAN and identity).

The engine's batch holds faces of the whole dataset; each row's domain comes from its labels
(`starcli.data.domains`). Rows of A train A→B→A, rows of B train B→A→B, rows in neither domain
are not used. A side that drew no rows this step reuses its latest real images (the step keeps
the last batch of each domain, pre-filled from the training split, so every step trains both
directions; with the paper's batch 1 the two sides alternate fresh and reused images).

G step (D frozen): LSGAN (D_B(G_AB(a)) → 1, D_A(G_BA(b)) → 1), cycle L1 x lambda_cycle, identity
L1 (G_AB(b) ≈ b, G_BA(a) ≈ a) x lambda_identity x lambda_cycle. D step: each D on its real
images (→ 1) and on fakes drawn from a pool of past fakes (→ 0), halved as in the paper.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from starcli.families.base import StepContext

__all__ = ["CycleGANStep", "ImagePool", "LOSS_KEYS", "PER_DATASET_KEYS", "LOG_KEYS"]

LOSS_KEYS = ("G/loss", "G/adv", "G/cycle", "G/idt", "D/loss", "D/A", "D/B")
PER_DATASET_KEYS: tuple[str, ...] = ()
LOG_KEYS = ("D/loss", "G/adv", "G/cycle", "G/idt")


class ImagePool:
    """Up to `size` past fakes: until full every fake is stored and returned; then each new
    fake is, with probability 1/2, swapped for a random stored one (which D sees instead)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: torch.Tensor | None = None  # (n <= size, 3, S, S), CPU float32

    def __len__(self) -> int:
        return 0 if self.images is None else self.images.shape[0]

    def query(self, fakes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.size == 0:
            return fakes
        fakes = fakes.detach()
        out = []
        for img in fakes:
            cpu = img.float().cpu()[None]
            if len(self) < self.size:
                self.images = cpu if self.images is None else torch.cat([self.images, cpu])
                out.append(img)
            elif torch.rand((), generator=gen) < 0.5:
                k = int(torch.randint(len(self), (), generator=gen))
                out.append(self.images[k].clone().to(img.device, img.dtype))
                self.images[k] = cpu[0]
            else:
                out.append(img)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images.clone() if self.images is not None else torch.zeros(0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        images = state["images"]
        self.images = images.clone().float() if images.numel() else None


def _lsgan(pred: torch.Tensor, target: float) -> torch.Tensor:
    pred = pred.float()
    return F.mse_loss(pred, torch.full_like(pred, target))


class CycleGANStep:
    """Returns detached 0-d loss tensors. Under DDP the G step calls the unwrapped D's (frozen
    there) and the D step the wrapped ones, as the StarGAN v1 step does."""

    def __init__(self, ctx: StepContext, domains, reserve: tuple[torch.Tensor, torch.Tensor]
                 ) -> None:
        self.ctx = ctx
        self.domains = domains
        opt = ctx.cfg.options
        self.pools = (ImagePool(opt.pool_size), ImagePool(opt.pool_size))  # fakes of A, of B
        self.reserve = [r.clone() for r in reserve]  # the latest real images of A and of B
        self.G_AB, self.G_BA = ctx.train["G_AB"], ctx.train["G_BA"]
        self.D_A, self.D_B = ctx.train["D_A"], ctx.train["D_B"]
        self.D_A_g, self.D_B_g = ctx.nosync["D_A"], ctx.nosync["D_B"]
        self.D_eager = (ctx.modules["D_A"], ctx.modules["D_B"])

    def state_dict(self) -> dict[str, Any]:
        return {"cyclegan": {"pool_A": self.pools[0].state_dict(),
                             "pool_B": self.pools[1].state_dict(),
                             "reserve_A": self.reserve[0].clone(),
                             "reserve_B": self.reserve[1].clone()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = state["cyclegan"]
        self.pools[0].load_state_dict(mine["pool_A"])
        self.pools[1].load_state_dict(mine["pool_B"])
        self.reserve = [mine["reserve_A"].clone().float(), mine["reserve_B"].clone().float()]

    def _sides(self, batch: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        which = self.domains.assign(batch.labels.numpy())
        sides = []
        for k in (0, 1):
            rows = np.flatnonzero(which == k)
            if len(rows):
                real = x[torch.from_numpy(rows).to(x.device)]
                self.reserve[k] = real.detach().float().cpu().contiguous()
            else:
                real = self.reserve[k].to(x.device, x.dtype)
                fmt = torch.channels_last if self.ctx.rt.channels_last else \
                    torch.contiguous_format
                real = real.contiguous(memory_format=fmt)
            sides.append(real)
        return sides[0], sides[1]

    def __call__(self, step: int, batch: Any) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        opt, rt = ctx.cfg.options, ctx.rt
        x = batch.model_input(rt.device, rt.channels_last)
        real_a, real_b = self._sides(batch, x)
        na, nb = real_a.shape[0], real_b.shape[0]
        lam_idt = opt.lambda_identity * opt.lambda_cycle

        # ---- G: fool both D's, close both cycles, leave in-domain images alone.
        for d in self.D_eager:
            d.requires_grad_(False)
        try:
            with rt.autocast():
                fake_b = self.G_AB(real_a)
                fake_a = self.G_BA(real_b)
                # Instance norm is per image, so one call over [fake, real] equals two.
                back_a = self.G_BA(torch.cat([fake_b, real_a]))
                back_b = self.G_AB(torch.cat([fake_a, real_b]))
                rec_a, idt_a = back_a[:na], back_a[na:]
                rec_b, idt_b = back_b[:nb], back_b[nb:]
                g_adv = _lsgan(self.D_B_g(fake_b), 1.0) + _lsgan(self.D_A_g(fake_a), 1.0)
                g_cycle = F.l1_loss(rec_a.float(), real_a.float()) + \
                    F.l1_loss(rec_b.float(), real_b.float())
                g_idt = F.l1_loss(idt_a.float(), real_a.float()) + \
                    F.l1_loss(idt_b.float(), real_b.float())
                g_loss = g_adv + opt.lambda_cycle * g_cycle + lam_idt * g_idt
            ctx.optimizers.step("g", g_loss)
        finally:
            for d in self.D_eager:
                d.requires_grad_(True)

        # ---- D: real → 1, a fake from the pool → 0, each D's loss halved.
        pool_a = self.pools[0].query(fake_a.detach(), ctx.gen)
        pool_b = self.pools[1].query(fake_b.detach(), ctx.gen)
        with rt.autocast():
            pa = self.D_A(torch.cat([real_a, pool_a.to(real_a.dtype)]))
            pb = self.D_B(torch.cat([real_b, pool_b.to(real_b.dtype)]))
            d_a = 0.5 * (_lsgan(pa[:na], 1.0) + _lsgan(pa[na:], 0.0))
            d_b = 0.5 * (_lsgan(pb[:nb], 1.0) + _lsgan(pb[nb:], 0.0))
            d_loss = d_a + d_b
        ctx.optimizers.step("d", d_loss)
        return {"G/loss": g_loss.detach(), "G/adv": g_adv.detach(),
                "G/cycle": g_cycle.detach(), "G/idt": g_idt.detach(),
                "D/loss": d_loss.detach(), "D/A": d_a.detach(), "D/B": d_b.detach()}
