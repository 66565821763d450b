"""Losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from starcli.errors import ConfigError
from starcli.models.losses import (
    ADV_LOSSES,
    classification_loss,
    d_adversarial_loss,
    g_adversarial_loss,
    gradient_penalty,
    reconstruction_loss,
)

REAL = torch.tensor([1.0, -1.0, 2.0])
FAKE = torch.tensor([0.5, 1.5])


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


EXPECTED = {
    # kind: (D loss, G loss)
    "wgan-gp": (-(1 - 1 + 2) / 3 + (0.5 + 1.5) / 2, -(0.5 + 1.5) / 2),
    "lsgan": ((0 + 4 + 1) / 3 + (0.25 + 2.25) / 2, (0.25 + 0.25) / 2),
    "vanilla": (
        (softplus(-1) + softplus(1) + softplus(-2)) / 3 + (softplus(0.5) + softplus(1.5)) / 2,
        (softplus(-0.5) + softplus(-1.5)) / 2,
    ),
    "hinge": ((0 + 2 + 0) / 3 + (1.5 + 2.5) / 2, -(0.5 + 1.5) / 2),
}


@pytest.mark.parametrize("kind", ADV_LOSSES)
def test_adversarial_losses_by_hand(kind):
    d_expected, g_expected = EXPECTED[kind]
    assert d_adversarial_loss(REAL, FAKE, kind).item() == pytest.approx(d_expected, rel=1e-6)
    assert g_adversarial_loss(FAKE, kind).item() == pytest.approx(g_expected, rel=1e-6)


def test_adversarial_losses_work_on_patch_maps_and_return_fp32():
    real = REAL.view(1, 1, 3, 1).to(torch.bfloat16)
    loss = d_adversarial_loss(real, FAKE.view(1, 1, 1, 2).to(torch.bfloat16), "wgan-gp")
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(EXPECTED["wgan-gp"][0], rel=1e-6)


def test_unknown_adversarial_kind_names_the_flag():
    with pytest.raises(ConfigError, match=r"--adv-loss 'wgan'.*wgan-gp, lsgan, vanilla, hinge"):
        d_adversarial_loss(REAL, FAKE, "wgan")
    with pytest.raises(ConfigError, match="--adv-loss"):
        g_adversarial_loss(FAKE, "nope")


def test_gradient_penalty_linear_critic():
    # D(x) = sum(w * x) has gradient w everywhere, so GP = (||w|| - 1)^2 = (3 - 1)^2 = 4.
    w = torch.tensor([[[2.0, 1.0], [2.0, 0.0]]], requires_grad=True)
    real, fake = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    gp = gradient_penalty(lambda x: (x * w).sum(dim=(1, 2, 3)), real, fake)
    assert gp.item() == pytest.approx(4.0, rel=1e-6)
    # create_graph=True: d GP / d w = 2 (||w|| - 1) w / ||w|| = 4 w / 3
    gp.backward()
    torch.testing.assert_close(w.grad, 4 * w.detach() / 3)


def test_gradient_penalty_uses_per_sample_alpha():
    # D(x) = sum(x^2) / 2 has gradient x_hat; real = 2s (norm 4), fake = 0, so
    # ||grad|| = 4 alpha: alpha (0.5, 1.0) -> (2 - 1)^2 and (4 - 1)^2 -> mean 5.
    real, fake = torch.full((2, 1, 2, 2), 2.0), torch.zeros(2, 1, 2, 2)
    critic = lambda x: 0.5 * x.square().sum(dim=(1, 2, 3))  # noqa: E731
    gp = gradient_penalty(critic, real, fake, alpha=torch.tensor([0.5, 1.0]))
    assert gp.item() == pytest.approx(5.0, rel=1e-6)
    gp_scalar = gradient_penalty(critic, real, fake, alpha=0.25)  # ||grad|| = 1 -> 0
    assert gp_scalar.item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_random_alpha_in_range():
    torch.manual_seed(0)
    real, fake = torch.full((64, 1, 2, 2), 2.0), torch.zeros(64, 1, 2, 2)
    gp = gradient_penalty(lambda x: 0.5 * x.square().sum(dim=(1, 2, 3)), real, fake)
    # alpha ~ U(0, 1): E[(4a - 1)^2] = 16/3 - 4 + 1 = 7/3; each term lies in [0, 9]
    assert 1.5 < gp.item() < 3.2


def test_gradient_penalty_under_bf16_autocast_is_fp32_and_close():
    torch.manual_seed(0)
    w = torch.randn(1, 3, 3, 3) * 0.2
    critic = lambda x: F.conv2d(x, w, padding=1)  # noqa: E731
    real, fake = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    alpha = torch.rand(4)
    ref = gradient_penalty(critic, real, fake, alpha=alpha)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gp = gradient_penalty(critic, real, fake, alpha=alpha)
    assert gp.dtype == torch.float32
    assert gp.item() == pytest.approx(ref.item(), rel=2e-2)


def test_multilabel_classification_by_hand():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # per element: -log sigmoid(0), softplus(2), softplus(-1), -log sigmoid(0); summed / N=2
    expected = (math.log(2) + softplus(2) + softplus(-1) + math.log(2)) / 2
    assert classification_loss(logits, target, "multilabel").item() == pytest.approx(
        expected, rel=1e-6)


def test_onehot_classification_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    lse = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    expected = ((lse - 3) + math.log(3)) / 2
    index = torch.tensor([2, 0])
    onehot = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert classification_loss(logits, index, "onehot").item() == pytest.approx(expected, rel=1e-6)
    assert classification_loss(logits, onehot, "onehot").item() == pytest.approx(expected, rel=1e-6)


def test_unknown_classification_kind():
    with pytest.raises(ConfigError, match="multilabel, onehot"):
        classification_loss(torch.zeros(1, 2), torch.zeros(1, 2), "softmax")


def test_reconstruction_loss_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0])
    x_rec = torch.tensor([1.5, 2.0, 1.0])
    assert reconstruction_loss(x, x_rec).item() == pytest.approx((0.5 + 0 + 2) / 3, rel=1e-6)
