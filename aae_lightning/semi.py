"""The semi-supervised adversarial autoencoder (paper section 5).

The encoder predicts a softmax class code y and a Gaussian style code z; one discriminator pushes y towards
one-hot vectors of a uniform categorical, another pushes z towards N(0, std^2). A fourth phase trains y on the
labeled batch with cross-entropy.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from aae_lightning.base import AdversarialHparams, AutoencoderBase, hparam
from aae_lightning.priors import CategoricalPrior, GaussianPrior
from aae_lightning.registry import register


@dataclass
class SemiHparams(AdversarialHparams):
    latent_dim: int = hparam(10, "width of the style code z")
    prior_std: float = hparam(1.0, "std of the Gaussian prior on the style z")
    # 1e-4 left 1,000-label validation accuracy at 32 % after 250 Adam batches, where 1e-3 reached 92 %
    classification_lr: float = hparam(1e-3, "learning rate of the classification phase (cross-entropy on labels)")


class CategoricalStyleAAE(AutoencoderBase):
    """What the semi-supervised and clustering models share: a categorical code y and a style z, both
    regularized, decoded together. `num_classes` is the number of categories."""

    phases = ("reconstruction", "regularization", "generator")

    def build(self) -> None:
        self.encoder = self.make_encoder({"y": self.num_classes, "z": self.config.latent_dim})
        self.decoder = self.make_decoder(self.num_classes + self.config.latent_dim)
        self.add_adversary("y", CategoricalPrior(self.num_classes))
        self.add_adversary("z", GaussianPrior(self.config.latent_dim, self.config.prior_std))

    def regularized_codes(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        codes = self.encoder(self.training_images(batch))
        return {"y": F.softmax(codes["y"], dim=1), "z": codes["z"]}

    def decoder_input(self, codes: dict[str, Tensor], labels: Tensor | None) -> Tensor:
        # when decoding a chosen class (labels given, y absent) the class code is that class's one-hot vector
        y = F.softmax(codes["y"], dim=1) if "y" in codes else F.one_hot(labels, self.num_classes).to(codes["z"].dtype)
        return torch.cat([y, codes["z"]], dim=1)

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        """Class (or cluster) logits of each image."""
        return self.encoder(images)["y"]


@register("semi")
class SemiSupervisedAAE(CategoricalStyleAAE):
    Hparams = SemiHparams
    phases = ("reconstruction", "regularization", "generator", "classification")
    train_streams = ("unlabeled", "labeled")
    monitor = ("val/acc", "max")
    num_classes = 10

    def make_metrics(self) -> dict[str, Metric]:
        return {**super().make_metrics(), "acc": MulticlassAccuracy(self.num_classes, average="micro")}

    def classification_phase(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        loss = F.cross_entropy(self.encoder(batch["labeled_x"])["y"], batch["labeled_y"])
        return loss, {"class_loss": loss}

    def update_metrics(self, metrics: nn.ModuleDict, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        outputs = super().update_metrics(metrics, images, labels)
        metrics["acc"].update(outputs["y"], labels)
        return outputs
