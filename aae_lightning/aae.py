"""The unsupervised adversarial autoencoder (paper section 2): codes z matched to a chosen prior."""

from dataclasses import dataclass
from typing import Any

from aae_lightning.base import AdversarialHparams, AutoencoderBase
from aae_lightning.components import Encoder, GaussianPosteriorEncoder
from aae_lightning.hparams import OneOf, hparam, redefault
from aae_lightning.priors import PRIOR_NAMES, check_prior_dim, make_prior
from aae_lightning.registry import register

#: the paper's first two choices of q(z|x) (section 2); its third, the universal approximator, is not built
POSTERIORS = ("deterministic", "gaussian")


@dataclass
class AAEHparams(AdversarialHparams):
    prior: str = hparam("gaussian", "prior on z (mixture and swiss_roll are 2-D)", accepts=OneOf(PRIOR_NAMES))
    posterior: str = hparam(
        "deterministic",
        "q(z|x): 'deterministic' (z is a function of x) or 'gaussian' "
        "(the encoder predicts a mean and a log-variance and training draws z from them; evaluation, encode "
        "and reconstruct use the mean)",
        accepts=OneOf(POSTERIORS),
    )
    # At the other variants' 1e-4 a 2-D code is still half as far from N(0, 5^2) as the plain autoencoder's after
    # 500 batches (energy distance); at 1e-3 it matches the prior within 300 (tests/learning/test_learning.py)
    regularization_lr: float = redefault(AdversarialHparams, "regularization_lr", 1e-3)
    generator_lr: float = redefault(AdversarialHparams, "generator_lr", 1e-3)

    def check_relations(self) -> None:
        super().check_relations()
        check_prior_dim(self.prior, self.latent_dim)


@register("aae")
class AdversarialAutoencoder(AutoencoderBase):
    Hparams = AAEHparams
    phases = ("reconstruction", "regularization", "generator")

    def build(self) -> None:
        super().build()
        self.add_adversary("z", make_prior(self.config.prior, self.config.latent_dim, self.config.prior_std))

    def make_encoder(self, heads: dict[str, int], encoder_class: type[Encoder] = Encoder, **options: Any) -> Encoder:
        if self.config.posterior == "gaussian":
            encoder_class = GaussianPosteriorEncoder
        return super().make_encoder(heads, encoder_class, **options)
