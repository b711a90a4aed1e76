"""The variants learn what the paper says they learn, on the real MNIST, each in about two CPU-minutes or less.

These train each variant with its default hyperparameters (784-1000-1000-latent networks) for a few hundred
batches: what a user gets without a flag. The thresholds come from the issue, not from what a run happened to reach.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aae_lightning import get_variant
from aae_lightning.base import AutoencoderBase
from datamodules.mnist import MNISTDataModule
from tests.helpers import make_trainer

#: batches per comparison run of `ae` and `aae` (an epoch is 500)
CODE_BATCHES = 300


def fit(
    variant: str, mnist_dir: Path, batches: int | None = None, num_labels: int | None = 1000, **hparams: Any
) -> tuple[AutoencoderBase, pl.Trainer, MNISTDataModule]:
    """Train `variant` from seed 0 for one epoch, or its first `batches` batches, without validation."""
    pl.seed_everything(0, verbose=False)
    cls = get_variant(variant)
    model = cls(**hparams)
    datamodule = MNISTDataModule(str(mnist_dir), num_labels=num_labels, download=False, train_streams=cls.train_streams)
    trainer = make_trainer(batches)
    trainer.fit(model, datamodule)
    return model.eval(), trainer, datamodule


def test_semi_supervised_reaches_90_percent_with_1000_labels_in_one_epoch(mnist_dir: Path) -> None:
    model, trainer, datamodule = fit("semi", mnist_dir, num_labels=1000)
    assert trainer.global_step == 500 * len(model.phases)
    (results,) = trainer.test(model, datamodule, verbose=False)
    print(f"semi, 1000 labels, one epoch: test accuracy {results['test/acc']:.4f}")
    assert results["test/acc"] >= 0.90


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    """E|X-Y| - (E|X-X'| + E|Y-Y'|) / 2: zero exactly when the two distributions are equal."""
    return torch.cdist(x, y).mean() - (torch.cdist(x, x).mean() + torch.cdist(y, y).mean()) / 2


def to_prior_scale(codes: Tensor, prior_second_moment: float) -> Tensor:
    """Centre the codes and scale them to the prior's mean squared norm. A plain autoencoder's codes have no
    particular location or size; this leaves it only the shape of its code distribution to be judged on, the
    one thing adversarial regularization is meant to fix beyond location and size."""
    centred = codes - codes.mean(dim=0)
    return centred * (prior_second_moment / centred.pow(2).sum(dim=1).mean()).sqrt()


@pytest.fixture(scope="module")
def trained_ae(mnist_dir: Path) -> tuple[AutoencoderBase, pl.Trainer, MNISTDataModule]:
    return fit("ae", mnist_dir, batches=CODE_BATCHES)


def test_aae_codes_match_the_gaussian_prior_far_better_than_ae_codes(mnist_dir: Path, trained_ae: Any) -> None:
    aae, _, datamodule = fit("aae", mnist_dir, batches=CODE_BATCHES)  # the defaults: a 2-D z, prior N(0, 5^2)
    ae, _, _ = trained_ae
    images = datamodule.validation_data()[0][:2000]
    prior = aae.latent_prior
    samples = prior.sample(2000, generator=torch.Generator().manual_seed(1))
    moment = samples.pow(2).sum(dim=1).mean().item()
    distances = {
        name: energy_distance(to_prior_scale(model.encode(images), moment), samples).item()
        for name, model in (("aae", aae), ("ae", ae))
    }
    # the yardstick: how far apart two independent prior samples of this size are
    noise = energy_distance(prior.sample(2000, generator=torch.Generator().manual_seed(2)), samples).item()
    print(
        f"energy distance to N(0, {prior.std}^2) after {CODE_BATCHES} batches: {distances}, prior vs prior {noise:.4f}"
    )
    assert distances["aae"] <= 0.5 * distances["ae"]
    # and as they are, without any rescaling, the aae's codes sit where the prior is
    assert energy_distance(aae.encode(images), samples).item() <= 0.5 * distances["ae"]


def test_ae_reconstruction_loss_falls_well_below_its_initial_value(mnist_dir: Path, trained_ae: Any) -> None:
    model, trainer, datamodule = trained_ae
    pl.seed_everything(0, verbose=False)
    untrained = get_variant("ae")()
    evaluator = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (initial,) = evaluator.validate(untrained, datamodule, verbose=False)
    (final,) = evaluator.validate(model, datamodule, verbose=False)
    print(
        f"ae validation BCE: {initial['val/recon_loss']:.4f} at initialization, "
        f"{final['val/recon_loss']:.4f} after {CODE_BATCHES} batches"
    )
    assert final["val/recon_loss"] < 0.5 * initial["val/recon_loss"]


def train_classifier(images: Tensor, labels: Tensor, epochs: int = 5) -> nn.Module:
    """An MLP digit classifier, independent of every variant's networks."""
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(images)).split(100):
            optimizer.zero_grad()
            F.cross_entropy(classifier(images[batch]), labels[batch]).backward()
            optimizer.step()
    return classifier.eval()


@torch.no_grad()
def accuracy(classifier: nn.Module, images: Tensor, labels: Tensor) -> float:
    return (classifier(images).argmax(dim=1) == labels).float().mean().item()


def test_supervised_decoder_draws_the_digit_it_is_asked_for(mnist_dir: Path) -> None:
    model, _, datamodule = fit("supervised", mnist_dir, num_labels=None)
    classifier = train_classifier(*datamodule.labeled_data())
    test_accuracy = accuracy(classifier, *datamodule.test_data())
    assert test_accuracy >= 0.97

    digits = torch.arange(10).repeat_interleave(200)
    styles = model.latent_prior.sample(len(digits), generator=torch.Generator().manual_seed(3))
    drawn = accuracy(classifier, model.decode(styles, digits), digits)
    print(f"independent classifier: {test_accuracy:.4f} on the test set; labels decoded digits as asked {drawn:.4f}")
    assert drawn >= 0.90
