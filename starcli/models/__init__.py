"""Model maths shared by every family: the GAN losses as pure functions of tensors.

Networks live with their family (`starcli/families/<name>/networks.py`)."""

from starcli.models.losses import (
    ADV_LOSSES,
    CLS_LOSSES,
    classification_loss,
    d_adversarial_loss,
    g_adversarial_loss,
    gradient_penalty,
    reconstruction_loss,
)

__all__ = [
    "ADV_LOSSES",
    "CLS_LOSSES",
    "classification_loss",
    "d_adversarial_loss",
    "g_adversarial_loss",
    "gradient_penalty",
    "reconstruction_loss",
]
