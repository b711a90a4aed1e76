"""A `WandbLogger` that never hangs or kills a run: online with credentials, offline (syncable later) otherwise."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_info

WANDB_HOST = "api.wandb.ai"


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def make_wandb_logger(project: str, name: str, save_dir: Path, config: dict[str, Any]) -> WandbLogger:
    """Online when W&B credentials exist and `WANDB_MODE` does not say otherwise; offline otherwise, with a hint
    on how to upload the run later."""
    save_dir.mkdir(parents=True, exist_ok=True)
    mode = os.environ.get("WANDB_MODE") or ("online" if has_wandb_credentials() else "offline")
    logger = _logger(project, name, save_dir, mode)
    if mode == "online":
        try:
            logger.experiment  # start the run now, so a failure to reach W&B surfaces here and not mid-training
        except Exception as error:  # wandb raises several unrelated types for "no network"  # noqa: BLE001
            rank_zero_info(f"W&B unreachable ({type(error).__name__}); logging offline instead")
            mode = "offline"
            logger = _logger(project, name, save_dir, mode)
    if mode == "offline":
        rank_zero_info(f"W&B is offline: the run is written under {save_dir / 'wandb'}; upload it later with "
                       f"`wandb sync {save_dir / 'wandb'}/offline-run-*`")
    logger.log_hyperparams(config)
    return logger


def _logger(project: str, name: str, save_dir: Path, mode: str) -> WandbLogger:
    import wandb

    # a bounded start-up wait: without it an unreachable server can stall the run for minutes
    settings = wandb.Settings(init_timeout=30, silent=True)
    return WandbLogger(project=project, name=name, save_dir=str(save_dir), offline=mode == "offline", mode=mode,
                       settings=settings)
