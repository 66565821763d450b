"""StarGAN losses as pure functions of tensors.

Every loss is computed in float32 even when its inputs come from an autocast (bf16/fp16)
forward pass: means over a batch of low-precision logits lose too many digits.

Adversarial losses (`kind`, the `--adv-loss` choices), D side / G side:

- ``wgan-gp`` (the paper's): ``-mean(real) + mean(fake)`` / ``-mean(fake)``; pair it with
  `gradient_penalty`.
- ``lsgan`` (least squares, targets 1 for real and 0 for fake, no 0.5 factors):
  ``mean((real - 1)^2) + mean(fake^2)`` / ``mean((fake - 1)^2)``.
- ``vanilla`` (non-saturating BCE): ``softplus(-real) + softplus(fake)`` / ``softplus(-fake)``,
  each averaged.
- ``hinge``: ``mean(relu(1 - real)) + mean(relu(1 + fake))`` / ``-mean(fake)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from starcli.errors import ConfigError
from starcli.families.stargan_v1.config import ADV_LOSSES

__all__ = [
    "classifier_gradient_penalty",
    "conditional_scores",
    "fgsm_images",
    "ADV_LOSSES",
    "CLS_LOSSES",
    "d_adversarial_loss",
    "g_adversarial_loss",
    "gradient_penalty",
    "classification_loss",
    "reconstruction_loss",
]

CLS_LOSSES = ("multilabel", "onehot")


def _check_adv(kind: str) -> None:
    if kind not in ADV_LOSSES:
        raise ConfigError(
            f"--adv-loss {kind!r} is not known; choose one of {', '.join(ADV_LOSSES)}."
        )


def d_adversarial_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       kind: str) -> torch.Tensor:
    """D's adversarial loss on its src outputs for real and generated images (lower is better)."""
    _check_adv(kind)
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "wgan-gp":
        return fake.mean() - real.mean()
    if kind == "lsgan":
        return (real - 1).square().mean() + fake.square().mean()
    if kind == "vanilla":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()  # hinge


def g_adversarial_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """G's adversarial loss on D's src outputs for generated images (lower is better)."""
    _check_adv(kind)
    fake = fake_logits.float()
    if kind == "lsgan":
        return (fake - 1).square().mean()
    if kind == "vanilla":
        return F.softplus(-fake).mean()
    return -fake.mean()  # wgan-gp and hinge


def gradient_penalty(d_src: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, alpha: torch.Tensor | float | None = None
                     ) -> torch.Tensor:
    """WGAN-GP penalty ``mean((||grad_x D_src(x_hat)||_2 - 1)^2)``.

    ``x_hat = alpha * real + (1 - alpha) * fake`` with one ``alpha ~ U(0, 1)`` per sample
    (pass `alpha`, shape (N,) or broadcastable, to fix it). `d_src` maps images to D's src
    logits, e.g. ``lambda x: D(x)[0]``, so a DDP- or compile-wrapped D works too. The graph
    is kept (create_graph=True) so the penalty can be back-propagated into D.
    """
    real, fake = real.detach(), fake.detach()
    n = real.shape[0]
    if alpha is None:
        alpha = torch.rand(n, 1, 1, 1, device=real.device, dtype=torch.float32)
    alpha = torch.as_tensor(alpha, device=real.device, dtype=torch.float32)
    if alpha.dim() == 1 and alpha.numel() == n:
        alpha = alpha.view(n, *([1] * (real.dim() - 1)))
    x_hat = (alpha * real.float() + (1 - alpha) * fake.float()).to(real.dtype)
    x_hat.requires_grad_(True)
    out = d_src(x_hat)
    (grad,) = torch.autograd.grad(outputs=out, inputs=x_hat, grad_outputs=torch.ones_like(out),
                                  create_graph=True)
    # The norm of a low-precision gradient is too coarse for a penalty around 1: do it in fp32.
    with torch.autocast(device_type=real.device.type, enabled=False):
        norm = grad.float().flatten(1).norm(2, dim=1)
        return (norm - 1).square().mean()


def classifier_gradient_penalty(d_cls: Callable[[torch.Tensor], torch.Tensor],
                                real: torch.Tensor, labels: torch.Tensor, kind: str
                                ) -> torch.Tensor:
    """Mean over images of ``||grad_x loss_i(D_cls(x_i))||_2^2`` on real images, where loss_i
    is image i's own classification loss (input-gradient regularisation, Ross & Doshi-Velez
    2018): a classifier that is flat around the real images cannot be flipped by a small
    perturbation, so G has to make the change itself. `d_cls` maps images to the logits of
    the label space `labels` belong to. The graph is kept for D's backward."""
    x = real.detach().requires_grad_(True)
    logits = d_cls(x)
    # The sum of per-image losses: each image's gradient is its own loss's, not 1/N of it.
    loss = classification_loss(logits, labels, kind) * x.shape[0]
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        return grad.float().flatten(1).square().sum(1).mean()


def fgsm_images(d_cls: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                labels: torch.Tensor, kind: str, eps: float, steps: int = 1,
                norm: str = "linf") -> torch.Tensor:
    """`real` moved within `eps` in the direction that most raises each image's own
    classification loss, clamped to [-1, 1] and detached.

    ``norm="linf"``: one step (the default) is FGSM (Goodfellow et al. 2015): every pixel
    moves by exactly `eps`. ``norm="l2"``: each image's change has L2 norm `eps` (over all
    its pixels and channels), along its gradient (the fast gradient method), so the budget
    goes where the classifier is sensitive instead of to every pixel alike; an L∞ ball of
    radius eps holds changes of L2 norm eps·√(pixels), enough to erase any thin feature.
    `steps` > 1 is PGD (Madry et al. 2018) from the real image: steps of 2.5·eps/steps, each
    projected back into the eps-ball, which finds stronger perturbations than one step.
    Training D's classifier to keep reading the true labels on these makes it robust to
    small perturbations; a robust classifier's gradient asks G for changes a person sees
    (Santurkar et al. 2019), not for patterns that only fool D."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    x0 = real.detach().float()
    alpha = eps if steps == 1 else 2.5 * eps / steps

    def per_image_l2(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))

    x = x0
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        # The batch mean's gradient has each image's own direction (its sign, or its
        # direction per image in L2).
        (grad,) = torch.autograd.grad(
            classification_loss(d_cls(x.to(real.dtype)), labels, kind), x)
        if norm == "linf":
            x = x0 + (x.detach() + alpha * grad.sign() - x0).clamp(-eps, eps)
        else:
            delta = x.detach() + alpha * grad / per_image_l2(grad) - x0
            x = x0 + delta * (eps / per_image_l2(delta)).clamp(max=1.0)
        x = x.clamp(-1, 1)
    return x.detach().to(real.dtype)


def classification_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """D's domain-classification loss.

    ``multilabel`` (CelebA attributes): BCE-with-logits summed over labels, averaged over the
    batch. ``onehot`` (RaFD expressions): cross-entropy; `target` is class indices (long) or a
    one-hot/probability matrix whose argmax is the class.
    """
    logits = logits.float()
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(
            logits, target.float(), reduction="sum") / logits.shape[0]
    if kind == "onehot":
        if target.dim() == logits.dim():
            target = target.argmax(dim=1)
        return F.cross_entropy(logits, target.long())
    raise ConfigError(
        f"classification loss kind {kind!r} is not known; choose one of {', '.join(CLS_LOSSES)}."
    )


def conditional_scores(cond: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """The real/fake scores an image is judged by, from a conditional head's output `cond`
    (N, k, 2): one score per (label, value) of a label space with k labels.

    ``multilabel``: every label's score at the image's value of it, (N, k): a fake with
    Male = 1 is judged by the Male-on score, and by the scores of the labels it kept. ``onehot``:
    the on-score of the image's one class, (N, 1) (StarGAN v2's multi-task D: one output per
    domain). `labels` are 0/1 rows (or class indices for onehot); the scores of a wrong value
    never enter, so each score learns what real faces *with that value* look like."""
    if kind == "multilabel":
        index = labels.long().clamp(0, 1).unsqueeze(2)
        return cond.gather(2, index).squeeze(2)
    if kind == "onehot":
        cls = labels.argmax(dim=1) if labels.dim() == 2 else labels.long()
        return cond[torch.arange(cond.shape[0], device=cond.device), cls, 1].unsqueeze(1)
    raise ConfigError(
        f"classification loss kind {kind!r} is not known; choose one of {', '.join(CLS_LOSSES)}."
    )


def reconstruction_loss(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Cycle-reconstruction loss ``mean(|x - x_rec|)``."""
    return (x.float() - x_rec.float()).abs().mean()
