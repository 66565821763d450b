"""StarGAN v1 networks, losses and the importer for the official checkpoints."""

from starcli.models.losses import (
    ADV_LOSSES,
    CLS_LOSSES,
    classification_loss,
    d_adversarial_loss,
    g_adversarial_loss,
    gradient_penalty,
    reconstruction_loss,
)
from starcli.models.networks import (
    Discriminator,
    Generator,
    ModelConfig,
    ResidualBlock,
    count_parameters,
)
from starcli.models.official import (
    convert_official_discriminator,
    convert_official_generator,
    official_model_config,
    to_official_discriminator,
    to_official_generator,
)

__all__ = [
    "ADV_LOSSES",
    "CLS_LOSSES",
    "Discriminator",
    "Generator",
    "ModelConfig",
    "ResidualBlock",
    "classification_loss",
    "convert_official_discriminator",
    "convert_official_generator",
    "count_parameters",
    "d_adversarial_loss",
    "g_adversarial_loss",
    "gradient_penalty",
    "official_model_config",
    "reconstruction_loss",
    "to_official_discriminator",
    "to_official_generator",
]
