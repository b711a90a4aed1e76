"""Where a rendered image goes: a PNG in the run folder, and the active logger's image panel.

`<run folder>/images/<name>/epoch_<NNN>.png` always (the run folder is `trainer.default_root_dir`, which
train.py points at it); a W&B image under `images/<name>` with the epoch in the same row when a `WandbLogger`
is active; a TensorBoard image under the same tag, at step = epoch, when a `TensorBoardLogger` is. Other
loggers (CSV) and no logger get the file only. Called on rank 0 only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.trainer.states import TrainerFn

IMAGE_KEY_PREFIX = "images/"


def image_path(trainer: pl.Trainer, name: str, epoch: int) -> Path:
    return Path(trainer.default_root_dir) / "images" / name / f"epoch_{epoch:03d}.png"


def image_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """Whether the end of this validation should draw images (or, in callbacks/parzen.py, estimate the Parzen
    likelihood): during fitting (not the sanity check, not a later `trainer.validate`), every `every_n_epochs`
    epochs and after the last one. The answer is the same on every rank, so collective steps keyed on it stay in
    step."""
    if every_n_epochs <= 0 or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
        return False
    finished = trainer.current_epoch + 1
    return finished % every_n_epochs == 0 or finished == trainer.max_epochs


def publish(trainer: pl.Trainer, name: str, image: np.ndarray, caption: str) -> Path:
    """Save `image` (height, width, 3, uint8) as this epoch's PNG and log it to every image-capable logger."""
    epoch = trainer.current_epoch
    path = image_path(trainer, name, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    key = IMAGE_KEY_PREFIX + name
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            # the epoch travels in the same row: W&B's media slider and custom charts can then show it
            logger.log_metrics({key: wandb.Image(image, caption=caption), "epoch": epoch})
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, global_step=epoch, dataformats="HWC")
    return path
