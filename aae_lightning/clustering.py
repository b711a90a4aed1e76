"""Unsupervised clustering with a categorical code (paper section 6, Table 3).

The semi-supervised architecture without labels and without the classification phase: the encoder's softmax
head y has K categories (the clusters), a categorical prior and a Gaussian style prior regularize y and z, and
the decoder rebuilds the image from both.

Cluster accuracy (`val/cluster_acc`, `test/cluster_acc`) uses the paper's rule: each cluster takes the label of
the image with the highest q(y=k|x) (see `evaluation.ClusterAccuracy`). During training the rule is applied
to each evaluated set on its own; `evaluate.py` follows the paper exactly, labelling the clusters from the
validation set and scoring the test set. `*_cluster_acc_majority` gives each cluster its majority label.
Labels never choose the checkpoint: `monitor` is the base class's reconstruction loss, so the model stays
unsupervised.
"""

from dataclasses import dataclass

from torch import Tensor, nn
from torchmetrics import Metric

from aae_lightning.evaluation import ClusterAccuracy
from aae_lightning.hparams import Range, hparam, positive
from aae_lightning.registry import register
from aae_lightning.semi import CategoricalStyleAAE, CategoricalStyleHparams


@dataclass
class ClusteringHparams(CategoricalStyleHparams):
    num_clusters: int = hparam(16, "number of clusters K (categories of the code y)", accepts=Range(int, 2))
    latent_dim: int = hparam(5, "width of the style code z", accepts=positive(int))
    prior_std: float = hparam(1.0, "std of the Gaussian prior on the style z", accepts=positive())


@register("clustering")
class ClusteringAAE(CategoricalStyleAAE):
    Hparams = ClusteringHparams

    @property
    def num_classes(self) -> int:
        return self.config.num_clusters

    def make_metrics(self) -> dict[str, Metric]:
        return {
            **super().make_metrics(),
            "cluster_acc": ClusterAccuracy(self.num_classes, rule="paper"),
            "cluster_acc_majority": ClusterAccuracy(self.num_classes, rule="majority"),
        }

    def update_metrics(self, metrics: nn.ModuleDict, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        outputs = super().update_metrics(metrics, images, labels)
        for name in ("cluster_acc", "cluster_acc_majority"):
            metrics[name].update(outputs["y"], labels)
        return outputs
