"""The StarGAN v1 objective applied to one batch (Choi et al. 2018, eq. 1-4).

Each iteration takes one batch of one dataset, shuffles the batch's own labels into targets
(exclusive groups such as hair colour stay valid because whole label rows move), trains D on
real images and on fakes (made without a graph unless G trains on them in this iteration), and
every `n_critic`-th batch of each dataset trains G on the adversarial, classification and
cycle-reconstruction losses. In a joint run the only difference is the label layout: the
classification loss looks at the batch's own dataset's slice of D's logits.

The speed comes from: no graph for fakes that only D sees, real and fake images in one D pass,
no D weight gradients in the G step, and one fake shared by the D and G steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from starcli.families.base import StepContext
from starcli.models.augment import augment, total_variation
from starcli.models.losses import (
    classification_loss,
    classifier_gradient_penalty,
    conditional_scores,
    d_adversarial_loss,
    fgsm_images,
    g_adversarial_loss,
    gradient_penalty,
    reconstruction_loss,
)

__all__ = ["StarGANv1Step", "LOSS_KEYS", "PER_DATASET_KEYS", "LOG_KEYS"]

LOSS_KEYS = ("D/loss", "D/adv", "D/cls", "D/gp", "D/cls_gp", "D/cls_adv", "D/cond_adv",
             "G/loss", "G/adv", "G/cls", "G/rec", "G/id", "G/mask", "G/change_tv",
             "G/cond_adv")
PER_DATASET_KEYS = ("D/cls", "D/acc_real", "G/cls", "G/rec", "G/acc_fake")
LOG_KEYS = ("D/loss", "D/cls", "G/loss", "G/cls", "G/rec")


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No parameter gradients for `module` (gradients still flow through it to its input)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def _accuracy(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "onehot":
        return (logits.argmax(1) == target.argmax(1)).float().mean()
    return ((logits > 0).float() == target).float().mean()


class StarGANv1Step:
    """Returns detached 0-d loss tensors. Under DDP the D step calls the wrapped D and the G
    step the unwrapped one (its parameters are frozen there, and a DDP forward whose
    parameters get no gradient would leave its reduction unfinished); the gradient penalty
    also uses the unwrapped D (double backward through DDP's reducer is not supported) and its
    parameter gradients join the same accumulation, so DDP still averages the whole gradient."""

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.G = ctx.train["G"]
        self.D = ctx.train["D"]
        self.D_eager = ctx.modules["D"]  # for the gradient penalty (double backward)
        self.D_g = ctx.nosync["D"]  # D as the G step calls it (frozen; unwrapped under DDP)
        self.ema = ctx.ema.get("G")
        opt = ctx.cfg.options
        policy = opt.augments
        # D sees every image (real and fake, in both steps) through the same kind of random
        # transforms; an empty policy is the paper's D.
        self.aug = (lambda t: augment(t, policy, ctx.gen)) if policy else (lambda t: t)
        self.blend = opt.g_blend
        self.cond = opt.lambda_cond_adv > 0  # D's class-conditional realism head
        # D steps taken per label space: G steps every n_critic-th batch *of each dataset*,
        # so strict alternation with an even n_critic cannot starve one dataset of G updates.
        self.d_steps = [0] * len(ctx.layout.spaces)

    def state_dict(self) -> dict[str, Any]:
        return {"d_steps": list(self.d_steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.d_steps[:] = [int(n) for n in state["d_steps"]]

    def __call__(self, step: int, batch: Any) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        opt, rt, layout = ctx.cfg.options, ctx.rt, ctx.layout
        space = batch.space_index
        x = batch.model_input(rt.device, rt.channels_last)
        labels = batch.labels.to(rt.device)
        c_org = batch.c.to(rt.device)
        kind = layout.spaces[space].kind
        cls_slice = layout.cls_slice(space)
        n = x.shape[0]
        # Targets: this batch's own label rows, shuffled (the paper's scheme).
        perm = torch.randperm(n, generator=ctx.gen).to(rt.device)
        label_trg = labels[perm]
        c_trg = layout.encode(space, label_trg)
        out: dict[str, torch.Tensor] = {}

        if step <= opt.d_warmup:  # --d-warmup: D's classifier alone, on the real images
            with rt.autocast():
                src, cls, *cond = self.D(self.aug(x), with_cond=self.cond)
                cls_real = cls[:, cls_slice]
                d_cls = classification_loss(cls_real, labels, kind)
            # The other heads join with weight 0, so DDP sees every parameter used.
            unused = sum(t.float().sum() for t in [src, *cond])
            ctx.optimizers.step("d", opt.lambda_cls * d_cls + 0.0 * unused)
            return {"D/cls": d_cls.detach(),
                    "D/acc_real": _accuracy(cls_real.detach().float(), labels, kind)}

        def d_cls_eager(z: torch.Tensor) -> torch.Tensor:  # D's logits of this label space
            return self.D_eager(self.aug(z))[1][:, cls_slice]  # eager: gradients to images

        # ---- D: real vs fake, classify the real images.
        use_gp = opt.adv_loss == "wgan-gp" and opt.lambda_gp > 0
        self.d_steps[space] += 1
        g_step = self.d_steps[space] % opt.n_critic == 0
        with rt.autocast():  # one region: autocast casts each weight to bf16 once per region
            if g_step:
                # G is not changed by the D update, so this fake (with its graph) is exactly
                # the one the G step needs: one G forward fewer than the official code.
                fake_g, mask = self.G(x, c_trg, with_mask=True) if self.blend else \
                    (self.G(x, c_trg), None)
                fake = fake_g.detach()
            else:
                with torch.no_grad():  # the official code builds (and discards) a graph here
                    fake = self.G(x, c_trg)
            images = [x, fake.to(x.dtype)]
            if opt.d_adv_eps > 0:  # reals pushed toward a misreading, to be read right
                images.append(fgsm_images(d_cls_eager, x, labels, kind, opt.d_adv_eps,
                                          opt.d_adv_steps, norm=opt.d_adv_norm))
            # One D pass over real and fake: D has no batch statistics, so this equals two.
            src, cls, *cond = self.D(self.aug(torch.cat(images)), with_cond=self.cond)
            src_real, src_fake = src[:n], src[n:2 * n]
            cls_real = cls[:n, cls_slice]
            d_adv = d_adversarial_loss(src_real, src_fake, opt.adv_loss)
            d_cls = classification_loss(cls_real, labels, kind)
            d_loss = d_adv + opt.lambda_cls * d_cls
            if self.cond:  # reals at their own labels, fakes at their targets
                cond_space = cond[0][:, cls_slice]
                d_cond = d_adversarial_loss(
                    conditional_scores(cond_space[:n], labels, kind),
                    conditional_scores(cond_space[n:2 * n], label_trg, kind), opt.adv_loss)
                d_loss = d_loss + opt.lambda_cond_adv * d_cond
                out["D/cond_adv"] = d_cond.detach()
            if opt.d_adv_eps > 0:
                d_cls_adv = classification_loss(cls[2 * n:, cls_slice], labels, kind)
                d_loss = d_loss + opt.lambda_cls * d_cls_adv
                out["D/cls_adv"] = d_cls_adv.detach()
            if use_gp and rt.precision != "fp16":
                d_gp = gradient_penalty(lambda z: self.D_eager(z)[0], x, fake)
        if use_gp and rt.precision == "fp16":
            # fp16 gradients of gradients underflow without their own scaling: fp32 penalty.
            with torch.autocast(device_type=rt.device.type, enabled=False):
                d_gp = gradient_penalty(lambda z: self.D_eager(z)[0], x, fake.float())
        if use_gp:
            d_loss = d_loss + opt.lambda_gp * d_gp
            out["D/gp"] = d_gp.detach()
        if opt.lambda_cls_gp > 0:  # a classifier flat around the reals (eager D: double backward)
            with rt.autocast():
                d_cls_gp = classifier_gradient_penalty(d_cls_eager, x, labels, kind)
            d_loss = d_loss + opt.lambda_cls_gp * d_cls_gp
            out["D/cls_gp"] = d_cls_gp.detach()
        ctx.optimizers.step("d", d_loss)
        out.update({"D/loss": d_loss.detach(), "D/adv": d_adv.detach(),
                    "D/cls": d_cls.detach(),
                    "D/acc_real": _accuracy(cls_real.detach().float(), labels, kind)})

        # ---- G every n_critic batches (of this dataset): fool D, hit targets, reconstruct.
        if g_step:
            with frozen(self.D_eager), rt.autocast():
                src_fake, cls_fake, *cond = self.D_g(self.aug(fake_g), with_cond=self.cond)
                cls_fake = cls_fake[:, cls_slice]
                g_adv = g_adversarial_loss(src_fake, opt.adv_loss)
                g_cls = classification_loss(cls_fake, label_trg, kind)
                g_rec = reconstruction_loss(x, self.G(fake_g, c_org))
                g_loss = g_adv + opt.lambda_cls * g_cls + opt.lambda_rec * g_rec
                if self.cond:  # look like a real face *with* the targets
                    g_cond = g_adversarial_loss(
                        conditional_scores(cond[0][:, cls_slice], label_trg, kind),
                        opt.adv_loss)
                    g_loss = g_loss + opt.lambda_cond_adv * g_cond
                    out["G/cond_adv"] = g_cond.detach()
                if opt.lambda_id > 0:  # its own labels must leave an image as it is
                    g_id = reconstruction_loss(x, self.G(x, c_org))
                    g_loss = g_loss + opt.lambda_id * g_id
                    out["G/id"] = g_id.detach()
                if opt.lambda_change_tv > 0:  # smooth edits, no fooling patterns
                    g_tv = total_variation(fake_g - x.to(fake_g.dtype))
                    g_loss = g_loss + opt.lambda_change_tv * g_tv
                    out["G/change_tv"] = g_tv.detach()
                if mask is not None and (opt.lambda_mask > 0 or opt.lambda_mask_tv > 0):
                    g_mask = mask.float().mean()
                    g_loss = g_loss + opt.lambda_mask * g_mask + \
                        opt.lambda_mask_tv * total_variation(mask)
                    out["G/mask"] = g_mask.detach()
            ctx.optimizers.step("g", g_loss)
            if self.ema is not None:
                self.ema.update()
            out.update({"G/loss": g_loss.detach(), "G/adv": g_adv.detach(),
                        "G/cls": g_cls.detach(), "G/rec": g_rec.detach(),
                        "G/acc_fake": _accuracy(cls_fake.detach().float(), label_trg, kind)})
        return out
