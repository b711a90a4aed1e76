"""Adversarial Autoencoders (Makhzani et al., 2015) as PyTorch Lightning modules, one per variant."""

# importing the variant modules registers them under their --variant names
from aae_lightning import aae, ae, clustering, dimreduction, label_regularized, semi, supervised  # noqa: F401
from aae_lightning.base import AutoencoderBase, NonFiniteLossError
from aae_lightning.registry import VARIANTS, get_variant

__all__ = ["AutoencoderBase", "NonFiniteLossError", "VARIANTS", "get_variant"]
