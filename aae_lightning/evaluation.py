"""Evaluation metrics of the paper that are not plain accuracies: cluster accuracy and the Parzen window
log-likelihood.

Cluster accuracy follows the paper (section 6): "for each cluster i, we found the validation example x_n that
maximizes q(y_i|x_n) and assigned the label of x_n to all points in cluster i". The majority label of each
cluster is available too, as the more common alternative; it uses every label of the set it is computed on.

The Parzen estimate follows Goodfellow et al.'s `parzen_ll.py` (goodfeli/adversarial), which the paper cites:
a Gaussian kernel of width sigma on each of the generated samples, sigma chosen on validation images from a
log-spaced grid, and the test log-likelihood reported as mean and standard error over the test images.
`parzen_estimate` is that protocol for any scored images: evaluate.py scores the test set, the check during
training (callbacks/parzen.py) validation images other than those that chose sigma.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torchmetrics import Metric

from datamodules import NUM_CLASSES

if TYPE_CHECKING:  # annotations only: the variants import this module for their metrics
    from aae_lightning.base import AutoencoderBase

CLUSTER_RULES = ("paper", "majority")
#: decoder outputs per forward pass when decoding prior samples
DECODE_BATCH = 1000


class ClusterAccuracy(Metric):
    """Accuracy of a clustering once each cluster is given one class label.

    Two states, both correct under DDP because each reduces elementwise over ranks:
    `counts[k, c]` (sum) is how many images of class c fall in cluster k (their most probable cluster), and
    `top_log_odds[k, c]` (max) is the highest log-odds of q(y=k|x), log q - log(1 - q), over the images of class
    c. The paper's label of cluster k is the class of the single image with the highest q(y=k|x): the same image
    as the highest log-odds, i.e. `top_log_odds[k].argmax()`; the majority label is `counts[k].argmax()`.
    Log-odds, computed from the logits, because a confident model's float32 probabilities round to exactly 1 for
    many images, and the argmax over those ties would pick the lowest class number instead of the most confident
    image. A cluster no image was seen for keeps label 0 (it holds no image either, so its label
    cannot change the accuracy of the same set).

    `compute()` labels the clusters from the data it has seen and scores that same data. To score a test set
    with labels chosen on the validation set (the paper's protocol), take `assignment()` of a metric fed the
    validation set and pass it to `accuracy()` of one fed the test set.
    """

    full_state_update = False

    def __init__(self, num_clusters: int, num_classes: int = NUM_CLASSES, rule: str = "paper", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if rule not in CLUSTER_RULES:
            raise ValueError(f"rule must be one of {CLUSTER_RULES}, got {rule!r}")
        self.num_clusters, self.num_classes, self.rule = num_clusters, num_classes, rule
        self.add_state("counts", torch.zeros(num_clusters, num_classes, dtype=torch.long), dist_reduce_fx="sum")
        # -inf marks "no image of this class seen yet" and loses every max
        self.add_state("top_log_odds", torch.full((num_clusters, num_classes), -math.inf), dist_reduce_fx="max")

    def update(self, cluster_logits: Tensor, labels: Tensor) -> None:
        """`cluster_logits`: (n, K) logits of q(y|x) (the softmax's input); `labels`: (n,) true classes."""
        log_odds = softmax_log_odds(cluster_logits.to(self.top_log_odds.dtype))
        flat = log_odds.argmax(dim=1) * self.num_classes + labels
        self.counts += torch.bincount(flat, minlength=self.num_clusters * self.num_classes).view_as(self.counts)
        # per (cluster, class): the highest log-odds of that cluster among images of that class
        best = torch.full_like(self.top_log_odds, -math.inf)
        index = labels.unsqueeze(0).expand(self.num_clusters, -1)
        best.scatter_reduce_(1, index, log_odds.t(), reduce="amax")
        self.top_log_odds = torch.maximum(self.top_log_odds, best)

    def assignment(self) -> Tensor:
        """The class label of each cluster, shape (K,), by this metric's rule."""
        return (self.top_log_odds if self.rule == "paper" else self.counts).argmax(dim=1)

    def accuracy(self, assignment: Tensor) -> Tensor:
        """Fraction of the images seen whose cluster's label (under `assignment`) is their class."""
        correct = self.counts.gather(1, assignment.to(self.counts.device).view(-1, 1)).sum()
        return correct.float() / self.counts.sum().clamp(min=1)

    def compute(self) -> Tensor:
        return self.accuracy(self.assignment())


def softmax_log_odds(logits: Tensor) -> Tensor:
    """log q_k - log(1 - q_k) of every category k of softmax(logits), i.e. logit_k - logsumexp of the other
    logits: in each column, the same order as q_k, without rounding q_k to 1."""
    num_categories = logits.shape[1]
    others = logits.unsqueeze(1).expand(-1, num_categories, -1)
    others = others.masked_fill(torch.eye(num_categories, dtype=torch.bool, device=logits.device), -math.inf)
    return logits - torch.logsumexp(others, dim=2)


def parzen_log_densities(points: Tensor, samples: Tensor, sigmas: Tensor, batch_size: int = 100) -> Tensor:
    """log p(x) of each point under a Gaussian Parzen window of width sigma centred on each sample, for every
    sigma at once: shape (len(sigmas), len(points)), on the samples' device. Computed in float64, since the
    log-sum-exp of 10,000 terms of size -|x - mu|^2 / 2 sigma^2 amplifies rounding errors of the squared
    distances."""
    samples = samples.to(torch.float64)
    sigmas = sigmas.to(device=samples.device, dtype=torch.float64)
    sample_norms = samples.square().sum(dim=1)
    dim, log_count = samples.shape[1], math.log(len(samples))
    # the kernel's normaliser: d * log(sigma * sqrt(2 pi)), as in parzen_ll.py
    log_normaliser = dim * torch.log(sigmas * math.sqrt(2 * math.pi))
    out = []
    for chunk in _chunks(points.to(device=samples.device, dtype=torch.float64), batch_size):
        # |x - mu|^2 once per chunk, shared by every sigma; clamped because the expansion can dip below 0
        distances = (chunk.square().sum(dim=1, keepdim=True) - 2 * chunk @ samples.t() + sample_norms).clamp_(min=0)
        exponents = -0.5 * distances.unsqueeze(0) / sigmas.view(-1, 1, 1).square()
        out.append(torch.logsumexp(exponents, dim=2) - log_count - log_normaliser.view(-1, 1))
    return torch.cat(out, dim=1)


def _chunks(tensor: Tensor, size: int) -> Iterator[Tensor]:
    return (tensor[start : start + size] for start in range(0, len(tensor), size))


def select_parzen_sigma(validation: Tensor, samples: Tensor, sigmas: Tensor) -> tuple[float, Tensor]:
    """The sigma of the grid with the highest mean validation log-likelihood, and that mean for every sigma."""
    means = parzen_log_densities(validation, samples, sigmas).mean(dim=1)
    return float(sigmas[int(means.argmax())]), means  # int(): the means may be on a GPU, the grid is not


def parzen_summary(log_densities: Tensor) -> tuple[float, float]:
    """Mean log-likelihood and its standard error (std / sqrt(n)), as reported by Goodfellow et al. and the paper."""
    return float(log_densities.mean()), float(log_densities.std() / math.sqrt(len(log_densities)))


def default_sigma_grid() -> Tensor:
    """parzen_ll.py's grid: 10 values log-spaced from 0.1 to 1 (pixels in [0, 1])."""
    return torch.logspace(-1, 0, 10, dtype=torch.float64)


@dataclass(frozen=True)
class ParzenEstimate:
    """The result of `parzen_estimate`: the scored images' mean log-likelihood and its standard error, the sigma
    that the validation images chose, and their mean log-likelihood for every sigma of the grid."""

    mean: float
    stderr: float
    sigma: float
    sigmas: Tensor
    validation_means: Tensor

    @property
    def sigma_at_grid_edge(self) -> bool:
        """Whether the best sigma is the grid's first or last: the best width may then lie outside the grid."""
        return self.sigma in (float(self.sigmas[0]), float(self.sigmas[-1]))


def parzen_estimate(samples: Tensor, validation: Tensor, scored: Tensor, sigmas: Tensor) -> ParzenEstimate:
    """Goodfellow et al.'s protocol: the sigma of `sigmas` with the highest mean log-likelihood of the
    `validation` images, then the log-likelihood of each `scored` image with that sigma, as mean and standard
    error. `scored` should share no image with `validation`, which chose the kernel width."""
    sigma, validation_means = select_parzen_sigma(validation, samples, sigmas)
    mean, stderr = parzen_summary(parzen_log_densities(scored, samples, torch.tensor([sigma]))[0])
    return ParzenEstimate(mean, stderr, sigma, sigmas, validation_means)


@torch.no_grad()
def prior_images(model: AutoencoderBase, n: int, generator: torch.Generator) -> Tensor:
    """n decoder outputs, on the model's device, for codes drawn from the model's `latent_prior` (and a uniform
    class, for class-conditioned decoders), every draw from `generator`."""
    z = model.latent_prior.sample(n, generator=generator)
    labels = torch.randint(model.num_classes, (n,), generator=generator) if model.num_classes else None
    batches = []
    for start in range(0, n, DECODE_BATCH):
        codes = z[start : start + DECODE_BATCH].to(device=model.device, dtype=model.dtype)
        classes = None if labels is None else labels[start : start + DECODE_BATCH].to(model.device)
        batches.append(model.decode(codes, classes))
    return torch.cat(batches)
