"""The label-regularized AAE (paper section 3, Fig. 4): a mixture of 10 2-D Gaussians, one per digit.

The discriminator sees the code z together with an 11-way one-hot label vector. A labeled image's vector
names its digit and its real sample comes from that digit's component; an unlabeled image gets the 11th
("unlabeled") slot and real samples from the whole mixture (as in Mirzaei's Keras SSAAE and musyoku's
Chainer version). The decoder reconstructs from z alone. The paper gives no mixture parameters; the defaults
are musyoku's (radius 1.4, std 0.5 along the radius, 0.05 across it): petals that meet only near the centre,
as in the paper's figure. The repo's `aae --prior mixture` default ring overlaps too much to tie a digit to a
component.

`val/acc` reads the digit off the code: the component whose direction is closest to z's.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from aae_lightning.base import AdversarialHparams, AutoencoderBase
from aae_lightning.hparams import Range, hparam, positive
from aae_lightning.priors import MixtureOfGaussiansPrior
from aae_lightning.registry import register
from datamodules import NUM_CLASSES

UNLABELED = NUM_CLASSES  # the index of the extra label slot


@dataclass
class LabelRegularizedHparams(AdversarialHparams):
    latent_dim: int = hparam(2, "width of the code z: the mixture's two dimensions", accepts=Range(int, 2, 2))
    mixture_radius: float = hparam(1.4, "distance of each digit's Gaussian from the origin", accepts=positive())
    mixture_radial_std: float = hparam(0.5, "std of each Gaussian along its radius", accepts=positive())
    mixture_tangential_std: float = hparam(0.05, "std of each Gaussian across its radius", accepts=positive())


@register("label_regularized")
class LabelRegularizedAAE(AutoencoderBase):
    Hparams = LabelRegularizedHparams
    phases = ("reconstruction", "regularization", "generator")
    train_streams = ("unlabeled", "labeled")
    monitor = ("val/acc", "max")
    classifies = True

    def build(self) -> None:
        super().build()
        config = self.config
        prior = MixtureOfGaussiansPrior(
            NUM_CLASSES, config.mixture_radius, config.mixture_radial_std, config.mixture_tangential_std
        )
        self.add_adversary("z", prior, input_dim=prior.dim + NUM_CLASSES + 1)

    def training_images(self, batch: dict[str, Tensor]) -> Tensor:
        return torch.cat([batch["x"], batch["labeled_x"]])

    def label_slots(self, batch: dict[str, Tensor]) -> Tensor:
        """The discriminator's label of each training image: its digit, or UNLABELED."""
        unlabeled = torch.full((len(batch["x"]),), UNLABELED, dtype=torch.long, device=batch["x"].device)
        return torch.cat([unlabeled, batch["labeled_y"]])

    def regularized_codes(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        z = self.encoder(self.training_images(batch))["z"]
        return {"z": torch.cat([z, F.one_hot(self.label_slots(batch), NUM_CLASSES + 1).to(z.dtype)], dim=1)}

    def prior_samples(self, batch: dict[str, Tensor], codes: dict[str, Tensor]) -> dict[str, Tensor]:
        # drawn where the prior generator lives (the training device): no round trip through the host
        generator = self.prior_generator
        slots = self.label_slots(batch).to(generator.device)
        anywhere = torch.randint(NUM_CLASSES, slots.shape, generator=generator, device=generator.device)
        components = torch.where(slots == UNLABELED, anywhere, slots)
        z = self.priors["z"].sample(len(slots), generator=generator, components=components)
        reals = torch.cat([z, F.one_hot(slots, NUM_CLASSES + 1).float()], dim=1)
        return {"z": reals.to(self.device, self.dtype)}

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        """One-hot scores of the digit each image's code points to (see `nearest_component`)."""
        return F.one_hot(nearest_component(self.encode(images)), NUM_CLASSES).float()

    def make_metrics(self) -> dict[str, Metric]:
        return {**super().make_metrics(), "acc": MulticlassAccuracy(NUM_CLASSES, average="micro")}

    def update_metrics(self, metrics: nn.ModuleDict, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        outputs = super().update_metrics(metrics, images, labels)
        metrics["acc"].update(self.classify(images), labels)
        return outputs


def nearest_component(z: Tensor) -> Tensor:
    """The component whose direction is closest to each 2-D code's: component k sits at angle 2 pi k / 10."""
    step = 2 * math.pi / NUM_CLASSES
    return torch.round(torch.atan2(z[:, 1], z[:, 0]) / step).long() % NUM_CLASSES
