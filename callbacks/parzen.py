"""The Parzen window log-likelihood of validation images during training, logged as `val/parzen_ll`, so that
validation can choose the checkpoint by it (train.py's --parzen-every-n-epochs).

The protocol is evaluate.py's (`parzen_estimate`, after Goodfellow et al.'s parzen_ll.py) with validation images
in place of the test set. Decoder outputs for codes drawn from the prior are the kernel centres; the kernel width
is chosen from `default_sigma_grid()` by the first `sigma_images` validation images (the ones evaluate.py's
--parzen-val-size chooses it on); the next `scored_images` validation images, which had no say in the width, are
scored with it. The codes come from a private generator seeded with `seed` afresh every time, so every estimate
decodes the same codes and scores the same images (epochs compare on equal terms), and the random streams
training draws from, the global one and the module's `prior_generator`, are never touched: a run ends with the
same weights with or without the estimate.
"""

from __future__ import annotations

from typing import ClassVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from aae_lightning.base import AutoencoderBase
from aae_lightning.evaluation import default_sigma_grid, parzen_estimate, prior_images
from callbacks.needs import PRIOR, Need, unmet
from callbacks.publish import image_due


class ParzenLikelihood(pl.Callback):
    """Logs `val/parzen_ll`, the mean log-likelihood (nats) of the scored validation images, and
    `val/parzen_sigma`, the kernel width chosen, at the end of validation every `every_n_epochs` epochs and after
    the last one, and at every `trainer.validate` (train.py's validation of the best checkpoint); never in the
    sanity check. A `ModelCheckpoint` monitoring `val/parzen_ll` must compare the same epochs
    (`every_n_epochs=every_n_epochs`, with a number of epochs that is a multiple of it): it refuses an epoch
    without its metric.

    Under DDP every rank computes the same estimate (the same weights, codes and images: `validation_data()` is
    the whole validation set on each rank) rather than rank 0 alone: no rank waits for another's result, and the
    mean over ranks that `sync_dist` takes of identical numbers gives every rank's `ModelCheckpoint` the same value
    to compare. With a GPU per process this adds no wall time; processes that share CPU cores each do the work.

    Needs `latent_prior` (its `sample(n, generator)`) and `decode(z, labels)` (and `num_classes`, for
    class-conditioned decoders), and the datamodule's `validation_data()`.
    """

    needs: ClassVar[tuple[Need, ...]] = (PRIOR,)
    metric: ClassVar[str] = "val/parzen_ll"
    sigma_metric: ClassVar[str] = "val/parzen_sigma"

    def __init__(
        self,
        every_n_epochs: int,
        seed: int = 0,
        samples: int = 10_000,
        sigma_images: int = 1_000,
        scored_images: int = 2_000,
    ) -> None:
        if min(every_n_epochs, samples, sigma_images, scored_images) < 1:
            raise ValueError("every_n_epochs, samples, sigma_images and scored_images must be at least 1")
        self.every_n_epochs, self.seed, self.samples = every_n_epochs, seed, samples
        self.sigma_images, self.scored_images = sigma_images, scored_images

    @classmethod
    def unsupported(cls, pl_module: AutoencoderBase) -> str | None:
        """Why this module cannot be scored (what it lacks of `needs`), or None if it can."""
        return unmet(cls.needs, pl_module)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # refused before the first epoch: a run that cannot log the metric would fail only at its first checkpoint
        reason = self.unsupported(pl_module)
        if reason is None and not callable(getattr(trainer.datamodule, "validation_data", None)):
            reason = "the datamodule has no validation_data()"
        if reason is None and len(trainer.datamodule.validation_data()[0]) < self.sigma_images + self.scored_images:
            reason = f"it needs {self.sigma_images} + {self.scored_images} validation images"
        if reason is not None:
            raise ValueError(f"{type(self).__name__} cannot estimate: {reason}")

    def due(self, trainer: pl.Trainer) -> bool:
        """The same answer on every rank, so that every rank logs (and syncs) the metric at the same epochs."""
        return trainer.state.fn == TrainerFn.VALIDATING or image_due(trainer, self.every_n_epochs)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.due(trainer):
            return
        images = trainer.datamodule.validation_data()[0]
        # Lightning's validation loop holds the module in evaluation mode here: decoding draws no dropout noise
        samples = prior_images(pl_module, self.samples, torch.Generator().manual_seed(self.seed))
        estimate = parzen_estimate(
            samples,
            images[: self.sigma_images],
            images[self.sigma_images : self.sigma_images + self.scored_images],
            default_sigma_grid(),
        )
        pl_module.log(self.metric, estimate.mean, sync_dist=True)
        pl_module.log(self.sigma_metric, estimate.sigma, sync_dist=True)
