"""The plain autoencoder: reconstruction only, no prior. The baseline every adversarial variant is measured against."""

from aae_lightning.base import AutoencoderBase
from aae_lightning.registry import register


@register("ae")
class Autoencoder(AutoencoderBase):
    """MLP 784-1000-1000-latent and back, trained on reconstruction alone."""
