"""How a training run shows its progress: Lightning's bar on a terminal, one line per epoch everywhere else.

A progress bar written to a file (nohup, SLURM, `> log`) is a stream of carriage returns, so Lightning's is off
there; without `EpochLines` a long cluster job would print nothing between its banner and its results.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from torch import Tensor

#: the training reconstruction loss, as logged on the batches the loggers write
TRAIN_RECON_LOSS = "train/recon_loss_step"


def progress_callbacks(mode: str) -> list[pl.Callback]:
    """The callbacks of a `--progress` mode: "bar", "lines", "none", or "auto" (the bar when stdout is a terminal,
    lines otherwise). Lightning refuses a bar among the callbacks unless `enable_progress_bar` is True, and shows
    its own default bar when it is: pass True exactly when the list holds a `ProgressBar`."""
    if mode == "auto":
        mode = "bar" if sys.stdout.isatty() else "lines"
    if mode == "bar":
        return [MetricsProgressBar()]
    if mode == "lines":
        return [EpochLines()]
    return []


class MetricsProgressBar(TQDMProgressBar):
    """Lightning's progress bar, which by itself shows no metric here (the module logs none to the bar; only the
    logger's version), with the module's main validation metric (the first element of its `monitor`, e.g.
    `val/acc`; after each validation) and the training reconstruction loss (`train/recon_loss`: of the latest
    batch the loggers wrote, every `log_every_n_steps` batches). Needs the module's `monitor`; a metric not
    logged yet is left out.
    """

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        shown = super().get_metrics(trainer, pl_module)
        logged = trainer.callback_metrics
        main_metric, _ = pl_module.monitor
        wanted = {main_metric: main_metric, "train/recon_loss": TRAIN_RECON_LOSS}
        shown.update({label: float(logged[name]) for label, name in wanted.items() if name in logged})
        return shown


class EpochLines(pl.Callback):
    """One line per epoch on stdout, flushed at once, from global rank 0 only:

        epoch 3/20 | 41.2 s | train recon_loss=0.1234 disc_loss_z=1.386 | val recon_loss=0.118 | 0:12:21 left

    the epoch's wall time (training, validation, images and checkpoints), the epoch means of the training losses
    (`train/*_epoch`), the validation metrics (`val/*`), and the time the remaining epochs take at the mean pace
    of those this process has trained. The module logs its training means in its own `on_train_epoch_end`,
    which Lightning calls after every callback's: an epoch's line is printed when the next epoch starts, or when
    training ends. Needs nothing of the module; a section with no metric is left out.
    """

    def __init__(self) -> None:
        self._first_start: float | None = None  # when the first epoch this process trains started
        self._epoch_start = 0.0
        self._epochs_done = 0
        self._finished: int | None = None  # the epoch whose line is due (counted from 0)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer)
        self._epoch_start = time.monotonic()
        if self._first_start is None:
            self._first_start = self._epoch_start

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finished = trainer.current_epoch

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer)

    def _report(self, trainer: pl.Trainer) -> None:
        if self._finished is None:
            return
        now = time.monotonic()
        epoch, self._finished = self._finished + 1, None
        self._epochs_done += 1
        left = (now - self._first_start) / self._epochs_done * (trainer.max_epochs - epoch)
        # read on every rank, as every rank gets here: should reading them sync a value, no rank waits alone
        metrics = trainer.callback_metrics
        sections = [
            f"epoch {epoch}/{trainer.max_epochs}",
            f"{now - self._epoch_start:.1f} s",
            _section("train", metrics, suffix="_epoch"),
            _section("val", metrics),
            f"{timedelta(seconds=round(left))} left",
        ]
        if trainer.is_global_zero:
            print(" | ".join(section for section in sections if section), flush=True)


def _section(stage: str, metrics: dict[str, Tensor], suffix: str = "") -> str:
    """`stage name=value ...` for the metrics named `stage/<name><suffix>`, by name; empty without any."""
    prefix = f"{stage}/"
    values = [
        f"{key[len(prefix) : len(key) - len(suffix)]}={float(value):.4g}"
        for key, value in sorted(metrics.items())
        if key.startswith(prefix) and key.endswith(suffix)
    ]
    return " ".join([stage, *values]) if values else ""
