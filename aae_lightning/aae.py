"""The unsupervised adversarial autoencoder (paper section 2): codes z matched to a chosen prior."""

from dataclasses import dataclass

from aae_lightning.base import AdversarialHparams, AutoencoderBase, hparam
from aae_lightning.priors import PRIOR_NAMES, make_prior
from aae_lightning.registry import register


@dataclass
class AAEHparams(AdversarialHparams):
    prior: str = hparam("gaussian", f"prior on z: {', '.join(PRIOR_NAMES)}")


@register("aae")
class AdversarialAutoencoder(AutoencoderBase):
    Hparams = AAEHparams
    phases = ("reconstruction", "regularization", "generator")

    def build(self) -> None:
        super().build()
        self.add_adversary("z", make_prior(self.config.prior, self.config.latent_dim, self.config.prior_std))
