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

from aae_lightning.base import AdversarialHparams, AutoencoderBase
from aae_lightning.hparams import Flag, hparam, non_negative, positive, probability, redefault
from aae_lightning.priors import CategoricalPrior, GaussianPrior
from aae_lightning.registry import register
from datamodules import NUM_CLASSES


@dataclass
class CategoricalStyleHparams(AdversarialHparams):
    """What the models with a categorical code y (semi-supervised, clustering, dimreduction) add."""

    class_balance: float = hparam(
        0.0,
        "weight of KL(batch mean of q(y|x) || uniform) in the generator phase: an explicit pull of the batch's "
        "class usage towards the categorical prior's, which the y discriminator enforces only weakly "
        "(0: off, the paper's model). The mean is over each process's batch, so under DDP the same weight pulls "
        "a little harder on smaller per-process batches",
        accepts=non_negative(),
    )
    input_dropout: float = hparam(
        0.0, "dropout on the encoder's input only (the paper's clustering model: 0.2)", accepts=probability()
    )
    encoder_batchnorm: bool = hparam(
        False,
        "batch normalization after every linear layer of the encoder, heads included (the paper's clustering model)",
        accepts=Flag(),
    )
    head_batchnorm: bool = hparam(
        True,
        "with --encoder-batchnorm, the heads' outputs (the y logits and z) are normalized too, as 1henrypage's "
        "reimplementation does; --no-head-batchnorm normalizes the trunk alone (the paper says only 'in the encoder')",
        accepts=Flag(),
    )


@dataclass
class SemiHparams(CategoricalStyleHparams):
    """The paper's semi-supervised MNIST settings for every label count (Appendix A as recalled, and hard-coded
    alike by two independent reimplementations: presets/paper-semi-100.yaml). They, not Adam on cross-entropy
    (rates 1e-3, 1e-4, 1e-3), are the defaults because with 100 labels they reach 88-94 % validation accuracy in
    10 epochs, where Adam plateaus at 77-79 % (docs/semi-supervised.md)."""

    latent_dim: int = hparam(10, "width of the style code z", accepts=positive(int))
    prior_std: float = hparam(1.0, "std of the Gaussian prior on the style z", accepts=positive())
    input_noise: float = redefault(AdversarialHparams, "input_noise", 0.3)
    reconstruction_loss: str = redefault(AdversarialHparams, "reconstruction_loss", "half_sse")
    optimizer: str = redefault(AdversarialHparams, "optimizer", "sgd")
    adversarial_momentum: float = redefault(AdversarialHparams, "adversarial_momentum", 0.1)
    reconstruction_lr: float = redefault(AdversarialHparams, "reconstruction_lr", 0.01)
    regularization_lr: float = redefault(AdversarialHparams, "regularization_lr", 0.1)
    generator_lr: float = redefault(AdversarialHparams, "generator_lr", 0.1)
    classification_lr: float = hparam(
        0.1, "learning rate of the classification phase (cross-entropy on labels)", accepts=non_negative()
    )
    init_std: float = redefault(AdversarialHparams, "init_std", 0.01)
    lr_milestones: tuple[int, ...] = redefault(AdversarialHparams, "lr_milestones", (50, 1000))
    labeled_reconstruction: bool = hparam(
        False,
        "the reconstruction phase also rebuilds the labeled batch from its true one-hot label and its style z "
        "(as musyoku's semi-supervised model does), so labels shape the decoder too",
        accepts=Flag(),
    )


class CategoricalStyleAAE(AutoencoderBase):
    """What the semi-supervised, clustering and dimreduction models share: a categorical code y and a style z, both
    regularized, decoded together, and optionally the paper's clustering encoder (input dropout, batch
    normalization). `num_classes` is the number of categories."""

    phases = ("reconstruction", "regularization", "generator")
    classifies = True

    def build(self) -> None:
        config = self.config
        self.encoder = self.make_encoder(
            {"y": self.num_classes, "z": config.latent_dim},
            input_dropout=config.input_dropout,
            batchnorm=config.encoder_batchnorm,
            head_batchnorm=config.encoder_batchnorm and config.head_batchnorm,
        )
        self.decoder = self.make_decoder(self.decoder_input_dim())
        self.add_adversary("y", CategoricalPrior(self.num_classes))
        self.add_adversary("z", GaussianPrior(config.latent_dim, config.prior_std))

    def decoder_input_dim(self) -> int:
        """The width of what `decoder_input` gives: [y, z]."""
        return self.num_classes + self.config.latent_dim

    def regularized_codes(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        codes = self.encoder(self.training_images(batch))
        return {"y": F.softmax(codes["y"], dim=1), "z": codes["z"]}

    def decoder_input(self, codes: dict[str, Tensor], labels: Tensor | None) -> Tensor:
        # when decoding a chosen class (labels given, y absent) the class code is that class's one-hot vector
        y = F.softmax(codes["y"], dim=1) if "y" in codes else F.one_hot(labels, self.num_classes).to(codes["z"].dtype)
        return torch.cat([y, codes["z"]], dim=1)

    def generator_phase(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logs = super().generator_phase(batch)
        if self.config.class_balance > 0:
            imbalance = class_imbalance(self.adversarial_codes(batch)["y"])
            loss = loss + self.config.class_balance * imbalance
            logs["class_imbalance"] = imbalance
        return loss, logs

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        """Class (or cluster) logits of each image."""
        return self.encoder(images)["y"]


def class_imbalance(probs: Tensor) -> Tensor:
    """KL divergence from the uniform distribution to the mean of a batch of categorical distributions: 0 when
    the batch uses every class equally, log K when it puts everything in one."""
    usage, num_classes = probs.mean(dim=0), probs.shape[1]
    # an unused class contributes 0 * log(0) = 0; the clamp keeps that term (and its gradient) finite
    return (usage * (usage * num_classes).clamp_min(1e-12).log()).sum()


@register("semi")
class SemiSupervisedAAE(CategoricalStyleAAE):
    Hparams = SemiHparams
    phases = ("reconstruction", "regularization", "generator", "classification")
    train_streams = ("unlabeled", "labeled")
    monitor = ("val/acc", "max")

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    def make_metrics(self) -> dict[str, Metric]:
        return {**super().make_metrics(), "acc": MulticlassAccuracy(self.num_classes, average="micro")}

    def reconstruction_phase(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logs = super().reconstruction_phase(batch)
        if self.config.labeled_reconstruction:
            images = batch["labeled_x"]
            styles = {"z": self.encoder(images)["z"]}  # no "y": decoder_input takes the true label's one-hot
            labeled_loss = self.reconstruction_error(
                self.decoder(self.decoder_input(styles, batch["labeled_y"])), images
            )
            loss = loss + labeled_loss
            logs["labeled_recon_loss"] = labeled_loss
        return loss, logs

    def classification_phase(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        loss = F.cross_entropy(self.encoder(batch["labeled_x"])["y"], batch["labeled_y"])
        return loss, {"class_loss": loss}

    def update_metrics(self, metrics: nn.ModuleDict, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        outputs = super().update_metrics(metrics, images, labels)
        metrics["acc"].update(outputs["y"], labels)
        return outputs
