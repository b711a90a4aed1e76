"""Semi-supervised dimensionality reduction (paper section 7, Fig. 10 and 11).

The semi-supervised model, except that the decoder sees a low-dimensional representation W_c y + z instead of
[y, z]: each class has a learned cluster head (a column of W_c) in the 2-D space where z lives, and an extra
cost keeps every pair of heads at least `head_distance` (eta) apart, growing linearly below it.

The paper gives neither eta nor the std of z. Here eta is 5 prior stds (neighbouring classes' Gaussians barely
overlap), the heads start N(0, eta^2) so most pairs start apart already, and the penalty, summed over pairs,
is added to the reconstruction loss: the heads train with the reconstruction phase's optimizer. One revision
of musyoku's Chainer code gives them an optimizer of their own at the reconstruction rate; its others move them
by the distance penalty alone, with eta 1 (here `--head-gradient penalty`).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aae_lightning.base import AutoencoderBase
from aae_lightning.hparams import OneOf, hparam, non_negative, positive, redefault
from aae_lightning.registry import register
from aae_lightning.semi import SemiHparams, SemiSupervisedAAE


@dataclass
class DimReductionHparams(SemiHparams):
    # semi's recipe, but PyTorch's initialisation, as in the first run; the reported recipe, fast-dimreduction-1000,
    # sets init_std 0.01 (docs/dimreduction.md)
    init_std: float = redefault(SemiHparams, "init_std", 0.0)
    latent_dim: int = hparam(2, "dimension of the representation W_c y + z (and of the style z)", accepts=positive(int))
    head_distance: float = hparam(5.0, "eta: cluster heads closer than this are pushed apart", accepts=positive())
    head_penalty: float = hparam(
        1.0, "weight of the cluster-head distance penalty in the reconstruction loss", accepts=non_negative()
    )
    head_gradient: str = hparam(
        "reconstruction",
        "what moves the cluster heads: 'reconstruction' (the reconstruction error and the distance penalty, as "
        "one revision of musyoku's code) or 'penalty' (the distance penalty alone: the reconstruction error "
        "trains only the encoder and decoder, as musyoku's other revisions)",
        accepts=OneOf(("reconstruction", "penalty")),
    )


@register("dimreduction")
class DimReductionAAE(SemiSupervisedAAE):
    Hparams = DimReductionHparams
    phase_modules = {**AutoencoderBase.phase_modules, "reconstruction": ("encoder", "decoder", "cluster_heads")}
    represents_z = False

    def build(self) -> None:
        super().build()
        self.cluster_heads = nn.Linear(self.num_classes, self.config.latent_dim, bias=False)
        nn.init.normal_(self.cluster_heads.weight, std=self.config.head_distance)

    def decoder_input_dim(self) -> int:
        """The width of W_c y + z."""
        return self.config.latent_dim

    def decoder_input(self, codes: dict[str, Tensor], labels: Tensor | None) -> Tensor:
        # the semi-supervised input starts with the class code (softmax of y, or the one-hot of given labels)
        class_code = super().decoder_input(codes, labels)[:, : self.num_classes]
        heads = self.cluster_heads.weight
        if self.config.head_gradient == "penalty":
            heads = heads.detach()
        return F.linear(class_code, heads) + codes["z"]

    def head_penalty(self) -> Tensor:
        """Sum over pairs of heads of max(0, eta - distance)."""
        heads = self.cluster_heads.weight.t()
        pairs = torch.triu_indices(len(heads), len(heads), offset=1, device=heads.device)
        distances = (heads[pairs[0]] - heads[pairs[1]]).norm(dim=1)
        return F.relu(self.config.head_distance - distances).sum()

    def reconstruction_phase(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logs = super().reconstruction_phase(batch)
        penalty = self.head_penalty()
        return loss + self.config.head_penalty * penalty, {**logs, "head_penalty": penalty}

    @torch.no_grad()
    def represent(self, images: Tensor) -> Tensor:
        """The 2-D representation W_c y + z of each image: what the paper plots (no prior describes it)."""
        return self.decoder_input(self.encoder(images), None)
