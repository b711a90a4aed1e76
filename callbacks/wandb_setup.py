"""A `WandbLogger` that never hangs or kills a run: online with credentials, offline (syncable later) otherwise."""

from __future__ import annotations

import importlib.util
import netrc
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning import Callback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_info

from aae_lightning.errors import UserError

WANDB_HOST = "api.wandb.ai"
#: the key Lightning adds to every row it logs; the x-axis of per-epoch charts
EPOCH = "epoch"


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def make_wandb_logger(
    project: str, name: str, save_dir: Path, config: dict[str, Any], run_id: str | None = None
) -> WandbLogger:
    """Online when W&B credentials exist and `WANDB_MODE` does not say otherwise; offline otherwise, with a hint
    on how to upload the run later. With `run_id`, logs into that W&B run if it exists (a resumed run; offline
    pieces of one run are uploaded into it by `wandb sync`), and starts it under that id if not."""
    if importlib.util.find_spec("wandb") is None:  # an optional dependency: the project's [wandb] extra
        raise UserError(
            "--logger wandb needs the wandb package (pip install wandb); or choose --logger csv, tensorboard or none"
        )
    save_dir.mkdir(parents=True, exist_ok=True)
    # Each training process owns its W&B service. One inherited from a parent process that used wandb (a notebook,
    # a test runner) would own this run instead: it would still hold the id of a killed run being resumed ("run ID
    # is in use"), and could still be writing the run's files after this process has exited.
    os.environ.pop("WANDB_SERVICE", None)
    mode = os.environ.get("WANDB_MODE") or ("online" if has_wandb_credentials() else "offline")
    logger = _logger(project, name, save_dir, mode, run_id)
    if mode == "online":
        try:
            _ = logger.experiment  # start the run now, so a failure to reach W&B surfaces here and not mid-training
        except Exception as error:  # wandb raises several unrelated types for "no network"  # noqa: BLE001
            rank_zero_info(f"W&B unreachable ({type(error).__name__}); logging offline instead")
            mode = "offline"
            logger = _logger(project, name, save_dir, mode, run_id)
    if mode == "offline":
        rank_zero_info(
            f"W&B is offline: the run is written under {save_dir / 'wandb'}; upload it later with "
            f"`wandb sync {save_dir / 'wandb'}/offline-run-*`"
        )
    logger.log_hyperparams(config)
    return logger


def _logger(project: str, name: str, save_dir: Path, mode: str, run_id: str | None) -> WandbLogger:
    import wandb

    # a bounded start-up wait: without it an unreachable server can stall the run for minutes
    settings = wandb.Settings(init_timeout=30, silent=True)
    logger = WandbLogger(
        project=project,
        name=name,
        save_dir=str(save_dir),
        offline=mode == "offline",
        mode=mode,
        settings=settings,
        id=run_id,
        resume="allow",
    )
    # Lightning passes `anonymous` to wandb.init whatever it is given (None here), and wandb 0.31 warns on every
    # run that the setting has no effect; left out, wandb.init never sees it
    logger._wandb_init.pop("anonymous", None)
    return logger


def is_per_epoch(key: str) -> bool:
    """Metrics logged once per epoch: every validation and test metric, and the epoch means of training ones."""
    return key.startswith(("val/", "test/")) or (key.startswith("train/") and key.endswith("_epoch"))


class WandbEpochAxis(Callback):
    """Plots per-epoch metrics over `epoch` in W&B instead of over steps.

    Lightning's `WandbLogger` charts every metric (glob "*") over `trainer/global_step`, which here advances once
    per batch while three or four optimizers step; an epoch-mean plotted over it is hard to compare across
    variants. A glob such as "val/*" would compete with "*" (W&B picks one of several matching globs
    arbitrarily), so each per-epoch metric gets an exact definition instead, which always wins, as soon as it
    has been logged. Definitions are run metadata: the charts follow the latest one, whenever it was made.
    Needs nothing of the module; does nothing without a `WandbLogger`.
    """

    def __init__(self) -> None:
        self._defined: set[str] = set()

    def _define_new(self, trainer: pl.Trainer) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers or not trainer.is_global_zero:
            return
        new = sorted(key for key in trainer.logged_metrics if is_per_epoch(key) and key not in self._defined)
        for logger in loggers:
            if not self._defined:
                logger.experiment.define_metric(EPOCH)
            for key in new:
                logger.experiment.define_metric(key, step_metric=EPOCH, step_sync=True)
        self._defined.update(new)

    # validation and test metrics reach the loggers just before these hooks; training epoch means by on_train_end
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._define_new(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._define_new(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._define_new(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._define_new(trainer)
