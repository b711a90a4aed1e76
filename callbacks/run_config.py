"""Puts what identifies a run's data and schedule into every logger's hyperparameters (the W&B run config)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from aae_lightning.checkpoint_io import NO_AVERAGING
from callbacks.weight_averaging import AverageWeights


class LogRunConfig(pl.Callback):
    """At the start of fitting, adds to every logger's hyperparameters what Lightning does not log by itself:
    the data split (`split_seed`, `num_labels` actually drawn, `val_size`, `split_fingerprint`; from the
    datamodule's `split.summary()`, available once it is set up), the schedule (`max_epochs`, `world_size`,
    `precision`) and the weight averaging (`average_weights`, `average_from_epoch`, `ema_decay`: an
    `AverageWeights` callback's settings, "none" without one), which decides which weights every `val/` metric
    scores. The module's and the datamodule's own hyperparameters are logged by Lightning. Needs nothing of the
    module; without a `split` on the datamodule only the schedule and the averaging are logged.
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        config: dict[str, Any] = {}
        split = getattr(trainer.datamodule, "split", None)
        if split is not None:
            config.update(split.summary())
        config.update(max_epochs=trainer.max_epochs, world_size=trainer.world_size, precision=str(trainer.precision))
        averaging = [callback.settings for callback in trainer.callbacks if isinstance(callback, AverageWeights)]
        config.update(averaging[0] if averaging else NO_AVERAGING)
        for logger in trainer.loggers:
            logger.log_hyperparams(config)  # rank-zero-only in every Lightning logger
