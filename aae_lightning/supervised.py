"""The supervised adversarial autoencoder (paper section 4): the decoder gets the digit as a one-hot vector, so
the adversarially regularized code z only has to carry the style."""

import torch.nn.functional as F
import torch
from torch import Tensor

from aae_lightning.base import AdversarialHparams, AutoencoderBase
from aae_lightning.priors import GaussianPrior
from aae_lightning.registry import register


@register("supervised")
class SupervisedAAE(AutoencoderBase):
    Hparams = AdversarialHparams
    phases = ("reconstruction", "regularization", "generator")
    train_streams = ("labeled",)
    num_classes = 10

    def build(self) -> None:
        self.encoder = self.make_encoder({"z": self.config.latent_dim})
        self.decoder = self.make_decoder(self.num_classes + self.config.latent_dim)
        self.add_adversary("z", GaussianPrior(self.config.latent_dim, self.config.prior_std))

    def training_images(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["labeled_x"]

    def decoder_input(self, codes: dict[str, Tensor], labels: Tensor | None) -> Tensor:
        return torch.cat([F.one_hot(labels, self.num_classes).to(codes["z"].dtype), codes["z"]], dim=1)
